"""Every unit of usage billed exactly once, whenever it arrives: late and deleted events, orphan
usage, churned organizations and unpriced metrics, through the real commands on PostgreSQL.

Figures are computed by hand in the comments. Plan `pro` (USD): base fee 10.00, API calls
graduated: 1..1,000 at 0.01, above at 0.005. Plan `euro` (EUR): API calls at 0.10 each.
"""

from __future__ import annotations

import io
from decimal import Decimal as D

import pytest
from pypdf import PdfReader
from sqlalchemy import text
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.errors import ExitCode
from tests.data import PLANS, add_event, add_org, set_plan, utc

runner = CliRunner()


def run(db: str, *args: str, **env: str):
    result = runner.invoke(app, list(args), env={"DATABASE_URL": db, **env})
    return result


def invoice(db: str, month: str, *args: str):
    return run(db, "invoice-monthly", "--month", month, *args)


def roll_up(db: str):
    """The scheduled hourly run: the previous hour, and every older hour whose events changed."""
    result = run(db, "aggregate-hourly")
    assert result.exit_code == 0, result.output
    return result


def events(engine, org: str, quantity: int, at, metric: str = "api_calls") -> None:
    with engine.begin() as conn:
        for n in range(quantity):
            add_event(conn, org, metric, "1", at, key=f"{org}-{metric}-{at:%Y%m%d%H%M}-{n}")


def invoices_of(engine, org: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT number, status, total FROM invoices WHERE organization_id = :o ORDER BY id"), {"o": org})]


def lines_of(engine, number: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT l.kind, l.period_start, l.description, l.amount FROM invoice_lines l "
            "JOIN invoices i ON i.id = l.invoice_id WHERE i.number = :n ORDER BY l.line_no"), {"n": number})]


def billed_quantity(engine, org: str, month: str) -> D:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT coalesce(sum(u.quantity), 0) FROM invoice_usage u JOIN invoices i ON i.id = u.invoice_id "
            "WHERE i.status <> 'void' AND i.organization_id = :o AND u.period_start = CAST(:m AS date)"),
            {"o": org, "m": f"{month}-01"}).scalar_one()


@pytest.fixture
def db(db_url, engine, tmp_path, clean_env):
    plans = tmp_path / "plans.toml"
    plans.write_text(PLANS)
    assert run(db_url, "plans", "apply", str(plans)).exit_code == 0
    return db_url


def test_late_events_are_billed_once_on_the_next_invoice_rated_across_the_tier(db, engine) -> None:
    with engine.begin() as conn:
        add_org(conn, "acme")
        set_plan(conn, "acme", "pro")
    events(engine, "acme", 800, utc(2024, 1, 20, 10))
    roll_up(db)
    assert invoice(db, "2024-01").exit_code == 0
    assert invoices_of(engine, "acme") == [("INV-2024-01-000001", "issued", D("18.00"))]  # 10 + 800 x 0.01

    # 500 events of 31 January arrive after January was invoiced.
    events(engine, "acme", 500, utc(2024, 1, 31, 23, 59))
    roll_up(db)
    report = invoice(db, "2024-01")

    # 1,300 in all: 1,000 x 0.01 + 300 x 0.005 = 11.50, minus the 8.00 billed = 3.50 (not 500 x 0.01).
    assert report.exit_code == 0
    assert ("late usage since INV-2024-01-000001: +500 api_calls, +3.50 USD: billed on the next invoice"
            in report.output)
    assert invoices_of(engine, "acme") == [("INV-2024-01-000001", "issued", D("18.00"))]  # never changed

    events(engine, "acme", 200, utc(2024, 2, 10, 10))
    roll_up(db)
    february = invoice(db, "2024-02")
    assert february.exit_code == 0, february.output
    assert invoices_of(engine, "acme")[1] == ("INV-2024-02-000001", "issued", D("15.50"))  # 10 + 2.00 + 3.50
    assert lines_of(engine, "INV-2024-02-000001") == [
        ("base_fee", utc(2024, 2, 1).date(), "Pro plan, monthly fee", D("10.00")),
        ("tier", utc(2024, 2, 1).date(), "API calls: units 1 to 1,000", D("2.00")),
        ("usage", utc(2024, 1, 1).date(), "Adjustment for January 2024: API calls, +500 units (1,300 in all)",
         D("3.50")),
    ]
    assert billed_quantity(engine, "acme", "2024-01") == 1300  # = the events
    with engine.connect() as conn:
        pdf = conn.execute(text("SELECT pdf_bytes FROM invoices WHERE number = 'INV-2024-02-000001'")).scalar_one()
    assert pdf

    # Rerunning either month changes nothing: the late usage is billed once.
    for month in ("2024-01", "2024-02"):
        again = invoice(db, month)
        assert again.exit_code == 0 and "late usage" not in again.output
    assert [i[0] for i in invoices_of(engine, "acme")] == ["INV-2024-01-000001", "INV-2024-02-000001"]


def test_deleted_events_give_a_credit_and_a_negative_total_is_carried_to_the_next_invoice(
        db, engine, tmp_path) -> None:
    with engine.begin() as conn:
        add_org(conn, "gmbh", currency="EUR")
        set_plan(conn, "gmbh", "euro")
    events(engine, "gmbh", 100, utc(2024, 1, 10, 9))
    roll_up(db)
    assert invoice(db, "2024-01").exit_code == 0  # 100 x 0.10 = 10.00 EUR

    with engine.begin() as conn:  # 80 of them were test traffic: the producer deletes them
        conn.execute(text("DELETE FROM usage_events WHERE organization_id = 'gmbh' AND idempotency_key "
                          "IN (SELECT idempotency_key FROM usage_events WHERE organization_id = 'gmbh' "
                          "ORDER BY idempotency_key LIMIT 80)"))
    roll_up(db)
    february = invoice(db, "2024-02", "--output-dir", str(tmp_path))
    assert february.exit_code == 0, february.output

    # February: no usage, -8.00 for January; never charged: the credit goes forward, total 0.
    assert invoices_of(engine, "gmbh")[1] == ("INV-2024-02-000001", "issued", D("0.00"))
    assert [(kind, amount) for kind, _, _, amount in lines_of(engine, "INV-2024-02-000001")] == [
        ("usage", D("-8.00")), ("credit_carried", D("8.00"))]

    events(engine, "gmbh", 200, utc(2024, 3, 3, 9))
    roll_up(db)
    assert invoice(db, "2024-03", "--output-dir", str(tmp_path)).exit_code == 0
    # March: 200 x 0.10 = 20.00, minus the 8.00 credit = 12.00.
    assert invoices_of(engine, "gmbh")[2] == ("INV-2024-03-000001", "issued", D("12.00"))
    assert [(kind, amount) for kind, _, _, amount in lines_of(engine, "INV-2024-03-000001")] == [
        ("usage", D("20.00")), ("credit_applied", D("-8.00"))]
    for number, words in (("INV-2024-02-000001", ["Adjustment for January 2024", "-8.00",
                                                   "Credit carried to your next invoice", "8.00"]),
                          ("INV-2024-03-000001", ["Credit from earlier invoices", "-8.00", "12.00"])):
        month = number[4:11]
        text_of_pdf = "".join(page.extract_text() for page in
                              PdfReader(io.BytesIO((tmp_path / month / f"{number}.pdf").read_bytes())).pages)
        assert all(word in text_of_pdf for word in words), (number, text_of_pdf)
    assert billed_quantity(engine, "gmbh", "2024-01") == 20  # 100 billed, -80 adjusted


def test_credit_carried_for_an_organization_no_longer_active_is_reported_for_a_refund(db, engine) -> None:
    """No later invoice will come to use it: the run says so, instead of only the PDF's "carried to
    your next invoice"."""
    with engine.begin() as conn:
        add_org(conn, "gone", currency="EUR")
        set_plan(conn, "gone", "euro")
    events(engine, "gone", 100, utc(2024, 1, 10, 9))
    roll_up(db)
    assert invoice(db, "2024-01").exit_code == 0  # 10.00 EUR
    with engine.begin() as conn:  # the customer leaves; 80 of January's events were test traffic
        conn.execute(text("UPDATE organizations SET status = 'inactive' WHERE id = 'gone'"))
        conn.execute(text("DELETE FROM usage_events WHERE organization_id = 'gone' AND idempotency_key "
                          "IN (SELECT idempotency_key FROM usage_events WHERE organization_id = 'gone' "
                          "ORDER BY idempotency_key LIMIT 80)"))
    roll_up(db)

    february = invoice(db, "2024-02")

    assert february.exit_code == 0, february.output
    assert [(kind, amount) for kind, _, _, amount in lines_of(engine, "INV-2024-02-000001")] == [
        ("usage", D("-8.00")), ("credit_carried", D("8.00"))]
    assert ("its credit of 8.00 EUR is carried to a next invoice, but the organization is no longer active: no "
            "later invoice may use it (refund it, or settle it by hand)") in " ".join(february.output.split())


def test_events_that_arrive_before_their_organization_are_billed_once_it_exists(db, engine) -> None:
    events(engine, "newco", 300, utc(2024, 1, 25, 12))
    warned = run(db, "aggregate-hourly", "--hour", "2024-01-25T12")
    assert "300 events of 1 organization id(s) with no organizations row (orphan usage: newco)" in warned.output
    assert invoice(db, "2024-01").exit_code == 0
    assert invoices_of(engine, "newco") == []  # nobody to bill yet

    with engine.begin() as conn:  # the account service creates the organization on 3 February
        add_org(conn, "newco", created_at=utc(2024, 2, 3))
        set_plan(conn, "newco", "pro")
    assert invoice(db, "2024-02").exit_code == 0

    # February's fee for the 27 of its 29 days it existed (3-29 Feb: 10 × 27/29 = 9.3103… -> 9.31) and
    # January's usage without January's fee (3.00): 12.31.
    assert invoices_of(engine, "newco") == [("INV-2024-02-000001", "issued", D("12.31"))]
    assert [(kind, period.month, amount) for kind, period, _, amount in lines_of(engine, "INV-2024-02-000001")] == [
        ("base_fee", 2, D("9.31")), ("usage", 1, D("3.00"))]
    assert invoice(db, "2024-01").exit_code == 0  # January now: already billed, nothing twice
    assert invoices_of(engine, "newco") == [("INV-2024-02-000001", "issued", D("12.31"))]


def test_an_organization_deactivated_during_the_month_gets_its_final_invoice(db, engine) -> None:
    with engine.begin() as conn:
        add_org(conn, "leaving")
        set_plan(conn, "leaving", "pro")
        add_org(conn, "left-long-ago")
        set_plan(conn, "left-long-ago", "pro")
        conn.execute(text("UPDATE organizations SET status = 'inactive' WHERE id = 'left-long-ago'"))
        conn.execute(text("UPDATE organizations SET status_changed_at = '2023-06-01' WHERE id = 'left-long-ago'"))
    events(engine, "leaving", 100, utc(2024, 1, 5, 8))
    roll_up(db)
    with engine.begin() as conn:  # it churns before the monthly run; the trigger records when
        conn.execute(text("UPDATE organizations SET status = 'inactive' WHERE id = 'leaving'"))
        changed = conn.execute(text("SELECT status_changed_at > now() - interval '1 minute' FROM organizations "
                                    "WHERE id = 'leaving'")).scalar_one()
    assert changed

    result = invoice(db, "2024-01", "--org", "leaving", "--org", "left-long-ago", "--plain")

    assert result.exit_code == 0, result.output
    # Active when January began (deactivated after): the fee and its usage, 10 + 1.00.
    assert invoices_of(engine, "leaving") == [("INV-2024-01-000001", "issued", D("11.00"))]
    assert "organization id=leaving status=invoiced" in result.output and "final=true" in result.output
    assert invoices_of(engine, "left-long-ago") == []  # no usage, and no fee: it left before January


def test_late_usage_of_a_month_the_organization_was_inactive_in_charges_no_fee_after_it_comes_back(
        db, engine) -> None:
    with engine.begin() as conn:  # inactive since June 2023: January is billed its usage, no fee
        add_org(conn, "back")
        set_plan(conn, "back", "pro")
        conn.execute(text("UPDATE organizations SET status = 'inactive' WHERE id = 'back'"))
        conn.execute(text("UPDATE organizations SET status_changed_at = '2023-06-01' WHERE id = 'back'"))
    events(engine, "back", 100, utc(2024, 1, 5, 8))
    roll_up(db)
    assert invoice(db, "2024-01", "--org", "back").exit_code == 0
    assert invoices_of(engine, "back") == [("INV-2024-01-000001", "issued", D("1.00"))]  # 100 x 0.01, no fee

    with engine.begin() as conn:  # the customer comes back on 20 February (e.g. a suspension lifted)
        conn.execute(text("UPDATE organizations SET status = 'active' WHERE id = 'back'"))
        conn.execute(text("UPDATE organizations SET status_changed_at = '2024-02-20' WHERE id = 'back'"))
    events(engine, "back", 100, utc(2024, 1, 6, 8))  # late January usage
    roll_up(db)
    assert invoice(db, "2024-02", "--org", "back").exit_code == 0
    january = [(kind, description, amount) for kind, period, description, amount
               in lines_of(engine, "INV-2024-02-000001") if period == utc(2024, 1, 1).date()]
    # January was inactive: its adjustment is the 100 late calls (1.00), never January's monthly fee.
    assert january == [("usage", "Adjustment for January 2024: API calls, +100 units (200 in all)", D("1.00"))]


def test_usage_of_a_metric_the_plan_does_not_price_fails_that_organization(db, engine) -> None:
    with engine.begin() as conn:
        add_org(conn, "gpu-user")
        set_plan(conn, "gpu-user", "pro")
        add_org(conn, "fine")
        set_plan(conn, "fine", "pro")
    events(engine, "gpu-user", 3, utc(2024, 1, 5, 8), metric="gpu_hours")
    events(engine, "fine", 1, utc(2024, 1, 5, 8))
    roll_up(db)

    result = invoice(db, "2024-01", "--plain")

    assert result.exit_code == ExitCode.PARTIAL
    assert ("error_data=\"usage of gpu_hours in 2024-01 is not priced by plan 'pro' as defined on 2024-01-01: price "
            "it, or list it in the plan's free_metrics, with `billing plans apply FILE --effective 2024-01-01`, then "
            "rerun\"") in " ".join(result.output.split())
    assert invoices_of(engine, "gpu-user") == [] and len(invoices_of(engine, "fine")) == 1


GPU_PRICED = PLANS.replace("""  tiers = [{ up_to = 1000, unit_price = 0.01 }, { unit_price = 0.005 }]
""", """  tiers = [{ up_to = 1000, unit_price = 0.01 }, { unit_price = 0.005 }]

  [[plan.price]]
  metric = "gpu_hours"
  description = "GPU hours"
  model = "per_unit"
  unit_price = 1
""", 1)


def test_the_fix_an_unpriced_metric_error_names_makes_the_rerun_invoice_it(db, engine, tmp_path) -> None:
    with engine.begin() as conn:
        add_org(conn, "gpu-user")
        set_plan(conn, "gpu-user", "pro")
    events(engine, "gpu-user", 3, utc(2024, 1, 5, 8), metric="gpu_hours")
    roll_up(db)
    assert invoice(db, "2024-01").exit_code == ExitCode.PARTIAL
    plans = tmp_path / "gpu.toml"
    plans.write_text(GPU_PRICED)
    # A plain apply is in force from now: January keeps the plan it started with, and still fails.
    assert run(db, "plans", "apply", str(plans)).exit_code == 0
    assert invoice(db, "2024-01").exit_code == ExitCode.PARTIAL
    assert run(db, "plans", "apply", str(plans), "--effective", "2024-01-01").exit_code == 0  # as the error says
    rerun = invoice(db, "2024-01")
    assert rerun.exit_code == 0, rerun.output
    assert invoices_of(engine, "gpu-user") == [("INV-2024-01-000001", "issued", D("13.00"))]  # 10 + 3 x 1.00


def test_late_usage_of_a_metric_the_invoiced_plan_does_not_price_names_the_fix_that_works(
        db, engine, tmp_path) -> None:
    with engine.begin() as conn:
        add_org(conn, "acme")
        set_plan(conn, "acme", "pro")
    events(engine, "acme", 800, utc(2024, 1, 20, 10))
    roll_up(db)
    assert invoice(db, "2024-01").exit_code == 0  # 18.00
    events(engine, "acme", 3, utc(2024, 1, 21, 10), metric="gpu_hours")  # late, of a metric January's plan lacks
    events(engine, "acme", 100, utc(2024, 2, 21, 10))
    roll_up(db)
    february = invoice(db, "2024-02")
    assert february.exit_code == ExitCode.PARTIAL
    # January is rated again with the plan its invoice stored: pricing the metric now is not enough.
    assert ("usage of gpu_hours in 2024-01 is not priced by plan 'pro' as its invoice of 2024-01 stored it: price "
            "it, or list it in the plan's free_metrics, with `billing plans apply FILE --effective 2024-01-01`, then "
            "regenerate that invoice (`billing invoice-monthly --month 2024-01 --org ID --regenerate`) and rerun"
            ) in " ".join(february.output.split()), february.output
    plans = tmp_path / "gpu.toml"
    plans.write_text(GPU_PRICED)
    assert run(db, "plans", "apply", str(plans), "--effective", "2024-01-01").exit_code == 0
    assert invoice(db, "2024-01", "--org", "acme", "--regenerate").exit_code == 0
    february = invoice(db, "2024-02")
    assert february.exit_code == 0, february.output
    assert [(n, s, t) for n, s, t in invoices_of(engine, "acme")] == [
        ("INV-2024-01-000001", "void", D("18.00")), ("INV-2024-01-000002", "issued", D("21.00")),
        ("INV-2024-02-000001", "issued", D("11.00"))]  # 10 + 8 + 3; 10 + 100 x 0.01


def test_stripe_receives_the_same_negative_lines_and_zero_total(db, engine, s3, mail, fake_stripe) -> None:
    from tests.peers.fixtures import peer_env

    env = peer_env(db, s3, mail, fake_stripe)
    with engine.begin() as conn:
        add_org(conn, "gmbh", currency="EUR")
        set_plan(conn, "gmbh", "euro")
    events(engine, "gmbh", 100, utc(2024, 1, 10, 9))
    roll_up(db)
    assert runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env).exit_code == 0
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM usage_events WHERE organization_id = 'gmbh'"))
    roll_up(db)

    february = runner.invoke(app, ["invoice-monthly", "--month", "2024-02"], env=env)

    assert february.exit_code == 0, february.output
    with engine.connect() as conn:
        stripe_id, status = conn.execute(text("SELECT stripe_invoice_id, stripe_status FROM invoices "
                                              "WHERE number = 'INV-2024-02-000001'")).one()
    remote = fake_stripe.invoices[stripe_id]
    assert (status, remote["status"], remote["total"]) == ("sent", "paid", 0)  # nothing charged
    assert [(line["amount"], line["description"]) for line in remote["lines"]["data"]] == [
        (-1000, "Adjustment for January 2024: API-Aufrufe, -100 units (0 in all)"),
        (1000, "Credit carried to your next invoice")]
    email = mail.received[-1].message
    assert email["Subject"].startswith("Invoice INV-2024-02-000001")
    body = email.get_body(("plain",)).get_content()
    # amounts as the PDF prints them (INVOICE_LOCALE, default en)
    assert "Adjustment for January 2024: API-Aufrufe, -100 units (0 in all): -€10.00" in body
    assert "A credit of €10.00 is carried to your next invoice." in body


def test_events_moved_within_an_invoiced_month_are_not_reported_as_unbilled_once_out_of_the_window(db, engine) -> None:
    with engine.begin() as conn:
        add_org(conn, "acme")
        set_plan(conn, "acme", "pro")
    events(engine, "acme", 100, utc(2024, 1, 10, 9))
    roll_up(db)
    assert invoice(db, "2024-01").exit_code == 0  # 10.00 + 1.00
    with engine.begin() as conn:  # the producer corrects the time of 10 events: still in January
        conn.execute(text("UPDATE usage_events SET occurred_at = occurred_at + interval '1 day' WHERE idempotency_key "
                          "IN (SELECT idempotency_key FROM usage_events WHERE organization_id = 'acme' "
                          "ORDER BY idempotency_key LIMIT 10)"))
    roll_up(db)
    for month in ("2024-02", "2024-03", "2024-04"):
        assert invoice(db, month).exit_code == 0
    # February rated January again: the same 100 calls, nothing to bill, and nothing left to bill.
    may = invoice(db, "2024-05")
    assert may.exit_code == 0, may.output
    assert "usage of 2024-01 changed" not in may.output, may.output
    assert [t for _, _, t in invoices_of(engine, "acme")] == [D("11.00"), D("10.00"), D("10.00"), D("10.00"),
                                                               D("10.00")]
    assert billed_quantity(engine, "acme", "2024-01") == 100
