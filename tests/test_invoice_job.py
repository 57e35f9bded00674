"""invoice-monthly against a real PostgreSQL: exactly once, gapless numbers, isolation, dry run, PDFs."""

from __future__ import annotations

import hashlib
import io
from datetime import date
from decimal import Decimal as D
from pathlib import Path

import pytest
from pypdf import PdfReader
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from billing_cli.db.invoice_store import load_document
from billing_cli.db.plan_store import save_plans
from billing_cli.delivery.pdf import render_invoice
from billing_cli.invoices import Seller
from billing_cli.jobs.invoicing import InvoiceOptions, invoice_due, invoice_month
from billing_cli.periods import Month
from billing_cli.plan_file import parse_plans
from tests.data import PLANS, add_event, add_org, add_usage, set_plan, table_snapshot, utc

JAN = Month(2024, 1)
SELLER = Seller("Example Cloud Ltd", ("1 Example Street", "London"), "GB123")
BILLING_TABLES = ("organizations", "usage_events", "usage_hourly", "aggregated_hours", "price_plans",
                  "plan_prices", "plan_price_tiers", "invoices", "invoice_lines", "invoice_number_counters")



def options(tmp_path: Path | None = None, **overrides) -> InvoiceOptions:
    values = dict(month=JAN, issue_date=date(2024, 2, 1), seller=SELLER, output_dir=tmp_path)
    values.update(overrides)
    return InvoiceOptions(**values)


@pytest.fixture
def month_of_usage(transactions):
    """Three billable organizations, one with nothing to bill, one inactive."""
    with transactions() as conn:
        save_plans(conn, parse_plans(PLANS))
        for org_id, plan, currency in (("org-a", "pro", "USD"), ("org-b", "pro", "USD"),
                                       ("org-c", "euro", "EUR"), ("org-idle", "euro", "EUR")):
            add_org(conn, org_id, currency=currency, name=f"Company {org_id}")
            set_plan(conn, org_id, plan)
        add_org(conn, "org-gone", status="inactive")
        set_plan(conn, "org-gone", "pro")
        add_usage(conn, "org-a", "api_calls", "1500")           # 10 + 10.00 + 2.50 = 22.50
        add_usage(conn, "org-a", "api_calls", "500", utc(2024, 1, 31, 23))  # + 2.50 -> 25.00
        add_usage(conn, "org-b", "api_calls", "1")              # 10 + 0.01 = 10.01
        add_usage(conn, "org-c", "api_calls", "12.345")         # 1.2345 -> 1.23 EUR
        add_usage(conn, "org-gone", "api_calls", "100", utc(2023, 12, 5, 10))  # churned before January
        add_usage(conn, "org-a", "api_calls", "999", utc(2024, 2, 1, 0))  # next month: not billed
    return transactions


def invoices(conn) -> list[tuple]:
    return [tuple(r) for r in conn.execute(text(
        "SELECT organization_id, number, status, currency, total FROM invoices ORDER BY id"))]


def test_invoices_are_issued_with_exact_totals_and_sequential_numbers(month_of_usage, tmp_path) -> None:
    result = invoice_month(month_of_usage, options(tmp_path))

    with month_of_usage() as conn:
        assert invoices(conn) == [
            ("org-a", "INV-2024-01-000001", "issued", "USD", D("25.00")),
            ("org-b", "INV-2024-01-000002", "issued", "USD", D("10.01")),
            ("org-c", "INV-2024-01-000003", "issued", "EUR", D("1.23")),
        ]
        lines = conn.execute(text("SELECT l.kind, l.quantity, l.unit_price, l.amount FROM invoice_lines l "
                                  "JOIN invoices i ON i.id = l.invoice_id WHERE i.organization_id = 'org-a' "
                                  "ORDER BY l.line_no")).all()
        assert [tuple(r) for r in lines] == [("base_fee", D(1), D(10), D("10.00")),
                                             ("tier", D(1000), D("0.01"), D("10.00")),
                                             ("tier", D(1000), D("0.005"), D("5.00"))]
        shas = dict(conn.execute(text("SELECT number, pdf_sha256 FROM invoices")).all())
    assert result.ok and result.statuses == {"invoiced": 3, "nothing_to_bill": 1}
    assert result.revenue == {"USD": D("35.01"), "EUR": D("1.23")}
    pdf = (tmp_path / "2024-01" / "INV-2024-01-000001.pdf").read_bytes()
    assert hashlib.sha256(pdf).hexdigest() == shas["INV-2024-01-000001"]
    with month_of_usage() as conn:  # a rerun renders from the stored invoice: the very same bytes
        ids = conn.execute(text("SELECT id, number FROM invoices")).all()
        for invoice_id, number in ids:
            again = render_invoice(load_document(conn, invoice_id), SELLER)
            assert hashlib.sha256(again).hexdigest() == shas[number]
    page_text = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    for expected in ("INV-2024-01-000001", "Company org-a", "$25.00", "2024-01-01 to 2024-01-31",
                     "Example Cloud Ltd", "Page 1 of 1", "0.005"):
        assert expected in page_text


def test_rerun_after_success_issues_nothing(month_of_usage, tmp_path) -> None:
    invoice_month(month_of_usage, options(tmp_path))
    with month_of_usage() as conn:
        before = table_snapshot(conn, *BILLING_TABLES)

    again = invoice_month(month_of_usage, options(tmp_path))

    with month_of_usage() as conn:
        assert table_snapshot(conn, *BILLING_TABLES) == before
    assert again.statuses == {"already_invoiced": 3, "nothing_to_bill": 1} and again.ok
    assert not again.revenue


def test_one_broken_organization_does_not_stop_the_others_and_a_rerun_finishes_it(month_of_usage) -> None:
    with month_of_usage() as conn:
        set_plan(conn, "org-a", None)                        # no plan
        conn.execute(text("UPDATE organizations SET currency = 'GBP' WHERE id = 'org-c'"))  # wrong currency

    first = invoice_month(month_of_usage, options())

    assert first.statuses == {"failed": 2, "invoiced": 1, "nothing_to_bill": 1}
    assert first.errors_by_component == {"data": 2}
    messages = {o.organization_id: o.errors[0][1] for o in first.failed}
    assert messages["org-a"].startswith("no price plan")
    assert messages["org-c"] == "organization currency GBP does not match plan 'euro' currency EUR"

    with month_of_usage() as conn:
        set_plan(conn, "org-a", "pro")
        conn.execute(text("UPDATE organizations SET currency = 'EUR' WHERE id = 'org-c'"))
    second = invoice_month(month_of_usage, options())

    assert second.ok and second.statuses == {"invoiced": 2, "already_invoiced": 1, "nothing_to_bill": 1}
    with month_of_usage() as conn:
        assert [(o, n) for o, n, *_ in invoices(conn)] == [
            ("org-b", "INV-2024-01-000001"), ("org-a", "INV-2024-01-000002"), ("org-c", "INV-2024-01-000003")]


def test_a_plan_that_does_not_exist_is_reported_and_an_unknown_org_stops_the_run(month_of_usage) -> None:
    from billing_cli.errors import UsageError

    with month_of_usage() as conn:
        set_plan(conn, "org-b", "enterprise")
    result = invoice_month(month_of_usage, options(organizations=("org-b",)))
    errors = {o.organization_id: o.errors[0] for o in result.failed}
    assert errors["org-b"] == ("data", "price plan 'enterprise' does not exist: add it with `billing plans apply`")
    with pytest.raises(UsageError, match="--org org-nope: no organization with this id"):
        invoice_month(month_of_usage, options(organizations=("org-b", "org-nope")))


def test_an_unknown_org_beside_a_known_one_stops_the_daily_run_before_its_catch_up_issues_anything(
        month_of_usage) -> None:
    """The daily run (catching up December) with `--org org-gone --org org-nope`: the error says
    nothing was done, so nothing is; before, December's catch-up pass had already invoiced org-gone."""
    from billing_cli.errors import UsageError

    with pytest.raises(UsageError, match=r"--org org-nope: no organization with this id; .*\(nothing was done\)"):
        invoice_due(month_of_usage, options(organizations=("org-gone", "org-nope")), catch_up=(Month(2023, 12),))

    with month_of_usage() as conn:
        assert invoices(conn) == []


def test_regenerate_voids_and_reissues_with_a_new_number(month_of_usage, tmp_path) -> None:
    invoice_month(month_of_usage, options())
    with month_of_usage() as conn:
        add_usage(conn, "org-b", "api_calls", "99", utc(2024, 1, 20, 0))  # a correction: 100 calls

    preview = invoice_month(month_of_usage, options(tmp_path / "preview", organizations=("org-b",),
                                                    regenerate=True, dry_run=True))
    result = invoice_month(month_of_usage, options(tmp_path, organizations=("org-b",), regenerate=True))

    for folder, name in ((tmp_path / "preview", "INV-2024-01-000004.preview"), (tmp_path, "INV-2024-01-000004")):
        page = PdfReader(folder / "2024-01" / f"{name}.pdf").pages[0].extract_text()
        assert "Replaces invoice INV-2024-01-000002" in page, page
        assert "This invoice replaces invoice INV-2024-01-000002, which is void." in page
    assert preview.ok
    with month_of_usage() as conn:  # rendered again from the database: the same words, the same bytes
        new_id, sha = conn.execute(text("SELECT id, pdf_sha256 FROM invoices "
                                        "WHERE number = 'INV-2024-01-000004'")).one()
        assert load_document(conn, new_id).replaces == "INV-2024-01-000002"
        assert hashlib.sha256(render_invoice(load_document(conn, new_id), SELLER)).hexdigest() == sha

    with month_of_usage() as conn:
        rows = [r for r in invoices(conn) if r[0] == "org-b"]
        replaced = conn.execute(text("SELECT replaces_invoice_id IS NOT NULL, void_reason FROM invoices "
                                     "WHERE organization_id = 'org-b' ORDER BY id")).all()
    assert rows == [("org-b", "INV-2024-01-000002", "void", "USD", D("10.01")),
                    ("org-b", "INV-2024-01-000004", "issued", "USD", D("11.00"))]
    assert [tuple(r) for r in replaced] == [(False, "regenerated"), (True, None)]
    assert result.statuses == {"invoiced": 1}


def test_the_database_allows_one_live_invoice_per_org_and_month(month_of_usage) -> None:
    invoice_month(month_of_usage, options(organizations=("org-b",)))
    with pytest.raises(IntegrityError, match="uq_invoices_one_live_per_org_month"), month_of_usage() as conn:
        conn.execute(text("""
            INSERT INTO invoices (organization_id, billing_month, period_start, period_end, number, currency,
                                  subtotal, total, plan_id, bill_to_name, bill_to_email, issue_date, due_date)
            VALUES ('org-b', '2024-01-01', '2024-01-01T00:00Z', '2024-02-01T00:00Z', 'INV-2024-01-999999', 'USD',
                    1, 1, 'pro', 'x', 'x@y.z', '2024-02-01', '2024-03-01')"""))


def test_the_database_allows_one_live_invoice_per_org_and_period_start(month_of_usage) -> None:
    """Whatever month it is filed under, a second live invoice of the same period is refused."""
    invoice_month(month_of_usage, options(organizations=("org-b",)))
    with pytest.raises(IntegrityError), month_of_usage() as conn:
        conn.execute(text("""
            INSERT INTO invoices (organization_id, billing_month, period_start, period_end, number, currency,
                                  subtotal, total, plan_id, bill_to_name, bill_to_email, issue_date, due_date)
            VALUES ('org-b', '2024-02-01', '2024-01-01T00:00Z', '2024-02-01T00:00Z', 'INV-2024-02-999999', 'USD',
                    1, 1, 'pro', 'x', 'x@y.z', '2024-02-01', '2024-03-01')"""))


def test_dry_run_leaves_the_database_byte_for_byte_unchanged(month_of_usage, tmp_path) -> None:
    with month_of_usage() as conn:
        add_event(conn, "org-b", "api_calls", "1000", utc(2024, 1, 5, 7))  # not aggregated yet
        before = table_snapshot(conn, *BILLING_TABLES)

    result = invoice_month(month_of_usage, options(tmp_path, dry_run=True))

    with month_of_usage() as conn:
        assert table_snapshot(conn, *BILLING_TABLES) == before
    assert result.dry_run and result.statuses == {"invoiced": 3, "nothing_to_bill": 1}
    assert result.stale_hours_previewed == 1 and result.aggregated_hours == 0
    assert result.revenue["USD"] == D("25.00") + D("20.01")  # org-b: 10 + 1001 calls, read from the events
    previews = sorted(p.name for p in (tmp_path / "2024-01").iterdir())
    assert previews == ["INV-2024-01-000001.preview.pdf", "INV-2024-01-000002.preview.pdf",
                        "INV-2024-01-000003.preview.pdf"]
    first = PdfReader(tmp_path / "2024-01" / "INV-2024-01-000001.preview.pdf").pages[0].extract_text()
    assert "PREVIEW" in first and "(preview)" in first


def test_a_dry_run_beside_a_real_run_never_replaces_an_issued_invoices_pdf(month_of_usage, tmp_path) -> None:
    """A dry run takes no lock (an operator's preview never blocks the scheduled run): one that read
    the next numbers just before a real run issued them must not write its PREVIEW over the PDF
    of the real invoice with that number, in the same output folder."""
    real_run: list = []

    def render_after_a_real_run(document, seller) -> bytes:  # the preview is planned and numbered
        if not real_run:
            real_run.append(invoice_month(month_of_usage, options(tmp_path)))  # issues 1-3, writes their PDFs
        return render_invoice(document, seller)

    invoice_month(month_of_usage, options(tmp_path, dry_run=True, renderer=render_after_a_real_run))

    with month_of_usage() as conn:
        shas = dict(conn.execute(text("SELECT number, pdf_sha256 FROM invoices")).all())
    assert len(shas) == 3
    for number, sha in shas.items():
        on_disk = (tmp_path / "2024-01" / f"{number}.pdf").read_bytes()
        assert hashlib.sha256(on_disk).hexdigest() == sha, f"{number}.pdf is not the issued invoice"
        assert "PREVIEW" not in PdfReader(io.BytesIO(on_disk)).pages[0].extract_text()


def test_hours_not_aggregated_are_aggregated_before_rating(month_of_usage) -> None:
    with month_of_usage() as conn:
        add_event(conn, "org-b", "api_calls", "1000", utc(2024, 1, 5, 7))
        add_event(conn, "org-b", "api_calls", "5", utc(2024, 1, 31, 23, 59, 59))

    result = invoice_month(month_of_usage, options(organizations=("org-b",)))

    assert result.aggregated_hours == 2
    with month_of_usage() as conn:
        assert invoices(conn) == [("org-b", "INV-2024-01-000001", "issued", "USD", D("20.03"))]  # 10 + 1006 calls


def test_unicode_names_render_and_unknown_characters_do_not_crash(month_of_usage, tmp_path) -> None:
    with month_of_usage() as conn:
        conn.execute(text("UPDATE organizations SET name = 'Łódź Café ΑΒΓ Кафе 🚀 中文' WHERE id = 'org-c'"))
    result = invoice_month(month_of_usage, options(tmp_path, organizations=("org-c",)))
    assert result.ok
    page = PdfReader(tmp_path / "2024-01" / "INV-2024-01-000001.pdf").pages[0].extract_text()
    assert "Łódź Café ΑΒΓ Кафе" in page and "€1.23" in page and "API-Aufrufe" in page


def test_many_lines_make_a_clean_multi_page_invoice(transactions, tmp_path) -> None:
    metrics = [f"metric_{n:02d}" for n in range(70)]
    plan = '[[plan]]\nid = "wide"\nname = "Wide"\ncurrency = "USD"\n' + "".join(
        f'[[plan.price]]\nmetric = "{m}"\nmodel = "per_unit"\nunit_price = 0.25\n' for m in metrics)
    with transactions() as conn:
        save_plans(conn, parse_plans(plan))
        add_org(conn, "org-wide")
        set_plan(conn, "org-wide", "wide")
        for m in metrics:
            add_usage(conn, "org-wide", m, "4")
    result = invoice_month(transactions, options(tmp_path))
    assert result.ok
    reader = PdfReader(tmp_path / "2024-01" / "INV-2024-01-000001.pdf")
    assert len(reader.pages) >= 2
    last = reader.pages[-1].extract_text()
    assert f"Page {len(reader.pages)} of {len(reader.pages)}" in last and "$70.00" in last
    assert "(continued)" in reader.pages[1].extract_text()


def test_render_processes_give_the_same_bytes(month_of_usage) -> None:
    from billing_cli.delivery.pdf import RenderPool

    invoice_month(month_of_usage, options())
    pool = RenderPool(2)
    try:
        with month_of_usage() as conn:
            for invoice_id, sha in conn.execute(text("SELECT id, pdf_sha256 FROM invoices")).all():
                assert hashlib.sha256(pool(load_document(conn, invoice_id), SELLER)).hexdigest() == sha
    finally:
        pool.close()


def test_the_customers_address_and_tax_id_are_printed_as_they_were_at_issue(month_of_usage, tmp_path) -> None:
    with month_of_usage() as conn:  # the account service fills in the billing details
        conn.execute(text("""
            UPDATE organizations SET billing_address_line1 = 'Hauptstraße 5', billing_address_line2 = 'Aufgang B',
                   billing_postal_code = '10115', billing_city = 'Berlin', billing_country = 'de',
                   tax_id = 'DE 811 907 980' WHERE id = 'org-a'"""))
        conn.execute(text("""
            UPDATE organizations SET billing_address_line1 = '1 Main Street', billing_city = 'Springfield',
                   billing_region = 'IL', billing_postal_code = '62701', billing_country = 'US' WHERE id = 'org-b'"""))

    invoice_month(month_of_usage, options(tmp_path, organizations=("org-a", "org-b")))

    def page(number: str) -> str:
        return PdfReader(tmp_path / "2024-01" / f"{number}.pdf").pages[0].extract_text()

    german = page("INV-2024-01-000001")
    assert ("Company org-a\nHauptstraße 5\nAufgang B\n10115 Berlin\nGermany\nTax ID: DE 811 907 980\n"
            "org-a@example.com") in german, german
    assert "Tax ID: GB123" in german  # the seller's (INVOICE_SELLER_TAX_ID)
    american = page("INV-2024-01-000002")
    assert "1 Main Street\nSpringfield, IL 62701\nUnited States\norg-b@example.com" in american, american
    assert american.count("Tax ID:") == 1  # the seller's only: org-b has none
    with month_of_usage() as conn:  # the organization moves: its issued invoice does not
        conn.execute(text("UPDATE organizations SET billing_city = 'Potsdam', tax_id = NULL WHERE id = 'org-a'"))
        invoice_id, sha = conn.execute(text("SELECT id, pdf_sha256 FROM invoices "
                                            "WHERE organization_id = 'org-a'")).one()
        assert hashlib.sha256(render_invoice(load_document(conn, invoice_id), SELLER)).hexdigest() == sha


def test_a_billing_country_that_is_not_a_code_fails_that_organization_only(month_of_usage) -> None:
    with month_of_usage() as conn:
        conn.execute(text("UPDATE organizations SET billing_country = 'Germany' WHERE id = 'org-a'"))

    result = invoice_month(month_of_usage, options())

    assert result.statuses == {"failed": 1, "invoiced": 2, "nothing_to_bill": 1}
    assert [o.errors for o in result.failed] == [[
        ("data", "billing country 'Germany' is not an ISO 3166-1 alpha-2 code (e.g. DE, US, GB): "
                 "fix organizations.billing_country")]]
