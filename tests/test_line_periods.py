"""An adjustment line bills an earlier period, and states that period's own days: for an organization
billed from the 15th, its January period is 15 Jan - 14 Feb 2024, not the calendar month of January.
What the customer receives says so: the Stripe invoice's line period, the Factur-X XML's line
period (BT-134/BT-135), and the credit note of the invoice. Calendar-month organizations keep the
calendar month. Real PostgreSQL, the Stripe peer, S3 and SMTP peers."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal as D

import pytest
from lxml import etree
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from billing_cli.anchors import Anchor, BillingPeriod, billing_period
from billing_cli.cli import app
from billing_cli.composition import PeriodRecord, compose
from billing_cli.credit_notes import credit_lines
from billing_cli.db.migrate import HEAD, upgrade
from billing_cli.invoices import InvoiceDocument
from billing_cli.periods import Month
from billing_cli.plan_file import parse_plans
from billing_cli.pricing import InvoiceLine, line_bounds
from tests.data import PLANS, add_event, utc
from tests.peers.fixtures import peer_env
from tests.test_einvoices import FACTURX, NS, embedded_xml
from tests.test_taxes import GERMAN_SELLER, apply, customer

runner = CliRunner()


def unix(*day: int) -> int:
    return int(datetime(*day, tzinfo=UTC).timestamp())


def anchor_from_the_start(conn, org_id: str, day: int) -> None:
    """The account service sets the anchor; dated long before 2024, as if set when it was created
    (the trigger dates a change now, which would leave January on the calendar month)."""
    conn.execute(text("UPDATE organizations SET billing_anchor_day = :d WHERE id = :o"), {"d": day, "o": org_id})
    conn.execute(text("UPDATE organizations SET billing_anchor_previous = NULL, billing_anchor_changed_at = NULL "
                      "WHERE id = :o"), {"o": org_id})


def line_periods(xml: bytes) -> list[tuple[str, tuple[str, str] | None]]:
    """Each XML line's name and its own billing period (start, end: inclusive days), if it has one."""
    found = []
    for item in etree.fromstring(xml).xpath("//ram:IncludedSupplyChainTradeLineItem", namespaces=NS):
        period = item.xpath("ram:SpecifiedLineTradeSettlement/ram:BillingSpecifiedPeriod", namespaces=NS)
        days = tuple(period[0].xpath(f"ram:{edge}/udt:DateTimeString", namespaces=NS)[0].text
                     for edge in ("StartDateTime", "EndDateTime")) if period else None
        found.append((item.xpath("ram:SpecifiedTradeProduct/ram:Name", namespaces=NS)[0].text, days))
    return found


def stored_line_periods(engine, table: str, number: str) -> list[tuple]:
    owner = {"invoice_lines": "JOIN invoices d ON d.id = l.invoice_id",
             "credit_note_lines": "JOIN credit_notes d ON d.id = l.credit_note_id"}[table]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            f"SELECT l.period_start, l.period_from, l.period_to, l.amount FROM {table} l {owner} "
            "WHERE d.number = :n ORDER BY l.line_no"), {"n": number})]


def test_an_adjustment_of_an_anchored_period_carries_its_days_to_stripe_the_e_invoice_and_the_credit_note(
        db_url, engine, tmp_path, s3, mail, fake_stripe, clean_env) -> None:
    """de-15 bills from the 15th, de-cal calendar months. Both were invoiced for January (26,784 API
    calls each, 24.11 EUR + the 19 EUR fee). Then 1,000 calls of 31 January and 1,000 of 10 February
    arrive: for de-15 both belong to its January period (15 Jan - 14 Feb), which February's invoice
    adjusts: 28,784 × 0.0009 = 25.91, 1.80 more. For de-cal, those of 31 January adjust January
    (27,784: 0.90 more) and those of 10 February are February's own."""
    apply(db_url, tmp_path)
    with engine.begin() as conn:
        customer(conn, "de-15", "eu", "EUR", "26784", country="DE", tax_id="DE811907980")
        anchor_from_the_start(conn, "de-15", 15)
        customer(conn, "de-cal", "eu", "EUR", "26784", country="DE", tax_id="DE811907980")
    env = peer_env(db_url, s3, mail, fake_stripe, **GERMAN_SELLER, **FACTURX)
    january = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env)
    assert january.exit_code == 0, january.output
    with engine.begin() as conn:
        for org_id in ("de-15", "de-cal"):  # late: of 31 January, and of 10 February (de-15: its January)
            add_event(conn, org_id, "api_calls", "1000", utc(2024, 2, 10, 9), key=f"{org_id}-late")
            add_event(conn, org_id, "api_calls", "1000", utc(2024, 1, 31, 9), key=f"{org_id}-jan-31")
    rolled = runner.invoke(app, ["aggregate-hourly", "--from", "2024-01-31T00", "--to", "2024-02-10T23"],
                           env={"DATABASE_URL": db_url})
    assert rolled.exit_code == 0, rolled.output

    february = runner.invoke(app, ["invoice-monthly", "--month", "2024-02"], env=env)

    assert february.exit_code == 0, february.output
    with engine.connect() as conn:
        invoices = {r.organization_id: r for r in conn.execute(text(
            "SELECT organization_id, id, number, stripe_invoice_id, s3_key FROM invoices "
            "WHERE billing_month = '2024-02-01' AND status = 'issued'"))}
    anchored, calendar = invoices["de-15"], invoices["de-cal"]
    # Stored: the adjustment's days beside its month; the own lines the invoice's period; a calendar
    # month leaves both NULL.
    assert stored_line_periods(engine, "invoice_lines", anchored.number) == [
        (datetime(2024, 2, 1).date(), utc(2024, 2, 15), utc(2024, 3, 15), D("19.00")),
        (datetime(2024, 1, 1).date(), utc(2024, 1, 15), utc(2024, 2, 15), D("1.80"))]
    assert [(row[1], row[2]) for row in stored_line_periods(engine, "invoice_lines", calendar.number)] == [
        (None, None)] * 3

    # Stripe: each line's period, in Unix times [start, end).
    stripe_lines = fake_stripe.invoices[anchored.stripe_invoice_id]["lines"]["data"]
    assert [(line["description"], line["amount"], line["period"]) for line in stripe_lines] == [
        ("Europe plan, monthly fee", 1900, {"start": unix(2024, 2, 15), "end": unix(2024, 3, 15)}),
        ("Adjustment for 15 Jan – 14 Feb 2024: API calls, +2,000 units (28,784 in all)", 180,
         {"start": unix(2024, 1, 15), "end": unix(2024, 2, 15)})]
    calendar_lines = fake_stripe.invoices[calendar.stripe_invoice_id]["lines"]["data"]
    assert [(line["description"], line["period"]) for line in calendar_lines] == [
        ("Europe plan, monthly fee", {"start": unix(2024, 2, 1), "end": unix(2024, 3, 1)}),
        ("API calls", {"start": unix(2024, 2, 1), "end": unix(2024, 3, 1)}),
        ("Adjustment for January 2024: API calls, +1,000 units (27,784 in all)",
         {"start": unix(2024, 1, 1), "end": unix(2024, 2, 1)})]

    # Factur-X: the adjustment line's own billing period is 15 Jan - 14 Feb (both days inclusive);
    # lines of the invoice's own period state none (the header's period applies). Valid EN 16931.
    pdf = s3.client().get_object(Bucket=s3.bucket, Key=anchored.s3_key)["Body"].read()
    assert line_periods(embedded_xml(pdf)) == [
        ("Europe plan, monthly fee", None),
        ("Adjustment for 15 Jan – 14 Feb 2024: API calls, +2,000 units (28,784 in all)", ("20240115", "20240214"))]
    calendar_pdf = s3.client().get_object(Bucket=s3.bucket, Key=calendar.s3_key)["Body"].read()
    assert line_periods(embedded_xml(calendar_pdf))[-1] == (
        "Adjustment for January 2024: API calls, +1,000 units (27,784 in all)", ("20240101", "20240131"))

    # Its credit note keeps each line's period: stored, and in the credit note's XML.
    voided = runner.invoke(app, ["invoices", "void", anchored.number, "--reason", "Wrong address", "--yes"], env=env)
    assert voided.exit_code == 0, voided.output
    with engine.connect() as conn:
        note = conn.execute(text("SELECT number, s3_key FROM credit_notes WHERE invoice_id = :id"),
                            {"id": anchored.id}).one()
    assert stored_line_periods(engine, "credit_note_lines", note.number) == [
        (datetime(2024, 2, 1).date(), utc(2024, 2, 15), utc(2024, 3, 15), D("-19.00")),
        (datetime(2024, 1, 1).date(), utc(2024, 1, 15), utc(2024, 2, 15), D("-1.80"))]
    note_pdf = s3.client().get_object(Bucket=s3.bucket, Key=note.s3_key)["Body"].read()
    assert line_periods(embedded_xml(note_pdf)) == [
        ("Europe plan, monthly fee", None),
        ("Adjustment for 15 Jan – 14 Feb 2024: API calls, +2,000 units (28,784 in all)", ("20240115", "20240214"))]


def test_the_migration_gives_existing_lines_of_anchored_periods_their_days(empty_db_url) -> None:
    """Lines written before 0013: a line of an anchored invoice's own month takes the invoice's days;
    an adjustment takes those of the organization's invoice of its month (the live one, not a void
    one billed differently); a credit note line those of the line it negates; calendar months stay
    NULL (the calendar month)."""
    engine = create_engine(empty_db_url)
    try:
        upgrade(engine, "0012_billing_periods")
        with engine.begin() as conn:
            for org_id in ("a15", "cal"):
                conn.execute(text("INSERT INTO organizations (id, name, email) VALUES (:o, :o, 'x@example.com')"),
                             {"o": org_id})
            old_invoice(conn, 1, "a15", "2024-01", utc(2024, 1, 1), utc(2024, 2, 1), status="void")
            old_invoice(conn, 2, "a15", "2024-01", utc(2024, 1, 15), utc(2024, 2, 15))
            old_invoice(conn, 3, "a15", "2024-02", utc(2024, 2, 15), utc(2024, 3, 15), adjusts="2024-01")
            old_invoice(conn, 4, "cal", "2024-01", utc(2024, 1, 1), utc(2024, 2, 1))
            old_invoice(conn, 5, "cal", "2024-02", utc(2024, 2, 1), utc(2024, 3, 1), adjusts="2024-01")
            conn.execute(text("UPDATE invoices SET status = 'void' WHERE id = 3"))
            conn.execute(text(
                "INSERT INTO credit_notes (id, number, invoice_id, organization_id, period_start, currency, subtotal, "
                "total, reason, issue_date) VALUES (1, 'CN-2024-02-000001', 3, 'a15', '2024-02-01', 'EUR', -2, -2, "
                "'test', '2024-03-20')"))
            conn.execute(text(
                "INSERT INTO credit_note_lines (credit_note_id, line_no, kind, description, quantity, unit_price, "
                "amount, period_start) SELECT 1, line_no, kind, description, quantity, -unit_price, -amount, "
                "period_start FROM invoice_lines WHERE invoice_id = 3"))

        assert upgrade(engine) == ("0012_billing_periods", HEAD)

        with engine.connect() as conn:
            lines = {(r.invoice_id, r.line_no): (r.period_from, r.period_to) for r in conn.execute(text(
                "SELECT invoice_id, line_no, period_from, period_to FROM invoice_lines"))}
            notes = [tuple(r) for r in conn.execute(text(
                "SELECT line_no, period_from, period_to FROM credit_note_lines ORDER BY line_no"))]
        assert lines == {(1, 1): (None, None), (2, 1): (utc(2024, 1, 15), utc(2024, 2, 15)),
                         (3, 1): (utc(2024, 2, 15), utc(2024, 3, 15)), (3, 2): (utc(2024, 1, 15), utc(2024, 2, 15)),
                         (4, 1): (None, None), (5, 1): (None, None), (5, 2): (None, None)}
        assert notes == [(1, utc(2024, 2, 15), utc(2024, 3, 15)), (2, utc(2024, 1, 15), utc(2024, 2, 15))]
        with pytest.raises(IntegrityError), engine.begin() as conn:  # days of another month than the line's
            conn.execute(text("UPDATE invoice_lines SET period_from = '2024-02-15Z', period_to = '2024-03-15Z' "
                              "WHERE invoice_id = 3 AND line_no = 2"))
        with pytest.raises(IntegrityError), engine.begin() as conn:  # one bound without the other
            conn.execute(text("UPDATE invoice_lines SET period_to = NULL WHERE invoice_id = 3 AND line_no = 2"))
    finally:
        engine.dispose()


def old_invoice(conn, invoice_id: int, org_id: str, month: str, start: datetime, end: datetime, *,
                status: str = "issued", adjusts: str | None = None) -> None:
    """An invoice as 0012 stored it: its fee line, and an adjustment of an earlier month's usage."""
    conn.execute(text(
        "INSERT INTO invoices (id, organization_id, billing_month, number, status, currency, subtotal, total, "
        "plan_id, bill_to_name, bill_to_email, issue_date, due_date, period_start, period_end) VALUES "
        "(:id, :org, CAST(:month AS date), :number, :status, 'EUR', 2, 2, 'eu', :org, 'x@example.com', "
        "'2024-03-20', '2024-04-19', :start, :end)"),
        {"id": invoice_id, "org": org_id, "month": f"{month}-01", "number": f"INV-{month}-{invoice_id:06d}",
         "status": status, "start": start, "end": end})
    periods = [month] + ([adjusts] if adjusts else [])
    for line_no, period in enumerate(periods, start=1):
        conn.execute(text(
            "INSERT INTO invoice_lines (invoice_id, line_no, kind, description, quantity, unit_price, amount, "
            "period_start) VALUES (:id, :n, 'base_fee', 'Fee', 1, 1, 1, CAST(:p AS date))"),
            {"id": invoice_id, "n": line_no, "p": f"{period}-01"})


FEB, JAN = Month(2024, 2), Month(2024, 1)
PRO = {plan.id: plan for plan in parse_plans(PLANS)}["pro"]


@pytest.mark.parametrize("anchor", [15, None])
def test_every_composed_line_carries_its_periods_days_and_a_calendar_month_none(anchor: int | None) -> None:
    """February's invoice of an organization anchored on the 15th, regenerated after part of its
    period was billed (the rest), with an adjustment of January's period and a credit applied: each
    line names its month and that period's days; calendar months carry no days (None)."""
    days = {month: billing_period(month, Anchor(anchor)) for month in (JAN, FEB)}
    january = PeriodRecord(JAN, {"api_calls": D(300)}, {1: {"api_calls": D("1.00"), "base_fee": D("10.00")}},
                           {1: {"api_calls": D(100)}}, bounds=days[JAN])
    own = PeriodRecord(FEB, {}, {2: {"api_calls": D("0.50")}}, {2: {"api_calls": D(50)}}, bounds=days[FEB])

    invoice = compose(FEB, {"api_calls": D(250)}, PRO, fees=lambda month: True, own=own, earlier=[(january, PRO)],
                      credit_balance=D("5.00"), bounds=days[FEB])

    assert [(line.kind, line.period, line.bounds) for line in invoice.lines] == [
        ("usage", FEB, line_bounds(days[FEB])), ("base_fee", FEB, line_bounds(days[FEB])),
        ("usage", JAN, line_bounds(days[JAN])), ("credit_applied", FEB, line_bounds(days[FEB]))]
    if anchor is not None:  # the days alone, without the proration's reference start
        assert invoice.lines[2].bounds == BillingPeriod(JAN, utc(2024, 1, 15), utc(2024, 2, 15))
    document = InvoiceDocument("INV-2024-02-000001", "o", "O", "o@example.com", FEB, date(2024, 3, 15),
                               date(2024, 4, 14), "USD", invoice.lines, invoice.total, bounds=days[FEB])
    assert [document.line_period(line) for line in invoice.lines] == [days[FEB], days[FEB], days[JAN], days[FEB]]
    credited = credit_lines(invoice.lines)
    assert [(line.period, line.bounds) for line in credited] == [(line.period, line.bounds) for line in invoice.lines]


def test_a_line_cannot_bill_another_months_days() -> None:
    with pytest.raises(ValueError, match="cannot bill the period 15 Jan – 14 Feb 2024"):
        InvoiceLine("usage", "x", D(1), D(1), D(1), "api_calls", FEB,
                    BillingPeriod(JAN, utc(2024, 1, 15), utc(2024, 2, 15)))
