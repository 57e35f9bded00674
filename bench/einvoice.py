"""What Factur-X (INVOICE_EINVOICE=facturx) costs per invoice PDF, side by side with the plain PDF.

    .venv/bin/python bench/einvoice.py [--count 100]

Renders the same taxed invoices (a German seller, 6 lines with tiers, a Latin-1 and a Unicode buyer)
as plain PDFs and as Factur-X PDF/A-3, interleaved so that noise hits both alike, and prints the
median milliseconds, the sizes and the ratio, then the parts of a Factur-X rendering (the layout with
every font embedded, the XML, the embedding). No database: rendering only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from datetime import date
from decimal import Decimal as D


def documents(count: int):
    from billing_cli.invoices import InvoiceDocument
    from billing_cli.periods import Month
    from billing_cli.pricing import InvoiceLine
    from billing_cli.taxes import InvoiceTax

    month = Month.parse("2024-01")
    for n in range(1, count + 1):
        lines = (InvoiceLine("base_fee", "Europe plan, monthly fee", D(1), D(19), D("19.00")),
                 InvoiceLine("usage", "API calls: units 1 to 1,000", D(1000), D("0.001"), D("1.00"), "api_calls",
                             month),
                 InvoiceLine("usage", "API calls: units 1,001 to 10,000", D(9000), D("0.0009"), D("8.10"), "api_calls",
                             month),
                 InvoiceLine("usage", "API calls: units 10,001 and above", D(16784 + n), D("0.0005"),
                             (D(16784 + n) * D("0.0005")).quantize(D("0.01")), "api_calls", month),
                 InvoiceLine("usage", "Storage (GB-hours)", D(744), D("0.01"), D("7.44"), "storage", month),
                 InvoiceLine("usage", "Adjustment for December 2023: API calls", D(1), D("-0.50"), D("-0.50"),
                             "api_calls", month.prev()))
        subtotal = sum((line.amount for line in lines), D(0))
        tax = (subtotal * D("0.19")).quantize(D("0.01"))
        base = dict(number=f"INV-2024-01-{n:06d}", organization_id=f"org-{n}", bill_to_email=f"ap{n}@example.com",
                    period=month, issue_date=date(2024, 2, 1), due_date=date(2024, 3, 2), currency="EUR",
                    lines=lines, total=subtotal + tax,
                    bill_to_address=("Unter den Linden 5", "10117 Berlin", "Germany"),
                    bill_to_tax_id="DE811907980",
                    taxes=(InvoiceTax("VAT", "DE", None, D(19), subtotal, tax),))
        yield (InvoiceDocument(bill_to_name=f"Organization {n:06d} GmbH", **base),
               InvoiceDocument(bill_to_name=f"Łódź Café ΑΒΓ Кафе {n:06d}", **base))


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="invoices per kind (default 100)")
    args = parser.parse_args()

    from billing_cli.delivery.einvoice_pdf import embed_facturx
    from billing_cli.delivery.pdf import _render, render_invoice
    from billing_cli.einvoice import build_xml
    from billing_cli.invoices import Seller

    facturx = Seller("Nimbus Metering GmbH", ("Hauptstraße 1", "10115 Berlin", "Germany"), "DE136695976", "DE",
                     einvoice="facturx")
    plain = replace(facturx, einvoice=None)
    docs = list(documents(args.count))
    for latin, uni in docs[:3]:  # warm-up: imports, fonts, the XSD
        for doc in (latin, uni):
            render_invoice(doc, plain)
            render_invoice(doc, facturx)
    times: dict[tuple[str, str], list[float]] = {}
    sizes: dict[tuple[str, str], list[int]] = {}
    for pair in docs:
        for name, doc in zip(("latin", "unicode"), pair):
            for kind, seller in (("plain", plain), ("facturx", facturx)):
                started = time.perf_counter()
                pdf = render_invoice(doc, seller)
                times.setdefault((name, kind), []).append(time.perf_counter() - started)
                sizes.setdefault((name, kind), []).append(len(pdf))
    parts: dict[str, list[float]] = {"layout, fonts embedded": [], "XML": [], "embedding (XSD, XMP)": []}
    for latin, _ in docs[:max(10, args.count // 4)]:
        started = time.perf_counter()
        pdf = _render(latin, facturx)
        laid_out = time.perf_counter()
        build_xml(latin, facturx)
        built = time.perf_counter()
        embed_facturx(pdf, latin, facturx)  # builds the XML again, then embeds it
        xml_seconds = built - laid_out
        parts["layout, fonts embedded"].append(laid_out - started)
        parts["XML"].append(xml_seconds)
        parts["embedding (XSD, XMP)"].append(time.perf_counter() - built - xml_seconds)

    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.count} invoices per kind, "
          "6 lines, German VAT")
    print(f"{'buyer':8} {'plain PDF':>12} {'Factur-X':>12} {'ratio':>6} {'plain size':>11} {'Factur-X size':>14}")
    for name in ("latin", "unicode"):
        ratio = statistics.median(times[(name, "facturx")]) / statistics.median(times[(name, "plain")])
        print(f"{name:8} {median_ms(times[(name, 'plain')]):>12} {median_ms(times[(name, 'facturx')]):>12} "
              f"{ratio:5.1f}x {statistics.mean(sizes[(name, 'plain')]) / 1024:8.1f} KiB "
              f"{statistics.mean(sizes[(name, 'facturx')]) / 1024:10.1f} KiB")
    print("Factur-X, its parts (median):")
    for part, samples in parts.items():
        print(f"  {part:24} {median_ms(samples)}")


if __name__ == "__main__":
    main()
