"""billing invoices void on screen: the confirmation question, and what was done."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..localized import NumberFormat
from .output import Output

if TYPE_CHECKING:
    from ..jobs.credit_notes import VoidPlan, VoidResult

_DONE = {"pdf": "PDF rendered", "s3": "uploaded to S3", "stripe": "Stripe invoice voided or credited",
         "email": "e-mailed"}


def void_question(plan: VoidPlan) -> str:
    """What the operator confirms: which invoice, whose, how much, and what the customer receives."""
    total = NumberFormat().money(plan.total, plan.currency)
    then = ("It was sent: a credit note is issued and sent to the customer"
            + (" (and its Stripe invoice voided or credited)" if plan.in_stripe else "")) if plan.sent else \
        "It was never sent: it is simply voided, no credit note"
    return (f"{then}. The next invoicing run of {plan.month} invoices the organization again from its usage.\n"
            f"Void invoice {plan.number} of {plan.bill_to_name} ({plan.organization_id}) for {total}?")


def void_report(output: Output, result: VoidResult) -> None:
    plan = result.plan
    if output.plain:
        output.record("voided", number=plan.number, organization=plan.organization_id,
                      credit_note=result.credit_note or "", done=",".join(result.steps))
    elif result.credit_note is None:
        output.line(f"✅ {plan.number} voided (never sent: no credit note)")
    else:
        done = ", ".join(_DONE[step] for step in result.steps) or "nothing delivered yet"
        output.line(f"✅ {plan.number} voided; credit note {result.credit_note} issued: {done}")
    if result.error is not None:
        component, message = result.error
        output.error(f"{component}: {message} (the next invoice-monthly run completes it)")
