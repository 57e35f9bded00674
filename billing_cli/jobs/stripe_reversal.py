"""The Stripe side of a voided invoice. When a regeneration voids an invoice Stripe already has,
its Stripe invoice is voided (open), credited in full (paid) or deleted (a draft), before the
replacement is delivered, so the customer never has two invoices to pay for one period.

A paid invoice cannot be voided: it gets a credit note for what it has not been credited yet,
credited to the customer's Stripe balance, which Stripe applies to the customer's next invoice
(normally the replacement). Refunding instead is a decision for a person, in Stripe.

Resumable: what to do is decided from the invoice as Stripe has it now; every creating call
carries an idempotency key, and a credit note this program already issued for the invoice (found
by our metadata, however long ago) is never issued twice.
"""

from __future__ import annotations

from ..db import credit_note_store, invoice_store
from ..db.engine import Transactions
from ..db.invoice_store import PendingReversal, StoredInvoice
from ..delivery.payments import PaymentError, PaymentGateway


class ReversalFailed(PaymentError):
    """Stripe refused (or could not be asked) to reverse one void invoice's Stripe invoice."""

    def __init__(self, item: PendingReversal, cause: PaymentError, done: list[str]) -> None:
        super().__init__(str(cause), transient=cause.transient, not_found=cause.not_found)
        self.item = item
        self.done = done  # the numbers reversed before it


def reverse_pending(transactions: Transactions, gateway: PaymentGateway, organization_id: str, *,
                    only: int | None = None) -> list[str]:
    """Reverse the Stripe invoices of the organization's void invoices still pending (or of the one
    invoice `only`), as stored now, oldest first, each recorded the moment it is done; returns their
    numbers. Used by invoicing runs (before anything else of the organization is delivered) and by
    a credit note's Stripe step. Raises ReversalFailed at the first one Stripe refuses: the others
    wait for a rerun."""
    with transactions() as conn:
        pending = invoice_store.pending_reversals(conn, [organization_id]).get(organization_id, [])
    done = []
    for item in pending:
        if only is not None and item.id != only:
            continue
        try:
            how, credit_note = reverse(gateway, item)
        except PaymentError as exc:
            raise ReversalFailed(item, exc, done) from exc
        with transactions() as conn:
            invoice_store.record_reversal(conn, item.id, how, credit_note)
            if how != "deleted":  # Stripe had it finalized: it was sent, whatever we managed to record
                credit_note_store.issue_for_void(conn, item.id, finalized_in_stripe=True)
        done.append(item.number)
    return done


def adopt_lost_draft(transactions: Transactions, gateway: PaymentGateway, invoice: StoredInvoice) -> bool:
    """Before a live invoice that has no Stripe id is voided: the Stripe draft a crash may have
    kept from us (killed between Stripe's answer to the draft's creation and its record) is looked
    up by our metadata and recorded on the invoice, so that the void reverses it (deletes the draft)
    like any other instead of leaving it in Stripe for ever. True when one was found. A draft is only
    made for a customer recorded first: without one there is nothing to look for."""
    if invoice.stripe_invoice_id is not None or invoice.stripe_customer_id is None:
        return False
    found = gateway.find_invoice(invoice.stripe_customer_id, invoice.id)
    if found is None:
        return False
    with transactions() as conn:
        invoice_store.record_stripe_invoice(conn, invoice.id, found.id, "draft")
    return True


def reverse(gateway: PaymentGateway, item: PendingReversal) -> tuple[str, str | None]:
    """Reverse one void invoice's Stripe invoice: ("voided" | "credited" | "deleted", credit note id)."""
    stripe_id = item.stripe_invoice_id
    remote = gateway.invoice_detail(stripe_id)
    if remote is None:  # deleted already (by us, just before a crash, or by hand)
        return "deleted", None
    if remote.status == "draft":
        gateway.delete_draft(stripe_id)
        return "deleted", None
    if remote.status in ("open", "uncollectible"):
        gateway.void(stripe_id, invoice_id=item.id)
        return "voided", None
    if remote.status == "void":
        return "voided", None
    if remote.status == "paid":
        issued = gateway.credit_notes(stripe_id, invoice_id=item.id)
        if issued:
            return "credited", issued[0]
        remaining = remote.total - remote.credited
        if remaining <= 0:  # nothing was charged (a zero invoice), or it was credited by hand
            return "credited", None
        memo = (f"Invoice {item.number} is replaced by invoice {item.replaced_by}." if item.replaced_by
                else f"Invoice {item.number} is cancelled.")
        if item.credit_note:  # our credit note document for it, which the customer receives
            memo = f"{memo} Credit note {item.credit_note}."
        return "credited", gateway.credit_in_full(stripe_id, invoice_id=item.id, amount=remaining, memo=memo)
    raise PaymentError(f"Stripe invoice {stripe_id} is {remote.status}: cannot void or credit it; check it in Stripe",
                       transient=False)
