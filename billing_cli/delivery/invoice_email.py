"""The invoice e-mail: plain text and HTML bodies, the PDF attached (or linked), a stable Message-ID.

Links: Stripe's hosted page of the invoice (to view and pay it), and, when the PDF is not attached,
a presigned download link whose stated lifetime the signing credentials can keep.
"""

from __future__ import annotations

import html
import re
from email import policy
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from ..invoices import InvoiceDocument, Seller
from ..localized import NumberFormat
from .storage import PresignedLink

_ADDRESS = re.compile(r"^[^@\s<>\"(),;:]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}$")


class _HeaderClasses(HeaderRegistry):
    """The standard header registry, building each header class once: the stdlib builds a new
    class for every header it parses, half the CPU of composing an invoice e-mail."""

    def __init__(self) -> None:
        super().__init__()
        self._built: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        built = self._built.get(name)
        if built is None:
            built = self._built[name] = super().__getitem__(name)
        return built


# The default (RFC 5322) policy of EmailMessage, with the class cache above.
_POLICY = policy.default.clone(header_factory=_HeaderClasses())


class BadAddress(ValueError):
    """An address or name that cannot go into a header safely (CR/LF injection, not an address)."""


# Every character some mail software treats as the end of a line: CR/LF and the other control
# characters, NEL (U+0085), and the Unicode line and paragraph separators (U+2028, U+2029).
_LINE_BREAKING = frozenset("\x85\u2028\u2029")


def check_header_value(label: str, value: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 or ch in _LINE_BREAKING for ch in value):
        raise BadAddress(f"{label} contains control characters or line breaks (CR/LF, U+0085, U+2028): refusing "
                         "to put it in an e-mail header")
    return value


def check_address(label: str, value: str) -> str:
    check_header_value(label, value)
    if not _ADDRESS.match(value.strip()):
        raise BadAddress(f"{label} {value!r} is not a valid e-mail address")
    return value.strip()


def message_id(doc: InvoiceDocument, sender: str) -> str:
    """Stable per invoice: if a crash makes us send twice, mail systems can tell it is one message.
    Only RFC 5322 atom characters: an organization id with anything else (a space, a Unicode line
    separator) is spelled in hex, so the header is always well formed."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "billing.invalid"
    org = doc.organization_id
    if not re.fullmatch(r"[A-Za-z0-9._\-]+", org):
        org = "x" + org.encode().hex()
    return f"<{doc.number}.{org}@{domain}>"


def build_invoice_email(doc: InvoiceDocument, pdf: bytes, *, sender: str, seller: Seller, attach: bool = True,
                        page_url: str | None = None, download: PresignedLink | None = None) -> EmailMessage:
    """The message for `doc`: the PDF attached if `attach`, else `download` links it; `page_url`
    is Stripe's page of the invoice."""
    numbers = NumberFormat(seller.locale)  # amounts as the PDF prints them (INVOICE_LOCALE)
    total = numbers.money(doc.total, doc.currency)
    message, name = _addressed(doc, sender, f"Invoice {doc.number} for {doc.period_name}: {total}")
    opening = (f"please find attached invoice {doc.number} from {seller.name} for {doc.period_name}." if attach else
               f"invoice {doc.number} from {seller.name} for {doc.period_name} is ready.")
    text = [
        f"Hello {name},",
        "",
        opening,
        "",
        f"  Invoice number: {doc.number}",
        f"  Billing period: {doc.period_text}",
        f"  Total due:      {total}",
        f"  Due date:       {doc.due_date}",
    ]
    notes = _notes(doc, numbers)
    links = _links(page_url, download)
    if notes:
        text += ["", *notes]
    for label, url in links:
        text += ["", f"{label}: {url}"]
    if seller.payment_instructions:  # the same "How to pay" as the PDF's
        text += ["", "How to pay:", *(f"  {line}" for line in seller.payment_instructions)]
    text += ["", f"Thank you,\n{seller.name}"]
    message.set_content("\n".join(text))
    message.add_alternative(f"""<html><body style="font-family: sans-serif">
<p>Hello {html.escape(name)},</p>
<p>{html.escape(opening)}</p>
<table cellpadding="4">
<tr><td>Invoice number</td><td><b>{html.escape(doc.number)}</b></td></tr>
<tr><td>Billing period</td><td>{html.escape(doc.period_text)}</td></tr>
<tr><td>Total due</td><td><b>{html.escape(total)}</b></td></tr>
<tr><td>Due date</td><td>{doc.due_date}</td></tr>
</table>
{"".join(f"<p>{html.escape(note)}</p>" for note in notes)}
{"".join(f'<p><a href="{html.escape(url)}">{html.escape(label)}</a></p>' for label, url in links)}
{_how_to_pay_html(seller)}
<p>Thank you,<br>{html.escape(seller.name)}</p>
</body></html>""", subtype="html")
    if attach:
        _attach_pdf(message, doc, pdf)
    return message


def build_credit_note_email(doc: InvoiceDocument, pdf: bytes, *, sender: str, seller: Seller, attach: bool = True,
                            download: PresignedLink | None = None) -> EmailMessage:
    """The message for a credit note (`doc.credits` is the invoice it cancels): the PDF attached if
    `attach`, else `download` links it. Its Message-ID is the credit note's own."""
    total = NumberFormat(seller.locale).money(doc.total, doc.currency)
    message, name = _addressed(doc, sender, f"Credit note {doc.number} for invoice {doc.credits}: {total}")
    cancelled = (f"invoice {doc.credits} from {seller.name} for {doc.period_name} is cancelled: it is void, and "
                 "nothing is owed for it.")
    opening = (f"{cancelled} Please find attached credit note {doc.number}." if attach else
               f"{cancelled} Credit note {doc.number} is ready.")
    facts = [("Credit note number", doc.number), ("Credits invoice", doc.credits or ""),
             ("Amount credited", total), ("Reason", doc.reason or "")]
    if doc.replaced_by:
        facts.append(("Replaced by invoice", doc.replaced_by))
    links = _links(None, download)
    text = [f"Hello {name},", "", opening, "", *(f"  {label + ':':<21}{value}" for label, value in facts)]
    for label, url in links:
        text += ["", f"{label}: {url}"]
    text += ["", f"Thank you,\n{seller.name}"]
    message.set_content("\n".join(text))
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td><b>{html.escape(value)}</b></td></tr>" for label, value in facts)
    message.add_alternative(f"""<html><body style="font-family: sans-serif">
<p>Hello {html.escape(name)},</p>
<p>{html.escape(opening)}</p>
<table cellpadding="4">{rows}</table>
{"".join(f'<p><a href="{html.escape(url)}">{html.escape(label)}</a></p>' for label, url in links)}
<p>Thank you,<br>{html.escape(seller.name)}</p>
</body></html>""", subtype="html")
    if attach:
        _attach_pdf(message, doc, pdf)
    return message


def _addressed(doc: InvoiceDocument, sender: str, subject: str) -> tuple[EmailMessage, str]:
    """A message to the document's customer, with its headers (each value checked, so a bad
    address or a line break in a name is refused, never sent), and the customer's name."""
    to_address = check_address("organization e-mail", doc.bill_to_email)
    name = check_header_value("organization name", doc.bill_to_name)
    check_header_value("INVOICE_SMTP_FROM", sender)
    message = EmailMessage(policy=_POLICY)
    message["Subject"] = subject
    message["From"] = sender
    user, _, domain = to_address.rpartition("@")
    message["To"] = Address(display_name=name, username=user, domain=domain)
    message["Message-ID"] = message_id(doc, sender)
    message["Date"] = format_datetime(_noon(doc))
    return message, name


def _attach_pdf(message: EmailMessage, doc: InvoiceDocument, pdf: bytes) -> None:
    message.add_attachment(pdf, maintype="application", subtype="pdf", filename=f"{doc.number}.pdf")


def _links(page_url: str | None, download: PresignedLink | None) -> list[tuple[str, str]]:
    links = []
    if page_url:
        links.append(("View and pay the invoice online", page_url))
    if download is not None:
        until = download.expires_at.strftime("%Y-%m-%d %H:%M UTC")
        links.append((f"Download the PDF (link valid until {until})", download.url))
    return links


def _how_to_pay_html(seller: Seller) -> str:
    if not seller.payment_instructions:
        return ""
    return "<p><b>How to pay</b><br>" + "<br>".join(html.escape(line) for line in seller.payment_instructions) + "</p>"


def _notes(doc: InvoiceDocument, numbers: NumberFormat) -> list[str]:
    """What a customer must not miss: adjustments of earlier months, and credit moved."""
    notes = []
    for line in doc.lines:
        if line.period is not None and line.period != doc.period:
            notes.append(f"{line.description}: {numbers.money(line.amount, doc.currency)}")
        elif line.kind == "credit_carried":
            notes.append(f"A credit of {numbers.money(line.amount, doc.currency)} is carried to your next invoice.")
        elif line.kind == "credit_applied" and line.amount > 0:  # composition.CREDIT_TAKEN_BACK
            notes.append(f"A credit of {numbers.money(line.amount, doc.currency)} applied on an earlier invoice is "
                         "charged again: the invoice that carried it was voided.")
        elif line.kind == "credit_applied":
            notes.append(f"A credit of {numbers.money(-line.amount, doc.currency)} from earlier invoices is applied.")
    return notes


def _noon(doc: InvoiceDocument):
    from datetime import UTC, datetime, time

    return datetime.combine(doc.issue_date, time(12), tzinfo=UTC)
