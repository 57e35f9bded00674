"""Invoices as documents: what the PDF, the e-mail and Stripe are made from, and the number format."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from .anchors import BillingPeriod
from .money import Precision, exact_sum
from .periods import Month
from .pricing import InvoiceLine
from .taxes import InvoiceTax, mentions

NUMBER_PREFIX = "INV"


def invoice_number(month: Month, sequence: int) -> str:
    """`INV-2024-01-000042`: the billing month, then a per-month sequence with no gaps among
    issued invoices (voided invoices keep their numbers; a dry run never takes one)."""
    return f"{NUMBER_PREFIX}-{month}-{sequence:06d}"


def due_date(issue: date, payment_terms_days: int) -> date:
    return issue + timedelta(days=payment_terms_days)


@dataclass(frozen=True)
class Seller:
    """Who issues the invoices, and how they print them (the same for every invoice of a run)."""

    name: str
    address: tuple[str, ...]
    tax_id: str | None = None
    country: str | None = None  # ISO 3166-1 alpha-2 (INVOICE_SELLER_COUNTRY), needed with taxes on
    locale: str = "en"  # numbers and amounts on the PDF (INVOICE_LOCALE)
    payment_instructions: tuple[str, ...] = ()  # how to pay, e.g. the bank account (INVOICE_PAYMENT_INSTRUCTIONS)
    pays_online: bool = False  # Stripe is on: the invoice e-mail links to a page where it can be paid
    einvoice: str | None = None  # "facturx" (INVOICE_EINVOICE): PDFs are PDF/A-3 with the EN 16931 XML embedded

    @property
    def precision(self) -> Precision:
        """The unit its invoices' amounts are kept in (money.py): what Stripe charges when invoices go to
        Stripe, at most hundredths with e-invoices (EN 16931), else the currency's minor unit."""
        return Precision.STRIPE if self.pays_online else Precision.EN16931 if self.einvoice else Precision.ISO


@dataclass(frozen=True)
class InvoiceDocument:
    """Everything printed on an invoice. Built from the stored invoice (or from a dry-run preview)."""

    number: str
    organization_id: str
    bill_to_name: str
    bill_to_email: str
    period: Month
    issue_date: date
    due_date: date
    currency: str
    lines: tuple[InvoiceLine, ...]
    total: Decimal
    preview: bool = False  # a dry run's document: the number is what it would be
    replaces: str | None = None  # the number of the (now void) invoice this one was regenerated from
    bill_to_address: tuple[str, ...] = ()  # the customer's postal address, as printed (snapshot at issue)
    bill_to_tax_id: str | None = None  # the customer's VAT / tax id (snapshot at issue)
    taxes: tuple[InvoiceTax, ...] = ()  # the tax breakdown; empty while taxes are off
    credits: str | None = None  # a credit note: the number of the invoice it credits (lines negated)
    reason: str | None = None  # a credit note: why the invoice was voided
    replaced_by: str | None = None  # a credit note: the invoice that replaced the credited one, if any
    bounds: BillingPeriod | None = None  # the period billed; None: the calendar month `period`

    @property
    def tax_total(self) -> Decimal:
        return exact_sum(tax.amount for tax in self.taxes)

    @property
    def is_credit_note(self) -> bool:
        return self.credits is not None

    @property
    def title(self) -> str:
        """`Invoice INV-…` or `Credit note CN-…`: how headers and footers name the document."""
        return f"{'Credit note' if self.is_credit_note else 'Invoice'} {self.number}"

    @property
    def billing_period(self) -> BillingPeriod:
        return self.bounds or BillingPeriod.calendar(self.period)

    def line_period(self, line: InvoiceLine) -> BillingPeriod:
        """The days a line bills: its own bounds (an anchored period); else the document's period for
        a line of it; else the calendar month it names (an adjustment of a calendar-month period)."""
        if line.bounds is not None:
            return line.bounds
        if line.period is None or line.period == self.period:
            return self.billing_period
        return BillingPeriod.calendar(line.period)

    @property
    def period_name(self) -> str:
        """The period in a sentence or a subject: `2024-01` for a calendar month, else its days."""
        period = self.billing_period
        return str(self.period) if period.is_calendar_month else period.label

    @property
    def period_text(self) -> str:
        """How documents print the period: `2024-01-01 to 2024-01-31` for a calendar month, else
        `15 Jan – 14 Feb 2024` (both days inclusive)."""
        period = self.billing_period
        if period.is_calendar_month:
            return f"{self.period.first_day.isoformat()} to {self.period.last_day.isoformat()}"
        return period.label

    @property
    def subtotal(self) -> Decimal:
        return exact_sum((self.total, -self.tax_total)) if self.taxes else self.total

    @property
    def tax_mentions(self) -> tuple[str, ...]:
        return mentions(self.taxes)
