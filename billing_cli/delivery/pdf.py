"""The invoice PDF (fpdf2): seller, bill-to, dates, line table with tiers, totals, page numbers.

Fonts: text in Windows-1252 (Latin-1 and €) uses the PDF core fonts (nothing embedded: a few ms
per invoice). Other text (Łódź, Ελληνικά, Кириллица, ₹) is set in DejaVu Sans, shipped in this
package as a subset covering Latin, Greek and Cyrillic and embedded only for the strings and faces
that need it (each face costs ~10 ms; one typeface for the whole of such an invoice would cost 4x).
Characters it lacks (CJK, Arabic, emoji) print as '?' instead of failing the run. The output is deterministic: the same invoice gives the same bytes.

With INVOICE_EINVOICE=facturx the PDF is a PDF/A-3 (einvoice_pdf.py): PDF/A embeds every font, so
all of its text is set in DejaVu Sans (both faces: several times the plain PDF's few milliseconds,
bench/einvoice.py), and it carries an sRGB output intent.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from ..invoices import InvoiceDocument, Seller
from ..pricing import InvoiceLine
from ..localized import NumberFormat

FONTS = Path(__file__).with_name("fonts")
UNICODE_REGULAR = FONTS / "DejaVuSans-subset.ttf"
UNICODE_BOLD = FONTS / "DejaVuSans-Bold-subset.ttf"
# The core fonts' WinAnsiEncoding: Latin-1 plus € and typographic quotes and dashes.
_CORE_ENCODING = "windows-1252"

# A4 portrait, millimetres.
_LEFT, _RIGHT_EDGE, _WIDTH = 15.0, 195.0, 180.0
_COLUMNS = (("Description", 92.0, "L"), ("Quantity", 28.0, "R"), ("Unit price", 28.0, "R"), ("Amount", 32.0, "R"))
_ROW = 5.5  # one table row
_WRAPPED = 4.2  # each line of a wrapped description
_INDENT = 4.0  # a line that continues its group (the next tier, a flat fee)
_GAP = 3.0  # between a description and the figures


class PdfError(Exception):
    """The invoice could not be rendered."""


def render_invoice(doc: InvoiceDocument, seller: Seller) -> bytes:
    try:
        pdf = _render(doc, seller)
        if _is_einvoice(doc, seller):
            from .einvoice_pdf import embed_facturx

            pdf = embed_facturx(pdf, doc, seller)
        return pdf
    except Exception as exc:  # fpdf2 raises assorted errors; the job reports them per organization
        raise PdfError(f"{type(exc).__name__}: {exc}") from exc


def _rounding_unit(currency: str, seller: Seller) -> str:
    """What amounts are rounded to: the currency's minor unit, or the coarser unit its invoices are
    kept in (0.01 KWD when Stripe charges them, or for an EN 16931 e-invoice; whole MGA with Stripe)."""
    from ..money import CurrencyError, exponent, minor_units

    try:
        places = exponent(currency, seller.precision)
    except CurrencyError:  # a currency Stripe does not charge: such invoices never went to Stripe
        places = minor_units(currency)
    return "the currency's minor unit" if places == minor_units(currency) else \
        f"{Decimal(1).scaleb(-places):f} {currency}"


def _is_einvoice(doc: InvoiceDocument, seller: Seller) -> bool:
    """Factur-X on, and a real invoice: a dry run's preview carries no e-invoice a system could import."""
    return seller.einvoice is not None and not doc.preview


def leave_stop_signals_to_the_parent() -> None:
    """In a render worker: ignore SIGINT and SIGTERM. Ctrl-C in a terminal reaches the whole
    process group; the parent alone decides to stop, finishes the invoices in flight (their PDFs
    included) and then shuts the pool down."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class RenderPool:
    """Renders in worker processes: layout is CPU-bound Python, and threads share one core.
    Used for large runs; the bytes are the same as rendering in-process.

    A worker that dies (the OOM killer) breaks a ProcessPoolExecutor for good, failing every
    document in flight and every later one. So the broken pool is replaced at once, and each
    document it failed is rendered once more in a process of its own: a bystander succeeds there,
    and a document that kills its worker again fails alone, taking no other document with it."""

    def __init__(self, processes: int, render: Callable[[InvoiceDocument, Seller], bytes] = render_invoice) -> None:
        import threading

        self._processes, self._render = processes, render  # `render`: a module-level function (pickled)
        self._lock = threading.Lock()  # the run's worker threads share the pool
        self._pool = _process_pool(processes)

    def __call__(self, doc: InvoiceDocument, seller: Seller) -> bytes:
        from concurrent.futures.process import BrokenProcessPool

        pool = self._pool
        try:
            return pool.submit(self._render, doc, seller).result()
        except BrokenProcessPool:
            self._replace(pool)
        alone = _process_pool(1)
        try:
            return alone.submit(self._render, doc, seller).result()
        except BrokenProcessPool as exc:
            raise PdfError(f"the PDF worker process died, twice, rendering this invoice: {exc}") from None
        finally:
            alone.shutdown(wait=True, cancel_futures=True)

    def _replace(self, broken: Any) -> None:
        """A new pool in place of `broken`, once: the threads whose documents it failed all come here."""
        with self._lock:
            if self._pool is not broken:
                return
            self._pool = _process_pool(self._processes)
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            pool = self._pool
        pool.shutdown(wait=True, cancel_futures=True)


def _process_pool(processes: int) -> Any:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # "spawn": a fresh interpreter, never a fork of a process holding threads and connections.
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=leave_stop_signals_to_the_parent)


def _texts(doc: InvoiceDocument, seller: Seller) -> list[str]:
    return [doc.bill_to_name, doc.bill_to_email, doc.organization_id, *doc.bill_to_address, doc.bill_to_tax_id or "",
            seller.name, *seller.address, seller.tax_id or "", *seller.payment_instructions,
            *(line.description for line in doc.lines), *(tax.label for tax in doc.taxes), *doc.tax_mentions,
            doc.reason or ""]


def _is_core(text: str) -> bool:
    """Whether the PDF core fonts can draw `text`."""
    try:
        text.encode(_CORE_ENCODING)
    except UnicodeEncodeError:
        return False
    return True


def needs_unicode_font(doc: InvoiceDocument, seller: Seller) -> bool:
    return not all(_is_core(text) for text in _texts(doc, seller))


@cache
def _unicode_coverage() -> frozenset[int]:
    """Code points the shipped font can draw (read once per process)."""
    from fontTools.ttLib import TTFont

    with TTFont(UNICODE_REGULAR, lazy=True) as font:
        return frozenset(font.getBestCmap())


def _described(lines: tuple[InvoiceLine, ...]) -> list[tuple[bool, str, InvoiceLine]]:
    """Each line with how it is printed: a line of the same metric and period as the one before it
    (the next tier, a tier's flat fee) continues that group: indented, without the label the group's
    first line already shows (`API calls: units 1 to 1,000`, then `units 1,001 to 10,000`)."""
    described = []
    previous: InvoiceLine | None = None
    for line in lines:
        label, colon, rest = line.description.partition(": ")
        continues = (previous is not None and line.metric is not None and colon and rest
                     and (line.metric, line.period) == (previous.metric, previous.period)
                     and previous.description.startswith(label + ":"))
        described.append((bool(continues), rest if continues else line.description, line))
        previous = line
    return described


def _render(doc: InvoiceDocument, seller: Seller) -> bytes:
    from fpdf import FPDF

    numbers = NumberFormat(seller.locale)
    pdfa = _is_einvoice(doc, seller)  # PDF/A: no font may be left out of the file
    unicode_font = pdfa or needs_unicode_font(doc, seller)
    coverage = _unicode_coverage() if unicode_font else frozenset()
    added: set[str] = set()

    def clean(text: str) -> str:
        text = "".join(ch if ch.isprintable() else " " for ch in text)
        if unicode_font:
            return "".join(ch if ord(ch) in coverage else "?" for ch in text)
        return text

    def font(p: Any, style: str, size: float, text: str = "", *, block: bool = False) -> None:
        """Core Helvetica for the text it can draw; the embedded font only for text that needs it
        (and only the faces used): each embedded face costs about 10 ms to subset, so an invoice
        in Latin script, € included, stays at a few milliseconds. `block`: some text of the same
        block (the seller, the buyer, the lines) and face needs the embedded font: all of it is
        set in it, one typeface per block and face, never a face more than the text needs."""
        if not pdfa and not block and _is_core(text):
            p.set_font("Helvetica", style, size)
            return
        if style not in added:
            p.add_font("DejaVu", style, UNICODE_BOLD if style == "B" else UNICODE_REGULAR)
            added.add(style)
        p.set_font("DejaVu", style, size)

    class InvoicePdf(FPDF):
        in_table = False

        def header(self) -> None:
            if self.page_no() > 1:
                continued = clean(f"{seller.name} - {doc.title} (continued)")
                font(self, "", 8, continued)
                self.set_text_color(110)
                self.cell(0, 5, continued, new_x="LMARGIN", new_y="NEXT")
                self.ln(2)
                if self.in_table:
                    table_header(self)

        def footer(self) -> None:
            self.set_y(-14)
            font(self, "", 8)
            self.set_text_color(110)
            self.cell(_WIDTH / 2, 5, doc.title)
            self.cell(_WIDTH / 2, 5, f"Page {self.page_no()} of {{nb}}", align="R")

    pdf = InvoicePdf(format="A4", unit="mm")
    pdf.core_fonts_encoding = _CORE_ENCODING
    pdf.set_creation_date(datetime.combine(doc.issue_date, time(), tzinfo=UTC))
    pdf.set_title(f"Credit note for {doc.credits}" if doc.is_credit_note else doc.title)
    pdf.set_author(clean(seller.name))
    pdf.set_margins(_LEFT, 15, 210 - _RIGHT_EDGE)
    pdf.set_auto_page_break(True, margin=20)
    if pdfa:
        from fpdf.enums import OutputIntentSubType
        from fpdf.output import PDFICCProfile

        from .einvoice_pdf import srgb_profile

        pdf.add_output_intent(OutputIntentSubType.PDFA, output_condition_identifier="sRGB",
                              output_condition="IEC 61966-2-1:1999", registry_name="http://www.color.org",
                              dest_output_profile=PDFICCProfile(srgb_profile(), 3, "DeviceRGB"), info="sRGB")

    def table_header(p: Any) -> None:
        font(p, "B", 9)
        p.set_fill_color(235, 238, 242)
        p.set_text_color(30)
        for title, width, align in _COLUMNS:
            label = f"{title} ({doc.currency})" if title == "Amount" else title
            p.cell(width, 7, label, align=align, fill=True)
        p.ln(7)

    pdf.add_page()
    # -- seller and title -------------------------------------------------------------------
    pdf.set_text_color(20)
    seller_name = clean(seller.name)
    seller_lines = [clean(line) for line in seller.address] + ([clean(f"Tax ID: {seller.tax_id}")] if seller.tax_id
                                                                 else [])
    seller_regular = not all(map(_is_core, seller_lines))
    font(pdf, "B", 15, seller_name)
    pdf.cell(110, 8, seller_name)
    font(pdf, "B", 20)
    heading = "PREVIEW" if doc.preview else "CREDIT NOTE" if doc.is_credit_note else "INVOICE"
    pdf.cell(70, 8, heading, align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(80)
    for line in seller_lines:
        font(pdf, "", 9, line, block=seller_regular)
        pdf.cell(110, 4.5, line, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)

    # -- bill to (left) and invoice facts (right) -------------------------------------------
    top = pdf.get_y()
    pdf.set_text_color(110)
    font(pdf, "B", 8)
    pdf.cell(100, 5, "BILL TO", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(20)
    buyer = ((doc.bill_to_name, "B", 11, 5.5), *((line, "", 9, 4.5) for line in doc.bill_to_address),
             *(((f"Tax ID: {doc.bill_to_tax_id}", "", 9, 4.5),) if doc.bill_to_tax_id else ()),
             (doc.bill_to_email, "", 9, 4.5), (f"Account: {doc.organization_id}", "", 9, 4.5))
    buyer = tuple((clean(text_), style, size, height) for text_, style, size, height in buyer)
    buyer_faces = {style for text_, style, *_ in buyer if not _is_core(text_)}
    for text_, style, size, height in buyer:
        font(pdf, style, size, text_, block=style in buyer_faces)
        if pdf.get_string_width(text_) <= 93:  # one line: cell() is far cheaper than multi_cell()
            pdf.cell(95, height, text_, new_x="LMARGIN", new_y="NEXT")
        else:
            pdf.multi_cell(95, height, text_, align="L", new_x="LMARGIN", new_y="NEXT")
    left_bottom = pdf.get_y()
    facts = ((("Credit note number", doc.number), ("Issue date", doc.issue_date.isoformat()),
              ("Credits invoice", doc.credits)) if doc.is_credit_note else
             (("Invoice number", doc.number + (" (preview)" if doc.preview else "")),
              ("Issue date", doc.issue_date.isoformat()), ("Due date", doc.due_date.isoformat())))
    facts = (*facts,
             ("Billing period", doc.period_text),
             ("Currency", doc.currency),
             *((("Replaces invoice", doc.replaces),) if doc.replaces else ()))
    pdf.set_y(top)
    for label, value in facts:
        pdf.set_x(_RIGHT_EDGE - 80)
        font(pdf, "", 9)
        pdf.set_text_color(110)
        pdf.cell(35, 5, label)
        pdf.set_text_color(20)
        font(pdf, "B", 9)
        pdf.cell(45, 5, value, align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.set_y(max(left_bottom, pdf.get_y()) + 8)

    if doc.is_credit_note:  # what it credits and why, above the lines it negates
        for text_, style in ((f"Credit note for {doc.credits}", "B"), (f"Reason: {clean(doc.reason or '')}", "")):
            font(pdf, style, 11 if style else 9, text_)
            pdf.multi_cell(_WIDTH, 6 if style else 4.5, text_, align="L", new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)

    # -- lines ------------------------------------------------------------------------------
    table_header(pdf)
    pdf.in_table = True
    pdf.set_text_color(20)
    description_width = _COLUMNS[0][1]
    described = [(indented, clean(numbers.in_text(description)), line)
                 for indented, description, line in _described(doc.lines)]
    lines_block = not all(_is_core(description) for _, description, _ in described)
    for index, (indented, text, line) in enumerate(described):
        # Every description starts at the same x; a line continuing its group (the next tier,
        # a flat fee) at one indent more, its wrapped lines too; a gap before the figures.
        x = _LEFT + (_INDENT if indented else 0.0)
        width = description_width - (x - _LEFT) - _GAP
        font(pdf, "", 9, text, block=lines_block)
        fits = pdf.get_string_width(text) <= width - 2 * pdf.c_margin  # the common case: one row, no wrapping
        wrapped = 1 if fits else len(pdf.multi_cell(width, _WRAPPED, text, dry_run=True, output="LINES"))
        height = _ROW if fits else _WRAPPED * wrapped + (_ROW - _WRAPPED)
        if pdf.will_page_break(height):
            pdf.add_page()
            font(pdf, "", 9, text, block=lines_block)
        y = pdf.get_y()
        if index % 2:
            pdf.set_fill_color(248, 249, 251)
            pdf.rect(_LEFT, y, _WIDTH, height, style="F")
        pdf.set_xy(x, y)
        if fits:
            pdf.cell(width, _ROW, text)
        else:  # the first line where a single row's text would be, the others below it
            pdf.set_y(y + (_ROW - _WRAPPED) / 2)
            pdf.set_x(x)
            pdf.multi_cell(width, _WRAPPED, text, align="L")
        pdf.set_xy(_LEFT + description_width, y)
        quantity = numbers.quantity(line.quantity) if line.kind != "base_fee" else "1"
        for (_, column, _), figure in zip(_COLUMNS[1:], (quantity, numbers.unit_price(line.unit_price, doc.currency),
                                                          numbers.amount(line.amount, doc.currency))):
            font(pdf, "", 9, figure, block=lines_block)
            pdf.cell(column, _ROW, figure, align="R")
        pdf.set_xy(_LEFT, y + height)
    pdf.in_table = False

    # -- totals, how to pay, notes ---------------------------------------------------------
    paying = [] if doc.is_credit_note else \
        [*(f"{line}" for line in seller.payment_instructions),
         *(("Pay online: the e-mail that brought this invoice links to its payment page.",)
           if seller.pays_online else ())]
    notes = [*((f"This credit note cancels invoice {doc.credits} in full: that invoice is void and nothing is "
                "owed for it.",
                *((f"It is replaced by invoice {doc.replaced_by}.",) if doc.replaced_by else ()))
               if doc.is_credit_note else
               (*((f"This invoice replaces invoice {doc.replaces}, which is void.",) if doc.replaces else ()),
                f"Payment is due by {doc.due_date.isoformat()}. Please quote invoice number {doc.number} with your "
                "payment.")),
             f"Amounts are in {doc.currency}. Unit prices are shown with full precision; each line amount is rounded "
             f"half-up to {_rounding_unit(doc.currency, seller)}.",
             "The subtotal is the sum of the rounded line amounts; each tax is computed on the taxable subtotal and "
             "rounded once, half-up; the total is the subtotal plus the taxes." if doc.taxes else
             "The total is the sum of the rounded line amounts."]
    # Each tax: its name, rate and jurisdiction, the amount it is computed on, and the tax.
    taxes = [(f"{tax.label} on {numbers.money(tax.taxable_amount, doc.currency)}", tax.amount) for tax in doc.taxes]
    mentions = [clean(mention) for mention in doc.tax_mentions]
    # Totals, payment and notes stay together on one page (a long payment text may still wrap).
    if pdf.will_page_break(22 + 5.5 * len(taxes) + 5 * len(mentions) + (7 + 4.5 * len(paying) if paying else 0)
                           + 4 * (len(notes) + 2)):
        pdf.add_page()
    pdf.ln(2)
    pdf.set_draw_color(180)
    pdf.line(_RIGHT_EDGE - 80, pdf.get_y(), _RIGHT_EDGE, pdf.get_y())
    pdf.ln(2)
    rows = [("Subtotal", doc.subtotal, False), *((clean(label), amount, False) for label, amount in taxes),
            ("Total credited" if doc.is_credit_note else "Total due", doc.total, True)]
    for label, value, bold in rows:
        wide = pdf.get_string_width(label) > 33 if not bold else False  # a tax's label: from further left
        pdf.set_x(_RIGHT_EDGE - (125 if wide else 80))
        font(pdf, "B" if bold else "", 11 if bold else 9, label)
        pdf.cell(80 if wide else 35, 7 if bold else 5.5, label, align="R" if wide else "L")
        money = numbers.money(value, doc.currency)
        font(pdf, "B" if bold else "", 11 if bold else 9, money)
        pdf.cell(45, 7 if bold else 5.5, money, align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    if mentions:  # the legal mentions (reverse charge, exemption, outside the scope): on the invoice itself
        pdf.set_text_color(20)
        for mention in mentions:
            font(pdf, "B", 9, mention)
            pdf.multi_cell(_WIDTH, 4.5, mention, align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    if paying:
        pdf.set_text_color(110)
        font(pdf, "B", 8)
        pdf.cell(_WIDTH, 5, "HOW TO PAY", new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(20)
        for line in paying:
            line = clean(line)
            font(pdf, "", 9, line)
            pdf.multi_cell(_WIDTH, 4.5, line, align="L", new_x="LMARGIN", new_y="NEXT")
        pdf.ln(4)
    pdf.set_text_color(110)
    for note in notes:
        font(pdf, "", 8, note)
        if pdf.get_string_width(note) <= _WIDTH - 2 * pdf.c_margin:  # the usual case: no costly line breaking
            pdf.cell(_WIDTH, 4, note, new_x="LMARGIN", new_y="NEXT")
        else:
            pdf.multi_cell(_WIDTH, 4, note, align="L", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
