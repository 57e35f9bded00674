"""Credit notes: voiding one invoice by hand (`billing invoices void`), and delivering a credit note
(PDF, S3, Stripe, e-mail), each step recorded on the credit note the moment it succeeds, so a rerun
performs only what is missing, exactly as invoices are delivered (jobs/deliver.py).

The Stripe step of a credit note is the reversal of the credited invoice's Stripe invoice
(jobs/stripe_reversal.py: voided while it is open, credited in full by a Stripe credit note once
paid), recorded on the invoice (`stripe_reversal`). It goes before the e-mail: the customer is never
told an invoice is cancelled while Stripe still asks them to pay it.

Crash windows are those of invoices: a repeated S3 upload writes the same bytes to the same key;
Stripe calls carry idempotency keys and a Stripe credit note is first looked up by our metadata; the
e-mail can be sent twice only if the process dies between the SMTP server's `250` and the one UPDATE
that records it, and then under the same Message-ID.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from ..db import credit_note_store, invoice_store
from ..db.engine import Transactions
from ..delivery.invoice_email import BadAddress, build_credit_note_email, message_id
from ..delivery.mailer import MailError
from ..delivery.payments import PaymentError, PaymentGateway
from ..delivery.pdf import PdfError, render_invoice
from ..delivery.ports import Deliveries
from ..delivery.storage import StorageError
from ..errors import AlreadyRunning, PeerUnavailable, Refused
from ..invoices import InvoiceDocument, Seller
from ..outcomes import Component, Job, RunOutcome, Step
from ..periods import Month
from ..summary import RunSummary
from . import stripe_reversal
from .deliver import Delivered, attachment_or_link, upload_pdf

Renderer = Callable[[InvoiceDocument, Seller], bytes]


def deliver_credit_note(transactions: Transactions, credit_note_id: int, deliveries: Deliveries, seller: Seller,
                        enabled: tuple[Step, ...], renderer: Renderer = render_invoice) -> Delivered:
    """Carry out the credit note's missing steps (PDF, S3, Stripe, e-mail), recording each as it
    succeeds; the first failure stops the later ones. Read again here, under the organization's
    lock, so a step another process finished meanwhile is not done twice."""
    delivered = Delivered()
    with transactions() as conn:
        note = credit_note_store.load(conn, credit_note_id)
        document = credit_note_store.load_document(conn, credit_note_id)
    steps = note.pending_steps(enabled)
    if not steps:
        return delivered
    try:  # rendered from what is stored: the same bytes every time
        pdf = renderer(document, seller)
    except PdfError as exc:
        delivered.error = (Component.PDF, f"credit note {note.number}: PDF rendering failed: {exc}")
        return delivered
    if Step.PDF in steps:
        with transactions() as conn:
            credit_note_store.record_pdf(conn, note.id, sha256=hashlib.sha256(pdf).hexdigest(), size=len(pdf))
        delivered.steps.append(Step.PDF)

    key = note.s3_key
    if Step.S3 in steps and deliveries.store is not None:
        try:
            key = upload_pdf(deliveries, document, pdf)
        except StorageError as exc:
            delivered.error = (Component.S3, f"credit note {note.number}: {exc}")
            return delivered
        with transactions() as conn:
            credit_note_store.record_s3(conn, note.id, key)
        delivered.steps.append(Step.S3)

    if Step.STRIPE in steps and deliveries.payments is not None:
        try:
            stripe_reversal.reverse_pending(transactions, deliveries.payments, note.organization_id,
                                            only=note.invoice_id)
        except PaymentError as exc:
            delivered.error = (Component.STRIPE, f"credit note {note.number}: the Stripe invoice of {note.invoice_number}"
                                                 f" could not be voided or credited ({exc}); the e-mail waits for it")
            return delivered
        delivered.steps.append(Step.STRIPE)

    if Step.EMAIL in steps and deliveries.mailer is not None:
        assert deliveries.sender is not None
        try:
            attach, download = attachment_or_link(deliveries, pdf, key)
            deliveries.mailer.send(build_credit_note_email(document, pdf, sender=deliveries.sender, seller=seller,
                                                           attach=attach, download=download))
        except (BadAddress, MailError, StorageError) as exc:
            delivered.error = (Component.EMAIL, f"credit note {note.number}: {exc}")
            return delivered
        with transactions() as conn:  # right away: this is the one window that can resend
            credit_note_store.record_email(conn, note.id, message_id(document, deliveries.sender))
        delivered.steps.append(Step.EMAIL)
    return delivered


# -- billing invoices void ---------------------------------------------------------------------


@dataclass(frozen=True)
class VoidPlan:
    """What voiding an invoice will do, shown before it is confirmed."""

    number: str
    organization_id: str
    bill_to_name: str
    month: Month
    currency: str
    total: Decimal
    sent: bool  # the customer had it: a credit note is issued and delivered
    in_stripe: bool  # Stripe has it: voided, credited or deleted there


@dataclass
class VoidResult:
    plan: VoidPlan
    reason: str
    credit_note: str | None = None
    credit_note_total: Decimal | None = None
    steps: list[Step] = field(default_factory=list)
    error: tuple[Component, str] | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> RunSummary:
        summary = RunSummary(job=Job.INVOICES_VOID, period=self.plan.month,
                             outcome=RunOutcome.SUCCEEDED if self.ok else RunOutcome.PARTIAL, dry_run=False,
                             seconds=self.seconds, counts={"invoices_voided": 1,
                                                           "credit_notes": 1 if self.credit_note else 0})
        if self.error is not None:
            component, message = self.error
            summary.errors = {component.value: 1}
            summary.failed = [{"organization_id": self.plan.organization_id, "errors": [[component.value, message]]}]
        return summary

    def json_extra(self) -> dict[str, Any]:
        return {"invoice": {"number": self.plan.number, "organization_id": self.plan.organization_id,
                            "currency": self.plan.currency, "total": str(self.plan.total), "sent": self.plan.sent,
                            "reason": self.reason},
                "credit_note": None if self.credit_note is None else {
                    "number": self.credit_note, "total": str(self.credit_note_total), "done": list(self.steps)}}


class Locks(Protocol):
    """What the void needs from the run's locks: hold one organization, as invoicing runs do
    (runs/lifecycle.LockGuard); the context answers whether it is held."""

    def hold(self, organization_id: str) -> AbstractContextManager[bool]: ...


def plan_void(transactions: Transactions, number: str) -> VoidPlan:
    """Read-only: what voiding `number` will do; Refused (exit 8) for a number that was never
    issued or an invoice already void."""
    with transactions() as conn:
        row = invoice_store.invoice_by_number(conn, number)
        note = credit_note_store.of_invoice(conn, row.id) if row is not None and row.status == "void" else None
    if row is None:
        raise Refused(f"invoice {number} was never issued: there is nothing to void",
                      hint="Check the number (`billing runs` and the invoice e-mails show the numbers issued).")
    if row.status == "void":
        credited = f"; its credit note is {note.number}" if note is not None else ""
        raise Refused(f"invoice {number} is void already (since {row.voided_at:%Y-%m-%d}, {row.void_reason}){credited}",
                      hint="Nothing to do: a void invoice is never voided or credited twice.")
    return VoidPlan(number, row.organization_id, row.bill_to_name, Month.containing_date(row.billing_month),
                    row.currency, row.total, sent=row.sent, in_stripe=row.stripe_invoice_id is not None)


def void_invoice(transactions: Transactions, number: str, reason: str, *, deliveries: Deliveries, seller: Seller,
                 enabled: tuple[Step, ...], locks: Locks, confirm: Callable[[VoidPlan], bool],
                 renderer: Renderer = render_invoice) -> VoidResult:
    """Void one live invoice by its number, with a reason: plan it, have it confirmed, then, holding
    the organization as an invoicing run does (so neither races the other), void it and issue its
    credit note if it was sent (one transaction), reverse its Stripe invoice, and deliver the credit
    note. A draft-only invoice (never sent) is simply voided (and its Stripe draft, if any, deleted)."""
    started = time.perf_counter()
    plan = plan_void(transactions, number)
    if not confirm(plan):
        raise Refused(f"invoice {number} not voided: not confirmed", hint="Nothing was changed.")
    with locks.hold(plan.organization_id) as alone:
        if not alone:
            raise AlreadyRunning(f"another run is handling organization {plan.organization_id} right now: invoice "
                                 f"{number} was not voided", hint="Run the same command again in a moment.")
        if deliveries.payments is not None:
            _adopt_lost_draft(transactions, deliveries.payments, number)
        with transactions() as conn:
            row = invoice_store.invoice_by_number(conn, number)
            assert row is not None
            if not invoice_store.void_invoice(conn, row.id, reason, organization_id=row.organization_id):
                raise Refused(f"invoice {number} was voided meanwhile by another run", hint="Nothing was changed.")
            note = credit_note_store.of_invoice(conn, row.id)
        result = VoidResult(plan, reason)
        if note is None and deliveries.payments is not None and row.stripe_invoice_id is not None:
            # Not sent as far as we recorded: its Stripe draft is deleted; or, if Stripe has it
            # finalized (sent by a run that crashed before recording it), voided and credited.
            try:
                stripe_reversal.reverse_pending(transactions, deliveries.payments, plan.organization_id, only=row.id)
            except PaymentError as exc:
                result.error = (Component.STRIPE, f"the Stripe invoice of {number} could not be deleted or voided "
                                                  f"({exc}); the next invoicing run of any month does it")
            with transactions() as conn:
                note = credit_note_store.of_invoice(conn, row.id)
        if note is not None:
            result.credit_note, result.credit_note_total = note.number, note.total
            delivered = deliver_credit_note(transactions, note.id, deliveries, seller, enabled, renderer)
            result.steps, result.error = delivered.steps, delivered.error
    result.seconds = time.perf_counter() - started
    return result


def _adopt_lost_draft(transactions: Transactions, gateway: PaymentGateway, number: str) -> None:
    """The invoice's Stripe draft whose id a crash kept from us, recorded so that the void deletes it
    (stripe_reversal.adopt_lost_draft). Stripe not answering stops the void before anything changed:
    voided first, such a draft would never be found again."""
    with transactions() as conn:
        found = invoice_store.invoice_by_number(conn, number)
        live = invoice_store.load_live_invoice(conn, found.id) if found is not None else None
    if live is None:
        return  # voided meanwhile: the void below says so
    try:
        stripe_reversal.adopt_lost_draft(transactions, gateway, live)
    except PaymentError as exc:
        raise PeerUnavailable(f"could not ask Stripe whether it holds a draft of {number} whose id a crash kept from "
                              f"the database ({exc}): invoice {number} was not voided",
                              hint="Nothing was changed: run the same command again once Stripe answers.") from None


def undelivered_credit_notes(transactions: Transactions, organization_ids: list[str],
                             enabled: tuple[Step, ...]) -> dict[str, tuple[int, ...]]:
    """The credit notes of these organizations with a step still to do (with these deliveries on)."""
    with transactions() as conn:
        found = credit_note_store.undelivered(conn, organization_ids)
    return {org: ids for org, notes in found.items()
            if (ids := tuple(n.id for n in notes if n.pending_steps(enabled)))}

