"""Credit notes as documents: when one is due, its number, and its lines (the credited invoice's,
negated). Pure: no database, no outside service.

A credit note cancels an invoice that was *sent*: one the customer may have seen or been asked to
pay. An invoice is sent when billing e-mailed it (`invoices.emailed_at` is set) or sent it in
Stripe (`invoices.stripe_status = 'sent'`: Stripe finalized it and e-mailed the customer). An
invoice that was only issued, rendered or uploaded to our private S3 bucket (or is a Stripe draft)
was never in the customer's hands: voiding it is enough. (One that Stripe turns out to hold
finalized when its void reverses it was sent too: a crash kept the send from being recorded; see
jobs/stripe_reversal.reverse_pending.)
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from .periods import Month
from .pricing import InvoiceLine
from .taxes import InvoiceTax

NUMBER_PREFIX = "CN"


def credit_note_number(month: Month, sequence: int) -> str:
    """`CN-2024-01-000001`: the credited invoice's billing month, then a per-month sequence of its
    own, gapless like the invoices' (a credit note's number is taken in the transaction that voids
    the invoice, so a rollback returns it)."""
    return f"{NUMBER_PREFIX}-{month}-{sequence:06d}"


def was_sent(*, emailed_at: datetime | None, stripe_status: str | None) -> bool:
    """Whether the customer received the invoice (see the module's docstring): e-mailed, or sent
    in Stripe."""
    return emailed_at is not None or stripe_status == "sent"


def credit_lines(invoice_lines: tuple[InvoiceLine, ...]) -> tuple[InvoiceLine, ...]:
    """The credit note's lines: each line of the credited invoice, with the same description,
    quantity and period (its month and, for an anchored period, its days), and its unit price and
    amount negated, so that the credit note's total is exactly minus the invoice's subtotal. The one
    place where a credit note's lines are made."""
    return tuple(replace(line, unit_price=-line.unit_price, amount=-line.amount) for line in invoice_lines)


def credit_taxes(invoice_taxes: tuple[InvoiceTax, ...]) -> tuple[InvoiceTax, ...]:
    """The credit note's tax breakdown: the credited invoice's, reversed. The same rates, names and
    mentions (a reverse charge or an exemption stays stated), the taxable amount and the tax
    negated: the credit note cancels exactly the tax that was charged, never a tax computed again
    (rates or rounding may have changed since)."""
    return tuple(replace(tax, taxable_amount=-tax.taxable_amount, amount=-tax.amount) for tax in invoice_taxes)
