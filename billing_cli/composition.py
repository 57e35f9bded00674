"""What goes on one invoice: the period's own lines, adjustments for the usage of earlier periods
that changed after they were billed, and the move of a credit balance. Pure: no I/O.

The rule for a period that was billed before (late, deleted or corrected usage): rate the whole
period again, with the plan it was billed with, and bill the difference to what live invoices
already billed for it, per charge (a metric, or a fee). Never rate only the difference: under
tiered prices the late units belong in the tier the whole month reaches.

A negative total is never charged: a credit line brings it to zero, and the credit is applied to
the organization's next invoices (the balance is the sum of the credit lines of its live
invoices, so voiding an invoice also undoes the credit it moved).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from .anchors import BillingPeriod, FeeShare
from .money import ZERO, Precision, exact_sum, format_quantity, movable_credit, round_money
from .periods import Month
from .pricing import CREDIT_KINDS, InvoiceLine, PricePlan, RatedInvoice, RatingError, line_bounds, rate
from .taxes import InvoiceTax


@dataclass(frozen=True)
class PeriodRecord:
    """One period of one organization: its usage now, and what each live invoice billed for it."""

    period: Month
    usage: Mapping[str, Decimal]  # per metric, from the hourly roll-up now
    billed: Mapping[int, Mapping[str, Decimal]] = field(default_factory=dict)  # invoice id -> charge -> amount
    billed_usage: Mapping[int, Mapping[str, Decimal]] = field(default_factory=dict)  # invoice id -> metric -> qty
    plan: PricePlan | None = None  # the plan its own invoice was rated with (its snapshot), if it has one
    bounds: BillingPeriod | None = None  # its interval, as its own invoice billed it; None: the calendar month
    fees: Fees = None  # the fees its own invoice billed (with fees_known: that invoice stored them)
    fees_known: bool = False

    @property
    def label(self) -> str:
        return (self.bounds or BillingPeriod.calendar(self.period)).label

    def without(self, invoice_id: int | None) -> PeriodRecord:
        """The record as if that invoice (about to be voided) did not exist."""
        if invoice_id is None:
            return self
        return replace(self, billed={i: c for i, c in self.billed.items() if i != invoice_id},
                       billed_usage={i: u for i, u in self.billed_usage.items() if i != invoice_id})

    def fees_as_billed(self, otherwise: Fees) -> Fees:
        """The fees to rate the period with again: those its invoice billed (the organization's status
        then, not now), or `otherwise` when no invoice stored them (none yet, or issued before 0015)."""
        return self.fees if self.fees_known else otherwise

    def billed_total(self) -> dict[str, Decimal]:
        return _sum_maps(self.billed.values())

    def billed_quantities(self) -> dict[str, Decimal]:
        return _sum_maps(self.billed_usage.values())


@dataclass(frozen=True)
class PeriodDelta:
    """What a period's current usage would add to (or take from) what was billed for it."""

    period: Month
    lines: tuple[InvoiceLine, ...]
    usage: dict[str, Decimal]  # per metric: quantity now minus quantity billed

    @property
    def amount(self) -> Decimal:
        return exact_sum(line.amount for line in self.lines)

    @property
    def is_empty(self) -> bool:
        return not self.lines and not any(self.usage.values())


@dataclass(frozen=True)
class ComposedInvoice:
    """Every line of one invoice, with the usage quantities it accounts for per period."""

    plan: PricePlan
    currency: str
    period: Month
    lines: tuple[InvoiceLine, ...]
    usage: dict[tuple[Month, str], Decimal]  # (period, metric) -> quantity billed by this invoice
    periods: tuple[Month, ...]  # every period this invoice accounted for (its own and the earlier ones rated again)
    adjusted: tuple[PeriodDelta, ...] = ()
    taxes: tuple[InvoiceTax, ...] = ()  # the tax breakdown (taxes.py); none while taxes are off
    billing_period: BillingPeriod | None = None  # its own period's interval; None: the calendar month
    fees: Fees = True  # the fees its own period owes, as rated (stored: a later re-rating uses them)

    @property
    def bounds(self) -> BillingPeriod:
        return self.billing_period or BillingPeriod.calendar(self.period)

    @property
    def subtotal(self) -> Decimal:
        """The sum of the lines: the taxable subtotal (credit moved included, net of tax)."""
        return exact_sum(line.amount for line in self.lines)

    @property
    def tax_total(self) -> Decimal:
        return exact_sum(tax.amount for tax in self.taxes)

    @property
    def total(self) -> Decimal:
        return exact_sum((self.subtotal, self.tax_total)) if self.taxes else self.subtotal

    @property
    def is_empty(self) -> bool:
        return not self.lines

    @property
    def plan_id(self) -> str:
        return self.plan.id


Fees = bool | FeeShare | None  # the fees a period owes: all, none, or a prorated share (pricing.rate)


def period_delta(record: PeriodRecord, plan: PricePlan, *, fees: Fees, label: str,
                 precision: Precision = Precision.ISO) -> PeriodDelta:
    """Rate the whole period again with `plan` and subtract what was billed for it, per charge.
    `label` starts each line's description (e.g. "Adjustment for January 2024")."""
    rated = rate(record.usage, plan, record.period, fees=fees, precision=precision)
    if rated.unpriced_metrics:
        raise UnpricedUsage(plan, rated.unpriced_metrics, record.period,
                            (record.bounds or BillingPeriod.calendar(record.period)).start,
                            invoiced=record.plan is not None)
    now = _amounts(rated.lines)
    before = record.billed_total()
    quantities_before = record.billed_quantities()
    usage = {m: record.usage.get(m, ZERO) - quantities_before.get(m, ZERO)
             for m in sorted(set(record.usage) | set(quantities_before))}
    lines = []
    days = line_bounds(record.bounds)
    for charge in sorted(set(now) | set(before)):
        # Amounts billed before may be in a finer unit than this invoice's (billed without Stripe, KWD
        # in thousandths; with it, in hundredths): the difference is rounded to this invoice's unit,
        # and what rounding leaves (under half a unit) is part of the next re-rating's difference.
        difference = round_money(now.get(charge, ZERO) - before.get(charge, ZERO), plan.currency, precision)
        if difference == 0:
            continue
        metric = charge if charge in usage or plan.price_for(charge) is not None else None
        detail = _usage_detail(usage.get(charge, ZERO), record.usage.get(charge, ZERO)) if metric else ""
        lines.append(InvoiceLine("usage" if metric else charge, f"{label}: {_charge_name(charge, plan)}{detail}",  # type: ignore[arg-type]
                                 Decimal(1), difference, difference, metric, record.period, days))
    return PeriodDelta(record.period, tuple(lines), {m: q for m, q in usage.items() if q != 0})


class UnpricedUsage(RatingError):
    """A period's usage of a metric its plan neither prices nor frees. A period is rated with its plan
    as defined when it started (a plain `plans apply` is in force from now, too late for it), or, once
    invoiced, with the plan its invoice stored (`invoiced`): the fix says which."""

    def __init__(self, plan: PricePlan, metrics: tuple[str, ...], period: Month, start: datetime,
                 *, invoiced: bool = False) -> None:
        fix = (f"price it, or list it in the plan's free_metrics, with `billing plans apply FILE --effective "
               f"{start:%Y-%m-%d}`")
        if invoiced:
            super().__init__(f"usage of {', '.join(metrics)} in {period} is not priced by plan {plan.id!r} as its "
                             f"invoice of {period} stored it: {fix}, then regenerate that invoice (`billing "
                             f"invoice-monthly --month {period} --org ID --regenerate`) and rerun")
        else:
            super().__init__(f"usage of {', '.join(metrics)} in {period} is not priced by plan {plan.id!r} as "
                             f"defined on {start:%Y-%m-%d}: {fix}, then rerun")
        self.metrics = metrics


def compose(period: Month, usage: Mapping[str, Decimal], plan: PricePlan, *, fees: Callable[[Month], Fees],
            own: PeriodRecord | None = None, earlier: Iterable[tuple[PeriodRecord, PricePlan]] = (),
            credit_balance: Decimal = ZERO, precision: Precision = Precision.ISO,
            bounds: BillingPeriod | None = None) -> ComposedInvoice:
    """The invoice of `period`: its usage rated with `plan`, less what other live invoices already
    billed for it (`own`); plus, for each earlier period whose usage changed
    since it was billed, the difference (rated with the plan it was billed with); then the credit
    balance applied, or a negative total carried forward as credit."""
    if own is not None and (own.billed or own.billed_usage):
        # Other live invoices already billed part of this period (it was regenerated after a later
        # invoice adjusted it, or its usage was billed before it was invoiced): bill the rest.
        rest = period_delta(PeriodRecord(period, usage, own.billed, own.billed_usage, bounds=bounds), plan,
                            fees=fees(period),
                            label=f"{(bounds or BillingPeriod.calendar(period)).label}, after what was billed before", precision=precision)
        lines = list(rest.lines)
        billed_usage = {(period, m): q for m, q in rest.usage.items()}
    else:
        rated: RatedInvoice = rate(usage, plan, period, fees=fees(period), precision=precision)
        if rated.unpriced_metrics:
            raise UnpricedUsage(plan, rated.unpriced_metrics, period, (bounds or BillingPeriod.calendar(period)).start)
        lines = [_in_period(line, period, bounds) for line in rated.lines]
        billed_usage = {(period, m): q for m, q in sorted(usage.items()) if q != 0}
    adjusted = []
    checked = []  # every earlier period rated again: accounted for by this invoice, adjusted or not
    for record, record_plan in sorted(earlier, key=lambda pair: pair[0].period):
        if record_plan.currency != plan.currency:
            raise RatingError(f"{record.period} was billed in {record_plan.currency}, the organization is now "
                              f"billed in {plan.currency}: its late usage cannot go on this invoice")
        delta = period_delta(record, record_plan, fees=fees(record.period),
                             label=f"Adjustment for {record.label}", precision=precision)
        checked.append(record.period)
        if delta.is_empty:  # changed, but to the same totals (an event moved within the month): nothing to bill
            continue
        adjusted.append(delta)
        lines += delta.lines
        billed_usage.update({(record.period, m): q for m, q in delta.usage.items()})
    lines += _credit_lines(exact_sum(line.amount for line in lines), credit_balance, period, bounds,
                           lambda amount: movable_credit(amount, plan.currency, precision))
    # Recorded with the revision each was read at (invoice_periods), so a change that bills nothing is
    # not taken for one still to bill (and reported as not billed once out of the window).
    periods = (period, *checked)
    return ComposedInvoice(plan, plan.currency, period, tuple(lines), billed_usage, periods, tuple(adjusted),
                           billing_period=bounds, fees=fees(period))


CREDIT_TAKEN_BACK = "Credit taken back: the invoice that carried it was voided"


def _credit_lines(subtotal: Decimal, balance: Decimal, period: Month, bounds: BillingPeriod | None,
                  movable: Callable[[Decimal], Decimal]) -> list[InvoiceLine]:
    """The lines that move credit: a negative balance taken back first (credit that live invoices
    applied, carried by an invoice voided since: it is owed again), then a negative total carried
    forward, or the balance applied to a positive one. `movable`: the part of a balance that can
    be moved in this invoice's unit (money.movable_credit)."""
    days = line_bounds(bounds)
    lines = []
    owed = -movable(balance) if balance < 0 else ZERO
    if owed:
        lines.append(InvoiceLine("credit_applied", CREDIT_TAKEN_BACK, Decimal(1), owed, owed, None, period, days))
        subtotal = exact_sum((subtotal, owed))
    if subtotal < 0:
        lines.append(InvoiceLine("credit_carried", "Credit carried to your next invoice", Decimal(1), -subtotal,
                                 -subtotal, None, period, days))
    elif subtotal > 0 and balance > 0:
        used = min(movable(balance), subtotal)
        if used:
            lines.append(InvoiceLine("credit_applied", "Credit from earlier invoices", Decimal(1), -used, -used, None,
                                     period, days))
    return lines


@dataclass(frozen=True)
class Credit:
    """The credit lines of one live invoice, in its currency."""

    amount: Decimal
    currency: str


def credit_balances(credits: Mapping[int, Credit], *, without: int | None = None) -> dict[str, Decimal]:
    """An organization's credit per currency: the credit lines of its live invoices (`credits`:
    invoice id -> the sum of its credit lines), leaving out an invoice about to be voided. Credit is
    applied only in its own currency, never converted: a balance in another currency than the
    invoice's (the organization changed currency while it had credit) stays, and is reported."""
    balances: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for invoice_id, credit in credits.items():
        if invoice_id != without:
            balances[credit.currency] = exact_sum((balances[credit.currency], credit.amount))
    return dict(sorted(balances.items()))


def _in_period(line: InvoiceLine, period: Month, bounds: BillingPeriod | None) -> InvoiceLine:
    return InvoiceLine(line.kind, line.description, line.quantity, line.unit_price, line.amount, line.metric, period,
                       line_bounds(bounds))


def _amounts(lines: Iterable[InvoiceLine]) -> dict[str, Decimal]:
    amounts: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for line in lines:
        if line.kind not in CREDIT_KINDS:
            amounts[line.charge] = exact_sum((amounts[line.charge], line.amount))
    return dict(amounts)


def _sum_maps(maps: Iterable[Mapping[str, Decimal]]) -> dict[str, Decimal]:
    total: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for mapping in maps:
        for key, value in mapping.items():
            total[key] = exact_sum((total[key], value))
    return dict(total)


def _charge_name(charge: str, plan: PricePlan) -> str:
    price = plan.price_for(charge)
    if price is not None:
        return price.description
    return {"base_fee": f"{plan.name} plan, monthly fee", "minimum": "minimum commitment top-up"}.get(
        charge, charge.replace("_", " "))


def _usage_detail(difference: Decimal, now: Decimal) -> str:
    if difference == 0:
        return ""
    sign = "+" if difference > 0 else "-"
    return f", {sign}{format_quantity(abs(difference))} units ({format_quantity(now)} in all)"
