"""Acting: carry each organization's plan out for real: issue, void, render, deliver.

Every write is a short transaction, recorded the moment it succeeds, so a crash or a failure
leaves a state the next run's plan picks up from (see jobs/deliver.py for the windows). Issuing
and recording the PDF are shared between organizations: what workers are ready to write at the
same time goes into one transaction (issuing.py), each invoice still all or nothing with its number.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy.exc import IntegrityError, OperationalError

from ...db import credit_note_store, invoice_store
from ...db.engine import Transactions
from ...db.invoice_store import StoredInvoice
from ...delivery.payments import PaymentError
from ...errors import BillingError
from ...invoices import InvoiceDocument, due_date
from ...outcomes import DELIVERY_STEPS, Component, OrgStatus, Step
from ...periods import format_hour
from ..aggregate import aggregate_one_hour
from .. import stripe_reversal
from ..credit_notes import deliver_credit_note, undelivered_credit_notes
from ..deliver import deliver
from .documents import render
from .issuing import block_writer
from .options import InvoiceOptions
from .planning import Action, OrgPlan, pending_deliveries
from .results import InvoiceRunResult, OrgOutcome, expected_outcome


_CHANGES = (Action.ISSUE, Action.REGENERATE, Action.VOID, Action.COMPLETE)  # what writes or delivers


class Acting:
    def __init__(self, transactions: Transactions, options: InvoiceOptions) -> None:
        self.transactions = transactions
        self.options = options
        # One writer: the invoices to issue and the PDFs to record go in the same blocks.
        self._writer = block_writer(transactions)

    def prepare(self, stale_hours: list[datetime], result: InvoiceRunResult) -> list[datetime]:
        """Aggregate the month's hours whose events changed since the hourly job saw them, before
        anything is rated. Returns the hours to read from the raw events instead: none."""
        for hour in stale_hours:
            outcome = aggregate_one_hour(self.transactions, hour)
            if outcome.error:  # rating on incomplete usage would under-bill: stop before any invoice
                raise BillingError(f"aggregating {format_hour(hour)} failed, so no invoice was issued: "
                                   f"{outcome.error}",
                                   hint=f"Fix it and rerun; `billing aggregate-hourly --hour {hour:%Y-%m-%dT%H}` "
                                        "shows the error alone.")
            result.aggregated_hours += 1
        return []

    def handle(self, plan: OrgPlan) -> OrgOutcome:
        outcome = expected_outcome(plan)
        if plan.action not in _CHANGES and not plan.reversals and not plan.credit_notes:
            return outcome
        self.options.locks.check()  # never act once the run has lost its own lock
        # One process at a time issues, voids or delivers an organization's invoices, whatever
        # run it belongs to (a whole run, a shard, an --org fix): held for the whole of it.
        with self.options.locks.hold(plan.organization.id) as alone:
            if not alone:
                return outcome.fail(Component.BUSY, "another run is handling this organization right now: "
                                                    "nothing done here; a rerun completes what is missing")
            return self._handle(plan, outcome)

    def _handle(self, plan: OrgPlan, outcome: OrgOutcome) -> OrgOutcome:
        try:
            if plan.action in (Action.ISSUE, Action.REGENERATE):
                self._issue(plan, outcome)
            elif plan.action == Action.VOID:
                assert plan.existing is not None
                lost_draft = self._adopt_lost_draft(plan, outcome)
                if lost_draft is None:
                    return outcome
                with self.transactions() as conn:
                    voided = invoice_store.void_invoice(conn, plan.existing.id, "regenerated: nothing to bill",
                                                        organization_id=plan.organization.id)
                if voided:
                    outcome.steps.append(Step.VOIDED)
                else:
                    outcome.warnings.append(f"{plan.existing.number} was voided meanwhile by another run")
                self._reverse_in_stripe(plan, outcome, lost_draft)
                self._deliver_credit_notes(plan, outcome)
            elif plan.action == Action.COMPLETE:
                assert plan.existing is not None
                steps = self._reverse_in_stripe(plan, outcome)
                self._deliver_credit_notes(plan, outcome)
                steps = self._after_credit_note(plan.existing.replaces_invoice_id, plan.existing.number, steps,
                                                outcome)
                self._complete(plan.existing, steps, outcome)
            else:  # nothing else to do: only what void invoices still need (Stripe, credit notes)
                self._reverse_in_stripe(plan, outcome)
                self._deliver_credit_notes(plan, outcome)
        except OperationalError:
            raise  # the database is gone: stop the run (exit 4); a rerun resumes where this one stopped
        except Exception as exc:  # one organization's bug must not stop the others; it is reported
            outcome.fail(Component.DATA, f"unexpected error: {type(exc).__name__}: {exc}")
        return outcome

    def _issue(self, plan: OrgPlan, outcome: OrgOutcome) -> None:
        """Issue the invoice (one transaction: number, invoice, lines; shared with the invoices other
        workers issue at the same time, see issuing.py), then its steps."""
        options, org, invoice = self.options, plan.organization, plan.invoice
        assert invoice is not None
        due = due_date(options.issue_date, options.payment_terms_days)
        lost_draft = self._adopt_lost_draft(plan, outcome)
        if lost_draft is None:
            return
        try:
            stored = self._writer.submit(invoice_store.IssueRequest(
                organization_id=org.id, bill_to_name=org.name, bill_to_email=org.email, invoice=invoice,
                revisions=plan.revisions, issue_date=options.issue_date, due_date=due,
                planned_with=plan.history.live_invoices, replaces=plan.existing,
                stripe_customer_id=org.stripe_customer_id,
                bill_to_address=tuple(org.billing.postal_lines()), bill_to_tax_id=org.billing.printed_tax_id))
        except invoice_store.StalePlan:
            # Another run issued or voided one of its invoices since the plan was read: what was
            # already billed may differ, so nothing is issued now; a rerun plans it afresh.
            outcome.fail(Component.DATA, "its invoices changed while this run planned it (another run is "
                                         "invoicing it): nothing issued; rerun to invoice it")
            return
        except IntegrityError as exc:
            if ("uq_invoices_one_live_per_org_month" not in str(exc.orig)
                    and "uq_invoices_one_live_period" not in str(exc.orig)):
                raise
            # Another run issued this organization's invoice between our read and our insert: the
            # unique index kept it to one. Report it as already invoiced; a rerun finishes its steps.
            outcome.status = OrgStatus.ALREADY_INVOICED
            outcome.warnings.append("invoiced concurrently by another run")
            return
        outcome.number, outcome.currency, outcome.total = stored.number, stored.currency, stored.total
        outcome.tax = invoice.tax_total if invoice.taxes else None
        outcome.steps.append(Step.ISSUED)
        steps = self._reverse_in_stripe(plan, outcome, lost_draft)  # the replaced invoice leaves Stripe first
        self._deliver_credit_notes(plan, outcome)  # its credit note reaches the customer before the replacement
        if plan.existing is not None:
            steps = self._after_credit_note(plan.existing.id, stored.number, steps, outcome)
        # Just issued: the document is known without reading it back.
        document = InvoiceDocument(stored.number, org.id, org.name, org.email, options.month, options.issue_date,
                                   due, invoice.currency, invoice.lines, invoice.total,
                                   replaces=plan.existing.number if plan.existing is not None else None,
                                   bill_to_address=org.billing.postal_lines(),
                                   bill_to_tax_id=org.billing.printed_tax_id, taxes=invoice.taxes,
                                   bounds=invoice.bounds)
        self._carry_out_steps(stored, document, steps, outcome)

    def _adopt_lost_draft(self, plan: OrgPlan, outcome: OrgOutcome) -> bool | None:
        """Before the live invoice is voided (a regeneration, or one with nothing left to bill): the
        Stripe draft of it whose id a crash kept from us, recorded so that it is deleted like any
        other (stripe_reversal.adopt_lost_draft). True when one was found; None when Stripe could not
        be asked: the organization fails and nothing is voided (voided first, such a draft would
        never be looked for again)."""
        gateway = self.options.deliveries.payments
        if plan.existing is None or gateway is None:
            return False
        try:
            return stripe_reversal.adopt_lost_draft(self.transactions, gateway, plan.existing)
        except PaymentError as exc:
            outcome.fail(Component.STRIPE, f"could not ask Stripe whether it holds a draft of {plan.existing.number} "
                                           f"whose id a crash kept from us ({exc}): nothing voided or issued; rerun")
            return None

    def _after_credit_note(self, replaced_id: int | None, number: str, steps: tuple[Step, ...],
                           outcome: OrgOutcome) -> tuple[Step, ...]:
        """The steps of invoice `number` that may go ahead now: without those that reach the customer
        (Stripe, e-mail) while the credit note of the invoice it replaces (`replaced_id`) still has a
        step missing, so the customer never holds the replacement without the cancellation of the
        invoice it replaces; a rerun delivers the credit note, then the replacement."""
        held = (Step.STRIPE, Step.EMAIL)
        if replaced_id is None or not any(step in held for step in steps):
            return steps
        enabled = self.options.delivery_steps
        with self.transactions() as conn:
            note = credit_note_store.of_invoice(conn, replaced_id)
        if note is None or not note.pending_steps(enabled):
            return steps
        outcome.warnings.append(f"{number} is neither sent in Stripe nor e-mailed until credit note {note.number} "
                                f"of the invoice it replaces is delivered: a rerun delivers both, in that order")
        return tuple(step for step in steps if step not in held)

    def _reverse_in_stripe(self, plan: OrgPlan, outcome: OrgOutcome, lost_draft: bool = False) -> tuple[Step, ...]:
        """Void (or credit, or delete) the Stripe invoices of this organization's void invoices,
        as stored now, under its lock (`lost_draft`: the one replaced now had a draft found since
        the plan was made). Returns the plan's steps that may go ahead: all of them,
        or, if a reversal failed, none that reaches Stripe or the customer (never asked to pay
        twice for a period); a rerun carries on."""
        gateway = self.options.deliveries.payments
        if not (plan.reversals or lost_draft) or gateway is None:
            return plan.steps
        try:
            done = stripe_reversal.reverse_pending(self.transactions, gateway, plan.organization.id)
        except stripe_reversal.ReversalFailed as exc:
            item = exc.item
            if exc.done:
                outcome.steps.append(Step.STRIPE_REVERSED)
            outcome.fail(Component.STRIPE, f"the Stripe invoice {item.stripe_invoice_id} of void {item.number} "
                                           f"could not be voided ({exc}): the current invoice waits for it")
            return tuple(step for step in plan.steps if step not in (Step.STRIPE, Step.EMAIL))
        if done and Step.STRIPE_REVERSED not in outcome.steps:
            outcome.steps.append(Step.STRIPE_REVERSED)
        return plan.steps

    def _deliver_credit_notes(self, plan: OrgPlan, outcome: OrgOutcome) -> None:
        """Deliver the organization's credit notes that have a step missing: those the plan found,
        and those issued in this run (by a regeneration or a void, or by a reversal that found an
        invoice finalized in Stripe), read now, under the organization's lock."""
        voided_now = plan.action in (Action.REGENERATE, Action.VOID) or Step.STRIPE_REVERSED in outcome.steps
        if not plan.credit_notes and not voided_now:
            return
        org_id = plan.organization.id
        pending = undelivered_credit_notes(self.transactions, [org_id], self.options.delivery_steps).get(org_id, ())
        enabled = self.options.delivery_steps
        if any(component == Component.STRIPE for component, _ in outcome.errors):
            # Stripe refused a reversal of this organization in this run: not asked again now, and no
            # e-mail says "cancelled" while Stripe still asks for the money; a rerun carries on.
            enabled = tuple(step for step in enabled if step not in (Step.STRIPE, Step.EMAIL))
        for credit_note_id in pending:
            delivered = deliver_credit_note(self.transactions, credit_note_id, self.options.deliveries,
                                            self.options.seller, enabled, self.options.renderer)
            if delivered.steps and Step.CREDIT_NOTE not in outcome.steps:
                outcome.steps.append(Step.CREDIT_NOTE)
            if delivered.error is not None:
                outcome.fail(*delivered.error)

    def _complete(self, planned: StoredInvoice, steps: tuple[Step, ...], outcome: OrgOutcome) -> None:
        """An invoice issued earlier: read it again now (another run may have moved it on since
        the plan was made) and carry out the planned steps that are still missing."""
        with self.transactions() as conn:
            invoice = invoice_store.load_live_invoice(conn, planned.id)
            document = invoice_store.load_document(conn, planned.id) if invoice is not None else None
        if invoice is None or document is None:  # a regeneration voided it meanwhile: never deliver it
            outcome.warnings.append(f"{planned.number} was voided meanwhile by another run: nothing delivered")
            return
        still = pending_deliveries(invoice, tuple(s for s in steps if s in DELIVERY_STEPS))
        self._carry_out_steps(invoice, document, ((Step.PDF,) if Step.PDF in steps else ()) + still, outcome)

    def _carry_out_steps(self, invoice: StoredInvoice, document: InvoiceDocument, steps: tuple[Step, ...],
                         outcome: OrgOutcome) -> None:
        """The PDF (rendered from what was stored, so a rerun gives the same bytes), then the
        deliveries, each recorded as soon as it succeeds."""
        pdf = render(document, self.options, outcome)
        if pdf is None:
            return
        sha256 = hashlib.sha256(pdf).hexdigest()
        if Step.PDF in steps:
            self._writer.submit(invoice_store.PdfRecord(invoice.id, sha256, len(pdf), outcome.pdf_path))
            outcome.steps.append(Step.PDF)
        elif sha256 != invoice.pdf_sha256:
            outcome.warnings.append("the PDF rendered now differs from the first rendering (a newer renderer?)")
        deliveries = tuple(s for s in steps if s in DELIVERY_STEPS)
        if deliveries:
            delivered = deliver(self.transactions, invoice, document, pdf, self.options.deliveries,
                                self.options.seller, deliveries)
            outcome.steps += delivered.steps
            if delivered.error is not None:
                outcome.fail(*delivered.error)
