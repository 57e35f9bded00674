"""Taxes on invoices, end to end: the rates of a taxes file, the organizations' billing details,
real PostgreSQL, the PDF's text, the stored totals and the Stripe peer's own computation, all
equal to figures computed by hand in each test."""

from __future__ import annotations

import io
import json
from datetime import date
from decimal import Decimal as D
from pathlib import Path

import pytest
from pypdf import PdfReader
from sqlalchemy import text
from typer.testing import CliRunner

from billing_cli.addresses import BillingDetails
from billing_cli.cli import app
from billing_cli.errors import ExitCode
from billing_cli.money import Precision
from billing_cli.tax_file import TaxFileError, parse_taxes
from billing_cli.tax_ids import TaxIdError, check_tax_id
from billing_cli.taxes import REVERSE_CHARGE_MENTION, TaxError, TaxRate, TaxSetup, tax_amount, taxes_for
from tests.data import SELLER_ENV, add_org, add_usage, set_plan, utc
from tests.peers.fixtures import STRIPE_KEY, peer_env

runner = CliRunner()

PLANS = """
[[plan]]
id = "eu"
name = "Europe"
currency = "EUR"
base_fee = 19

  [[plan.price]]
  metric = "api_calls"
  description = "API calls"
  model = "per_unit"
  unit_price = 0.0009

[[plan]]
id = "gb"
name = "Britain"
currency = "GBP"
base_fee = 49.03

  [[plan.price]]
  metric = "api_calls"
  description = "API calls"
  model = "per_unit"
  unit_price = 0.0101

[[plan]]
id = "ca"
name = "Canada"
currency = "CAD"
base_fee = 100

  [[plan.price]]
  metric = "api_calls"
  description = "API calls"
  model = "per_unit"
  unit_price = 0.01

[[plan]]
id = "jp"
name = "Japan"
currency = "JPY"

  [[plan.price]]
  metric = "api_calls"
  description = "API calls"
  model = "per_unit"
  unit_price = 1.5
"""

TAXES = """
[[rate]]
country = "DE"
name = "VAT"
percentage = 19
effective_from = 2007-01-01

[[rate]]
country = "GB"
name = "VAT"
percentage = 20
effective_from = 2011-01-04

# Canada: the federal GST, and Quebec's QST on top of it for a customer in Quebec.
[[rate]]
country = "CA"
name = "GST"
percentage = 5
effective_from = 2008-01-01

[[rate]]
country = "CA"
region = "QC"
name = "QST"
percentage = "9.975"
effective_from = 2013-01-01

[[rate]]
country = "JP"
name = "JCT"
percentage = 10
effective_from = 2019-10-01
"""

GERMAN_SELLER = {**SELLER_ENV, "INVOICE_TAXES": "true", "INVOICE_SELLER_COUNTRY": "DE",
                 "INVOICE_SELLER_TAX_ID": "DE136695976"}
BRITISH_SELLER = {"INVOICE_SELLER_NAME": "Nimbus Metering Ltd", "INVOICE_SELLER_ADDRESS": "1 Old Street|London",
                  "INVOICE_TAXES": "true", "INVOICE_SELLER_COUNTRY": "GB", "INVOICE_SELLER_TAX_ID": "GB980780684"}


def apply(db_url: str, tmp_path: Path, *, plans: str = PLANS, taxes: str = TAXES) -> None:
    (tmp_path / "plans.toml").write_text(plans)
    (tmp_path / "taxes.toml").write_text(taxes)
    assert runner.invoke(app, ["plans", "apply", str(tmp_path / "plans.toml")],
                         env={"DATABASE_URL": db_url}).exit_code == 0
    applied = runner.invoke(app, ["taxes", "apply", str(tmp_path / "taxes.toml")], env={"DATABASE_URL": db_url})
    assert applied.exit_code == 0, applied.output


def customer(conn, org_id: str, plan: str, currency: str, usage: str, *, country: str | None, tax_id: str | None = None,
             region: str | None = None, exempt: bool = False) -> None:
    """An organization with its billing details, written the way the account service writes them."""
    add_org(conn, org_id, currency=currency, name=f"Customer {org_id}")
    conn.execute(text("UPDATE organizations SET billing_address_line1 = '1 Main Street', billing_city = 'Town', "
                      "billing_country = :country, billing_region = :region, tax_id = :tax_id, tax_exempt = :exempt "
                      "WHERE id = :id"),
                 {"id": org_id, "country": country, "region": region, "tax_id": tax_id, "exempt": exempt})
    set_plan(conn, org_id, plan)
    add_usage(conn, org_id, "api_calls", usage)


def stored(engine) -> dict[str, dict]:
    """Each organization's live invoice: its totals and its tax breakdown, as stored."""
    with engine.connect() as conn:
        invoices = {r.organization_id: r._asdict() for r in conn.execute(text(
            "SELECT id, organization_id, number, currency, subtotal, tax_total, total, stripe_invoice_id "
            "FROM invoices WHERE status = 'issued'"))}
        for invoice in invoices.values():
            invoice["taxes"] = [tuple(r) for r in conn.execute(text(
                "SELECT name, country, region, percentage, taxable_amount, amount, treatment FROM invoice_taxes "
                "WHERE invoice_id = :id ORDER BY position"), {"id": invoice["id"]})]
    return invoices


def pdf_text(folder: Path, number: str) -> str:
    return PdfReader(folder / "2024-01" / f"{number}.pdf").pages[0].extract_text()


@pytest.fixture
def stripe_env(fake_stripe, clean_env) -> dict[str, str]:
    # The peer keeps Stripe's default tax rounding (per line): it applies to TaxRates, never to the
    # tax amounts billing sends, so no account setting is needed (docs/taxes.md).
    assert fake_stripe.tax_rounding == "line_item"
    return {"INVOICE_ENABLE_STRIPE": "true", "STRIPE_API_KEY": STRIPE_KEY, "STRIPE_API_BASE": fake_stripe.base_url,
            "DELIVERY_MAX_RETRY_SECONDS": "5"}


def test_a_german_seller_taxes_each_buyer_by_the_rules(db_url, engine, tmp_path, fake_stripe, stripe_env) -> None:
    apply(db_url, tmp_path)
    with engine.begin() as conn:
        # 19.00 base fee + 26,784 calls x 0.0009 = 24.1056 -> 24.11: a subtotal of 43.11 EUR.
        customer(conn, "de-buyer", "eu", "EUR", "26784", country="DE", tax_id="DE811907980")
        customer(conn, "fr-valid", "eu", "EUR", "26784", country="FR", tax_id="FR 40 303265045")
        customer(conn, "fr-invalid", "eu", "EUR", "26784", country="FR", tax_id="FR40303265046")
        customer(conn, "exempt", "eu", "EUR", "26784", country="DE", exempt=True)
        customer(conn, "no-country", "eu", "EUR", "26784", country=None)
        # 100.00 + 2,345 x 0.01 = 23.45: 123.45 CAD, in Quebec.
        customer(conn, "ca-qc", "ca", "CAD", "2345", country="CA", region="QC")
        # 1,003 x 1.5 = 1,504.5 -> 1,505 JPY (no minor unit).
        customer(conn, "jp", "jp", "JPY", "1003", country="JP")
    pdfs = tmp_path / "pdfs"
    env = {"DATABASE_URL": db_url, **GERMAN_SELLER, "INVOICE_OUTPUT_DIR": str(pdfs), **stripe_env}

    dry = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--dry-run", "--json"], env=env)
    real = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--json"], env=env)

    assert real.exit_code == ExitCode.PARTIAL, real.output
    invoices = stored(engine)
    assert {org: (i["subtotal"], i["tax_total"], i["total"]) for org, i in invoices.items()} == {
        "de-buyer": (D("43.11"), D("8.19"), D("51.30")),  # 43.11 x 19% = 8.1909 -> 8.19
        "fr-valid": (D("43.11"), D("0.00"), D("43.11")),  # EU B2B from DE to FR: reverse charge
        "exempt": (D("43.11"), D("0.00"), D("43.11")),
        # GST 123.45 x 5% = 6.1725 -> 6.17; QST 123.45 x 9.975% = 12.3141375 -> 12.31
        "ca-qc": (D("123.45"), D("18.48"), D("141.93")),
        "jp": (D("1505"), D("151"), D("1656")),  # 1,505 x 10% = 150.5 -> 151
    }
    assert invoices["ca-qc"]["taxes"] == [("GST", "CA", None, D("5"), D("123.45"), D("6.17"), "standard"),
                                          ("QST", "CA", "QC", D("9.975"), D("123.45"), D("12.31"), "standard")]
    assert invoices["fr-valid"]["taxes"] == [("VAT reverse charge", "FR", None, D("0"), D("43.11"), D("0.00"),
                                              "reverse_charge")]
    assert invoices["exempt"]["taxes"][0][-1] == "exempt"

    # The organizations whose data cannot be taxed are refused, named with the column to fix.
    failed = {f["organization_id"]: f["errors"][0][1] for f in json.loads(real.stdout)["failed"]}
    assert set(failed) == {"fr-invalid", "no-country"}
    assert "tax id 'FR40303265046' is not a valid EU VAT number" in failed["fr-invalid"]
    assert "fix organizations.tax_id" in failed["fr-invalid"]
    assert "set organizations.billing_country" in failed["no-country"]

    # The run's summary: revenue and the tax in it, per currency.
    summary = json.loads(real.stdout)
    assert summary["revenue"] == {"CAD": "141.93", "EUR": "137.52", "JPY": "1656"}
    assert summary["tax"] == {"CAD": "18.48", "EUR": "8.19", "JPY": "151"}

    # The PDFs print the subtotal, one line per tax, the mentions, the total, both tax ids.
    de = pdf_text(pdfs, invoices["de-buyer"]["number"])
    assert "Tax ID: DE136695976" in de and "Tax ID: DE811907980" in de
    assert "Subtotal €43.11\nVAT 19% (DE) on €43.11 €8.19\nTotal due €51.30" in de, de
    fr = pdf_text(pdfs, invoices["fr-valid"]["number"])
    assert "Tax ID: FR 40 303265045" in fr
    assert f"Subtotal €43.11\nVAT reverse charge 0% (FR) on €43.11 €0.00\nTotal due €43.11\n{REVERSE_CHARGE_MENTION}" \
        in fr, fr
    exempt = pdf_text(pdfs, invoices["exempt"]["number"])
    assert "Tax exempt 0% (DE) on €43.11 €0.00\nTotal due €43.11\nTax exempt: the customer is exempt" in exempt
    ca = pdf_text(pdfs, invoices["ca-qc"]["number"])
    assert "Subtotal CA$123.45\nGST 5% (CA) on CA$123.45 CA$6.17\nQST 9.975% (CA-QC) on CA$123.45 CA$12.31\n" \
           "Total due CA$141.93" in ca, ca
    jp = pdf_text(pdfs, invoices["jp"]["number"])
    assert "Subtotal ¥1,505\nJCT 10% (JP) on ¥1,505 ¥151\nTotal due ¥1,656" in jp, jp

    # Stripe computed the same tax on the same lines: its totals equal ours, to the minor unit.
    by_number = {i["number"]: i for i in fake_stripe.invoices.values()}
    assert {org: by_number[i["number"]]["total"] for org, i in invoices.items()} == {
        "de-buyer": 5130, "fr-valid": 4311, "exempt": 4311, "ca-qc": 14193, "jp": 1656}
    assert {org: by_number[i["number"]]["status"] for org, i in invoices.items()} == {org: "open" for org in invoices}
    assert sorted(t["amount"] for t in by_number[invoices["ca-qc"]["number"]]["total_taxes"]) == [617, 1231]
    assert by_number[invoices["fr-valid"]["number"]]["footer"] == REVERSE_CHARGE_MENTION
    assert by_number[invoices["fr-valid"]["number"]]["total_taxes"] == []
    # Our tax amounts went with the lines; Stripe made one archived TaxRate per rate from their data,
    # and billing made none itself (no call of its own for a rate).
    rates = fake_stripe.tax_rates
    assert sorted((r["display_name"], r["percentage_decimal"], r["jurisdiction"], r["active"])
                  for r in rates.values()) == [("GST", "5", "CA", False), ("JCT", "10", "JP", False),
                                               ("QST", "9.975", "CA-QC", False), ("VAT", "19", "DE", False)]
    assert fake_stripe.requests_for("POST", "/v1/tax_rates") == []

    # The dry run showed exactly what the real run did.
    plan = {item["organization_id"]: item for item in json.loads(dry.stdout)["plan"]}
    assert {org: (plan[org]["number"], plan[org]["total"], plan[org]["tax"]) for org in invoices} == {
        org: (i["number"], str(i["total"]), str(i["tax_total"])) for org, i in invoices.items()}
    assert json.loads(dry.stdout)["tax"] == summary["tax"]


def test_domestic_vat_is_rounded_once_on_the_subtotal_and_stripe_charges_exactly_that(
        db_url, engine, tmp_path, fake_stripe, stripe_env) -> None:
    """49.03 + 12,345 x 0.0101 = 124.6845 -> 124.68: a subtotal of 173.71 GBP. VAT 20% on it is
    34.742 -> 34.74. Rounded per line, as Stripe rounds a TaxRate's tax by default, it would be
    9.806 -> 9.81 plus 24.936 -> 24.94 = 34.75: billing sends its own 34.74, shared out over the
    lines (9.81 and 24.93), and Stripe adds it as it is."""
    apply(db_url, tmp_path)
    with engine.begin() as conn:
        customer(conn, "gb-buyer", "gb", "GBP", "12345", country="GB", tax_id="GB 980 7806 84")
    pdfs = tmp_path / "pdfs"
    env = {"DATABASE_URL": db_url, **BRITISH_SELLER, "INVOICE_OUTPUT_DIR": str(pdfs), **stripe_env}

    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env)

    assert result.exit_code == 0, result.output
    invoice = stored(engine)["gb-buyer"]
    assert (invoice["subtotal"], invoice["tax_total"], invoice["total"]) == (D("173.71"), D("34.74"), D("208.45"))
    assert invoice["taxes"] == [("VAT", "GB", None, D("20"), D("173.71"), D("34.74"), "standard")]
    [sent] = fake_stripe.invoices.values()
    assert (sent["status"], sent["subtotal"], sent["total"]) == ("open", 17371, 20845)
    assert [[(t["amount"], t["taxable_amount"]) for t in line["taxes"]] for line in sent["lines"]["data"]] == \
        [[(981, 4903)], [(2493, 12468)]]
    assert [(t["amount"], t["taxable_amount"]) for t in sent["total_taxes"]] == [(3474, 17371)]
    assert "Subtotal £173.71\nVAT 20% (GB) on £173.71 £34.74\nTotal due £208.45" in pdf_text(pdfs, invoice["number"])

    # billing reconcile agrees with a taxed invoice and its Stripe invoice (the usage of this test was
    # written as roll-ups without events: that difference is the only one), and sees a tax edited
    # behind its back.
    clean = runner.invoke(app, ["reconcile", "--month", "2024-01", "--json"], env=env)
    assert [d["kind"] for d in json.loads(clean.stdout)["differences"]] == ["rollup_behind"]
    assert json.loads(clean.stdout)["counts"]["stripe_invoices"] == 1
    with engine.begin() as conn:
        conn.execute(text("UPDATE invoice_taxes SET amount = amount + 0.01"))
    edited = runner.invoke(app, ["reconcile", "--month", "2024-01", "--json"], env=env)
    assert [d["kind"] for d in json.loads(edited.stdout)["differences"]] == ["rollup_behind", "invoice_total"]


def test_a_known_customer_with_known_rates_costs_three_stripe_calls(db_url, engine, tmp_path, fake_stripe,
                                                                   stripe_env) -> None:
    apply(db_url, tmp_path)
    with engine.begin() as conn:
        customer(conn, "gb-buyer", "gb", "GBP", "12345", country="GB")
        add_usage(conn, "gb-buyer", "api_calls", "100", hour=utc(2024, 2, 3, 4))
    env = {"DATABASE_URL": db_url, **BRITISH_SELLER, **stripe_env}
    assert runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env).exit_code == 0
    # A new customer: its creation, then the same three; the rate costs no call of its own.
    january = [(r.method, r.path.rsplit("/", 1)[-1]) for r in fake_stripe.requests]
    assert january == [("POST", "customers"), ("POST", "invoices"), ("POST", "add_lines"), ("POST", "send")]
    before = len(fake_stripe.requests)

    february = runner.invoke(app, ["invoice-monthly", "--month", "2024-02"], env=env)

    assert february.exit_code == 0, february.output
    calls = [(r.method, r.path.rsplit("/", 1)[-1]) for r in fake_stripe.requests[before:]]
    assert len(calls) == 3 and calls[0] == ("POST", "invoices") and calls[-1][1] == "send"
    # 49.03 + 100 x 0.0101 = 50.04; VAT 10.008 -> 10.01; the same (archived) TaxRate as January's.
    [february_invoice] = [i for i in fake_stripe.invoices.values() if i["number"].startswith("INV-2024-02")]
    assert february_invoice["total"] == 6005
    assert len(fake_stripe.tax_rates) == 1


def test_a_month_is_taxed_at_the_rate_in_force_on_its_first_day(db_url, engine, tmp_path, fake_stripe,
                                                                 stripe_env) -> None:
    """A new rate from 15 January 2024: January keeps the old one, February takes the new one."""
    taxes = TAXES + '\n[[rate]]\ncountry = "DE"\nname = "VAT"\npercentage = 21\neffective_from = 2024-01-15\n'
    apply(db_url, tmp_path, taxes=taxes)
    with engine.begin() as conn:
        customer(conn, "de-buyer", "eu", "EUR", "26784", country="DE")
        add_usage(conn, "de-buyer", "api_calls", "26784", hour=utc(2024, 2, 20, 8))
    pdfs = tmp_path / "pdfs"
    env = {"DATABASE_URL": db_url, **GERMAN_SELLER, "INVOICE_OUTPUT_DIR": str(pdfs), **stripe_env}

    for month in ("2024-01", "2024-02"):
        assert runner.invoke(app, ["invoice-monthly", "--month", month], env=env).exit_code == 0

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT i.period_start, i.subtotal, t.percentage, i.tax_total, i.total, i.number "
                                 "FROM invoices i JOIN invoice_taxes t ON t.invoice_id = i.id "
                                 "ORDER BY i.period_start")).all()
    # 43.11 x 19% = 8.1909 -> 8.19; 43.11 x 21% = 9.0531 -> 9.05
    assert [tuple(r)[1:5] for r in rows] == [(D("43.11"), D("19"), D("8.19"), D("51.30")),
                                             (D("43.11"), D("21"), D("9.05"), D("52.16"))]
    assert "Subtotal €43.11\nVAT 19% (DE) on €43.11 €8.19\nTotal due €51.30" in pdf_text(pdfs, rows[0].number)
    february = PdfReader(pdfs / "2024-02" / f"{rows[1].number}.pdf").pages[0].extract_text()
    assert "Subtotal €43.11\nVAT 21% (DE) on €43.11 €9.05\nTotal due €52.16" in february
    by_number = {i["number"]: i for i in fake_stripe.invoices.values()}
    assert [by_number[r.number]["total"] for r in rows] == [5130, 5216]
    # Two versions, two Stripe TaxRates (a TaxRate's percentage never changes).
    assert sorted(r["percentage_decimal"] for r in fake_stripe.tax_rates.values()) == ["19", "21"]


def test_taxes_off_leaves_invoices_as_they_were(db_url, engine, tmp_path, clean_env) -> None:
    apply(db_url, tmp_path)
    with engine.begin() as conn:
        customer(conn, "de-buyer", "eu", "EUR", "26784", country=None, tax_id="not a VAT id")

    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--json"], env={"DATABASE_URL": db_url})

    assert result.exit_code == 0, result.output
    invoice = stored(engine)["de-buyer"]
    assert (invoice["subtotal"], invoice["tax_total"], invoice["total"], invoice["taxes"]) == \
        (D("43.11"), D("0"), D("43.11"), [])
    assert json.loads(result.stdout)["tax"] == {}


@pytest.mark.parametrize(("currency", "base_fee", "country", "rate", "ours", "stripe_total"), [
    # 10.00 KWD + 1 call x 0.01 = 10.01 KWD (Stripe's hundredths); VAT 5% = 0.5005 -> 0.50: 10.51.
    # A TaxRate would have been computed by Stripe in thousandths: 10010 x 5% = 500.5 -> 501, 10.511.
    ("KWD", "10", "BH", "5", (D("10.010"), D("0.500"), D("10.510")), 10510),
    # 1,000 ISK + 1 call x 1 = 1,001 ISK; VAT 24% = 240.24 -> 240 (whole krónur): 1,241. A TaxRate's
    # tax in Stripe's hundredths would have been 24024, 240.24 ISK: a total Stripe cannot even charge.
    ("ISK", "1000", "IS", "24", (D("1001"), D("240"), D("1241")), 124100),
])
def test_a_taxed_invoice_in_a_currency_stripe_counts_finer_reaches_stripe_with_our_total(
        db_url, engine, tmp_path, fake_stripe, stripe_env, currency, base_fee, country, rate, ours,
        stripe_total) -> None:
    """Stripe counts KWD in thousandths and ISK in hundredths, while billing keeps them in what Stripe
    charges (hundredths, whole krónur): the tax billing sends is already in that unit, and Stripe adds
    it as it is."""
    unit_price = "0.01" if currency == "KWD" else "1"
    plans = (f'[[plan]]\nid = "p"\nname = "Plan"\ncurrency = "{currency}"\nbase_fee = {base_fee}\n\n'
             '  [[plan.price]]\n  metric = "api_calls"\n  description = "API calls"\n'
             f'  model = "per_unit"\n  unit_price = {unit_price}\n')
    apply(db_url, tmp_path, plans=plans,
          taxes=f'[[rate]]\ncountry = "{country}"\nname = "VAT"\npercentage = {rate}\neffective_from = 2022-01-01\n')
    with engine.begin() as conn:
        customer(conn, "buyer", "p", currency, "1", country=country)

    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"],
                           env={"DATABASE_URL": db_url, **GERMAN_SELLER, **stripe_env})

    invoice = stored(engine)["buyer"]
    assert (invoice["subtotal"], invoice["tax_total"], invoice["total"]) == ours
    assert result.exit_code == 0, result.output
    [sent] = fake_stripe.invoices.values()
    assert (sent["status"], sent["total"]) == ("open", stripe_total)


def test_taxed_lines_whose_answer_was_lost_are_replayed_under_their_key_never_added_twice(
        db_url, engine, tmp_path, fake_stripe, stripe_env) -> None:
    """The lines' call ran at Stripe but its answer was lost: the retry sends the same lines with the
    same tax amounts under the same idempotency key (Stripe refuses a key reused with other
    parameters), and is answered the first result."""
    apply(db_url, tmp_path)
    with engine.begin() as conn:
        customer(conn, "gb-buyer", "gb", "GBP", "12345", country="GB")
    fake_stripe.drop_next(1, method="POST", path_prefix="/v1/invoices/")

    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"],
                           env={"DATABASE_URL": db_url, **BRITISH_SELLER, **stripe_env})

    assert result.exit_code == 0, result.output
    lines_calls = [r for r in fake_stripe.requests if r.path.endswith("/add_lines")]
    assert len(lines_calls) == 2 and len({r.idempotency_key for r in lines_calls}) == 1
    [sent] = fake_stripe.invoices.values()
    assert (sent["status"], sent["total"], len(sent["lines"]["data"])) == ("open", 20845, 2)
    assert [(t["amount"], t["taxable_amount"]) for t in sent["total_taxes"]] == [(3474, 17371)]


def test_a_draft_an_older_billing_taxed_with_a_tax_rate_is_refused_then_cleared_by_regenerating(
        db_url, engine, tmp_path, fake_stripe, stripe_env) -> None:
    """What docs/taxes.md says of a KWD draft left by the version that attached Stripe TaxRates: its
    total (Stripe's 10.511) stays refused, and regenerating the invoice replaces it."""
    import stripe

    plans = ('[[plan]]\nid = "kw"\nname = "Kuwait"\ncurrency = "KWD"\nbase_fee = 10\n\n'
             '  [[plan.price]]\n  metric = "api_calls"\n  description = "API calls"\n'
             '  model = "per_unit"\n  unit_price = 0.01\n')
    apply(db_url, tmp_path, plans=plans,
          taxes='[[rate]]\ncountry = "BH"\nname = "VAT"\npercentage = 5\neffective_from = 2022-01-01\n')
    with engine.begin() as conn:
        customer(conn, "bh-buyer", "kw", "KWD", "1", country="BH")
    env = {"DATABASE_URL": db_url, **GERMAN_SELLER, **stripe_env}
    fake_stripe.fail_next(100, 500, method="POST", path_prefix="/v1/invoices/")  # the draft stays empty
    runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env)
    fake_stripe.clear_faults()
    old = stored(engine)["bh-buyer"]
    # The lines as the older version added them: each with a Stripe TaxRate of 5%.
    client = stripe.StripeClient(STRIPE_KEY, base_addresses={"api": fake_stripe.base_url})
    vat = client.v1.tax_rates.create({"display_name": "VAT", "percentage": 5, "inclusive": False})
    client.raw_request("post", f"/v1/invoices/{old['stripe_invoice_id']}/add_lines", lines=[
        {"amount": 10000, "tax_rates": [vat.id], "metadata": {"line_no": "1"}},
        {"amount": 10, "tax_rates": [vat.id], "metadata": {"line_no": "2"}}])

    refused = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env)
    regenerated = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--org", "bh-buyer", "--regenerate"],
                                env=env)

    assert refused.exit_code == ExitCode.PARTIAL
    assert "Stripe invoice total 10511 KWD differs from ours 10510 KWD" in " ".join(refused.output.split())
    assert "regenerate the invoice" in " ".join(refused.output.split())
    assert regenerated.exit_code == 0, regenerated.output
    new = stored(engine)["bh-buyer"]
    assert new["number"] != old["number"] and new["total"] == D("10.510")
    assert old["stripe_invoice_id"] not in fake_stripe.invoices  # the never-sent draft deleted
    assert fake_stripe.invoices[new["stripe_invoice_id"]]["status"] == "open"
    assert fake_stripe.invoices[new["stripe_invoice_id"]]["total"] == 10510


def test_an_invoice_whose_lines_stripe_would_tax_a_cent_more_reaches_stripe_with_our_total(
        db_url, engine, tmp_path, fake_stripe, stripe_env) -> None:
    """10.50 EUR base fee + 1,050 calls x 0.01 = 10.50: a subtotal of 21.00, VAT 19% = 3.99 on it,
    24.99 in all. Stripe rounding a TaxRate's tax per line (its default) would charge 1.995 -> 2.00
    twice, 25.00: billing sends 3.99, shared out as 2.00 and 1.99 (the tie to the first line)."""
    plans = ('[[plan]]\nid = "eu"\nname = "Europe"\ncurrency = "EUR"\nbase_fee = 10.5\n\n'
             '  [[plan.price]]\n  metric = "api_calls"\n  description = "API calls"\n'
             '  model = "per_unit"\n  unit_price = 0.01\n')
    apply(db_url, tmp_path, plans=plans)
    with engine.begin() as conn:
        customer(conn, "de-buyer", "eu", "EUR", "1050", country="DE")

    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"],
                           env={"DATABASE_URL": db_url, **GERMAN_SELLER, **stripe_env})

    assert result.exit_code == 0, result.output
    invoice = stored(engine)["de-buyer"]
    assert (invoice["subtotal"], invoice["tax_total"], invoice["total"]) == (D("21.00"), D("3.99"), D("24.99"))
    [sent] = fake_stripe.invoices.values()
    assert (sent["status"], sent["subtotal"], sent["total"]) == ("open", 2100, 2499)
    assert [[t["amount"] for t in line["taxes"]] for line in sent["lines"]["data"]] == [[200], [199]]
    assert [(t["amount"], t["taxable_amount"]) for t in sent["total_taxes"]] == [(399, 2100)]


def test_the_documented_dry_run_before_taxes_lists_the_organizations_taxes_would_refuse(db_url, engine, tmp_path,
                                                                                          clean_env) -> None:
    """docs/taxes.md, "Moving an existing install to taxes", step 3: the command as written there."""
    import re
    import shlex

    docs = (Path(__file__).parents[1] / "docs" / "taxes.md").read_text()
    [(assignments, arguments)] = re.findall(r"`((?:[A-Z_]+=\S+ )+)billing (invoice-monthly [^|`]*)\|", docs)
    env = dict(assignment.split("=", 1) for assignment in assignments.split())
    apply(db_url, tmp_path)
    with engine.begin() as conn:
        customer(conn, "de-buyer", "eu", "EUR", "26784", country="DE")
        customer(conn, "no-country", "eu", "EUR", "26784", country=None)

    result = runner.invoke(app, [*shlex.split(arguments), "--month", "2024-01"], env={"DATABASE_URL": db_url, **env})

    assert result.exit_code == ExitCode.PARTIAL, result.output
    refused = [item for item in json.loads(result.stdout)["plan"] if item["action"] == "refuse"]
    assert [item["organization_id"] for item in refused] == ["no-country"]
    assert "set organizations.billing_country" in refused[0]["errors"][0][1]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM invoices")).scalar_one() == 0  # a dry run


# -- configuration -----------------------------------------------------------------------------------


def test_taxes_on_need_the_sellers_country_and_a_valid_tax_id(db_url, clean_env) -> None:
    missing = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"],
                            env={"DATABASE_URL": db_url, "INVOICE_TAXES": "true"})
    invalid = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"],
                            env={"DATABASE_URL": db_url, "INVOICE_TAXES": "true", "INVOICE_SELLER_COUNTRY": "DE",
                                 "INVOICE_SELLER_TAX_ID": "DE136695977"})
    shown = runner.invoke(app, ["config", "--json"], env={"DATABASE_URL": db_url, **GERMAN_SELLER})

    assert missing.exit_code == ExitCode.CONFIG
    assert ("INVOICE_TAXES is on but INVOICE_SELLER_COUNTRY and INVOICE_SELLER_TAX_ID are not set"
            in " ".join(missing.output.split()))
    assert invalid.exit_code == ExitCode.CONFIG
    assert "INVOICE_SELLER_TAX_ID: tax id 'DE136695977' is not a valid EU VAT number" in " ".join(invalid.output.split())
    variables = {v["name"]: v for v in json.loads(shown.stdout)["settings"]}
    assert variables["INVOICE_TAXES"]["value"] == "true" and variables["INVOICE_SELLER_COUNTRY"]["value"] == "DE"


# -- the taxes file ----------------------------------------------------------------------------------


def test_taxes_apply_is_all_or_nothing_and_names_each_bad_line(db_url, tmp_path, clean_env) -> None:
    bad = tmp_path / "taxes.toml"
    bad.write_text('[[rate]]\ncountry = "DE"\nname = "VAT"\npercentage = 19\neffective_from = 2007-01-01\n\n'
                   '[[rate]]\ncountry = "XX"\nname = "VAT"\npercentag = 20\neffective_from = 2020-01-01\n')

    result = runner.invoke(app, ["taxes", "apply", str(bad)], env={"DATABASE_URL": db_url})
    listed = runner.invoke(app, ["taxes", "list", "--json"], env={"DATABASE_URL": db_url})

    assert result.exit_code == ExitCode.USAGE
    text_ = " ".join(result.output.split())
    assert f"{bad}:8: rate #2: `country` = 'XX' is not an ISO 3166-1 alpha-2 code" in text_
    assert f"{bad}:10: rate #2: unknown key 'percentag' (did you mean 'percentage'?)" in text_
    assert f"{bad}:7: rate #2: `percentage` is missing" in text_
    assert json.loads(listed.stdout) == []  # nothing applied, not even the valid first rate


def test_a_control_character_in_a_rate_is_named_with_its_line_never_a_database_traceback(db_url, tmp_path,
                                                                                            clean_env) -> None:
    """TOML lets a string hold any control character (`\\u0000`); PostgreSQL's text cannot hold NUL."""
    bad = tmp_path / "taxes.toml"
    bad.write_text('[[rate]]\ncountry = "DE"\nname = "VAT\\u0000"\npercentage = 19\neffective_from = 2007-01-01\n'
                   'mention = "Reverse\\u0007charge"\n')

    result = runner.invoke(app, ["taxes", "apply", str(bad)], env={"DATABASE_URL": db_url})
    listed = runner.invoke(app, ["taxes", "list", "--json"], env={"DATABASE_URL": db_url})

    assert result.exit_code == ExitCode.USAGE, (result.exit_code, repr(result.exception))
    text_ = " ".join(result.output.split())
    assert f"{bad}:3: rate #1: `name` must be the tax's name" in text_ and "control characters" in text_
    assert f"{bad}:6: rate #1: `mention` must be text" in text_
    assert json.loads(listed.stdout) == []


def test_the_vat_prefixes_that_are_no_country_codes_are_named_with_the_code_to_write() -> None:
    """Greece's VAT prefix is EL and the United Kingdom is UK in common use; ISO 3166-1 says GR and GB."""
    with pytest.raises(TaxFileError) as refused:
        parse_taxes('[[rate]]\ncountry = "EL"\nname = "VAT"\npercentage = 24\neffective_from = 2016-06-01\n\n'
                    '[[rate]]\ncountry = "UK"\nname = "VAT"\npercentage = 20\neffective_from = 2011-01-04\n')
    assert "taxes.toml:2: rate #1: `country` = 'EL' is not an ISO 3166-1 alpha-2 code (did you mean 'GR'?)" \
        in str(refused.value)
    assert "taxes.toml:8: rate #2: `country` = 'UK' is not an ISO 3166-1 alpha-2 code (did you mean 'GB'?)" \
        in str(refused.value)


def test_a_percentage_with_trailing_zeros_is_not_refused_for_its_decimals() -> None:
    """'9.97500' (as a spreadsheet writes it) has three decimals that count, within Stripe's four."""
    [rate] = parse_taxes('[[rate]]\ncountry = "CA"\nregion = "QC"\nname = "QST"\npercentage = "9.97500"\n'
                         'effective_from = 2013-01-01\n')
    assert str(rate.percentage) == "9.975"
    with pytest.raises(TaxFileError, match=r"`percentage` = 9.97501 has more than 4 decimals"):
        parse_taxes('[[rate]]\ncountry = "CA"\nname = "GST"\npercentage = 9.97501\neffective_from = 2013-01-01\n')


def test_a_taxes_file_that_is_not_utf8_is_a_usage_error(db_url, tmp_path, clean_env) -> None:
    taxes = tmp_path / "taxes.toml"
    taxes.write_bytes(TAXES.replace("JCT", "Consumption tax – JCT").encode("cp1252"))  # a legacy code page
    result = runner.invoke(app, ["taxes", "apply", str(taxes)], env={"DATABASE_URL": db_url})
    assert result.exit_code == ExitCode.USAGE, (result.exit_code, repr(result.exception))
    assert "taxes.toml" in result.output and "not UTF-8" in result.output

    taxes.write_bytes(TAXES.encode("utf-8-sig"))  # UTF-8 with the byte-order mark Notepad writes: fine
    result = runner.invoke(app, ["taxes", "apply", str(taxes)], env={"DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output


def test_taxes_list_shows_every_version_and_a_used_version_cannot_change(db_url, engine, tmp_path, clean_env) -> None:
    apply(db_url, tmp_path)
    with engine.begin() as conn:
        customer(conn, "de-buyer", "eu", "EUR", "26784", country="DE")
    assert runner.invoke(app, ["invoice-monthly", "--month", "2024-01"],
                         env={"DATABASE_URL": db_url, **GERMAN_SELLER}).exit_code == 0
    changed = tmp_path / "changed.toml"
    changed.write_text(TAXES.replace("percentage = 19", "percentage = 18"))

    refused = runner.invoke(app, ["taxes", "apply", str(changed)], env={"DATABASE_URL": db_url})
    again = runner.invoke(app, ["taxes", "apply", str(tmp_path / "taxes.toml"), "--json"], env={"DATABASE_URL": db_url})
    listed = json.loads(runner.invoke(app, ["taxes", "list", "--json"], env={"DATABASE_URL": db_url}).stdout)

    assert refused.exit_code == ExitCode.USAGE
    assert "VAT DE from 2007-01-01 is 19% on issued invoices: add a version with a later effective_from" \
        in " ".join(refused.output.split())
    assert json.loads(again.stdout)["unchanged"] == ["VAT DE from 2007-01-01", "VAT GB from 2011-01-04",
                                                     "GST CA from 2008-01-01", "QST CA-QC from 2013-01-01",
                                                     "JCT JP from 2019-10-01"]
    assert {(r["jurisdiction"], r["name"], r["percentage"], r["effective_from"]) for r in listed} == {
        ("CA", "GST", "5", "2008-01-01"), ("CA-QC", "QST", "9.975", "2013-01-01"), ("DE", "VAT", "19", "2007-01-01"),
        ("GB", "VAT", "20", "2011-01-04"), ("JP", "JCT", "10", "2019-10-01")}


def test_a_rate_left_out_of_the_file_is_never_silently_still_charged(db_url, engine, tmp_path, clean_env) -> None:
    """Rates stay in the database when the file stops listing them (issued invoices and reruns of old
    months need them), and so stay in force. A file that renames "VAT" to "USt", or drops a rate or
    its latest version, must not leave the old one charged on every new invoice besides: German
    customers would pay 19% twice. `taxes apply` refuses it, naming the rate and what to write."""
    apply(db_url, tmp_path)
    renamed = tmp_path / "renamed.toml"
    renamed.write_text(TAXES.replace('name = "VAT"\npercentage = 19', 'name = "USt"\npercentage = 19'))
    dropped = tmp_path / "dropped.toml"
    dropped.write_text(TAXES.split("# Canada")[0])  # no GST, no QST, no JCT any more
    env = {"DATABASE_URL": db_url}

    refused = runner.invoke(app, ["taxes", "apply", str(renamed)], env=env)
    refused_too = runner.invoke(app, ["taxes", "apply", str(dropped)], env=env)

    assert refused.exit_code == ExitCode.USAGE, refused.output
    said = " ".join(refused.output.split())
    assert "VAT DE from 2007-01-01 (19%) is not in the file but would stay in force" in said
    assert "end it by adding a version with a later effective_from (0%, with its mention)" in said
    assert refused_too.exit_code == ExitCode.USAGE, refused_too.output
    said = " ".join(refused_too.output.split())
    assert all(f"{rate} is not in the file but would stay in force" in said
               for rate in ("GST CA from 2008-01-01 (5%)", "QST CA-QC from 2013-01-01 (9.975%)",
                            "JCT JP from 2019-10-01 (10%)"))
    with engine.begin() as conn:
        customer(conn, "de-buyer", "eu", "EUR", "26784", country="DE")
    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env={**env, **GERMAN_SELLER})
    assert result.exit_code == 0, result.output
    assert stored(engine)["de-buyer"]["taxes"] == [("VAT", "DE", None, D("19"), D("43.11"), D("8.19"), "standard")]

    # Ending a rate the documented way (a later version, 0% with its mention) is applied; the older
    # versions a file leaves out stay, as history.
    ended = tmp_path / "ended.toml"
    ended.write_text(TAXES.replace('effective_from = 2019-10-01', 'effective_from = 2019-10-01\n\n[[rate]]\n'
                                   'country = "JP"\nname = "JCT"\npercentage = 0\neffective_from = 2030-01-01\n'
                                   'mention = "No JCT after 2029"'))
    history = tmp_path / "history.toml"
    history.write_text(ended.read_text().replace('name = "JCT"\npercentage = 10\neffective_from = 2019-10-01',
                                                 'name = "JCT"\npercentage = 10\neffective_from = 2019-10-02'))
    assert runner.invoke(app, ["taxes", "apply", str(ended)], env=env).exit_code == 0
    kept = runner.invoke(app, ["taxes", "apply", str(history), "--json"], env=env)
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.stdout)["kept"] == ["JCT JP from 2019-10-01"]


# -- the rules, pure -----------------------------------------------------------------------------------


def test_tax_ids_are_checked_for_their_country() -> None:
    assert check_tax_id("GB 980 7806 84", "GB").checked
    assert check_tax_id("51 824 753 556", "AU").compact == "51824753556"  # an ABN
    assert check_tax_id("27AAPFU0939F1ZV", "IN").checked  # a GSTIN
    assert check_tax_id("EL094259216", "GR").is_eu_vat
    with pytest.raises(TaxIdError, match="is a VAT number of DE, not of the billing country FR"):
        check_tax_id("DE136695976", "FR")
    with pytest.raises(TaxIdError, match="not a valid AU tax id"):
        check_tax_id("51 824 753 557", "AU")


def test_an_eu_vat_id_without_its_country_prefix_is_refused_saying_what_to_write() -> None:
    """Account services often keep the number alone; the reverse charge needs the VAT id, prefix included."""
    with pytest.raises(TaxIdError, match=r"tax id '40 303 265 045' lacks its country prefix: write FR40303265045"):
        check_tax_id("40 303 265 045", "FR")
    with pytest.raises(TaxIdError, match=r"lacks its country prefix: write EL094259216"):
        check_tax_id("094259216", "GR")
    with pytest.raises(TaxIdError, match=r"is not a valid EU VAT number"):
        check_tax_id("40303265046", "FR")  # a wrong check digit stays a wrong number


SETUP = TaxSetup("DE", "DE136695976", tuple(parse_taxes(TAXES)))


def test_a_country_without_a_rate_is_a_data_error_never_zero() -> None:
    with pytest.raises(TaxError, match="no tax rate for US-CA in force on 2024-01-01"):
        taxes_for(D("10.00"), "USD", BillingDetails(country="US", region="CA"), SETUP, date(2024, 1, 1))


def test_a_b2c_buyer_elsewhere_in_the_eu_pays_its_countrys_rate_or_is_refused() -> None:
    # No VAT id: no reverse charge; FR has no rate in this file, so it is a data error, not 0%.
    with pytest.raises(TaxError, match="no tax rate for FR"):
        taxes_for(D("10.00"), "EUR", BillingDetails(country="FR"), SETUP, date(2024, 1, 1))
    with_fr = TaxSetup("DE", "DE136695976", (*SETUP.rates, TaxRate("FR", None, "VAT", D(20), date(2014, 1, 1))))
    [french] = taxes_for(D("10.00"), "EUR", BillingDetails(country="FR"), with_fr, date(2024, 1, 1))
    assert (french.name, french.amount) == ("VAT", D("2.00"))


def test_tax_is_rounded_once_half_up_to_what_is_charged() -> None:
    assert tax_amount(D("0.05"), D("10"), "EUR") == D("0.01")  # 0.005 -> 0.01
    assert tax_amount(D("1505"), D("10"), "JPY") == D("151")  # 150.5 -> 151
    assert tax_amount(D("100"), D("9.975"), "ISK", Precision.STRIPE) == D("10")  # Stripe charges whole krónur


def test_a_credit_note_reverses_exactly_the_tax_that_was_charged(db_url, engine, tmp_path, s3, mail, fake_stripe,
                                                                   clean_env) -> None:
    """The GB invoice of 173.71 + VAT 34.74 = 208.45 GBP, sent (Stripe and e-mail), then voided: its
    credit note carries the same lines negated and the same VAT reversed (-34.74 on -173.71, never
    computed again), -208.45 in all, in S3 and in the customer's mailbox; Stripe's open invoice is
    voided."""
    apply(db_url, tmp_path)
    with engine.begin() as conn:
        customer(conn, "gb-buyer", "gb", "GBP", "12345", country="GB", tax_id="GB 980 7806 84")
    env = peer_env(db_url, s3, mail, fake_stripe, **BRITISH_SELLER, DELIVERY_MAX_RETRY_SECONDS="5")
    assert runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env).exit_code == 0
    invoice = stored(engine)["gb-buyer"]

    voided = runner.invoke(app, ["invoices", "void", invoice["number"], "--reason", "Wrong VAT number", "--yes"],
                           env=env)

    assert voided.exit_code == 0, voided.output
    with engine.connect() as conn:
        note = conn.execute(text("SELECT number, subtotal, tax_total, total, s3_key FROM credit_notes")).one()
    assert note.number == "CN-2024-01-000001"
    assert (note.subtotal, note.tax_total, note.total) == (D("-173.71"), D("-34.74"), D("-208.45"))
    body = s3.client().get_object(Bucket=s3.bucket, Key=note.s3_key)["Body"].read()
    printed = PdfReader(io.BytesIO(body)).pages[0].extract_text()
    assert f"Credit note for {invoice['number']}" in printed
    assert "Subtotal -£173.71\nVAT 20% (GB) on -£173.71 -£34.74\nTotal credited -£208.45" in printed
    assert fake_stripe.invoices[invoice["stripe_invoice_id"]]["status"] == "void"
    assert any(note.number in m.message["Subject"] for m in mail.received)
