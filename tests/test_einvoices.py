"""Factur-X e-invoices (INVOICE_EINVOICE=facturx), end to end: the XML found in each PDF the real
commands wrote, validated against the Factur-X EN 16931 XSD the factur-x library ships and against the
official EN 16931 Schematron it ships too (run with Saxon-HE), and its figures equal to the stored
invoice, the PDF's text and the hand-computed figures of tests/test_taxes.py."""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from decimal import Decimal as D
from functools import cache
from importlib.resources import files
from pathlib import Path

import facturx
import pytest
from lxml import etree
from pypdf import PdfReader
from sqlalchemy import text
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.config import load_settings
from billing_cli.db import invoice_store
from billing_cli.delivery.pdf import RenderPool, render_invoice
from billing_cli.einvoice import NOT_SUBJECT_TO_VAT
from billing_cli.errors import ExitCode
from billing_cli.runs.wiring import seller_from_settings
from billing_cli.taxes import EXEMPT_MENTION, REVERSE_CHARGE_MENTION
from tests.data import SELLER_ENV, add_org, set_plan, utc
from tests.peers.fixtures import peer_env
from tests.test_late_usage import events, roll_up
from tests.test_taxes import BRITISH_SELLER, GERMAN_SELLER, apply, customer, stored

runner = CliRunner()
NS = {"rsm": "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
      "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
      "udt": "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100"}
FACTURX = {"INVOICE_EINVOICE": "facturx"}


@cache
def _schematron():
    """The EN 16931 Schematron for CII, as the XSLT 2.0 the factur-x package ships, compiled once."""
    from saxonche import PySaxonProcessor

    processor = PySaxonProcessor(license=False)
    stylesheet = files("facturx") / "xsd_and_schematron" / "facturx-en16931" / "FACTUR-X_EN16931.xslt"
    return processor, processor.new_xslt30_processor().compile_stylesheet(stylesheet_file=str(stylesheet))


def schematron_errors(xml: bytes) -> list[str]:
    """Every failed assertion of the EN 16931 business rules (BR-…), warnings left out."""
    processor, stylesheet = _schematron()
    report = etree.fromstring(stylesheet.transform_to_string(
        xdm_node=processor.parse_xml(xml_text=xml.decode())).encode())
    svrl = {"svrl": "http://purl.oclc.org/dsdl/svrl"}
    return [f"{failed.get('id')}: {' '.join(failed.findtext('svrl:text', '', svrl).split())}"
            for failed in report.iterfind(".//svrl:failed-assert", svrl) if failed.get("flag") != "warning"]


def embedded_xml(pdf: bytes) -> bytes:
    """The Factur-X XML embedded in `pdf`, checked to be valid EN 16931 by the XSD and the Schematron."""
    filename, xml = facturx.get_xml_from_pdf(pdf, check_xsd=False)
    assert filename == "factur-x.xml"
    assert facturx.xml_check_xsd(xml, flavor="factur-x", level="en16931")
    assert schematron_errors(xml) == []
    return xml


def figures(xml: bytes) -> dict:
    root = etree.fromstring(xml)

    def one(path: str) -> str | None:
        found = root.xpath(path, namespaces=NS)
        return found[0].text if found else None

    totals = "//ram:SpecifiedTradeSettlementHeaderMonetarySummation/ram:"
    header_tax = "//ram:ApplicableHeaderTradeSettlement/ram:ApplicableTradeTax"
    return {
        "type": one("//rsm:ExchangedDocument/ram:TypeCode"), "number": one("//rsm:ExchangedDocument/ram:ID"),
        "profile": one("//ram:GuidelineSpecifiedDocumentContextParameter/ram:ID"),
        "currency": one("//ram:InvoiceCurrencyCode"),
        "totals": tuple(D(one(totals + name)) for name in ("LineTotalAmount", "TaxBasisTotalAmount", "TaxTotalAmount",
                                                           "GrandTotalAmount", "DuePayableAmount")),
        "vat": [(t.findtext("ram:CategoryCode", None, NS), t.findtext("ram:RateApplicablePercent", None, NS),
                 D(t.findtext("ram:BasisAmount", None, NS)), D(t.findtext("ram:CalculatedAmount", None, NS)),
                 t.findtext("ram:ExemptionReason", None, NS), t.findtext("ram:ExemptionReasonCode", None, NS))
                for t in root.xpath(header_tax, namespaces=NS)],
        "lines": [(D(item.xpath(".//ram:BilledQuantity", namespaces=NS)[0].text),
                   D(item.xpath(".//ram:ChargeAmount", namespaces=NS)[0].text),
                   D(item.xpath(".//ram:LineTotalAmount", namespaces=NS)[0].text))
                  for item in root.xpath("//ram:IncludedSupplyChainTradeLineItem", namespaces=NS)],
        "seller_vat": one("//ram:SellerTradeParty/ram:SpecifiedTaxRegistration/ram:ID[@schemeID='VA']"),
        "buyer_vat": one("//ram:BuyerTradeParty/ram:SpecifiedTaxRegistration/ram:ID[@schemeID='VA']"),
        "buyer_country": one("//ram:BuyerTradeParty/ram:PostalTradeAddress/ram:CountryID"),
        "seller_country": one("//ram:SellerTradeParty/ram:PostalTradeAddress/ram:CountryID"),
        "buyer_email": one("//ram:BuyerTradeParty/ram:URIUniversalCommunication/ram:URIID"),
        "due": one("//ram:DueDateDateTime/udt:DateTimeString"),
        "preceding": one("//ram:InvoiceReferencedDocument/ram:IssuerAssignedID"),
    }


def stored_lines(engine, invoice_id: int) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT quantity, unit_price, amount FROM invoice_lines WHERE invoice_id = :id ORDER BY line_no"),
            {"id": invoice_id})]


def pdf_file(folder: Path, number: str) -> Path:
    return folder / number[4:11] / f"{number}.pdf"


def page_text(pdf: bytes) -> str:
    return "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def test_each_tax_rule_gives_a_valid_en16931_invoice_with_the_stored_figures(db_url, engine, tmp_path,
                                                                              clean_env) -> None:
    apply(db_url, tmp_path)
    with engine.begin() as conn:
        # The figures of tests/test_taxes.py: 43.11 EUR; 123.45 CAD in Quebec; 1,505 JPY.
        customer(conn, "de-buyer", "eu", "EUR", "26784", country="DE", tax_id="DE811907980")
        customer(conn, "fr-valid", "eu", "EUR", "26784", country="FR", tax_id="FR 40 303265045")
        customer(conn, "exempt", "eu", "EUR", "26784", country="DE", exempt=True)
        customer(conn, "ca-qc", "ca", "CAD", "2345", country="CA", region="QC")
        customer(conn, "jp", "jp", "JPY", "1003", country="JP")
    pdfs = tmp_path / "pdfs"
    env = {"DATABASE_URL": db_url, **GERMAN_SELLER, **FACTURX, "INVOICE_OUTPUT_DIR": str(pdfs)}

    dry = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--dry-run", "--output-dir",
                              str(tmp_path / "previews")], env=env)
    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env)

    assert dry.exit_code == 0, dry.output
    previews = sorted((tmp_path / "previews" / "2024-01").iterdir())
    assert len(previews) == 5  # a preview is no e-invoice: its number was never taken
    assert all(facturx.get_xml_from_pdf(p.read_bytes(), check_xsd=False) == (False, False) for p in previews)
    assert result.exit_code == 0, result.output
    invoices = stored(engine)
    found = {}
    for org, invoice in invoices.items():
        pdf = pdf_file(pdfs, invoice["number"]).read_bytes()
        found[org] = figures(embedded_xml(pdf))
        # Totals: lines, tax basis, tax, grand total and due, as stored; the lines as stored.
        subtotal, tax, total = invoice["subtotal"], invoice["tax_total"], invoice["total"]
        assert found[org]["totals"] == (subtotal, subtotal, tax, total, total), org
        assert found[org]["lines"] == stored_lines(engine, invoice["id"]), org
        assert (found[org]["type"], found[org]["number"], found[org]["currency"], found[org]["profile"]) == \
            ("380", invoice["number"], invoice["currency"], "urn:cen.eu:en16931:2017")
        assert (found[org]["seller_vat"], found[org]["seller_country"]) == ("DE136695976", "DE")
        # The PDF's own text prints the same total.
        assert invoice["number"] in page_text(pdf)
    assert found["de-buyer"]["vat"] == [("S", "19", D("43.11"), D("8.19"), None, None)]
    assert (found["de-buyer"]["buyer_vat"], found["de-buyer"]["buyer_country"]) == ("DE811907980", "DE")
    assert found["fr-valid"]["vat"] == [("AE", "0", D("43.11"), D("0.00"), REVERSE_CHARGE_MENTION, "VATEX-EU-AE")]
    assert (found["fr-valid"]["buyer_vat"], found["fr-valid"]["buyer_country"]) == ("FR40303265045", "FR")
    assert found["exempt"]["vat"] == [("E", "0", D("43.11"), D("0.00"), EXEMPT_MENTION, None)]
    # GST 5% and QST 9.975% on the same 123.45: one line can carry one VAT rate, so 14.975% whose tax
    # is the two stored taxes (6.17 + 12.31), within the rule's one unit of 123.45 x 14.975% = 18.49.
    assert found["ca-qc"]["vat"] == [("S", "14.975", D("123.45"), D("18.48"), None, None)]
    assert found["jp"]["vat"] == [("S", "10", D("1505"), D("151"), None, None)]
    assert found["jp"]["totals"] == (D("1505"), D("1505"), D("151"), D("1656"), D("1656"))
    de_text = page_text(pdf_file(pdfs, invoices["de-buyer"]["number"]).read_bytes())
    assert "Subtotal €43.11\nVAT 19% (DE) on €43.11 €8.19\nTotal due €51.30" in de_text, de_text
    jp_text = page_text(pdf_file(pdfs, invoices["jp"]["number"]).read_bytes())
    assert "Subtotal ¥1,505\nJCT 10% (JP) on ¥1,505 ¥151\nTotal due ¥1,656" in jp_text, jp_text


def test_the_stored_sha256_is_of_the_factur_x_pdf_which_renders_again_to_the_same_bytes(db_url, engine, tmp_path,
                                                                                       clean_env) -> None:
    apply(db_url, tmp_path)
    with engine.begin() as conn:
        customer(conn, "de-buyer", "eu", "EUR", "26784", country="DE", tax_id="DE811907980")
    pdfs = tmp_path / "pdfs"
    env = {"DATABASE_URL": db_url, **GERMAN_SELLER, **FACTURX, "INVOICE_OUTPUT_DIR": str(pdfs)}
    assert runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env).exit_code == 0
    invoice = stored(engine)["de-buyer"]
    pdf = pdf_file(pdfs, invoice["number"]).read_bytes()
    with engine.connect() as conn:
        sha256, issue_date = conn.execute(text("SELECT pdf_sha256, issue_date FROM invoices WHERE id = :id"),
                                          {"id": invoice["id"]}).one()
        document = invoice_store.load_document(conn, invoice["id"])

    assert hashlib.sha256(pdf).hexdigest() == sha256
    # Rendered again from what is stored, later: the same bytes (the library's time stamps are
    # pinned to the issue date), in PDF/A-3 with the Factur-X metadata.
    seller = seller_from_settings(load_settings(env))
    assert render_invoice(document, seller) == pdf
    pool = RenderPool(2)  # large runs render in worker processes: the same bytes there
    try:
        assert pool(document, seller) == pdf
    finally:
        pool.close()
    reader = PdfReader(io.BytesIO(pdf))
    stamp = f"D:{issue_date:%Y%m%d}000000+00'00'"
    assert (reader.metadata["/CreationDate"], reader.metadata["/ModDate"]) == (stamp, stamp)
    xmp = reader.trailer["/Root"]["/Metadata"].get_object().get_data().decode()
    for fact in ("<pdfaid:part>3</pdfaid:part>", "<pdfaid:conformance>B</pdfaid:conformance>",
                 "<fx:ConformanceLevel>EN 16931</fx:ConformanceLevel>", "<fx:DocumentFileName>factur-x.xml",
                 f"<xmp:CreateDate>{issue_date:%Y-%m-%d}T00:00:00+00:00</xmp:CreateDate>"):
        assert fact in xmp, fact
    [intent] = reader.trailer["/Root"]["/OutputIntents"]
    assert (intent["/S"], intent["/OutputConditionIdentifier"]) == ("/GTS_PDFA1", "sRGB")
    assert intent["/DestOutputProfile"].get_object().get_data()[36:40] == b"acsp"  # an ICC profile
    # PDF/A: every font is embedded (no core Helvetica left).
    fonts = [font.get_object() for font in reader.pages[0]["/Resources"]["/Font"].values()]
    assert fonts and all("/DescendantFonts" in font for font in fonts)
    assert all("/FontFile2" in font["/DescendantFonts"][0].get_object()["/FontDescriptor"] for font in fonts)
    # A second run finds nothing to do and no rendering that differs.
    again = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env)
    assert again.exit_code == 0 and "differs from the first rendering" not in again.output
    # Without Factur-X the same document is a plain PDF with no XML in it.
    plain = render_invoice(document, replace(seller, einvoice=None))
    assert facturx.get_xml_from_pdf(plain, check_xsd=False) == (False, False)  # the library's "none found"
    # A regenerated invoice names the void one it replaces as its preceding invoice (BT-25).
    regenerated = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--org", "de-buyer", "--regenerate"],
                                env=env)
    assert regenerated.exit_code == 0, regenerated.output
    replacement = stored(engine)["de-buyer"]
    found = figures(embedded_xml(pdf_file(pdfs, replacement["number"]).read_bytes()))
    assert (found["number"], found["preceding"]) == (replacement["number"], invoice["number"])


def test_without_taxes_the_e_invoice_is_outside_the_scope_of_vat_and_credits_are_negative_lines(
        db_url, engine, tmp_path, clean_env) -> None:
    """Taxes off, a French buyer. January: 100 calls x 0.10 = 10.00 EUR. 80 of them are deleted:
    February credits -8.00 for January and carries the credit (+8.00), total 0.00. March: 200 calls
    = 20.00, minus the 8.00 credit = 12.00."""
    plans = tmp_path / "plans.toml"
    from tests.data import PLANS

    plans.write_text(PLANS)
    assert runner.invoke(app, ["plans", "apply", str(plans)], env={"DATABASE_URL": db_url}).exit_code == 0
    with engine.begin() as conn:
        add_org(conn, "sarl", currency="EUR", name="Exemple SARL", email="compta@exemple.fr")
        conn.execute(text("UPDATE organizations SET billing_address_line1 = '10 rue de la Paix', "
                          "billing_postal_code = '75002', billing_city = 'Paris', billing_country = 'FR', "
                          "tax_id = 'FR40303265045' WHERE id = 'sarl'"))
        set_plan(conn, "sarl", "euro")
    pdfs = tmp_path / "pdfs"
    env = {**SELLER_ENV, **FACTURX, "INVOICE_SELLER_COUNTRY": "DE", "INVOICE_SELLER_TAX_ID": "DE136695976",
           "INVOICE_OUTPUT_DIR": str(pdfs)}

    def invoice(month: str) -> None:
        result = runner.invoke(app, ["invoice-monthly", "--month", month], env={"DATABASE_URL": db_url, **env})
        assert result.exit_code == 0, result.output

    events(engine, "sarl", 100, utc(2024, 1, 10, 9))
    roll_up(db_url)
    invoice("2024-01")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM usage_events WHERE organization_id = 'sarl' AND idempotency_key IN "
                          "(SELECT idempotency_key FROM usage_events ORDER BY idempotency_key LIMIT 80)"))
    roll_up(db_url)
    invoice("2024-02")
    events(engine, "sarl", 200, utc(2024, 3, 3, 9))
    roll_up(db_url)
    invoice("2024-03")

    with engine.connect() as conn:
        numbers = dict(conn.execute(text("SELECT to_char(billing_month, 'YYYY-MM'), number FROM invoices "
                                         "ORDER BY billing_month")).all())
    january, february, march = (figures(embedded_xml(pdf_file(pdfs, numbers[m]).read_bytes()))
                                for m in ("2024-01", "2024-02", "2024-03"))
    # No VAT: category O with its reason, no rate, and no VAT identifier of either party (BR-O-02).
    assert january["vat"] == [("O", None, D("10.00"), D("0.00"), NOT_SUBJECT_TO_VAT, "VATEX-EU-O")]
    assert (january["seller_vat"], january["buyer_vat"]) == (None, None)
    assert (january["buyer_country"], january["buyer_email"]) == ("FR", "compta@exemple.fr")
    assert january["totals"] == (D("10.00"), D("10.00"), D("0.00"), D("10.00"), D("10.00"))
    # The adjustment for January is stored as 1 x -8.00: in the XML a negative quantity at a positive
    # price (EN 16931 has no negative price, BR-27), its amount -8.00 as stored; then the credit carried.
    assert february["lines"] == [(D("-1"), D("8"), D("-8.00")), (D("1"), D("8"), D("8.00"))]
    assert february["totals"] == (D("0.00"), D("0.00"), D("0.00"), D("0.00"), D("0.00"))
    assert march["lines"] == [(D("200"), D("0.1"), D("20.00")), (D("-1"), D("8"), D("-8.00"))]
    assert march["totals"] == (D("12.00"), D("12.00"), D("0.00"), D("12.00"), D("12.00"))
    february_xml = etree.fromstring(facturx.get_xml_from_pdf(pdf_file(pdfs, numbers["2024-02"]).read_bytes(),
                                                             check_xsd=False)[1])
    [credit_period] = february_xml.xpath("//ram:IncludedSupplyChainTradeLineItem[1]//ram:BillingSpecifiedPeriod"
                                         "/ram:StartDateTime/udt:DateTimeString", namespaces=NS)
    assert credit_period.text == "20240101"  # the line corrects January
    assert "Total due €12.00" in page_text(pdf_file(pdfs, numbers["2024-03"]).read_bytes())


def test_the_invoice_email_attaches_the_factur_x_pdf_and_a_buyer_without_country_is_refused(
        billed, s3, mail, fake_stripe, clean_env, engine) -> None:
    env = peer_env(billed, s3, mail, fake_stripe, DELIVERY_MAX_RETRY_SECONDS="5", INVOICE_ENABLE_S3="false",
                   INVOICE_ENABLE_STRIPE="false", INVOICE_SELLER_COUNTRY="DE", INVOICE_SELLER_TAX_ID="DE136695976",
                   **FACTURX)
    with engine.begin() as conn:  # org-2 has no billing country: EN 16931 needs one
        conn.execute(text("UPDATE organizations SET billing_address_line1 = '1 Main Street', billing_city = 'Austin', "
                          "billing_region = 'TX', billing_postal_code = '78701', billing_country = 'US' "
                          "WHERE id IN ('org-1', 'org-3')"))

    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env)

    assert result.exit_code == ExitCode.PARTIAL, result.output
    assert "set organizations.billing_country" in " ".join(result.output.split())
    with engine.connect() as conn:
        invoices = {r.organization_id: r for r in conn.execute(text(
            "SELECT organization_id, number, total, pdf_sha256 FROM invoices"))}
    assert set(invoices) == {"org-1", "org-3"}  # org-2: refused before a number was taken
    assert len(mail.received) == 2
    for received in mail.received:
        [attachment] = list(received.message.iter_attachments())
        pdf = attachment.get_content()
        found = figures(embedded_xml(pdf))
        invoice = next(i for i in invoices.values() if i.number == found["number"])
        assert (attachment.get_content_type(), attachment.get_filename()) == ("application/pdf",
                                                                              f"{invoice.number}.pdf")
        assert hashlib.sha256(pdf).hexdigest() == invoice.pdf_sha256
        assert (found["totals"][-1], found["buyer_country"]) == (invoice.total, "US")
        assert found["buyer_email"] == f"{invoice.organization_id}@example.com"


def test_the_demo_pdfs_carry_valid_e_invoices(clean_env, db_url, engine) -> None:
    result = runner.invoke(app, ["demo"], env={"DATABASE_URL": db_url, **FACTURX})

    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        invoices = {r.organization_id: r for r in conn.execute(text(
            "SELECT organization_id, number, subtotal, tax_total, total FROM invoices WHERE status = 'issued'"))}
    folder = clean_env / ".billing" / "invoices"
    found = {org: figures(embedded_xml(pdf_file(folder, i.number).read_bytes())) for org, i in invoices.items()}
    assert len(found) == 6
    for org, invoice in invoices.items():
        assert found[org]["totals"] == (invoice.subtotal, invoice.subtotal, invoice.tax_total, invoice.total,
                                        invoice.total)
        assert found[org]["seller_country"] == "DE"
    assert found["demo-initech"]["vat"] == [("S", "19", D("582.30"), D("110.64"), None, None)]
    assert found["demo-lodz"]["vat"][0][:2] == ("AE", "0") and found["demo-lodz"]["buyer_vat"] == "PL5260250274"


def test_factur_x_needs_the_sellers_country_and_tax_id_and_is_shown_by_config(db_url, clean_env) -> None:
    missing = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env={"DATABASE_URL": db_url, **FACTURX})
    unknown = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"],
                            env={"DATABASE_URL": db_url, "INVOICE_EINVOICE": "zugferd"})
    invalid = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"],
                            env={"DATABASE_URL": db_url, **FACTURX, "INVOICE_SELLER_COUNTRY": "DE",
                                 "INVOICE_SELLER_TAX_ID": "DE136695977"})
    shown = runner.invoke(app, ["config", "--json"],
                          env={"DATABASE_URL": db_url, **FACTURX, "INVOICE_SELLER_COUNTRY": "DE",
                               "INVOICE_SELLER_TAX_ID": "DE136695976"})

    assert missing.exit_code == ExitCode.CONFIG
    assert ("INVOICE_EINVOICE is facturx but INVOICE_SELLER_COUNTRY and INVOICE_SELLER_TAX_ID are not set"
            in " ".join(missing.output.split()))
    assert unknown.exit_code == ExitCode.CONFIG
    assert "INVOICE_EINVOICE='zugferd': use off or facturx" in " ".join(unknown.output.split())
    assert invalid.exit_code == ExitCode.CONFIG
    assert ("INVOICE_SELLER_TAX_ID: tax id 'DE136695977' is not a valid EU VAT number"
            in " ".join(invalid.output.split()))
    assert shown.exit_code == 0, shown.output
    import json

    variables = {v["name"]: v["value"] for v in json.loads(shown.stdout)["settings"]}
    assert variables["INVOICE_EINVOICE"] == "facturx"


@pytest.mark.parametrize("schematron_rule, broken", [
    ("BR-CO-15", lambda xml: xml.replace(b"<ram:GrandTotalAmount>51.30", b"<ram:GrandTotalAmount>51.31")),
    ("BR-S-08", lambda xml: xml.replace(b"<ram:BasisAmount>43.11", b"<ram:BasisAmount>43.10")),
])
def test_the_schematron_check_catches_a_broken_invoice(schematron_rule, broken) -> None:
    """The check the tests above rely on can fail: a wrong total or tax basis is reported."""
    from datetime import date

    from billing_cli.einvoice import build_xml
    from billing_cli.invoices import InvoiceDocument, Seller
    from billing_cli.periods import Month
    from billing_cli.pricing import InvoiceLine
    from billing_cli.taxes import InvoiceTax

    month = Month.parse("2024-01")
    lines = (InvoiceLine("base_fee", "Europe plan, monthly fee", D(1), D(19), D("19.00")),
             InvoiceLine("usage", "API calls", D(26784), D("0.0009"), D("24.11"), "api_calls", month))
    doc = InvoiceDocument("INV-2024-01-000001", "de-buyer", "Customer", "c@example.com", month, date(2024, 2, 1),
                          date(2024, 3, 2), "EUR", lines, D("51.30"), bill_to_address=("1 Main Street", "Germany"),
                          bill_to_tax_id="DE811907980",
                          taxes=(InvoiceTax("VAT", "DE", None, D(19), D("43.11"), D("8.19")),))
    seller = Seller("Nimbus Metering GmbH", ("Hauptstraße 1", "10115 Berlin", "Germany"), "DE136695976", "DE")
    xml = build_xml(doc, seller)
    assert schematron_errors(xml) == []

    errors = schematron_errors(broken(xml))

    assert any(error.startswith(f"{schematron_rule}:") for error in errors), errors


def test_a_credit_note_is_type_381_in_positive_amounts_and_names_the_invoice_it_credits(
        db_url, engine, tmp_path, s3, mail, fake_stripe, clean_env) -> None:
    """The GB invoice of tests/test_taxes.py, 173.71 + VAT 34.74 = 208.45 GBP, e-mailed, then voided:
    its credit note stores -173.71, -34.74, -208.45. EN 16931 writes a credit note in positive
    amounts, its type code (381) giving the sign, and names the invoice it credits (BT-25)."""
    apply(db_url, tmp_path)
    with engine.begin() as conn:
        customer(conn, "gb-buyer", "gb", "GBP", "12345", country="GB", tax_id="GB 980 7806 84")
    env = peer_env(db_url, s3, mail, fake_stripe, **BRITISH_SELLER, **FACTURX, INVOICE_ENABLE_STRIPE="false",
                   DELIVERY_MAX_RETRY_SECONDS="5")
    assert runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env).exit_code == 0
    invoice = stored(engine)["gb-buyer"]

    voided = runner.invoke(app, ["invoices", "void", invoice["number"], "--reason", "Wrong VAT number", "--yes"],
                           env=env)

    assert voided.exit_code == 0, voided.output
    with engine.connect() as conn:
        note = conn.execute(text("SELECT number, subtotal, tax_total, total, s3_key, pdf_sha256 "
                                 "FROM credit_notes")).one()
        lines = conn.execute(text("SELECT quantity, unit_price, amount FROM credit_note_lines ORDER BY line_no")).all()
    assert (note.subtotal, note.tax_total, note.total) == (D("-173.71"), D("-34.74"), D("-208.45"))
    [message] = [m.message for m in mail.received if note.number in m.message["Subject"]]
    [attachment] = list(message.iter_attachments())
    pdf = attachment.get_content()
    assert hashlib.sha256(pdf).hexdigest() == note.pdf_sha256
    assert s3.client().get_object(Bucket=s3.bucket, Key=note.s3_key)["Body"].read() == pdf
    xml = embedded_xml(pdf)
    found = figures(xml)
    assert (found["type"], found["number"], found["preceding"]) == ("381", note.number, invoice["number"])
    assert found["totals"] == (D("173.71"), D("173.71"), D("34.74"), D("208.45"), D("208.45"))
    assert found["vat"] == [("S", "20", D("173.71"), D("34.74"), None, None)]
    # Each stored line negated: the same quantity at the positive price, a positive amount.
    assert found["lines"] == [(quantity, -price, -amount) for quantity, price, amount in lines]
    assert found["due"] is None  # nothing is due on a credit note
    assert "Reason: Wrong VAT number" in " ".join(etree.fromstring(xml).xpath("//ram:IncludedNote/ram:Content/text()",
                                                                             namespaces=NS))
    assert "Total credited -£208.45" in page_text(pdf)


def test_tax_ids_without_a_country_prefix_are_no_vat_identifiers() -> None:
    """An Australian seller and buyer, GST 10% on 100.00 AUD: their ABNs are no VAT identifiers in
    EN 16931 (BR-CO-09 wants a country prefix): the seller's is its identifier and tax registration,
    the buyer's its legal registration. A Greek VAT id keeps its EL prefix."""
    from datetime import date

    from billing_cli.einvoice import build_xml
    from billing_cli.invoices import InvoiceDocument, Seller
    from billing_cli.periods import Month
    from billing_cli.pricing import InvoiceLine
    from billing_cli.taxes import InvoiceTax

    month = Month.parse("2024-01")
    doc = InvoiceDocument("INV-2024-01-000001", "au-buyer", "Wombat Pty Ltd", "ap@wombat.example", month,
                          date(2024, 2, 1), date(2024, 3, 2), "AUD",
                          (InvoiceLine("base_fee", "Pro plan, monthly fee", D(1), D(100), D("100.00")),), D("110.00"),
                          bill_to_address=("1 George St", "Sydney, NSW 2000", "Australia"),
                          bill_to_tax_id="53 004 085 616",
                          taxes=(InvoiceTax("GST", "AU", None, D(10), D("100.00"), D("10.00")),))
    seller = Seller("Koala Cloud Pty Ltd", ("2 Pitt St", "Sydney, NSW 2000", "Australia"), "51 824 753 556", "AU")

    xml = build_xml(doc, seller)

    assert schematron_errors(xml) == []
    root = etree.fromstring(xml)
    assert root.xpath("//ram:SellerTradeParty/ram:ID/text()", namespaces=NS) == ["51824753556"]
    assert root.xpath("//ram:SellerTradeParty/ram:SpecifiedTaxRegistration/ram:ID/@schemeID", namespaces=NS) == ["FC"]
    assert root.xpath("//ram:BuyerTradeParty/ram:SpecifiedLegalOrganization/ram:ID/text()",
                      namespaces=NS) == ["53004085616"]
    assert figures(xml)["buyer_vat"] is None and figures(xml)["buyer_country"] == "AU"
    greek = build_xml(replace(doc, currency="EUR", bill_to_tax_id="EL 094259216", bill_to_address=("Athens", "Greece"),
                              taxes=(InvoiceTax("VAT", "GR", None, D(24), D("100.00"), D("24.00")),),
                              total=D("124.00")), replace(seller, tax_id="DE136695976", country="DE"))
    assert schematron_errors(greek) == [] and figures(greek)["buyer_vat"] == "EL094259216"


def test_an_anchored_period_is_the_e_invoices_billing_period(db_url, engine, tmp_path, clean_env) -> None:
    """An organization billed from the 15th: its January period is 15 Jan - 14 Feb 2024, and the
    XML says so (BT-73/BT-74, and the delivery date BT-72 is its last day), as the PDF prints it."""
    apply(db_url, tmp_path)
    with engine.begin() as conn:
        customer(conn, "de-anchored", "eu", "EUR", "26784", country="DE", tax_id="DE811907980")
        # The account service sets the anchor; the change is then dated long before 2024 (the trigger
        # records it as made now, which would leave January on the calendar month).
        conn.execute(text("UPDATE organizations SET billing_anchor_day = 15 WHERE id = 'de-anchored'"))
        conn.execute(text("UPDATE organizations SET billing_anchor_previous = NULL, billing_anchor_changed_at = NULL "
                          "WHERE id = 'de-anchored'"))
    pdfs = tmp_path / "pdfs"
    env = {"DATABASE_URL": db_url, **GERMAN_SELLER, **FACTURX, "INVOICE_OUTPUT_DIR": str(pdfs)}

    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env)

    assert result.exit_code == 0, result.output
    invoice = stored(engine)["de-anchored"]
    pdf = pdf_file(pdfs, invoice["number"]).read_bytes()
    root = etree.fromstring(embedded_xml(pdf))
    period = root.xpath("//ram:ApplicableHeaderTradeSettlement/ram:BillingSpecifiedPeriod", namespaces=NS)[0]
    assert [period.xpath(f"ram:{edge}/udt:DateTimeString", namespaces=NS)[0].text
            for edge in ("StartDateTime", "EndDateTime")] == ["20240115", "20240214"]
    assert root.xpath("//ram:ActualDeliverySupplyChainEvent//udt:DateTimeString", namespaces=NS)[0].text == "20240214"
    assert "15 Jan – 14 Feb 2024" in page_text(pdf)


def test_a_three_decimal_currency_is_billed_in_hundredths_that_en16931_can_carry(db_url, engine, tmp_path,
                                                                               clean_env) -> None:
    """EN 16931 allows at most two decimals in an amount (BR-DEC-09..23). A Bahraini buyer billed in
    BHD (three decimals in ISO 4217): 10.000 base fee + 1,003 calls x 0.0015 = 1.5045, which is 1.505
    in thousandths but 1.50 in hundredths; VAT 10% on 11.50 = 1.15; 12.65 in all. With e-invoices on
    the invoice is kept in hundredths (as with Stripe), so the e-invoice carries the stored figures
    and is valid; in thousandths its every amount would break a rule."""
    plans = ('[[plan]]\nid = "bh"\nname = "Bahrain"\ncurrency = "BHD"\nbase_fee = 10\n\n'
             '  [[plan.price]]\n  metric = "api_calls"\n  description = "API calls"\n'
             '  model = "per_unit"\n  unit_price = 0.0015\n')
    taxes = '[[rate]]\ncountry = "BH"\nname = "VAT"\npercentage = 10\neffective_from = 2022-01-01\n'
    apply(db_url, tmp_path, plans=plans, taxes=taxes)
    with engine.begin() as conn:
        customer(conn, "bh", "bh", "BHD", "1003", country="BH")
    pdfs = tmp_path / "pdfs"
    env = {"DATABASE_URL": db_url, **GERMAN_SELLER, **FACTURX, "INVOICE_OUTPUT_DIR": str(pdfs)}

    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env)

    assert result.exit_code == 0, result.output
    invoice = stored(engine)["bh"]
    assert (invoice["subtotal"], invoice["tax_total"], invoice["total"]) == (D("11.50"), D("1.15"), D("12.65"))
    pdf = pdf_file(pdfs, invoice["number"]).read_bytes()
    found = figures(embedded_xml(pdf))  # valid: the XSD and every EN 16931 rule
    assert found["totals"] == (D("11.50"), D("11.50"), D("1.15"), D("12.65"), D("12.65"))
    assert found["vat"] == [("S", "10", D("11.50"), D("1.15"), None, None)]
    assert [amount for _, _, amount in found["lines"]] == [amount for _, _, amount in stored_lines(engine, invoice["id"])]
    printed = " ".join(page_text(pdf).split())
    assert "12.650" in printed  # the PDF prints the currency's own three decimals, the same amount
    # and says to which unit its amounts are rounded: not BHD's minor unit (0.001), hundredths
    assert "each line amount is rounded half-up to 0.01 BHD" in printed, printed


def test_a_vat_id_written_in_lower_case_or_with_dots_is_still_each_partys_vat_identifier(db_url, engine, tmp_path,
                                                                                        clean_env) -> None:
    """python-stdnum accepts a VAT id however it is written (`fr 40.303.265.045`), and so does the
    reverse charge. The e-invoice of that reverse charge must still carry both VAT identifiers
    (BT-31, BT-48), written as VAT ids are: capitals, no separators."""
    apply(db_url, tmp_path)
    with engine.begin() as conn:
        customer(conn, "fr-valid", "eu", "EUR", "26784", country="FR", tax_id="fr 40.303.265.045")
    pdfs = tmp_path / "pdfs"
    env = {"DATABASE_URL": db_url, **GERMAN_SELLER, "INVOICE_SELLER_TAX_ID": "de 136-695-976", **FACTURX,
           "INVOICE_OUTPUT_DIR": str(pdfs)}

    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env)

    assert result.exit_code == 0, result.output
    invoice = stored(engine)["fr-valid"]
    assert invoice["taxes"][0][-1] == "reverse_charge"
    pdf = pdf_file(pdfs, invoice["number"]).read_bytes()
    found = figures(embedded_xml(pdf))
    assert found["vat"] == [("AE", "0", D("43.11"), D("0.00"), REVERSE_CHARGE_MENTION, "VATEX-EU-AE")]
    assert (found["seller_vat"], found["buyer_vat"]) == ("DE136695976", "FR40303265045")
    assert "Tax ID: fr 40.303.265.045" in page_text(pdf)  # the PDF prints it as the customer wrote it


def test_a_control_character_in_the_buyers_details_never_keeps_its_invoice_from_being_sent(db_url, engine, tmp_path,
                                                                                           clean_env) -> None:
    """The account service may store a stray control character (a BEL pasted into an address). The
    invoice is issued (its number taken) before it is rendered; XML cannot hold such a character, so
    the e-invoice writes a space where the PDF, too, prints one, instead of failing on every rerun."""
    from tests.data import PLANS

    plans = tmp_path / "plans.toml"
    plans.write_text(PLANS)
    assert runner.invoke(app, ["plans", "apply", str(plans)], env={"DATABASE_URL": db_url}).exit_code == 0
    with engine.begin() as conn:
        add_org(conn, "sarl", currency="EUR", name="Exemple SARL", email="compta@exemple.fr")
        conn.execute(text("UPDATE organizations SET billing_address_line1 = :line, billing_postal_code = '75002', "
                          "billing_city = 'Paris', billing_country = 'FR', tax_id = :tax_id WHERE id = 'sarl'"),
                     {"line": "10 rue\x07de la Paix", "tax_id": "FR\x1b40303265045"})
        set_plan(conn, "sarl", "euro")
    events(engine, "sarl", 100, utc(2024, 1, 10, 9))
    roll_up(db_url)
    pdfs = tmp_path / "pdfs"
    env = {"DATABASE_URL": db_url, **SELLER_ENV, **FACTURX, "INVOICE_SELLER_COUNTRY": "DE",
           "INVOICE_SELLER_TAX_ID": "DE136695976", "INVOICE_OUTPUT_DIR": str(pdfs)}

    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env)

    assert result.exit_code == 0, result.output
    [number] = [i["number"] for i in stored(engine).values()]
    xml = embedded_xml(pdf_file(pdfs, number).read_bytes())
    root = etree.fromstring(xml)
    assert root.xpath("//ram:BuyerTradeParty/ram:PostalTradeAddress/ram:LineOne/text()",
                      namespaces=NS) == ["10 rue de la Paix"]
