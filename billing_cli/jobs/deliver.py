"""The delivery steps of one issued invoice: S3 upload, Stripe invoice, e-mail — each recorded on
the invoice the moment it succeeds, so that a rerun (after a failure or a crash) performs only
the steps still missing.

Order matters: the e-mail links the S3 object, and goes last so that a customer is never told
about an invoice that is not in Stripe. A failed step stops the later ones for that invoice.

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

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from ..db import invoice_store
from ..db.engine import Transactions
from ..delivery.invoice_email import BadAddress, build_invoice_email, message_id
from ..delivery.mailer import Mailer, MailError
from ..delivery.payments import PaymentError, PaymentGateway
from ..delivery.storage import FileStore, StorageError, object_key
from ..invoices import InvoiceDocument, Seller
from ..money import to_minor_units

if TYPE_CHECKING:
    from .invoice import OrgOutcome

# Stripe keeps idempotency keys for about 24 hours; past this age a retry could create a second
# draft, so we look the invoice up by our metadata before creating one.
IDEMPOTENCY_WINDOW = timedelta(hours=23)

# The feature flag of each delivery, for "skipped" messages.
FLAGS = {"s3": "INVOICE_ENABLE_S3", "stripe": "INVOICE_ENABLE_STRIPE", "email": "INVOICE_ENABLE_EMAIL"}


@dataclass(frozen=True)
class Deliveries:
    """The delivery adapters of a run; None means that delivery is turned off (reported as skipped)."""

    store: FileStore | None = None
    payments: PaymentGateway | None = None
    mailer: Mailer | None = None
    sender: str | None = None
    s3_prefix: str = ""
    days_until_due: int = 30

    def close(self) -> None:
        """End the sessions the adapters keep open between invoices (SMTP: QUIT)."""
        if self.mailer is not None:
            self.mailer.close()

    def disabled(self) -> list[str]:
        return [name for name, adapter in (("s3", self.store), ("stripe", self.payments), ("email", self.mailer))
                if adapter is None]


def pending(state: invoice_store.DeliveryState, deliveries: Deliveries) -> list[str]:
    """The delivery steps of this invoice that are on and have not succeeded yet."""
    steps = []
    if deliveries.store is not None and state.s3_key is None:
        steps.append("s3")
    if deliveries.payments is not None and state.stripe_status != "sent":
        steps.append("stripe")
    if deliveries.mailer is not None and state.emailed_at is None:
        steps.append("email")
    return steps


def deliver(transactions: Transactions, state: invoice_store.DeliveryState, document: InvoiceDocument,
            pdf: bytes, deliveries: Deliveries, seller: Seller, outcome: OrgOutcome) -> None:
    invoice_id = state.invoice_id
    key = state.s3_key
    if deliveries.store is not None and key is None:
        key = object_key(deliveries.s3_prefix, document.period, document.organization_id, document.number)
        try:
            deliveries.store.put(key, pdf, invoice_number=document.number)
        except StorageError as exc:
            outcome.fail("s3", str(exc))
            return
        with transactions() as conn:
            invoice_store.record_s3(conn, invoice_id, key)
        outcome.done.append("s3")

    if deliveries.payments is not None and state.stripe_status != "sent":
        try:
            _sync_stripe(transactions, deliveries, state, document, outcome)
        except PaymentError as exc:
            outcome.fail("stripe", str(exc))
            return

    if deliveries.mailer is not None and state.emailed_at is None:
        assert deliveries.sender is not None
        try:
            link = deliveries.store.link(key) if deliveries.store is not None and key else None
            message = build_invoice_email(document, pdf, sender=deliveries.sender, seller=seller, link=link)
            deliveries.mailer.send(message)
        except (BadAddress, MailError) as exc:
            outcome.fail("email", str(exc))
            return
        with transactions() as conn:  # right away: this is the one window that can resend
            invoice_store.record_email(conn, invoice_id, message_id(document, deliveries.sender))
        outcome.done.append("email")


def _sync_stripe(transactions: Transactions, deliveries: Deliveries, state: invoice_store.DeliveryState,
                 document: InvoiceDocument, outcome: OrgOutcome) -> None:
    gateway = deliveries.payments
    assert gateway is not None
    customer = state.stripe_customer_id
    if customer is None:
        customer = gateway.find_customer(document.organization_id, document.bill_to_email) or \
            gateway.create_customer(document.organization_id, document.bill_to_name, document.bill_to_email)
        with transactions() as conn:
            invoice_store.record_stripe_customer(conn, document.organization_id, customer)

    stripe_id, status = state.stripe_invoice_id, state.stripe_status
    created_now = False
    if stripe_id is None:
        found = None
        if datetime.now(UTC) - state.created_at > IDEMPOTENCY_WINDOW:
            found = gateway.find_invoice(customer, state.invoice_id)
        draft = found or gateway.create_draft(customer, invoice_id=state.invoice_id, number=document.number,
                                              currency=document.currency, days_until_due=deliveries.days_until_due)
        created_now = found is None
        stripe_id, status = draft.id, draft.status
        with transactions() as conn:
            invoice_store.record_stripe_invoice(conn, state.invoice_id, stripe_id, status)

    expected = to_minor_units(document.total, document.currency)
    if status == "draft":
        # A draft created by this call has no items of ours, except ones an earlier attempt added
        # under the same idempotency keys, which Stripe replays instead of duplicating: no lookup.
        present = set() if created_now else {item.line_no for item in gateway.items(stripe_id)}
        for line_no, line in enumerate(document.lines, start=1):
            if line_no not in present:
                gateway.add_item(customer, stripe_id, invoice_id=state.invoice_id, line_no=line_no,
                                 amount=to_minor_units(line.amount, document.currency),
                                 currency=document.currency, description=line.description)
        current = gateway.retrieve(stripe_id)
        _check_total(current.total, expected, current.currency, document)
        finalized = gateway.finalize(stripe_id, invoice_id=state.invoice_id)
        status = finalized.status
        with transactions() as conn:
            invoice_store.record_stripe_invoice(conn, state.invoice_id, stripe_id, status)


    if status == "open":
        # Stripe shows no "sent" state on the invoice: our record is the truth. A crash between
        # this call and the record below resends under the same idempotency key (replayed, not
        # sent twice, within Stripe's ~24 h key lifetime).
        sent = gateway.send(stripe_id, invoice_id=state.invoice_id)
        _check_total(sent.total, expected, sent.currency, document)
    elif status not in ("paid", "sent"):  # a zero invoice is paid on finalization: nothing to send
        raise PaymentError(f"Stripe invoice {stripe_id} is {status}, expected open: check it in Stripe",
                           transient=False)
    with transactions() as conn:
        invoice_store.record_stripe_invoice(conn, state.invoice_id, stripe_id, "sent")
    outcome.done.append("stripe")


def _check_total(stripe_total: int, expected: int, currency: str, document: InvoiceDocument) -> None:
    if stripe_total != expected or currency.lower() != document.currency.lower():
        raise PaymentError(f"Stripe invoice total {stripe_total} {currency.upper()} differs from ours {expected} "
                           f"{document.currency} (minor units): not finalized, check the Stripe draft",
                           transient=False)
