"""Credit balances and regenerated invoices: a credit moved between invoices is applied once, in its
own currency, and taken back when the invoice that carried it is voided; a regenerated invoice bills
the adjustments the invoice it replaces billed. Through the real commands on PostgreSQL, built like
tests/test_late_usage.py.

Plan `euro` (EUR): API calls at 0.10 each. Plan `pro` (USD): base fee 10.00, API calls graduated.
"""

from __future__ import annotations

from decimal import Decimal as D

from sqlalchemy import text

from tests.test_late_usage import billed_quantity, events, invoice, invoices_of, lines_of, roll_up, run
from tests.test_late_usage import db as db  # noqa: F401  (the fixture)
from tests.data import add_org, set_plan, utc


def _credit_carried_then_used(db, engine, *, use: bool = True) -> None:
    """January 100 calls (10.00), 80 deleted; February carries -8.00 as credit; March applies it."""
    with engine.begin() as conn:
        add_org(conn, "gmbh", currency="EUR")
        set_plan(conn, "gmbh", "euro")
    events(engine, "gmbh", 100, utc(2024, 1, 10, 9))
    roll_up(db)
    assert invoice(db, "2024-01").exit_code == 0  # 10.00
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM usage_events WHERE organization_id = 'gmbh' AND idempotency_key "
                          "IN (SELECT idempotency_key FROM usage_events WHERE organization_id = 'gmbh' "
                          "ORDER BY idempotency_key LIMIT 80)"))
    roll_up(db)
    assert invoice(db, "2024-02").exit_code == 0  # -8.00 adjustment, +8.00 carried: 0.00
    if not use:
        return
    events(engine, "gmbh", 200, utc(2024, 3, 3, 9))
    roll_up(db)
    assert invoice(db, "2024-03").exit_code == 0  # 20.00 - 8.00 = 12.00
    assert [t for _, _, t in invoices_of(engine, "gmbh")] == [D("10.00"), D("0.00"), D("12.00")]


def _april_billed_once_in_all(db, engine) -> None:
    """April's 200 calls invoiced; then the customer has paid 420 calls x 0.10 = 42.00 in all (20 in
    January, 200 in March, 200 in April) on its live invoices, January's 20 billed once."""
    events(engine, "gmbh", 200, utc(2024, 4, 3, 9))
    roll_up(db)
    april = invoice(db, "2024-04")
    assert april.exit_code == 0, april.output
    with engine.connect() as conn:
        billed = conn.execute(text("SELECT sum(total) FROM invoices WHERE organization_id = 'gmbh' "
                                   "AND status <> 'void'")).scalar_one()
    assert billed_quantity(engine, "gmbh", "2024-01") == 20
    assert billed == D("42.00"), (billed, invoices_of(engine, "gmbh"), lines_of(engine, "INV-2024-04-000001"))


def test_voiding_an_invoice_whose_carried_credit_was_already_used_does_not_credit_it_twice(db, engine) -> None:
    _credit_carried_then_used(db, engine)
    # February is voided (e.g. sent to a wrong address): its -8.00 adjustment and its +8.00 credit
    # are undone. March's -8.00 "credit from earlier invoices" stays: the balance is now -8.00.
    voided = run(db, "invoices", "void", "INV-2024-02-000001", "--reason", "test", "--yes")
    assert voided.exit_code == 0, voided.output

    # January is adjusted again on April's invoice (-8.00, its change is no longer covered by a live
    # invoice), so the 8.00 March already took off must be taken back: 20.00 - 8.00 + 8.00 = 20.00.
    _april_billed_once_in_all(db, engine)
    # What the customer reads on April's invoice: January adjusted again, and March's credit taken back.
    assert [(kind, description, amount) for kind, _, description, amount in lines_of(engine, "INV-2024-04-000001")
            if kind != "usage" or description.startswith("Adjustment")] == [
        ("usage", "Adjustment for January 2024: API-Aufrufe, -80 units (20 in all)", D("-8.00")),
        ("credit_applied", "Credit taken back: the invoice that carried it was voided", D("8.00"))]


def test_regenerating_an_invoice_keeps_the_adjustments_it_carried(db, engine) -> None:
    with engine.begin() as conn:
        add_org(conn, "acme")
        set_plan(conn, "acme", "pro")
    events(engine, "acme", 800, utc(2024, 1, 20, 10))
    roll_up(db)
    assert invoice(db, "2024-01").exit_code == 0  # 18.00
    events(engine, "acme", 500, utc(2024, 1, 31, 23, 59))  # late
    roll_up(db)
    events(engine, "acme", 200, utc(2024, 2, 10, 10))
    roll_up(db)
    assert invoice(db, "2024-02").exit_code == 0  # 10 + 2.00 + 3.50 (January's adjustment)
    assert billed_quantity(engine, "acme", "2024-01") == 1300

    regenerated = invoice(db, "2024-02", "--org", "acme", "--regenerate")
    assert regenerated.exit_code == 0, regenerated.output
    # The replacement must bill what the voided invoice billed: February, and January's +500 calls.
    assert invoices_of(engine, "acme")[-1] == ("INV-2024-02-000002", "issued", D("15.50")), \
        (invoices_of(engine, "acme"), lines_of(engine, "INV-2024-02-000002"))
    assert billed_quantity(engine, "acme", "2024-01") == 1300


def test_regenerating_an_invoice_whose_carried_credit_was_used_does_not_credit_it_twice(db, engine) -> None:
    _credit_carried_then_used(db, engine)
    regenerated = invoice(db, "2024-02", "--org", "gmbh", "--regenerate")
    assert regenerated.exit_code == 0, regenerated.output
    _april_billed_once_in_all(db, engine)


def test_a_credit_balance_in_one_currency_is_never_applied_to_an_invoice_in_another(db, engine) -> None:
    _credit_carried_then_used(db, engine, use=False)  # 8.00 EUR of credit carried by February
    with engine.begin() as conn:  # the account service moves the customer to a USD plan
        conn.execute(text("UPDATE organizations SET currency = 'USD' WHERE id = 'gmbh'"))
        set_plan(conn, "gmbh", "pro")
    events(engine, "gmbh", 200, utc(2024, 3, 3, 9))
    roll_up(db)
    march = invoice(db, "2024-03")
    assert march.exit_code == 0, march.output
    lines = lines_of(engine, "INV-2024-03-000001")
    # 8.00 EUR are not 8.00 USD: the EUR credit must not be taken off a USD invoice, and the operator is told.
    assert not [line for line in lines if line[0] == "credit_applied"], (lines, invoices_of(engine, "gmbh"))
    assert ("its credit of 8.00 EUR from earlier invoices is not applied: this invoice is in USD, and credit is "
            "never converted") in " ".join(march.output.split()), march.output


def test_late_usage_billed_by_a_regenerated_invoice_is_not_lost_when_the_window_has_moved_on(db, engine) -> None:
    with engine.begin() as conn:
        add_org(conn, "acme")
        set_plan(conn, "acme", "pro")
    events(engine, "acme", 800, utc(2024, 1, 20, 10))
    roll_up(db)
    assert invoice(db, "2024-01").exit_code == 0
    events(engine, "acme", 500, utc(2024, 1, 31, 23, 59))  # late: billed by February (+3.50)
    roll_up(db)
    for month in ("2024-02", "2024-03", "2024-04"):
        assert invoice(db, month).exit_code == 0
    assert billed_quantity(engine, "acme", "2024-01") == 1300
    # In May, February is regenerated (e.g. a wrong address); then May is invoiced.
    assert invoice(db, "2024-02", "--org", "acme", "--regenerate").exit_code == 0
    may = invoice(db, "2024-05")
    assert may.exit_code == 0, may.output
    # January's 500 late calls were billed once and must stay billed.
    assert billed_quantity(engine, "acme", "2024-01") == 1300, may.output


def test_late_usage_of_a_month_billed_in_another_currency_is_reported_and_the_next_invoice_is_issued(
        db, engine) -> None:
    with engine.begin() as conn:
        add_org(conn, "gmbh", currency="EUR")
        set_plan(conn, "gmbh", "euro")
    events(engine, "gmbh", 100, utc(2024, 1, 10, 9))
    roll_up(db)
    assert invoice(db, "2024-01").exit_code == 0  # 10.00 EUR
    with engine.begin() as conn:  # the account service moves the customer to a USD plan
        conn.execute(text("UPDATE organizations SET currency = 'USD' WHERE id = 'gmbh'"))
        set_plan(conn, "gmbh", "pro")
    events(engine, "gmbh", 5, utc(2024, 1, 20, 9))  # late January calls: 0.50 EUR, never 0.50 USD
    events(engine, "gmbh", 200, utc(2024, 2, 3, 9))
    roll_up(db)
    january = invoice(db, "2024-01")  # a rerun of January never says they will be billed
    assert january.exit_code == 0, january.output
    assert "billed on the next invoice" not in january.output, january.output
    assert ("usage of 2024-01 changed after it was billed in EUR; the organization is now billed in USD, and an "
            "amount is never converted: not billed") in " ".join(january.output.split()), january.output
    february = invoice(db, "2024-02")
    # February is billed (10.00 fee + 200 x 0.01), without the EUR adjustment, and the operator is told.
    assert february.exit_code == 0, february.output
    assert invoices_of(engine, "gmbh") == [("INV-2024-01-000001", "issued", D("10.00")),
                                           ("INV-2024-02-000001", "issued", D("12.00"))]
    assert [line[1] for line in lines_of(engine, "INV-2024-02-000001")] == [utc(2024, 2, 1).date()] * 2
    assert ("usage of 2024-01 changed after it was billed in EUR; this invoice is in USD, and an amount is never "
            "converted: not billed") in " ".join(february.output.split()), february.output
    again = invoice(db, "2024-02")
    assert again.exit_code == 0, again.output
    assert len(invoices_of(engine, "gmbh")) == 2


def _january_adjusted_twice(db, engine) -> None:
    """January 800 calls (18.00); 500 late ones billed by February (+3.50), 200 more by March
    (1,500 in all: 10.00 + 2.50 = 12.50, minus 11.50 billed = +1.00)."""
    with engine.begin() as conn:
        add_org(conn, "acme")
        set_plan(conn, "acme", "pro")
    events(engine, "acme", 800, utc(2024, 1, 20, 10))
    roll_up(db)
    assert invoice(db, "2024-01").exit_code == 0
    events(engine, "acme", 500, utc(2024, 1, 21, 10))
    roll_up(db)
    assert invoice(db, "2024-02").exit_code == 0
    events(engine, "acme", 200, utc(2024, 1, 22, 10))
    roll_up(db)
    assert invoice(db, "2024-03").exit_code == 0
    assert [t for _, _, t in invoices_of(engine, "acme")] == [D("18.00"), D("13.50"), D("11.00")]


def _january_lines(engine, number: str) -> list[tuple]:
    return [(description, amount) for _, period, description, amount in lines_of(engine, number)
            if period == utc(2024, 1, 1).date()]


def test_voiding_an_invoice_whose_adjustment_a_later_invoice_adjusted_again_bills_it_again(db, engine) -> None:
    _january_adjusted_twice(db, engine)
    voided = run(db, "invoices", "void", "INV-2024-02-000001", "--reason", "test", "--yes")
    assert voided.exit_code == 0, voided.output
    april = invoice(db, "2024-04")
    assert april.exit_code == 0, april.output
    # February's +3.50 for January is undone by its void: April bills it again (1,500 - 800 - 200 calls).
    assert _january_lines(engine, "INV-2024-04-000001") == [
        ("Adjustment for January 2024: API calls, +500 units (1,500 in all)", D("3.50"))]
    assert billed_quantity(engine, "acme", "2024-01") == 1500
    assert invoice(db, "2024-05").exit_code == 0  # and once only
    assert _january_lines(engine, "INV-2024-05-000001") == []


def test_regenerating_an_invoice_whose_adjustment_a_later_invoice_adjusted_again_keeps_it(db, engine) -> None:
    _january_adjusted_twice(db, engine)
    regenerated = invoice(db, "2024-02", "--org", "acme", "--regenerate")
    assert regenerated.exit_code == 0, regenerated.output
    # The replacement bills what February billed: its fee and January's +500 calls (March counted on them).
    assert invoices_of(engine, "acme")[3] == ("INV-2024-02-000002", "issued", D("13.50"))
    assert _january_lines(engine, "INV-2024-02-000002") == [
        ("Adjustment for January 2024: API calls, +500 units (1,500 in all)", D("3.50"))]
    assert billed_quantity(engine, "acme", "2024-01") == 1500
    assert invoice(db, "2024-04").exit_code == 0  # nothing of January twice
    assert _january_lines(engine, "INV-2024-04-000001") == []
    assert billed_quantity(engine, "acme", "2024-01") == 1500
