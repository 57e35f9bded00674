"""Billing periods per organization, invoiced on a real PostgreSQL: anchor days, catch-up runs,
proration, shards, --month, --regenerate, the dry run.

Plan `pro` (USD): base fee 10.00, API calls graduated 1..1,000 at 0.01, above at 0.005. Every
figure is worked out by hand in the comments.
"""

from __future__ import annotations

import io
import json
import threading
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal as D
from pathlib import Path

import pytest
from pypdf import PdfReader
from sqlalchemy import text
from typer.testing import CliRunner

from billing_cli.anchors import Anchor, BillingPeriod, billing_period
from billing_cli.cli import app
from billing_cli.db.invoice_store import load_document
from billing_cli.db.plan_store import save_plans
from billing_cli.db.usage_store import Shard
from billing_cli.delivery.pdf import render_invoice
from billing_cli.invoices import Seller
from billing_cli.jobs.aggregate import aggregate_one_hour
from billing_cli.jobs.invoicing import InvoiceOptions, invoice_due, invoice_month
from billing_cli.periods import HOUR, Month
from billing_cli.plan_file import parse_plans
from tests.data import PLANS, add_event, add_org, add_usage, set_plan, table_snapshot, utc
from tests.test_anchors import PLAN as TEAM  # base fee 10, minimum 50, 0.01 per API call

JAN, FEB, MAR = Month(2024, 1), Month(2024, 2), Month(2024, 3)
SELLER = Seller("Example Cloud Ltd", ("1 Example Street", "London"), "GB123")
TABLES = ("invoices", "invoice_lines", "invoice_usage", "invoice_periods", "invoice_number_counters")
runner = CliRunner()


def options(month: Month, due_by: datetime | None, **overrides) -> InvoiceOptions:
    values = dict(month=month, issue_date=(due_by or month.end).date(), seller=SELLER, due_by=due_by)
    values.update(overrides)
    return InvoiceOptions(**values)


def set_anchor(conn, org_id: str, day: int | None, *, changed_at: datetime | None = None) -> None:
    """The account service sets the anchor (the trigger records the change); `changed_at`: when, in
    the test's calendar (None: long before any period billed here)."""
    conn.execute(text("UPDATE organizations SET billing_anchor_day = :d WHERE id = :o"), {"d": day, "o": org_id})
    if changed_at is None:
        conn.execute(text("UPDATE organizations SET billing_anchor_previous = NULL, billing_anchor_changed_at = NULL "
                          "WHERE id = :o"), {"o": org_id})
    else:
        conn.execute(text("UPDATE organizations SET billing_anchor_changed_at = :t WHERE id = :o"),
                     {"t": changed_at, "o": org_id})


def org(conn, org_id: str, anchor: int | None, *, created_at: datetime = utc(2023, 1, 1)) -> None:
    add_org(conn, org_id, created_at=created_at)
    set_plan(conn, org_id, "pro")
    if anchor is not None:
        set_anchor(conn, org_id, anchor)


def invoices(engine) -> dict[str, list[tuple]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT organization_id, number, status, period_start, period_end, total "
                                 "FROM invoices ORDER BY id")).all()
    found: dict[str, list[tuple]] = {}
    for r in rows:
        found.setdefault(r.organization_id, []).append((r.number, r.status, r.period_start, r.period_end, r.total))
    return found


@pytest.fixture
def plans(engine):
    with engine.begin() as conn:
        save_plans(conn, parse_plans(PLANS))
    return engine


@pytest.mark.parametrize("year", [2024, 2023])
def test_anchors_across_february_bill_each_period_hour_exactly_once(plans, year: int) -> None:
    """For each anchor: 1 API call in the first hour of January's period, 1000 in its last hour, 10
    in the first hour of February's, 100 in the first hour after February's (March's period)."""
    engine = plans
    january, february = Month(year, 1), Month(year, 2)
    anchors = (1, 15, 28, 29, 30, 31)
    with engine.begin() as conn:
        for anchor in anchors:
            org(conn, f"a{anchor:02d}", anchor)
            first = billing_period(january, Anchor(anchor))
            second = billing_period(february, Anchor(anchor))
            for at, quantity in ((first.start, "1"), (first.end - HOUR, "1000"), (second.start, "10"),
                                 (second.end, "100")):
                add_usage(conn, f"a{anchor:02d}", "api_calls", quantity, at)
    jan = invoice_month(engine.begin, options(january, utc(year, 4, 1)))
    feb = invoice_month(engine.begin, options(february, utc(year, 4, 1)))
    assert jan.statuses == {"invoiced": 6} and feb.statuses == {"invoiced": 6}, (jan.failed, feb.failed)

    with engine.connect() as conn:
        billed = {(r.organization_id, r.billing_month.month): (r.period_start, r.period_end, D(r.quantity))
                  for r in conn.execute(text(
                      "SELECT i.organization_id, i.billing_month, i.period_start, i.period_end, u.quantity "
                      "FROM invoices i JOIN invoice_usage u ON u.invoice_id = i.id AND u.period_start = i.billing_month"))}
    for anchor in anchors:
        first = billing_period(january, Anchor(anchor))
        second = billing_period(february, Anchor(anchor))
        # January's period: its first hour (1) and its last hour (1000); February's: its first hour
        # (10, at January's end) only, the next period's first hour (100) is March's.
        assert billed[(f"a{anchor:02d}", 1)] == (first.start, first.end, D("1001")), anchor
        assert billed[(f"a{anchor:02d}", 2)] == (second.start, second.end, D("10")), anchor
    # Hand-checked periods of anchor 31 in the leap year, and anchor 30 in the common one.
    if year == 2024:
        assert billed[("a31", 1)][:2] == (utc(2024, 1, 31), utc(2024, 2, 29))
        assert billed[("a31", 2)][:2] == (utc(2024, 2, 29), utc(2024, 3, 31))
    else:
        assert billed[("a30", 1)][:2] == (utc(2023, 1, 30), utc(2023, 2, 28))
        assert billed[("a30", 2)][:2] == (utc(2023, 2, 28), utc(2023, 3, 30))


def test_an_organization_created_mid_period_pays_a_prorated_base_fee_and_minimum(plans, tmp_path) -> None:
    engine = plans
    with engine.begin() as conn:
        save_plans(conn, [TEAM])
        add_org(conn, "newco", created_at=utc(2024, 1, 17, 10, 32))
        set_plan(conn, "newco", "team")
        add_usage(conn, "newco", "api_calls", "100", utc(2024, 1, 20, 8))
        add_org(conn, "anchored", created_at=utc(2024, 1, 20, 15))  # period 15 Jan - 15 Feb: 26 of 31 days
        set_plan(conn, "anchored", "team")
        set_anchor(conn, "anchored", 15)
    result = invoice_month(engine.begin, options(JAN, utc(2024, 3, 1)))
    assert result.statuses == {"invoiced": 2}, result.failed
    with engine.connect() as conn:
        lines = {(r.organization_id, r.kind): (r.description, r.amount) for r in conn.execute(text(
            "SELECT i.organization_id, l.kind, l.description, l.amount FROM invoice_lines l "
            "JOIN invoices i ON i.id = l.invoice_id"))}
        totals = dict(conn.execute(text("SELECT organization_id, total FROM invoices")).all())
        newco = conn.execute(text("SELECT id FROM invoices WHERE organization_id = 'newco'")).scalar_one()
        document = load_document(conn, newco)
    # newco, 17-31 Jan = 15 of 31 days: base 10 × 15/31 = 4.838… -> 4.84; usage 100 × 0.01 = 1.00;
    # minimum 50 × 15/31 = 24.193…, top-up 24.193… - 5.84 = 18.353… -> 18.35; total 24.19.
    assert lines[("newco", "base_fee")] == ("Base fee, 17–31 Jan (15 of 31 days)", D("4.84"))
    assert lines[("newco", "usage")] == ("API calls", D("1.00"))
    assert lines[("newco", "minimum")] == ("Minimum commitment top-up (to 24.19 USD, 17–31 Jan (15 of 31 days))",
                                           D("18.35"))
    assert totals["newco"] == D("24.19")
    # anchored, 20 Jan - 14 Feb = 26 of 31 days: base 10 × 26/31 = 8.387… -> 8.39; no usage;
    # minimum 50 × 26/31 = 41.935…, top-up 41.935… - 8.39 = 33.545… -> 33.55; total 41.94.
    assert lines[("anchored", "base_fee")] == ("Base fee, 20 Jan – 14 Feb (26 of 31 days)", D("8.39"))
    assert lines[("anchored", "minimum")][1] == D("33.55")
    assert totals["anchored"] == D("41.94")
    pdf = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(render_invoice(document, SELLER))).pages)
    assert "Base fee, 17–31 Jan (15 of 31 days)" in pdf and "24.19" in pdf


def test_the_pdf_of_an_anchored_period_names_its_days(plans) -> None:
    engine = plans
    with engine.begin() as conn:
        org(conn, "mid", 15)
        add_usage(conn, "mid", "api_calls", "100", utc(2024, 2, 3, 4))
    invoice_month(engine.begin, options(JAN, utc(2024, 2, 16)))
    with engine.connect() as conn:
        document = load_document(conn, conn.execute(text("SELECT id FROM invoices")).scalar_one())
    pdf = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(render_invoice(document, SELLER))).pages)
    assert "15 Jan – 14 Feb 2024" in pdf and "INV-2024-01-000001" in pdf
    assert document.total == D("11.00")  # 10 + 100 × 0.01 (usage of 3 Feb is in this period)


def test_catch_up_after_three_missed_daily_runs_then_a_rerun_changes_nothing(plans) -> None:
    engine = plans
    with engine.begin() as conn:
        for anchor in (15, 16, 17, 20):
            org(conn, f"a{anchor}", anchor)
            add_usage(conn, f"a{anchor}", "api_calls", "100", utc(2024, 2, 1, 12))
    # The daily runs of 15, 16 and 17 February did not happen; 18 February's does.
    first = invoice_due(engine.begin, options(JAN, utc(2024, 2, 18, 2)))
    assert first.statuses == {"invoiced": 3} and first.not_due == 1  # a20's period ends on 20 Feb
    assert {o: [(n, s, p0, p1) for n, s, p0, p1, _ in rows] for o, rows in invoices(engine).items()} == {
        "a15": [("INV-2024-01-000001", "issued", utc(2024, 1, 15), utc(2024, 2, 15))],
        "a16": [("INV-2024-01-000002", "issued", utc(2024, 1, 16), utc(2024, 2, 16))],
        "a17": [("INV-2024-01-000003", "issued", utc(2024, 1, 17), utc(2024, 2, 17))],
    }
    with engine.connect() as conn:
        before = table_snapshot(conn, *TABLES)
    again = invoice_due(engine.begin, options(JAN, utc(2024, 2, 18, 3)))
    assert again.statuses == {"already_invoiced": 3} and again.not_due == 1
    with engine.connect() as conn:
        assert table_snapshot(conn, *TABLES) == before  # a rerun changes nothing
    later = invoice_due(engine.begin, options(JAN, utc(2024, 2, 21, 2)))
    assert later.statuses == {"already_invoiced": 3, "invoiced": 1} and later.not_due == 0
    assert invoices(engine)["a20"][0][:2] == ("INV-2024-01-000004", "issued")


def test_catch_up_across_the_turn_of_a_month(plans) -> None:
    """Anchor 31: the period 31 Jan - 29 Feb 2024 ends on 29 Feb. The runs of 29 Feb, 1 and 2 March
    were missed: the run of 3 March (previous month: February) catches January's period up."""
    engine = plans
    with engine.begin() as conn:
        org(conn, "a31", 31)
        org(conn, "calendar", None)
        add_usage(conn, "a31", "api_calls", "5", utc(2024, 2, 28, 23))
    result = invoice_due(engine.begin, options(FEB, utc(2024, 3, 3, 2)), catch_up=(JAN,))
    found = invoices(engine)
    assert [r[:4] for r in found["a31"]] == [("INV-2024-01-000001", "issued", utc(2024, 1, 31), utc(2024, 2, 29))]
    # The calendar organization had no January invoice either: January's is caught up first, then
    # February's is issued (an earlier period gets its own invoice before a later one could adjust it).
    assert [r[:4] for r in found["calendar"]] == [("INV-2024-01-000002", "issued", utc(2024, 1, 1), utc(2024, 2, 1)),
                                                  ("INV-2024-02-000001", "issued", utc(2024, 2, 1), utc(2024, 3, 1))]
    assert result.statuses == {"invoiced": 3} and result.not_due == 1 and result.ok  # a31's Feb period ends 31 Mar
    again = invoice_due(engine.begin, options(FEB, utc(2024, 3, 4, 2)), catch_up=(JAN,))
    assert again.statuses == {"already_invoiced": 1} and sum(len(rows) for rows in invoices(engine).values()) == 3


def test_four_shards_on_a_day_when_1000_organizations_with_mixed_anchors_are_due(plans) -> None:
    """29 Feb 2024: every period that started in January has ended (anchors 29, 30, 31 end today).
    Four shards at once invoice each organization once, with gapless numbers."""
    engine = plans
    anchors = [None, *range(1, 32)]
    with engine.begin() as conn:
        for n in range(1000):
            org_id = f"org-{n:04d}"
            anchor = anchors[n % len(anchors)]
            org(conn, org_id, anchor)
            start = billing_period(JAN, Anchor(anchor)).start
            add_usage(conn, org_id, "api_calls", str(n % 7 + 1), start)  # in its period's first hour
        org(conn, "org-tenth", 10)  # anchor 10: January's period ended 10 Feb, due too (no usage: the fee)
    results = [None] * 4

    def shard(index: int) -> None:
        results[index] = invoice_month(engine.begin, options(JAN, utc(2024, 2, 29, 1), shard=Shard(index, 4)))

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r is not None and r.ok for r in results)
    assert sum(r.statuses["invoiced"] for r in results) == 1001
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT organization_id, number, period_start, period_end, total FROM invoices "
                                 "WHERE status = 'issued'")).all()
    assert len({r.organization_id for r in rows}) == len(rows) == 1001  # each organization exactly once
    assert sorted(r.number for r in rows) == [f"INV-2024-01-{n:06d}" for n in range(1, 1002)]  # gapless
    for r in rows:
        if r.organization_id == "org-tenth":
            assert (r.period_start, r.period_end, r.total) == (utc(2024, 1, 10), utc(2024, 2, 10), D("10.00"))
            continue
        n = int(r.organization_id[4:])
        period = billing_period(JAN, Anchor(anchors[n % len(anchors)]))
        assert (r.period_start, r.period_end) == (period.start, period.end)
        assert r.total == D("10") + D(n % 7 + 1) * D("0.01")  # the fee + its usage, never another's


def test_month_bills_the_periods_that_start_in_it(plans, db_url) -> None:
    engine = plans
    with engine.begin() as conn:
        org(conn, "a15", 15)
        org(conn, "calendar", None)
        add_usage(conn, "a15", "api_calls", "100", utc(2024, 1, 10, 0))  # December's period (15 Dec - 15 Jan)
        add_usage(conn, "a15", "api_calls", "200", utc(2024, 2, 10, 0))  # January's (15 Jan - 15 Feb)
        add_usage(conn, "calendar", "api_calls", "300", utc(2024, 2, 10, 0))  # February
    run = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--json"], env={"DATABASE_URL": db_url})
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["counts"]["invoiced"] == 2
    feb = runner.invoke(app, ["invoice-monthly", "--month", "2024-02"], env={"DATABASE_URL": db_url})
    assert feb.exit_code == 0, feb.output
    found = invoices(engine)
    # January: a15's 15 Jan - 15 Feb (10 + 200 × 0.01 = 12.00), calendar's January (10.00).
    # February: a15's 15 Feb - 15 Mar (10.00), calendar's February (10 + 3.00 = 13.00).
    assert [(n, p0, p1, t) for n, _, p0, p1, t in found["a15"]] == [
        ("INV-2024-01-000001", utc(2024, 1, 15), utc(2024, 2, 15), D("12.00")),
        ("INV-2024-02-000001", utc(2024, 2, 15), utc(2024, 3, 15), D("10.00"))]
    assert [(n, p0, p1, t) for n, _, p0, p1, t in found["calendar"]] == [
        ("INV-2024-01-000002", utc(2024, 1, 1), utc(2024, 2, 1), D("10.00")),
        ("INV-2024-02-000002", utc(2024, 2, 1), utc(2024, 3, 1), D("13.00"))]


def test_an_anchor_change_waits_for_the_next_boundary_and_prorates_the_changed_period(plans) -> None:
    engine = plans
    with engine.begin() as conn:
        org(conn, "mover", 15)
    invoice_month(engine.begin, options(JAN, utc(2024, 2, 16)))
    with engine.begin() as conn:  # on 20 February, during the period 15 Feb - 15 Mar, the anchor becomes 1
        set_anchor(conn, "mover", 1, changed_at=utc(2024, 2, 20, 9))
    invoice_month(engine.begin, options(FEB, utc(2024, 3, 16)))
    invoice_month(engine.begin, options(MAR, utc(2024, 4, 2)))
    found = [(p0, p1, t) for _, _, p0, p1, t in invoices(engine)["mover"]]
    # 15 Feb - 15 Mar unchanged (10.00); then 15 Mar - 1 Apr, 17 of 31 days (a regular period is
    # 1 Mar - 1 Apr): 10 × 17/31 = 5.483… -> 5.48; then April is a calendar month again.
    assert found == [(utc(2024, 1, 15), utc(2024, 2, 15), D("10.00")),
                     (utc(2024, 2, 15), utc(2024, 3, 15), D("10.00")),
                     (utc(2024, 3, 15), utc(2024, 4, 1), D("5.48"))]
    invoice_month(engine.begin, options(Month(2024, 4), utc(2024, 5, 2)))
    assert [(p0, p1, t) for _, _, p0, p1, t in invoices(engine)["mover"]][-1] == (
        utc(2024, 4, 1), utc(2024, 5, 1), D("10.00"))


def test_regenerate_an_anchored_period(plans) -> None:
    engine = plans
    with engine.begin() as conn:
        org(conn, "a15", 15)
        add_usage(conn, "a15", "api_calls", "100", utc(2024, 1, 20, 0))
    invoice_month(engine.begin, options(JAN, utc(2024, 2, 16)))
    with engine.begin() as conn:  # a correction inside the period, in its February part
        add_usage(conn, "a15", "api_calls", "400", utc(2024, 2, 14, 23))
    result = invoice_month(engine.begin, options(JAN, utc(2024, 2, 20), organizations=("a15",), regenerate=True))
    assert result.statuses == {"invoiced": 1}, result.failed
    # The first: 10 + 1.00; the new one: 10 + 500 × 0.01 = 15.00, same period, the month's next number.
    assert invoices(engine)["a15"] == [
        ("INV-2024-01-000001", "void", utc(2024, 1, 15), utc(2024, 2, 15), D("11.00")),
        ("INV-2024-01-000002", "issued", utc(2024, 1, 15), utc(2024, 2, 15), D("15.00"))]


def test_the_dry_run_equals_the_real_run(plans) -> None:
    engine = plans
    with engine.begin() as conn:
        for anchor in (None, 1, 15, 31):
            org(conn, f"a{anchor}", anchor)
            add_usage(conn, f"a{anchor}", "api_calls", "1234", utc(2024, 1, 31, 5))
        org(conn, "young", 15, created_at=utc(2024, 1, 25))
    due = utc(2024, 2, 29, 1)
    with engine.connect() as conn:
        before = table_snapshot(conn, *TABLES)
    dry = invoice_month(engine.begin, options(JAN, due, dry_run=True, keep_plan=True))
    with engine.connect() as conn:
        assert table_snapshot(conn, *TABLES) == before  # a dry run writes nothing
    real = invoice_month(engine.begin, options(JAN, due, keep_plan=True))
    planned = {o.organization_id: (o.number, o.total, o.period) for o in dry.plan or []}
    done = {o.organization_id: (o.number, o.total, o.period) for o in real.plan or []}
    assert planned == done and len(done) == 5
    stored = {o: (rows[0][0], rows[0][4]) for o, rows in invoices(engine).items()}
    assert stored == {o: (number, total) for o, (number, total, _) in done.items()}
    # young: 25 Jan - 14 Feb, 21 of 31 days: 10 × 21/31 = 6.774… -> 6.77.
    assert stored["young"][1] == D("6.77")


def test_a_period_not_ended_is_left_for_a_later_run_unless_forced(plans) -> None:
    engine = plans
    with engine.begin() as conn:
        org(conn, "a15", 15)
    early = invoice_month(engine.begin, options(JAN, utc(2024, 2, 10)))
    assert early.organizations_found == 0 and early.not_due == 1 and invoices(engine) == {}
    forced = invoice_month(engine.begin, replace(options(JAN, None), issue_date=date(2024, 2, 10)))
    assert forced.statuses == {"invoiced": 1}


def test_a_plan_change_takes_effect_at_the_next_period_boundary_unless_given_a_time(plans, db_url, tmp_path) -> None:
    engine = plans
    with engine.begin() as conn:
        org(conn, "calendar", None)
        org(conn, "a15", 15)
    dearer = tmp_path / "plans.toml"
    dearer.write_text(PLANS.replace("base_fee = 10", "base_fee = 20"))
    # Applied now (December 2026): every period of 2024 started before, so keeps the fee of 10.
    applied = runner.invoke(app, ["plans", "apply", str(dearer)], env={"DATABASE_URL": db_url})
    assert applied.exit_code == 0, applied.output
    invoice_month(engine.begin, options(JAN, utc(2024, 3, 1)))
    assert {o: rows[-1][4] for o, rows in invoices(engine).items()} == {"calendar": D("10.00"), "a15": D("10.00")}
    # In force from 1 February 2024: periods starting from then pay 20, 15 Jan - 14 Feb still 10.
    cheaper_then_dearer = runner.invoke(app, ["plans", "apply", str(dearer), "--effective", "2024-02-01"],
                                        env={"DATABASE_URL": db_url})
    assert cheaper_then_dearer.exit_code == 0, cheaper_then_dearer.output
    invoice_month(engine.begin, options(FEB, utc(2024, 4, 1)))
    assert {o: [r[4] for r in rows] for o, rows in invoices(engine).items()} == {
        "calendar": [D("10.00"), D("20.00")], "a15": [D("10.00"), D("20.00")]}
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT effective_from, snapshot->>'base_fee' FROM price_plan_versions "
                                     "WHERE plan_id = 'pro' ORDER BY effective_from")).all()
    assert [(v[0].year, v[1]) for v in versions][:2] == [(1970, "10"), (2024, "20")]
    assert versions[-1][0].year == 2026 and len(versions) == 3  # the first apply: from when it was applied
    bad = runner.invoke(app, ["plans", "apply", str(dearer), "--effective", "March"], env={"DATABASE_URL": db_url})
    assert bad.exit_code == 2 and "--effective 'March' is not an hour" in bad.output


def test_reconcile_compares_an_anchored_period_with_what_its_invoice_billed(plans, db_url) -> None:
    engine = plans
    with engine.begin() as conn:
        org(conn, "a15", 15)
        for n, at in enumerate((utc(2024, 1, 10, 8), utc(2024, 1, 20, 8), utc(2024, 2, 3, 8), utc(2024, 2, 20, 8))):
            add_event(conn, "a15", "api_calls", "100", at, key=f"e{n}")
    rolled = runner.invoke(app, ["aggregate-hourly", "--from", "2024-01-01T00", "--to", "2024-02-29T23"],
                           env={"DATABASE_URL": db_url})
    assert rolled.exit_code == 0, rolled.output
    result = invoice_month(engine.begin, options(JAN, utc(2024, 3, 1)))
    assert result.statuses == {"invoiced": 1}
    # 15 Jan - 14 Feb: 10 + (20 Jan, 3 Feb) 200 × 0.01 = 12.00; and the period before, 15 Dec - 14 Jan,
    # never invoiced, is adjusted on it (like any earlier month's unbilled usage): its fee 10 and the
    # 100 calls of 10 Jan, 1.00: 23.00.
    assert invoices(engine)["a15"][0][4] == D("23.00")
    with engine.connect() as conn:
        lines = [tuple(r) for r in conn.execute(text("SELECT description, amount FROM invoice_lines ORDER BY line_no"))]
    assert lines == [("Pro plan, monthly fee", D("10.00")), ("API calls: units 1 to 1,000", D("2.00")),
                     ("Adjustment for 15 Dec 2023 – 14 Jan 2024: API calls, +100 units (100 in all)", D("1.00")),
                     ("Adjustment for 15 Dec 2023 – 14 Jan 2024: Pro plan, monthly fee", D("10.00"))]
    for month in ("2024-01", "2023-12"):  # each period: events, roll-up and invoices agree
        check = runner.invoke(app, ["reconcile", "--month", month, "--json"], env={"DATABASE_URL": db_url})
        assert check.exit_code == 0, check.output
        assert json.loads(check.stdout)["counts"]["differences"] == 0


def test_the_run_output_names_an_anchored_period(plans, db_url) -> None:
    engine = plans
    with engine.begin() as conn:
        org(conn, "a15", 15)
        org(conn, "calendar", None)
    plain = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--plain", "--dry-run"],
                          env={"DATABASE_URL": db_url})
    assert plain.exit_code == 0, plain.output
    lines = {line.split()[1]: line for line in plain.output.splitlines() if line.startswith("organization ")}
    assert "period_start=2024-01-15T00:00:00Z period_end=2024-02-15T00:00:00Z" in lines["id=a15"]
    assert "period_start" not in lines["id=calendar"]  # calendar months print as before


def test_an_anchor_day_outside_1_to_31_is_refused_by_the_database(plans) -> None:
    from sqlalchemy.exc import IntegrityError

    with plans.begin() as conn:
        org(conn, "odd", None)
    for day in (0, 32):
        with pytest.raises(IntegrityError, match="ck_organizations_billing_anchor_day"), plans.begin() as conn:
            conn.execute(text("UPDATE organizations SET billing_anchor_day = :d WHERE id = 'odd'"), {"d": day})


def test_a_period_that_cannot_be_computed_fails_that_organization_alone() -> None:
    from billing_cli.db.usage_store import OrganizationRow
    from billing_cli.jobs.invoicing import PlanRules, plan_organization

    pro = parse_plans(PLANS)[0]
    broken = OrganizationRow("broken", "Broken", "b@example.com", "USD", "pro", period_problem=(
        "billing anchor day 40 is not a day of the month: set organizations.billing_anchor_day to 1..31, or NULL "
        "for calendar months"))
    fine = OrganizationRow("fine", "Fine", "f@example.com", "USD", "pro")
    refused = plan_organization(broken, {}, {"pro": pro}, None, PlanRules(JAN))
    assert refused.action == "refuse" and "organizations.billing_anchor_day" in (refused.problem or "")
    assert plan_organization(fine, {}, {"pro": pro}, None, PlanRules(JAN)).action == "issue"


def test_legacy_run_keeps_process_month_calendar_months_and_periods_starting_in_it(plans, db_url, clean_env) -> None:
    engine = plans
    with engine.begin() as conn:
        org(conn, "a15", 15)
        org(conn, "calendar", None)
        add_usage(conn, "a15", "api_calls", "100", utc(2024, 2, 3, 0))  # in 15 Jan - 14 Feb
        add_usage(conn, "calendar", "api_calls", "100", utc(2024, 2, 3, 0))  # February: not January's
    run = runner.invoke(app, ["legacy-run", "--json"], env={"DATABASE_URL": db_url, "PROCESS_MONTH": "2024-01"})
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["counts"]["invoiced"] == 2
    found = invoices(engine)
    assert [(p0, p1, t) for _, _, p0, p1, t in found["a15"]] == [(utc(2024, 1, 15), utc(2024, 2, 15), D("11.00"))]
    assert [(p0, p1, t) for _, _, p0, p1, t in found["calendar"]] == [(utc(2024, 1, 1), utc(2024, 2, 1), D("10.00"))]


def churned_with_usage_in_february(engine) -> None:
    """gone15: anchor 15, inactive since 20 Dec 2023; its only usage, 300 calls on 3 Feb 2024, is in
    its period 15 Jan - 14 Feb."""
    with engine.begin() as conn:
        org(conn, "gone15", 15)
        conn.execute(text("UPDATE organizations SET status = 'inactive' WHERE id = 'gone15'"))
        conn.execute(text("UPDATE organizations SET status_changed_at = :t WHERE id = 'gone15'"),
                     {"t": utc(2023, 12, 20)})
        add_usage(conn, "gone15", "api_calls", "300", utc(2024, 2, 3, 0))


def test_a_churned_anchored_organization_gets_its_usage_of_the_next_month_part_of_its_period(plans) -> None:
    """Anchor 15, deactivated in December: its only usage, 3 February, is in 15 Jan - 14 Feb. The
    January run bills it (usage only: no fee for a period it was inactive in)."""
    engine = plans
    churned_with_usage_in_february(engine)
    result = invoice_month(engine.begin, options(JAN, utc(2024, 3, 1)))
    assert result.organizations_found == 1 and result.statuses == {"invoiced": 1}, result.failed
    assert [(p0, p1, t) for _, _, p0, p1, t in invoices(engine)["gone15"]] == [
        (utc(2024, 1, 15), utc(2024, 2, 15), D("3.00"))]  # 300 × 0.01, no fee


def test_reconcile_owes_nothing_for_an_anchored_period_that_began_after_the_organization_left(engine) -> None:
    """Anchor 15, deactivated 10 Jan 2024: its last period is 15 Dec - 14 Jan (named December). The
    period starting in January (15 Jan - 14 Feb) owes no fee and has no usage: nothing is billed,
    and reconcile must not call January's fee unbilled (a mismatch that would never clear, and
    would keep `billing usage prune` from dropping January)."""
    from billing_cli.db import reconcile_store

    with engine.begin() as conn:
        save_plans(conn, parse_plans(PLANS))
        add_org(conn, "anch", created_at=utc(2023, 1, 1))
        set_plan(conn, "anch", "pro")
        conn.execute(text("UPDATE organizations SET billing_anchor_day = 15 WHERE id = 'anch'"))
        conn.execute(text("UPDATE organizations SET billing_anchor_previous = NULL, billing_anchor_changed_at = NULL,"
                          " status = 'inactive' WHERE id = 'anch'"))
        conn.execute(text("UPDATE organizations SET status_changed_at = :t WHERE id = 'anch'"), {"t": utc(2024, 1, 10)})
        add_usage(conn, "anch", "api_calls", "5", utc(2024, 1, 5, 10))
    for month in (Month(2023, 12), JAN):
        result = invoice_month(engine.begin, InvoiceOptions(month=month, issue_date=date(2024, 3, 1), seller=SELLER,
                                                            due_by=utc(2024, 3, 1)))
        assert not result.failed, result.failed
    with engine.connect() as conn:
        months = conn.execute(text("SELECT billing_month FROM invoices WHERE status <> 'void'")).scalars().all()
        assert months == [date(2023, 12, 1)]
        assert reconcile_store.owed_fees_not_invoiced(conn, JAN, None) == []
        assert reconcile_store.owed_fees_not_invoiced(conn, Month(2023, 12), None) == []


def test_a_voided_month_is_billed_again_on_its_own_invoice_at_its_own_plan_version(engine) -> None:
    """Plan pro: 0.01 per call until 1 Feb 2024, 0.02 from then. January (100 calls: 10.00 + 1.00)
    is invoiced, then voided by hand. The daily run of 1 March catches January up first, on an
    invoice of its own at January's version (11.00 again), then bills February at February's
    (10.00 + 2.00), with no adjustment and no credit."""
    from billing_cli.db import invoice_store

    with engine.begin() as conn:
        save_plans(conn, parse_plans(PLANS))
        save_plans(conn, parse_plans(PLANS.replace("unit_price = 0.01", "unit_price = 0.02")),
                   effective=utc(2024, 2, 1))
        add_org(conn, "cal", created_at=utc(2023, 1, 1))
        set_plan(conn, "cal", "pro")
        add_usage(conn, "cal", "api_calls", "100", utc(2024, 1, 10, 10))
        add_usage(conn, "cal", "api_calls", "100", utc(2024, 2, 10, 10))
        conn.execute(text("INSERT INTO usage_revisions (organization_id, period_start, revised_at) VALUES "
                          "('cal', '2024-01-01', now()), ('cal', '2024-02-01', now())"))
    first = invoice_month(engine.begin, InvoiceOptions(month=JAN, issue_date=date(2024, 2, 1), seller=SELLER,
                                                       due_by=utc(2024, 2, 1)))
    assert not first.failed
    with engine.begin() as conn:
        jan_id = conn.execute(text("SELECT id FROM invoices WHERE billing_month = '2024-01-01'")).scalar_one()
        invoice_store.void_invoice(conn, jan_id, "wrong address", organization_id="cal")

    invoice_due(engine.begin, InvoiceOptions(month=FEB, issue_date=date(2024, 3, 1), seller=SELLER,
                                             due_by=utc(2024, 3, 1)), catch_up=(JAN,))

    with engine.connect() as conn:
        live = conn.execute(text("SELECT number, billing_month, total FROM invoices WHERE status <> 'void' "
                                 "ORDER BY number")).all()
        descriptions = conn.execute(text("SELECT l.description FROM invoice_lines l JOIN invoices i "
                                         "ON i.id = l.invoice_id WHERE i.status <> 'void'")).scalars().all()
    assert [(r.billing_month, r.total) for r in live] == [(date(2024, 1, 1), D("11.00")),
                                                          (date(2024, 2, 1), D("12.00"))]
    assert not [d for d in descriptions if d.startswith(("Adjustment", "Credit"))], descriptions


def test_a_catch_up_pass_adds_its_tax_to_the_run_summary() -> None:
    from billing_cli.jobs.invoicing.results import InvoiceRunResult, OrgOutcome
    from billing_cli.outcomes import OrgStatus

    run, catch_up = InvoiceRunResult(month=FEB, dry_run=False), InvoiceRunResult(month=JAN, dry_run=False)
    catch_up.add(OrgOutcome("o1", "O1", status=OrgStatus.INVOICED, currency="EUR", total=D("119.00"), tax=D("19.00")))
    run.absorb(catch_up)
    summary = run.summary()
    assert (summary.revenue, summary.tax) == ({"EUR": "119.00"}, {"EUR": "19.00"})


def test_the_daily_run_catches_up_as_far_back_as_late_usage_is_billed(plans) -> None:
    """The daily run of 2 April 2024 with LATE_USAGE_MONTHS=3 (the default) catches up December,
    January and February, oldest first, before March: an organization whose runs were all missed
    gets one invoice per month, each its own (no adjustments), in order; a rerun changes nothing.
    With LATE_USAGE_MONTHS=0 the run still catches up the month before."""
    from billing_cli.config import load_settings
    from billing_cli.runs.invoicing import InvoiceRequest, catch_up_months

    unused = {"DATABASE_URL": "postgresql://localhost/unused"}
    settings = load_settings(unused, env_file=Path("/dev/null"))
    zero = load_settings({**unused, "LATE_USAGE_MONTHS": "0"}, env_file=Path("/dev/null"))
    daily, explicit = InvoiceRequest(), InvoiceRequest(month="2024-03")
    march = options(MAR, utc(2024, 4, 2))
    assert catch_up_months(None, daily, settings, march) == (Month(2023, 12), JAN, FEB)
    assert catch_up_months(None, daily, zero, march) == (FEB,)
    assert catch_up_months(None, explicit, settings, march) == ()

    engine = plans
    with engine.begin() as conn:
        org(conn, "missed", None)
        for month in (JAN, FEB, MAR):
            add_usage(conn, "missed", "api_calls", "100", month.start + HOUR * 10)
    run = lambda: invoice_due(engine.begin, march, catch_up=catch_up_months(None, daily, settings, march))  # noqa: E731

    first = run()

    with engine.connect() as conn:
        issued = conn.execute(text("SELECT number, billing_month, total FROM invoices ORDER BY id")).all()
        adjustments = conn.execute(text("SELECT count(*) FROM invoice_lines WHERE description LIKE 'Adjustment%'"
                                        )).scalar_one()
    # December: the base fee only (created long before, no usage); then 10.00 + 100 x 0.01 each month.
    assert [(r.number, r.billing_month, r.total) for r in issued] == [
        ("INV-2023-12-000001", date(2023, 12, 1), D("10.00")), ("INV-2024-01-000001", date(2024, 1, 1), D("11.00")),
        ("INV-2024-02-000001", date(2024, 2, 1), D("11.00")), ("INV-2024-03-000001", date(2024, 3, 1), D("11.00"))]
    assert adjustments == 0 and first.statuses == {"invoiced": 4}
    again = run()
    assert again.statuses == {"already_invoiced": 1}


def test_a_catch_up_pass_bills_a_churned_anchored_organization_with_usage_only_in_the_next_month_part(plans) -> None:
    """Anchor 15, deactivated in December: its only usage, 3 February, is in 15 Jan - 14 Feb. The
    daily runs of 15 to 29 February were missed: the run of 1 March (month February) catches
    January up, and its period 15 Jan - 14 Feb gets its own invoice (usage only, no fee)."""
    engine = plans
    churned_with_usage_in_february(engine)
    result = invoice_due(engine.begin, options(FEB, utc(2024, 3, 1, 2)), catch_up=(JAN,))
    assert result.statuses == {"invoiced": 1}, (result.statuses, result.failed)
    assert [(n, p0, p1, t) for n, _, p0, p1, t in invoices(engine)["gone15"]] == [
        ("INV-2024-01-000001", utc(2024, 1, 15), utc(2024, 2, 15), D("3.00"))]  # 300 × 0.01, no fee


# A late hour after an anchor change raises the revision of the period that holds it (the roll-up's
# `revised` CTE), the period anchors.billing_period computes from the previous invoice's end.

def _setup_anchor_change(engine) -> None:
    """`mover`: calendar months until 20 January 2024, when its anchor becomes the 15th, so its
    periods are 1 Jan - 1 Feb, then 1 Feb - 15 Mar (the changed one), then 15 Mar - 15 Apr.
    `steady`: calendar months throughout (the control)."""
    with engine.begin() as conn:
        for org_id in ("mover", "steady"):
            org(conn, org_id, None)
        set_anchor(conn, "mover", 15, changed_at=utc(2024, 1, 20, 9))
        conn.execute(text("UPDATE organizations SET billing_anchor_previous = NULL WHERE id = 'mover'"))
    anchor = Anchor(15, None, utc(2024, 1, 20, 9))
    assert billing_period(FEB, anchor, previous_end=utc(2024, 2, 1)).start == utc(2024, 2, 1)
    assert billing_period(FEB, anchor, previous_end=utc(2024, 2, 1)).end == utc(2024, 3, 15)


def test_a_late_hour_of_the_period_after_an_anchor_change_raises_that_period_not_the_month_before(plans) -> None:
    engine = plans
    _setup_anchor_change(engine)
    invoice_month(engine.begin, options(JAN, utc(2024, 2, 2)))  # mover: 1 Jan - 1 Feb, like steady
    feb5 = utc(2024, 2, 5, 10)
    with engine.begin() as conn:
        add_event(conn, "mover", "api_calls", "50", feb5)
    aggregate_one_hour(engine.begin, feb5)
    with engine.connect() as conn:
        revised = [r.period_start for r in conn.execute(text(
            "SELECT period_start FROM usage_revisions WHERE organization_id = 'mover'"))]
    # 5 February is in the period 1 Feb - 15 Mar (billing month February), as anchors.py computes it,
    # not in January's (today's anchor day alone would say so: 5 < 15).
    assert revised == [FEB.first_day], revised


class _LateEventWhileIssuing:
    """The organization locks of a run (runs/lifecycle.py): here, just before each named organization
    is issued (its usage read already), a late event of 5 February arrives and aggregate-hourly rolls
    its hour up, as it may at any moment of a run."""

    def __init__(self, engine, organizations: set[str]) -> None:
        self.engine, self.pending = engine, set(organizations)

    def check(self) -> None:
        return None

    @contextmanager
    def hold(self, organization_id: str):
        if organization_id in self.pending:
            self.pending.discard(organization_id)
            with self.engine.begin() as conn:
                add_event(conn, organization_id, "api_calls", "50", utc(2024, 2, 5, 10))
            aggregate_one_hour(self.engine.begin, utc(2024, 2, 5, 10))
        yield True


def test_an_hour_rolled_up_while_the_changed_period_is_invoiced_is_billed_later(plans) -> None:
    engine = plans
    _setup_anchor_change(engine)
    invoice_month(engine.begin, options(JAN, utc(2024, 2, 2)))
    with engine.begin() as conn:
        for org_id in ("mover", "steady"):
            add_event(conn, org_id, "api_calls", "100", utc(2024, 2, 3, 10))
    aggregate_one_hour(engine.begin, utc(2024, 2, 3, 10))
    # February: steady's calendar month (due 1 Mar), mover's 1 Feb - 15 Mar (due 15 Mar).
    invoice_month(engine.begin, options(FEB, utc(2024, 3, 16),
                                        locks=_LateEventWhileIssuing(engine, {"mover", "steady"})))
    # March: both adjust February by the 50 units their February invoice did not see.
    invoice_month(engine.begin, options(MAR, utc(2024, 4, 16)))
    with engine.connect() as conn:
        billed = dict(conn.execute(text(
            "SELECT i.organization_id, sum(u.quantity) FROM invoice_usage u JOIN invoices i ON i.id = u.invoice_id "
            "WHERE i.status <> 'void' AND u.period_start = '2024-02-01' GROUP BY 1")).all())
    assert billed["steady"] == D(150)  # the revision mechanism works for a calendar month
    assert billed["mover"] == D(150), billed  # the 50 units of 5 February are billed on March's invoice


# (organization, anchor day before the change, anchor day now, when it changed): calendar months,
# anchors that never changed, and changes before, on and after a month's first day, to and from
# calendar months, to shorter and longer periods, with days that February 2024 does not have.
ROUTED = [("cal", None, None, None), ("a15", None, 15, None), ("a31", None, 31, None),
          ("none_15", None, 15, utc(2024, 1, 20, 9)), ("15_1", 15, 1, utc(2024, 2, 20, 9)),
          ("none_20", None, 20, utc(2024, 1, 10)), ("15_none", 15, None, utc(2024, 1, 10)),
          ("31_30", 31, 30, utc(2024, 2, 10)), ("10_20", 10, 20, utc(2024, 1, 5)),
          ("20_10", 20, 10, utc(2024, 1, 25)), ("none_31", None, 31, utc(2024, 2, 1)),
          ("28_5", 28, 5, utc(2024, 3, 3)), ("5_28", 5, 28, utc(2023, 12, 31, 23))]


@pytest.mark.parametrize("invoiced", [(), (Month(2023, 12), JAN), (Month(2023, 12), JAN, FEB)],
                         ids=["nothing_invoiced", "invoiced_to_january", "invoiced_to_february"])
def test_a_changed_hour_raises_the_revision_of_the_billing_month_whose_period_holds_it(plans, invoiced) -> None:
    """Every day from December to April, for each way an anchor can be or change: the roll-up's
    routing (the `revised` CTE) names the billing month anchors.billing_period gives the period
    holding the day (its live invoice's, else computed from the end of the live invoice before it)."""
    engine = plans
    with engine.begin() as conn:
        for org_id, previous, day, changed_at in ROUTED:
            org(conn, org_id, None)
            conn.execute(text("UPDATE organizations SET billing_anchor_day = :d WHERE id = :o"), {"d": day, "o": org_id})
            conn.execute(text("UPDATE organizations SET billing_anchor_previous = :p, billing_anchor_changed_at = :t "
                              "WHERE id = :o"), {"p": previous, "t": changed_at, "o": org_id})
    for month in invoiced:
        result = invoice_month(engine.begin, options(month, utc(2024, 6, 1)))
        assert result.statuses == {"invoiced": len(ROUTED)}, (result.statuses, result.failed)
    with engine.connect() as conn:
        live = {(r.organization_id, Month.containing_date(r.billing_month)): (r.period_start, r.period_end)
                for r in conn.execute(text("SELECT organization_id, billing_month, period_start, period_end "
                                           "FROM invoices WHERE status <> 'void'"))}

    def holding(org_id: str, anchor: Anchor, at: datetime) -> Month:
        before = Month.containing(at).prev()
        if (org_id, before) in live:
            end = live[(org_id, before)][1]
        else:
            previous = live.get((org_id, before.prev()))
            end = billing_period(before, anchor, previous_end=previous[1] if previous else None).end
        return before if at < end else Month.containing(at)

    wrong = []
    at = utc(2023, 12, 1, 10)
    while at < utc(2024, 5, 1):
        with engine.begin() as conn:
            for org_id, *_ in ROUTED:
                add_event(conn, org_id, "api_calls", "1", at)
        aggregate_one_hour(engine.begin, at)
        with engine.connect() as conn:
            routed = dict(conn.execute(text("SELECT organization_id, period_start FROM usage_revisions "
                                            "WHERE revised_at = (SELECT max(revised_at) FROM usage_revisions)")).all())
        for org_id, previous, day, changed_at in ROUTED:
            expected = holding(org_id, Anchor(day, previous, changed_at), at)
            if routed.get(org_id) != expected.first_day:
                wrong.append((org_id, f"{at:%Y-%m-%d}", str(routed.get(org_id)), str(expected)))
        at += HOUR * 24
    assert not wrong, wrong


def test_an_anchor_change_after_a_period_with_nothing_to_bill_leaves_no_day_unbilled(plans) -> None:
    """Plan euro (no base fee, 0.10 EUR a call): calendar months until 10 January 2024, when the
    anchor becomes the 20th. January has no usage (nothing to bill, so no invoice); the next period
    runs 1 Feb - 20 Mar all the same, and the 100 calls of 5 February are billed on it (10.00 EUR)."""
    engine = plans
    with engine.begin() as conn:
        add_org(conn, "quiet", currency="EUR")
        set_plan(conn, "quiet", "euro")
        set_anchor(conn, "quiet", 20, changed_at=utc(2024, 1, 10))
        add_usage(conn, "quiet", "api_calls", "100", utc(2024, 2, 5, 10))
    january = invoice_month(engine.begin, options(JAN, utc(2024, 2, 2)))
    assert january.statuses == {"nothing_to_bill": 1}, january.statuses
    for month, due in ((FEB, utc(2024, 3, 21)), (MAR, utc(2024, 4, 21))):
        result = invoice_month(engine.begin, options(month, due))
        assert not result.failed, result.failed
    assert [(p0, p1, t) for _, _, p0, p1, t in invoices(engine)["quiet"]] == [
        (utc(2024, 2, 1), utc(2024, 3, 20), D("10.00"))]


def test_two_anchor_changes_within_one_period_act_as_one_from_the_anchor_it_started_with(plans) -> None:
    """docs/plans.md: "two changes within one period act as one, from the anchor the period started
    with to the latest". Anchor 15; during 15 Feb - 15 Mar it becomes 20, then 25 (the account
    service's UPDATEs, recorded by the trigger): February's period keeps its end, 15 March (10.00);
    then 15 Mar - 25 Apr, 41 of 31 days (a regular period is 25 Mar - 25 Apr): 10 × 41/31 = 13.225… -> 13.23."""
    engine = plans
    with engine.begin() as conn:
        org(conn, "twice", 15)
    invoice_month(engine.begin, options(JAN, utc(2024, 2, 16)))
    with engine.begin() as conn:
        conn.execute(text("UPDATE organizations SET billing_anchor_day = 20 WHERE id = 'twice'"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE organizations SET billing_anchor_day = 25 WHERE id = 'twice'"))
        # Both changes on 20 February 2024, in the test's calendar (the trigger stamps now()).
        conn.execute(text("UPDATE organizations SET billing_anchor_changed_at = :t WHERE id = 'twice'"),
                     {"t": utc(2024, 2, 20, 9)})
    invoice_month(engine.begin, options(FEB, utc(2024, 4, 30)))
    invoice_month(engine.begin, options(MAR, utc(2024, 4, 30)))
    assert [(p0, p1, t) for _, _, p0, p1, t in invoices(engine)["twice"]] == [
        (utc(2024, 1, 15), utc(2024, 2, 15), D("10.00")),
        (utc(2024, 2, 15), utc(2024, 3, 15), D("10.00")),
        (utc(2024, 3, 15), utc(2024, 4, 25), D("13.23"))]


def test_the_anchor_trigger_keeps_the_anchor_the_period_under_way_started_with(plans) -> None:
    engine = plans

    def anchor(day: int | None) -> tuple:
        with engine.begin() as conn:
            conn.execute(text("UPDATE organizations SET billing_anchor_day = :d WHERE id = 'o'"), {"d": day})
            return tuple(conn.execute(text("SELECT billing_anchor_previous, billing_anchor_day FROM organizations "
                                           "WHERE id = 'o'")).one())

    with engine.begin() as conn:
        org(conn, "o", 15)
    assert anchor(20) == (15, 20)
    assert anchor(25) == (15, 25)  # the change to 20 never took effect: still from 15
    with engine.begin() as conn:  # the change was made on 20 Feb 2024: it took effect on 15 March
        conn.execute(text("UPDATE organizations SET billing_anchor_changed_at = :t WHERE id = 'o'"),
                     {"t": utc(2024, 2, 20, 9)})
    assert anchor(5) == (25, 5)
    # Calendar months, an anchor, and calendar months again before the 1st: never anchored at all.
    with engine.begin() as conn:
        org(conn, "cal", None)
        conn.execute(text("UPDATE organizations SET billing_anchor_day = 20 WHERE id = 'cal'"))
        conn.execute(text("UPDATE organizations SET billing_anchor_day = NULL WHERE id = 'cal'"))
        row = conn.execute(text("SELECT billing_anchor_previous, billing_anchor_day FROM organizations "
                                "WHERE id = 'cal'")).one()
    assert tuple(row) == (None, None)


def test_a_churned_organization_back_on_calendar_months_gets_its_usage_of_the_last_anchored_period(plans) -> None:
    """gone15 (anchor 15, inactive since 20 Dec 2023) is put back on calendar months on 20 January,
    during 15 Jan - 14 Feb, which keeps its end: its usage of 3 February is that period's, billed by
    the January run like any churned anchored organization's (300 × 0.01, no fee)."""
    engine = plans
    churned_with_usage_in_february(engine)
    with engine.begin() as conn:
        set_anchor(conn, "gone15", None, changed_at=utc(2024, 1, 20, 9))
    result = invoice_month(engine.begin, options(JAN, utc(2024, 3, 1)))
    assert result.statuses == {"invoiced": 1}, (result.statuses, result.failed)
    assert [(p0, p1, t) for _, _, p0, p1, t in invoices(engine)["gone15"]] == [
        (utc(2024, 1, 15), utc(2024, 2, 15), D("3.00"))]


def test_a_price_change_scheduled_for_later_is_cancelled_by_applying_the_plan_again(plans, db_url, tmp_path) -> None:
    """An operator schedules a raise of the base fee (10 -> 20) from the 1st of next month, then
    changes their mind and applies the old file again before then: `plans list` shows 10, and the
    periods starting next month are billed 10, not the raise that was cancelled."""
    from billing_cli.periods import utc_now

    engine = plans
    with engine.begin() as conn:
        org(conn, "calendar", None)
    later = Month.containing(utc_now()).next()
    dearer, cheaper = tmp_path / "dearer.toml", tmp_path / "plans.toml"
    dearer.write_text(PLANS.replace("base_fee = 10", "base_fee = 20"))
    cheaper.write_text(PLANS)
    for command in (["plans", "apply", str(dearer), "--effective", later.start.strftime("%Y-%m-%d")],
                    ["plans", "apply", str(cheaper)]):
        applied = runner.invoke(app, command, env={"DATABASE_URL": db_url})
        assert applied.exit_code == 0, applied.output
    listed = runner.invoke(app, ["plans", "list", "--json"], env={"DATABASE_URL": db_url})
    assert [p["base_fee"] for p in json.loads(listed.stdout) if p["id"] == "pro"] == ["10"]
    result = invoice_month(engine.begin, replace(options(later, None), issue_date=later.end.date()))
    assert result.statuses == {"invoiced": 1}, result.failed
    assert invoices(engine)["calendar"][0][4] == D("10.00")


def test_the_summary_says_a_period_is_not_due_yet(plans, db_url, monkeypatch) -> None:
    """docs/operations.md: periods not ended yet are counted (`not_due=` in the summary). An operator
    invoicing one anchored organization on 10 February 2024, whose period 15 Jan - 14 Feb has not
    ended, reads why nothing was done."""
    import billing_cli.runs.invoicing

    monkeypatch.setattr(billing_cli.runs.invoicing, "utc_now", lambda: utc(2024, 2, 10, 6))
    with plans.begin() as conn:
        org(conn, "a15", 15)
    plain = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--org", "a15", "--plain"],
                          env={"DATABASE_URL": db_url})
    assert plain.exit_code == 0, plain.output
    summary = next(line for line in plain.output.splitlines() if line.startswith("summary "))
    assert " found=0 " in summary and " not_due=1 " in summary
    rich = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--org", "a15", "--rich"],
                         env={"DATABASE_URL": db_url, "COLUMNS": "200"})
    assert rich.exit_code == 0, rich.output
    assert "Not due yet (period not ended)" in rich.output


def test_an_invoiced_period_keeps_its_days_when_regenerated_after_a_later_anchor_change(plans) -> None:
    """Anchor 15, changed to 1 on 20 February: 15 Feb - 14 Mar (100 calls on 5 March: 11.00), then
    15 - 31 Mar. On 10 April the anchor changes again, to 20. Regenerating February's invoice bills
    the same period as the invoice it replaces, 15 Feb - 14 Mar (11.00), whatever the anchor is now
    (its live invoice's days, and the change in force then)."""
    engine = plans
    with engine.begin() as conn:
        org(conn, "mover", 15)
        add_usage(conn, "mover", "api_calls", "100", utc(2024, 3, 5, 10))
    invoice_month(engine.begin, options(JAN, utc(2024, 2, 16)))
    with engine.begin() as conn:
        set_anchor(conn, "mover", 1, changed_at=utc(2024, 2, 20, 9))
    invoice_month(engine.begin, options(FEB, utc(2024, 3, 16)))
    invoice_month(engine.begin, options(MAR, utc(2024, 4, 2)))
    with engine.begin() as conn:
        set_anchor(conn, "mover", 20, changed_at=utc(2024, 4, 10, 9))
    result = invoice_month(engine.begin, options(FEB, utc(2024, 4, 11), organizations=("mover",), regenerate=True))
    assert result.statuses == {"invoiced": 1}, (result.statuses, result.failed)
    assert [(s, p0, p1, t) for _, s, p0, p1, t in invoices(engine)["mover"]][1:] == [
        ("void", utc(2024, 2, 15), utc(2024, 3, 15), D("11.00")),
        ("issued", utc(2024, 3, 15), utc(2024, 4, 1), D("5.48")),
        ("issued", utc(2024, 2, 15), utc(2024, 3, 15), D("11.00"))]


def test_the_trigger_keeps_every_anchor_change_and_each_period_its_own(plans) -> None:
    """The account service changes the anchor three times (15 -> 1 -> 20 -> 10, dated as in
    test_anchors.THREE_CHANGES): anchor_changes holds the three, and the periods computed from the
    database, with nothing invoiced, are those each anchor in force gives. Two changes in a row now
    (within one period) are one change; no change known clears the history."""
    from billing_cli.db import period_store
    from tests.test_anchors import THREE_CHANGES_PERIODS

    engine = plans
    with engine.begin() as conn:
        org(conn, "mover", 15)
        for day, at in ((1, utc(2024, 2, 20, 9)), (20, utc(2024, 4, 10, 9)), (10, utc(2024, 6, 3))):
            set_anchor(conn, "mover", day, changed_at=at)
        assert conn.execute(text("SELECT changed_at, anchor_before, anchor_after FROM anchor_changes "
                                 "WHERE organization_id = 'mover' ORDER BY 1")).all() == [
            (utc(2024, 2, 20, 9), 15, 1), (utc(2024, 4, 10, 9), 1, 20), (utc(2024, 6, 3), 20, 10)]
        computed = {}
        for month in THREE_CHANGES_PERIODS:
            period = period_store.anchored_periods(conn, Month(2024, month)).periods.get(
                "mover", BillingPeriod.calendar(Month(2024, month)))  # April's is the calendar month
            computed[month] = (period.start, period.end, period.regular_start)
        assert computed == THREE_CHANGES_PERIODS

        org(conn, "twice", 15)
        for day in (1, 20):  # both today: the second replaces the first (0019)
            conn.execute(text("UPDATE organizations SET billing_anchor_day = :d WHERE id = 'twice'"), {"d": day})
        assert conn.execute(text("SELECT anchor_before, anchor_after FROM anchor_changes "
                                 "WHERE organization_id = 'twice'")).all() == [(15, 20)]
        set_anchor(conn, "mover", 10)  # previous and changed_at NULL: never changed
        assert conn.execute(text("SELECT count(*) FROM anchor_changes WHERE organization_id = 'mover'")).scalar_one() == 0


def test_an_organization_created_inactive_and_never_activated_owes_no_fee(plans) -> None:
    """Plan team (base fee 10, minimum 50). An organization the account service creates on 17 January
    in status 'pending' (not active), never activated, existed but was never active: no fee, so no
    invoice (a customer who never started gets no "final invoice"), and reconcile owes nothing.
    Its twin created active and deactivated the same day pays that day (1 of 31 days)."""
    from billing_cli.db import reconcile_store

    engine = plans
    with engine.begin() as conn:
        save_plans(conn, [TEAM])
        add_org(conn, "pending", status="pending", created_at=utc(2024, 1, 17, 10, 32))
        add_org(conn, "brief", created_at=utc(2024, 1, 17, 10, 32))
        for org_id in ("pending", "brief"):
            set_plan(conn, org_id, "team")
        conn.execute(text("UPDATE organizations SET status = 'inactive' WHERE id = 'brief'"))
        conn.execute(text("UPDATE organizations SET status_changed_at = :t WHERE id = 'brief'"),
                     {"t": utc(2024, 1, 17, 18)})
    result = invoice_month(engine.begin, options(JAN, utc(2024, 2, 2)))
    assert not result.failed, result.failed
    # brief: 10 × 1/31 = 0.322… -> 0.32; minimum 50 × 1/31 = 1.612…, top-up 1.290… -> 1.29; total 1.61.
    assert {o: [r[4] for r in rows] for o, rows in invoices(engine).items()} == {"brief": [D("1.61")]}
    with engine.connect() as conn:
        assert reconcile_store.owed_fees_not_invoiced(conn, JAN, None) == []


def test_a_voided_period_invoiced_again_after_two_anchor_changes_keeps_its_days(plans) -> None:
    """As in the regeneration test above, but February's invoice is voided by hand after the second
    change (1 -> 20 on 10 April); the daily run of 11 April invoices February again: 15 Feb - 14 Mar
    (11.00), the days between March's invoice and January's, none lost."""
    from billing_cli.db import invoice_store

    engine = plans
    with engine.begin() as conn:
        org(conn, "mover", 15)
        add_usage(conn, "mover", "api_calls", "100", utc(2024, 3, 5, 10))
    invoice_month(engine.begin, options(JAN, utc(2024, 2, 16)))
    with engine.begin() as conn:
        set_anchor(conn, "mover", 1, changed_at=utc(2024, 2, 20, 9))
    invoice_month(engine.begin, options(FEB, utc(2024, 3, 16)))
    invoice_month(engine.begin, options(MAR, utc(2024, 4, 2)))
    with engine.begin() as conn:
        set_anchor(conn, "mover", 20, changed_at=utc(2024, 4, 10, 9))
        feb = conn.execute(text("SELECT id FROM invoices WHERE billing_month = '2024-02-01'")).scalar_one()
        invoice_store.void_invoice(conn, feb, "wrong address", organization_id="mover")
    invoice_due(engine.begin, options(MAR, utc(2024, 4, 11)), catch_up=(FEB,))
    assert [(p0, p1, t) for _, s, p0, p1, t in invoices(engine)["mover"] if s == "issued"] == [
        (utc(2024, 1, 15), utc(2024, 2, 15), D("10.00")), (utc(2024, 3, 15), utc(2024, 4, 1), D("5.48")),
        (utc(2024, 2, 15), utc(2024, 3, 15), D("11.00"))]
