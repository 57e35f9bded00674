"""Previewing (a dry run): show what carrying the plans out would do, and carry out nothing.

Invoices that would be issued are rendered with the numbers they would take (written to the
output folder when there is one); nothing is written to the database and no service is called.
"""

from __future__ import annotations

import threading
from datetime import datetime

from ...credit_notes import was_sent
from ...db import invoice_store
from ...db.engine import Transactions
from ...invoices import InvoiceDocument, due_date, invoice_number
from ...outcomes import Component, Step
from .documents import render
from .options import InvoiceOptions
from .planning import Action, OrgPlan
from .results import InvoiceRunResult, OrgOutcome, expected_outcome


class Previewing:
    def __init__(self, transactions: Transactions, options: InvoiceOptions) -> None:
        self.options = options
        with transactions() as conn:
            self._next = invoice_store.next_number_preview(conn, options.month)
        self._lock = threading.Lock()

    def prepare(self, stale_hours: list[datetime], result: InvoiceRunResult) -> list[datetime]:
        """Hours not aggregated yet are read from the raw events instead (a real run aggregates them)."""
        result.stale_hours_previewed = len(stale_hours)
        return stale_hours

    def handle(self, plan: OrgPlan) -> OrgOutcome:
        outcome = expected_outcome(plan)
        outcome.pending = ((Step.STRIPE_REVERSED,) if plan.reversals else ()) + \
            ((Step.CREDIT_NOTE,) if _credits(plan) else ()) + plan.steps
        if plan.action not in (Action.ISSUE, Action.REGENERATE):
            return outcome
        options, org, invoice = self.options, plan.organization, plan.invoice
        assert invoice is not None
        try:
            document = InvoiceDocument(invoice_number(options.month, self._take_number()), org.id, org.name,
                                       org.email, options.month, options.issue_date,
                                       due_date(options.issue_date, options.payment_terms_days), invoice.currency,
                                       invoice.lines, invoice.total, preview=True,
                                       replaces=plan.existing.number if plan.existing is not None else None,
                                       bill_to_address=org.billing.postal_lines(),
                                       bill_to_tax_id=org.billing.printed_tax_id, taxes=invoice.taxes)
            outcome.number, outcome.currency, outcome.total = document.number, invoice.currency, invoice.total
            outcome.tax = invoice.tax_total if invoice.taxes else None
            render(document, options, outcome)
        except Exception as exc:  # as in a real run: one organization's bug is reported, not fatal
            outcome.fail(Component.DATA, f"unexpected error: {type(exc).__name__}: {exc}")
        return outcome

    def _take_number(self) -> int:
        """The numbers a real run would take, in order (nothing is consumed)."""
        with self._lock:
            self._next += 1
            return self._next - 1


def _credits(plan: OrgPlan) -> bool:
    """Whether a real run would deliver a credit note for this organization: one left undelivered,
    or the one a regeneration issues for a live invoice that was sent."""
    voiding = plan.action in (Action.REGENERATE, Action.VOID) and plan.existing is not None
    return bool(plan.credit_notes) or (voiding and was_sent(emailed_at=plan.existing.emailed_at,  # type: ignore[union-attr]
                                                            stripe_status=plan.existing.stripe_status))  # type: ignore[union-attr]
