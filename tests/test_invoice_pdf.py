"""The invoice PDF as its reader sees it: the text pypdf extracts from what `render_invoice` draws."""

from __future__ import annotations

import io
from datetime import date
from decimal import Decimal as D

import pytest
from pypdf import PdfReader

from billing_cli.delivery.pdf import render_invoice
from billing_cli.invoices import InvoiceDocument, Seller
from billing_cli.money import exact_sum
from billing_cli.periods import Month
from billing_cli.pricing import InvoiceLine, Price, PricePlan, Tier, rate

JAN = Month(2024, 1)
SELLER = Seller("Nimbus Metering GmbH", ("Hauptstrasse 1", "10115 Berlin", "Germany"), "DE123456789")


def document(lines: tuple[InvoiceLine, ...], currency: str = "USD", **overrides) -> InvoiceDocument:
    values = dict(number="INV-2024-01-000001", organization_id="org-a", bill_to_name="Acme Ltd",
                  bill_to_email="billing@acme.example", period=JAN, issue_date=date(2024, 2, 1),
                  due_date=date(2024, 3, 2), currency=currency, lines=lines,
                  total=exact_sum(line.amount for line in lines))
    return InvoiceDocument(**{**values, **overrides})


def pdf_text(doc: InvoiceDocument, seller: Seller = SELLER) -> str:
    reader = PdfReader(io.BytesIO(render_invoice(doc, seller)))
    # Babel's no-break spaces are drawn as spaces (localized.py); pypdf may give either back.
    return "\n".join(page.extract_text() for page in reader.pages).replace("\xa0", " ")


def rated(plan: PricePlan, **usage: str) -> tuple[InvoiceLine, ...]:
    return rate({metric: D(q) for metric, q in usage.items()}, plan, JAN).lines


def test_unit_prices_have_the_currencys_decimals_and_more_only_when_needed() -> None:
    yen = rated(PricePlan("p", "Pro", "JPY", (Price("api_calls", "package", "API calls", unit_price=D(1000),
                                                    package_size=D(1000)),
                                              Price("storage", "per_unit", "Storage", unit_price=D("0.5")))),
                api_calls="744", storage="3")
    text = pdf_text(document(yen, "JPY"))
    assert "1,000.00" not in text and "0.50" not in text
    assert "API calls: 744 units, billed per started block of 1,000 1 1,000 1,000" in text
    assert "Storage 3 0.5 2" in text  # 1.5 JPY rounds half-up to 2
    assert "Total due ¥1,002" in text

    dollars = rated(PricePlan("p", "Pro", "USD", (Price("api_calls", "per_unit", "API calls", unit_price=D("0.005")),),
                              base_fee=D(10)), api_calls="1500")
    text = pdf_text(document(dollars))
    assert "Pro plan, monthly fee 1 10.00 10.00" in text and "API calls 1,500 0.005 7.50" in text
    assert "Total due $17.50" in text


def test_numbers_and_money_follow_the_locale() -> None:
    lines = rated(PricePlan("p", "Pro", "EUR", (Price("api_calls", "per_unit", "API calls", unit_price=D("0.0125")),),
                            base_fee=D("1000")), api_calls="18764.8")
    text = pdf_text(document(lines, "EUR"), Seller(SELLER.name, SELLER.address, SELLER.tax_id, locale="de"))
    assert "API calls 18.764,8 0,0125 234,56" in text
    assert "Subtotal 1.234,56 €" in text and "Total due 1.234,56 €" in text
    english = pdf_text(document(lines, "EUR"))
    assert "API calls 18,764.8 0.0125 234.56" in english and "Total due €1,234.56" in english
    # The numbers rating writes into descriptions follow the locale too: never 1,001 beside 1.500.
    tiers = (Tier(D(1000), D("0.01")), Tier(None, D("0.005")))
    tiered = rated(PricePlan("p", "Pro", "EUR", (Price("api_calls", "graduated", "API calls", tiers=tiers),)),
                   api_calls="2500")
    german = pdf_text(document(tiered, "EUR"), Seller(SELLER.name, SELLER.address, locale="de"))
    assert "API calls: units 1 to 1.000 1.000 0,01 10,00\nunits 1.001 and above 1.500 0,005 7,50" in german, german


def test_tiers_package_and_flat_fees_read_as_sentences() -> None:
    """A group's first line names the metric; the lines continuing it (the next tier, a flat fee)
    are indented without repeating it. Stored descriptions (and Stripe's) keep the whole sentence."""
    tiers = (Tier(D(100000), D("0.001")), Tier(D(1000000), D("0.0008"), D(50)), Tier(None, D("0.0005")))
    plan = PricePlan("p", "Pro", "USD", (Price("api_calls", "graduated", "API calls", tiers=tiers),
                                         Price("storage_gb", "volume", "Storage (GB)", tiers=tiers)))
    lines = rated(plan, api_calls="150000", storage_gb="150000")
    assert [line.description for line in lines] == [
        "API calls: units 1 to 100,000", "API calls: units 100,001 to 1,000,000",
        "API calls: flat fee for units 100,001 to 1,000,000",
        "Storage (GB): all 150,000 units at the price of units 100,001 to 1,000,000",
        "Storage (GB): flat fee for units 100,001 to 1,000,000"]
    text = pdf_text(document(lines))
    assert ("API calls: units 1 to 100,000 100,000 0.001 100.00\n"
            "units 100,001 to 1,000,000 50,000 0.0008 40.00\n"
            "flat fee for units 100,001 to 1,000,000 1 50.00 50.00\n") in text, text
    flat = " ".join(text.split())
    assert ("Storage (GB): all 150,000 units at the price of units 100,001 to 1,000,000 150,000 0.0008 120.00 "
            "flat fee for units 100,001 to 1,000,000 1 50.00 50.00") in flat, flat


def test_payment_instructions_and_the_online_payment_page_are_printed_when_configured() -> None:
    lines = rated(PricePlan("p", "Pro", "EUR", (), base_fee=D(10)))
    bank = ("Bank transfer to Nimbus Metering GmbH", "IBAN DE89 3704 0044 0532 0130 00, BIC COBADEFFXXX")
    text = pdf_text(document(lines, "EUR"), Seller(SELLER.name, SELLER.address, SELLER.tax_id,
                                                   payment_instructions=bank, pays_online=True))
    assert ("HOW TO PAY\nBank transfer to Nimbus Metering GmbH\nIBAN DE89 3704 0044 0532 0130 00, BIC COBADEFFXXX\n"
            "Pay online: the e-mail that brought this invoice links to its payment page.") in text, text
    assert "HOW TO PAY" not in pdf_text(document(lines, "EUR"))


LATIN = ("Data transfer out of the region to the public internet, metered per gigabyte and billed monthly "
         "in arrears")
GREEK_CYRILLIC = "Εξερχόμενη κίνηση δεδομένων προς το δημόσιο διαδίκτυο — исходящий трафик в интернет, за гигабайт"


@pytest.mark.parametrize("count", [1, 2, 30])
@pytest.mark.parametrize("script", [LATIN, GREEK_CYRILLIC])
def test_one_two_and_thirty_lines_lay_out_whole_in_either_script(count: int, script: str) -> None:
    """Long descriptions wrap inside their column (every word still there, none drawn as '?'), and
    30 lines go on over pages whose table header is repeated; the total comes last."""
    prices = tuple(Price(f"m{n:02d}", "per_unit", f"{script} {n:02d}", unit_price=D("0.0125")) for n in range(count))
    lines = rated(PricePlan("p", "Pro", "EUR", prices), **{f"m{n:02d}": "150000" for n in range(count)})
    seller = Seller("Νέφος Μετρήσεις Α.Ε.", ("Οδός Ερμού 10", "105 63 Αθήνα"), "EL123456789") \
        if script is GREEK_CYRILLIC else SELLER
    reader = PdfReader(io.BytesIO(render_invoice(document(lines, "EUR", bill_to_name="ООО «Облако» Łódź",
                                                          bill_to_address=("ул. Тверская, д. 7", "Russia")),
                                                 seller)))
    pages = [page.extract_text().replace("\xa0", " ") for page in reader.pages]
    flat = " ".join(" ".join(pages).split())
    assert "?" not in flat
    for n in range(count):
        assert f"{script} {n:02d} 150,000 0.0125 1,875.00" in flat, flat
    if count < 30:
        assert len(pages) == 1
    else:  # every page that goes on with the lines repeats the table's header
        assert len(pages) > 1 and all("(continued)" in page for page in pages[1:])
        assert all("Description Quantity Unit price Amount (EUR)" in page for page in pages if script in page)
    assert pages[-1].rstrip().endswith(f"Page {len(pages)} of {len(pages)}")
    assert f"Total due €{D(1875) * count:,}.00" in pages[-1]
    assert "ООО «Облако» Łódź\nул. Тверская, д. 7\nRussia" in pages[0]


@pytest.mark.parametrize("metric,description", [("api_calls", "API calls"), ("storage_gb", "Storage GB"),
                                                ("emails_sent", "Emails sent"), ("GPU_hours", "GPU hours")])
def test_a_description_made_from_a_metric_name_keeps_abbreviations(metric, description) -> None:
    from billing_cli.plan_file import default_description

    assert default_description(metric) == description


def test_a_latin_invoice_in_euros_embeds_no_font() -> None:
    """€ and typographic punctuation are in the core fonts' WinAnsi encoding: an invoice in Latin
    script needs no embedded font (each face embedded costs ~10 ms of rendering)."""
    lines = rated(PricePlan("p", "Pro", "EUR", (Price("x", "per_unit", "Support – “premium” (€ plan)",
                                                      unit_price=D(1)),)), x="2")
    pdf = render_invoice(document(lines, "EUR"), SELLER)
    assert b"/FontFile" not in pdf
    text = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    assert "Support – “premium” (€ plan) 2 1.00 2.00" in text and "Total due €2.00" in text
    cyrillic = document(lines, "EUR", bill_to_name="ООО «Облако»")
    assert b"/FontFile" in render_invoice(cyrillic, SELLER)


# -- render worker processes ---------------------------------------------------------------------------

KILLER = "INV-2024-01-000666"


def render_or_die(doc: InvoiceDocument, seller: Seller) -> bytes:
    """In a render worker: the invoice numbered KILLER kills its process (as the OOM killer does a
    worker rendering a huge document); any other renders as usual."""
    if doc.number == KILLER:
        import os
        import signal
        import time

        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    return render_invoice(doc, seller)


def test_one_pdf_worker_process_killed_does_not_fail_every_later_organization() -> None:
    # A run of 200+ organizations renders in worker processes. ProcessPoolExecutor marks itself
    # broken for good when one of them dies, so every organization after it failed `pdf` (and its
    # deliveries) for the rest of the run, whatever its size.
    import os
    import signal
    from contextlib import suppress

    from billing_cli.delivery.pdf import PdfError, RenderPool

    pool = RenderPool(2)
    try:
        assert pool(document(()), SELLER).startswith(b"%PDF")
        os.kill(next(iter(pool._pool._processes)), signal.SIGKILL)  # one worker OOM-killed
        with suppress(PdfError):
            pool(document(()), SELLER)  # the organization it was rendering may fail: fair enough
        later = [pool(document((), number=f"INV-2024-01-{n:06d}"), SELLER) for n in range(2, 5)]
    finally:
        pool.close()
    assert all(pdf.startswith(b"%PDF") for pdf in later)


def test_a_document_that_kills_its_pdf_worker_every_time_fails_alone() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from billing_cli.delivery.pdf import PdfError, RenderPool

    pool = RenderPool(2, render=render_or_die)
    numbers = [f"INV-2024-01-{n:06d}" for n in range(1, 7)] + [KILLER]
    try:
        with ThreadPoolExecutor(4) as threads:  # the run's worker threads share the pool
            futures = {number: threads.submit(pool, document((), number=number), SELLER) for number in reversed(numbers)}
        with pytest.raises(PdfError, match="died, twice"):
            futures.pop(KILLER).result()
        assert all(future.result().startswith(b"%PDF") for future in futures.values())
        assert pool(document((), number="INV-2024-01-000007"), SELLER).startswith(b"%PDF")
    finally:
        pool.close()
