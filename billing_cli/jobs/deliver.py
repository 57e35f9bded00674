"""The delivery steps of one issued invoice: S3 upload, Stripe invoice, e-mail — each recorded on
the invoice the moment it succeeds, so that a rerun (after a failure or a crash) performs only
the steps still missing.

Order matters: the e-mail links Stripe's page (and the S3 object when the PDF is too large to
attach), and goes last so that a customer is never told about an invoice that is not in Stripe. A
failed step stops the later ones for that invoice.

Crash windows (the process killed between a side effect and its record):
- S3: the rerun uploads the same bytes to the same key again: harmless.
- Stripe: every creating call has an idempotency key derived from our invoice id, so a rerun
  within Stripe's ~24 h replays the same objects; later reruns find the draft by our metadata and
  only add the items it lacks.
- E-mail: the only window that can duplicate an effect: the SMTP server accepted the message and
  the process died before `emailed_at` was committed (one UPDATE, milliseconds). The resent
  message carries the same Message-ID, so mail systems can recognise the duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

from ..db import invoice_store
from ..db.engine import Transactions
from ..db.invoice_store import StoredInvoice
from ..delivery.invoice_email import BadAddress, build_invoice_email, check_address, check_header_value, message_id
from ..delivery.mailer import MailError
from ..delivery.payments import STRIPE_MAX_LINES, PaymentError, PaymentGateway, StripeInvoiceDetail, StripeLine, \
    StripeLineTax
from ..delivery.ports import Deliveries
from ..delivery.storage import PresignedLink, StorageError, object_key
from ..invoices import InvoiceDocument, Seller
from ..money import Precision, apportion, to_stripe_amount
from ..outcomes import Component, Step
from ..taxes import Treatment, format_percentage
from ..pricing import InvoiceLine

# Stripe keeps idempotency keys for about 24 hours; past this age a retry could create a second
# draft, so we look the invoice up by our metadata before creating one.
IDEMPOTENCY_WINDOW = timedelta(hours=23)


@dataclass
class Delivered:
    """The delivery steps one call carried out, and the error that stopped it, if any."""

    steps: list[Step] = field(default_factory=list)
    error: tuple[Component, str] | None = None


def deliver(transactions: Transactions, invoice: StoredInvoice, document: InvoiceDocument, pdf: bytes,
            deliveries: Deliveries, seller: Seller, steps: tuple[Step, ...]) -> Delivered:
    """Carry out `steps` (in order: S3, Stripe, e-mail), recording each as it succeeds. The first
    failure stops the later steps of this invoice."""
    delivered = Delivered()
    key = invoice.s3_key
    if Step.S3 in steps and deliveries.store is not None:
        try:
            key = upload_pdf(deliveries, document, pdf)
        except StorageError as exc:
            delivered.error = (Component.S3, str(exc))
            return delivered
        with transactions() as conn:
            invoice_store.record_s3(conn, invoice.id, key)
        delivered.steps.append(Step.S3)

    page_url = invoice.stripe_hosted_url
    if Step.STRIPE in steps and deliveries.payments is not None:
        try:
            page_url = _sync_stripe(transactions, deliveries, invoice, document) or page_url
        except PaymentError as exc:
            delivered.error = (Component.STRIPE, str(exc))
            return delivered
        delivered.steps.append(Step.STRIPE)

    if Step.EMAIL in steps and deliveries.mailer is not None:
        try:
            message = _invoice_email(deliveries, document, pdf, seller, key=key, page_url=page_url)
            deliveries.mailer.send(message)
        except (BadAddress, MailError, StorageError) as exc:
            delivered.error = (Component.EMAIL, str(exc))
            return delivered
        with transactions() as conn:  # right away: this is the one window that can resend
            invoice_store.record_email(conn, invoice.id, message_id(document, deliveries.sender))
        delivered.steps.append(Step.EMAIL)
    return delivered


def upload_pdf(deliveries: Deliveries, document: InvoiceDocument, pdf: bytes) -> str:
    """The document's PDF put in S3 (an invoice, or a credit note beside it); its key. StorageError
    when the upload failed."""
    assert deliveries.store is not None
    key = object_key(deliveries.s3_prefix, document.period, document.organization_id, document.number)
    deliveries.store.put(key, pdf, invoice_number=document.number)
    return key


def _invoice_email(deliveries: Deliveries, document: InvoiceDocument, pdf: bytes, seller: Seller, *,
                   key: str | None, page_url: str | None) -> EmailMessage:
    """The PDF attached if it is small enough, else linked from S3 (a link the credentials keep
    for its stated lifetime); Stripe's page of the invoice linked when there is one."""
    assert deliveries.sender is not None
    attach, download = attachment_or_link(deliveries, pdf, key)
    return build_invoice_email(document, pdf, sender=deliveries.sender, seller=seller, attach=attach,
                               page_url=page_url, download=download)


def attachment_or_link(deliveries: Deliveries, pdf: bytes, key: str | None) -> tuple[bool, PresignedLink | None]:
    """Whether the PDF is attached, else the S3 link that replaces it (invoices and credit notes);
    MailError when it is too large and no link the credentials can keep exists."""
    if len(pdf) <= deliveries.attachment_max_bytes:
        return True, None
    download = deliveries.store.link(key) if deliveries.store is not None and key else None
    if download is None:
        raise MailError(f"the PDF ({len(pdf)} bytes) is over INVOICE_EMAIL_ATTACHMENT_MAX_BYTES and there is no "
                        "download link to send instead (S3 off, or its credentials expire before "
                        "INVOICE_S3_LINK_EXPIRY_SECONDS): raise the limit, or turn S3 on with lasting credentials",
                        transient=False)
    return False, download


def _sync_stripe(transactions: Transactions, deliveries: Deliveries, invoice: StoredInvoice,
                 document: InvoiceDocument) -> str | None:
    """Bring the Stripe invoice to "sent", from wherever an earlier attempt left it. The happy
    path is three calls: the draft (with our number and due date), all lines at once, and send
    (which finalizes). Resuming, what to do is decided from the invoice as Stripe has it now, never
    from what we stored: our own send is the only call that finalizes our drafts, so a finalized
    invoice was sent, and is never sent twice, however long ago the first attempt was."""
    gateway = deliveries.payments
    assert gateway is not None
    if len(document.lines) > STRIPE_MAX_LINES:  # before any call: no customer, no draft Stripe would leave empty
        raise PaymentError(f"{document.number} has {len(document.lines)} lines and a Stripe invoice takes at most "
                           f"{STRIPE_MAX_LINES}: not sent in Stripe, nor e-mailed; bill it outside Stripe",
                           transient=False)
    try:  # before any call too: an invoice issued while Stripe was off keeps the ISO unit (1.235 KWD)
        expected, lines = to_stripe_amount(document.total, document.currency), _stripe_lines(document)
    except ValueError as exc:
        raise PaymentError(f"{document.number} cannot go to Stripe as it was issued ({exc}; issued while Stripe "
                           "was off?): not sent in Stripe, nor e-mailed; regenerate it with Stripe on",
                           transient=False) from None
    customer = _customer(transactions, gateway, invoice, document)
    stale = datetime.now(UTC) - invoice.created_at > IDEMPOTENCY_WINDOW
    stripe_id = invoice.stripe_invoice_id
    remote: StripeInvoiceDetail | None = None
    if stripe_id is None and stale:  # a draft may exist whose id never reached us, its key forgotten
        found = gateway.find_invoice(customer, invoice.id)
        stripe_id = found.id if found is not None else None
    if stripe_id is None:
        stripe_id = gateway.create_draft(customer, invoice_id=invoice.id, number=document.number,
                                         currency=document.currency, due_date=document.due_date,
                                         footer="\n".join(document.tax_mentions) or None).id
        with transactions() as conn:
            invoice_store.record_stripe_invoice(conn, invoice.id, stripe_id, "draft")
    else:
        remote = gateway.invoice_detail(stripe_id)
        if remote is None:
            raise PaymentError(f"Stripe has no invoice {stripe_id} any more (deleted?): check it in Stripe",
                               transient=False)

    status = "draft" if remote is None else remote.status
    if status == "draft":
        present = {n for n, _ in remote.lines} if remote is not None else set()
        missing = [line for line in lines if line.line_no not in present]
        total = gateway.add_lines(stripe_id, invoice_id=invoice.id, lines=missing).total if missing else \
            remote.total  # type: ignore[union-attr]
        currency = remote.currency if remote is not None else document.currency
        _check_total(total, expected, currency, document)
        hosted_url = gateway.send(stripe_id, invoice_id=invoice.id).hosted_url  # finalizes, then sends
    elif status == "open" and invoice.stripe_status == "open":
        # Finalized by an older version of this program, which then sent separately: send it
        # (under the same key as then: replayed by Stripe if that send happened within ~24 h).
        hosted_url = gateway.send(stripe_id, invoice_id=invoice.id).hosted_url
    elif status in ("open", "paid"):
        hosted_url = remote.hosted_url  # type: ignore[union-attr]
    else:
        raise PaymentError(f"Stripe invoice {stripe_id} is {status}, expected open: check it in Stripe",
                           transient=False)
    with transactions() as conn:
        invoice_store.record_stripe_invoice(conn, invoice.id, stripe_id, "sent", hosted_url)
    return hosted_url


def _stripe_lines(document: InvoiceDocument) -> list[StripeLine]:
    """Our lines as Stripe gets them, each with its share of every charged tax. Stripe adds the tax
    amounts we send as they are: it rounds nothing, so its total is ours whatever its unit (it would
    compute a TaxRate's tax in thousandths of KWD that we keep in hundredths) and whatever its
    rounding setting (per line by default: up to half a unit per line off a tax rounded once on the
    subtotal). Each rate's tax is shared out over the lines in proportion to their amounts (credit
    lines take a negative share: the tax is on the subtotal, theirs included), in what Stripe
    charges, so that the shares of a rate add up to exactly the tax we stored for it. A pure function
    of the invoice: a rerun that adds the lines a draft lacks sends each line the same share."""
    currency = document.currency
    charged = [tax for tax in document.taxes if tax.treatment == Treatment.STANDARD]
    shares = [apportion(tax.amount, [line.amount for line in document.lines], currency, Precision.STRIPE)
              for tax in charged]
    lines = []
    for n, line in enumerate(document.lines, start=1):
        amount = to_stripe_amount(line.amount, currency)
        taxes = tuple(StripeLineTax(to_stripe_amount(share[n - 1], currency), amount, tax.name,
                                    format_percentage(tax.percentage)[:-1], tax.country, tax.region,
                                    f"{tax.label}, billing tax rate {tax.rate_id}")
                      for tax, share in zip(charged, shares))
        lines.append(StripeLine(n, amount, line.description, taxes, _line_period(document, line)))
    return lines


def _customer(transactions: Transactions, gateway: PaymentGateway, invoice: StoredInvoice,
              document: InvoiceDocument) -> str:
    """The organization's Stripe customer, created once, and told when the organization's name or
    e-mail changed. Always the organization's details as they are now, read here, under its lock:
    never the bill-to of the invoice being delivered, which for an older invoice completed late
    would turn the customer back to an address the organization stopped using (Stripe sends its
    invoices, reminders and receipts there)."""
    with transactions() as conn:
        state = invoice_store.customer_state(conn, document.organization_id)
    now = _usable(state.name, state.email)
    customer = state.customer_id
    if customer is None:
        name, email = now or (document.bill_to_name, document.bill_to_email)
        customer = _new_customer(gateway, invoice, document.organization_id, name, email)
    elif now is not None and (state.synced_name, state.synced_email) != now:
        name, email = now
        # A key of its own for each change (what we last recorded, and when): A, B, A, B within
        # Stripe's ~24 h is four updates, never the replay of the first B.
        gateway.update_customer(customer, name=name, email=email,
                                since=state.synced_at.isoformat() if state.synced_at else "-")
    else:
        return customer
    with transactions() as conn:
        invoice_store.record_stripe_customer(conn, document.organization_id, customer, name=name, email=email)
    return customer


def _new_customer(gateway: PaymentGateway, invoice: StoredInvoice, organization_id: str, name: str,
                  email: str) -> str:
    """The organization's customer when none is recorded: made now, or found by our metadata when
    an earlier attempt made it (killed before recording it), and then given the name and e-mail
    the organization has now. Found before creating when Stripe may have forgotten that attempt's
    key; after creating when Stripe refuses its key because the details changed since that attempt
    (the key stays bound to them for ~24 h). Never a second customer."""
    stale = datetime.now(UTC) - invoice.created_at > IDEMPOTENCY_WINDOW
    found = gateway.find_customer(organization_id) if stale else None
    if found is None:
        try:
            return gateway.create_customer(organization_id, name, email)
        except PaymentError as exc:
            if not exc.conflict:
                raise
            found = gateway.find_customer(organization_id)
            if found is None:  # Stripe's search lags its writes by about a minute
                raise PaymentError(f"{exc} (an earlier attempt made the customer with other details; Stripe's "
                                   "search does not show it yet): rerun in a few minutes", transient=False) from None
    if (found.name, found.email) != (name, email):
        gateway.update_customer(found.id, name=name, email=email, since=f"found:{found.name}:{found.email}")
    return found.id


def _usable(name: str, email: str) -> tuple[str, str] | None:
    """The organization's name and e-mail, if they can be given to Stripe; None when they are not
    valid now (its next invoice is refused for that, naming the fix): the customer keeps what it has."""
    try:
        return check_header_value("organization name", name), check_address("organization e-mail", email)
    except BadAddress:
        return None


def _check_total(stripe_total: int, expected: int, currency: str, document: InvoiceDocument) -> None:
    if stripe_total != expected or currency.lower() != document.currency.lower():
        taxed = any(tax.treatment == Treatment.STANDARD for tax in document.taxes)
        why = (" (with taxes: a draft an older billing made with Stripe TaxRates on its lines keeps Stripe's "
               "tax: regenerate the invoice, docs/taxes.md)" if taxed else "")
        raise PaymentError(f"Stripe invoice total {stripe_total} {currency.upper()} differs from ours {expected} "
                           f"{document.currency} (minor units): not finalized, check the Stripe draft{why}",
                           transient=False)


def _line_period(document: InvoiceDocument, line: InvoiceLine) -> tuple[int, int]:
    """The period a line bills, for Stripe, as Unix times [start, end): the invoice's own period, or
    the period an adjustment is for (its own days when it was an anchored one)."""
    period = document.line_period(line)
    return int(period.start.timestamp()), int(period.end.timestamp())
