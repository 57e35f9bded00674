"""Pure rating: a month's usage and a price plan become invoice lines. No I/O, no database.

Models (all on the month's total quantity per metric, after the price's `included` free units):
- per_unit:  quantity × unit price
- graduated: each tier's share of the quantity at that tier's price (plus the tier's flat fee)
- volume:    the whole quantity at the price of the tier it lands in (plus that tier's flat fee)
- package:   price per started block of `package_size` units

Tier bounds are inclusive (`up_to = 1000` means units 1..1000), as in Stripe.
Each line's amount is rounded once, by `money.round_money`; the total is the sum of the rounded
lines; unit prices keep their full precision.
"""

from __future__ import annotations

import decimal as _decimal
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from .anchors import BillingPeriod, FeeShare
from .money import ZERO, Precision, exact_sum, round_money
from .periods import Month

Model = Literal["per_unit", "graduated", "volume", "package"]
MODELS: tuple[str, ...] = ("per_unit", "graduated", "volume", "package")
LineKind = Literal["base_fee", "usage", "tier", "flat_fee", "minimum", "credit_carried", "credit_applied"]
FEE_KINDS = ("base_fee", "minimum")  # charges of the period itself, not of a metric
CREDIT_KINDS = ("credit_carried", "credit_applied")  # moving a credit balance between invoices

# Exact arithmetic: 60 significant digits, and an inexact result is an error, never a silent
# rounding (NUMERIC sums can be far longer than Decimal's default 28 digits).
_EXACT = _decimal.Context(prec=60, rounding=_decimal.ROUND_HALF_UP,
                          traps=[_decimal.Inexact, _decimal.InvalidOperation, _decimal.Overflow])


class RatingError(ValueError):
    """The usage cannot be rated with this plan (e.g. a quantity too large to price exactly)."""


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None  # inclusive upper bound; None for the last, unbounded tier
    unit_price: Decimal
    flat_fee: Decimal = ZERO


@dataclass(frozen=True)
class Price:
    metric: str
    model: Model
    description: str
    unit_price: Decimal | None = None  # per_unit: per unit; package: per package
    package_size: Decimal | None = None
    tiers: tuple[Tier, ...] = ()
    included: Decimal = ZERO


@dataclass(frozen=True)
class PricePlan:
    id: str
    name: str
    currency: str
    prices: tuple[Price, ...] = ()
    base_fee: Decimal = ZERO
    minimum_commitment: Decimal = ZERO
    free_metrics: tuple[str, ...] = ()  # usage the plan deliberately does not charge for

    def price_for(self, metric: str) -> Price | None:
        return next((p for p in self.prices if p.metric == metric), None)


@dataclass(frozen=True)
class InvoiceLine:
    kind: LineKind
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal  # rounded to the currency's minor unit
    metric: str | None = None
    period: Month | None = None  # the period whose usage or fees the line bills; None: the invoice's own
    bounds: BillingPeriod | None = None  # that period's days when they are not its calendar month (an anchor day)

    def __post_init__(self) -> None:
        if self.bounds is not None and self.bounds.month != self.period:
            raise ValueError(f"a line of {self.period} cannot bill the period {self.bounds.label} of {self.bounds.month}")

    @property
    def charge(self) -> str:
        """What the line bills, for comparing a period's lines: its metric, or its fee or credit kind."""
        return self.metric if self.metric is not None else self.kind


def line_bounds(period: BillingPeriod | None) -> BillingPeriod | None:
    """What a line records of the days it bills: None for a calendar month (or when unknown), else
    the interval alone (a fee's proration is already in its amount)."""
    if period is None or period.is_calendar_month:
        return None
    return BillingPeriod(period.month, period.start, period.end)


@dataclass(frozen=True)
class RatedInvoice:
    plan_id: str
    currency: str
    period: Month
    lines: tuple[InvoiceLine, ...]
    unpriced_metrics: tuple[str, ...] = field(default=())

    @property
    def total(self) -> Decimal:
        return exact_sum(line.amount for line in self.lines)

    @property
    def subtotal(self) -> Decimal:
        return self.total  # no tax yet: the total is exactly the sum of the rounded lines

    @property
    def is_empty(self) -> bool:
        """No usage and no fee: nothing to bill, no invoice."""
        return not self.lines


def rate(usage: Mapping[str, Decimal], plan: PricePlan, period: Month, *, fees: bool | FeeShare | None = True,
         precision: Precision = Precision.ISO) -> RatedInvoice:
    """Rate one organization's period. `usage` maps metric -> total quantity for the period. `fees`:
    whether the base fee and the minimum commitment apply (not for a period the organization was
    not active in: its usage is still billed), or the share of them it owes (a `FeeShare`: both
    are prorated by days, each rounded once; usage is never prorated). `precision`: what amounts
    are rounded to (Stripe's chargeable unit when invoices go to Stripe)."""
    try:
        with _decimal.localcontext(_EXACT):
            return _rate(usage, plan, period, fees, precision)
    except (_decimal.Inexact, _decimal.InvalidOperation, _decimal.Overflow):
        raise RatingError("a quantity or price is too large to be priced exactly") from None


def _rate(usage: Mapping[str, Decimal], plan: PricePlan, period: Month, fees: bool | FeeShare | None,
          precision: Precision) -> RatedInvoice:
    cur = plan.currency
    lines: list[InvoiceLine] = []
    share = fees if isinstance(fees, FeeShare) and not fees.is_whole else None
    if fees and plan.base_fee > 0:
        if share is None:
            lines.append(InvoiceLine("base_fee", f"{plan.name} plan, monthly fee", Decimal(1), plan.base_fee,
                                     round_money(plan.base_fee, cur, precision)))
        else:  # the monthly fee for `days` of `of_days`, rounded once
            amount = round_money(prorated(plan.base_fee, share), cur, precision)
            lines.append(InvoiceLine("base_fee", f"Base fee, {share.label}", Decimal(1), amount, amount))
    for price in plan.prices:
        quantity = usage.get(price.metric, ZERO)
        if quantity < 0:
            raise RatingError(f"negative usage for {price.metric}: {quantity}")
        if quantity > 0:
            lines.extend(price_lines(price, quantity, cur, precision))
    running = exact_sum(line.amount for line in lines)
    minimum = plan.minimum_commitment if share is None else prorated(plan.minimum_commitment, share)
    if fees and minimum > running and (lines or minimum > 0):
        top_up = round_money(minimum - running, cur, precision)
        if share is None or top_up > 0:
            owed = (f"{plan.minimum_commitment:f} {cur}" if share is None
                    else f"{round_money(minimum, cur, precision)} {cur}, {share.label}")
            lines.append(InvoiceLine("minimum", f"Minimum commitment top-up (to {owed})", Decimal(1), top_up, top_up))
    unpriced = tuple(sorted(m for m, q in usage.items()
                            if q > 0 and plan.price_for(m) is None and m not in plan.free_metrics))
    return RatedInvoice(plan.id, cur, period, tuple(lines), unpriced)


# Proration divides: 60 significant digits before the one rounding, never an Inexact trap.
_PRORATION = _decimal.Context(prec=60, rounding=_decimal.ROUND_HALF_EVEN)


def prorated(amount: Decimal, share: FeeShare) -> Decimal:
    """`amount` × days / of_days, unrounded (the caller rounds once, with money.round_money)."""
    return _PRORATION.divide(_PRORATION.multiply(amount, Decimal(share.days)), Decimal(share.of_days))


def price_lines(price: Price, quantity: Decimal, currency: str,
                precision: Precision = Precision.ISO) -> list[InvoiceLine]:
    """The invoice lines of one metric's monthly quantity."""
    def _line(*args, **kwargs) -> InvoiceLine:
        return _rounded_line(*args, precision=precision, **kwargs)

    billable = max(quantity - price.included, ZERO)
    free = f" ({_qty(min(quantity, price.included))} included)" if price.included > 0 else ""
    label = f"{price.description}{free}"
    if price.model == "per_unit":
        assert price.unit_price is not None
        return [_line("usage", label, quantity if billable == 0 else billable, price.unit_price, currency,
                      price.metric, billed=billable)]
    if price.model == "package":
        assert price.unit_price is not None and price.package_size is not None
        packages = _packages(billable, price.package_size)
        return [_line("usage", f"{label}: {_qty(billable)} units, billed per started block of "
                               f"{_qty(price.package_size)}", packages, price.unit_price, currency, price.metric)]
    if price.model == "volume":
        tier, lower = _volume_tier(price.tiers, billable)
        lines = [_line("usage", f"{label}: all {_qty(billable)} units at the price of units "
                                f"{_range(lower, tier.up_to)}", billable, tier.unit_price, currency, price.metric)]
        if tier.flat_fee > 0 and billable > 0:
            lines.append(_line("flat_fee", f"{price.description}: flat fee for units {_range(lower, tier.up_to)}",
                               Decimal(1), tier.flat_fee, currency, price.metric))
        return lines
    if price.model == "graduated":
        lines = []
        lower = ZERO
        if billable == 0:
            return [_line("tier", f"{label}", quantity, price.tiers[0].unit_price, currency, price.metric,
                          billed=ZERO)]
        for tier in price.tiers:
            top = billable if tier.up_to is None else min(billable, tier.up_to)
            units = top - lower
            if units <= 0:
                break
            span = _range(lower, tier.up_to)
            lines.append(_line("tier", f"{label}: units {span}", units, tier.unit_price, currency, price.metric))
            if tier.flat_fee > 0:
                lines.append(_line("flat_fee", f"{price.description}: flat fee for units {span}", Decimal(1),
                                   tier.flat_fee, currency, price.metric))
            if tier.up_to is None or billable <= tier.up_to:
                break
            lower = tier.up_to
        return lines
    raise RatingError(f"unknown price model {price.model!r}")


def exact_amount(price: Price, quantity: Decimal) -> Decimal:
    """The unrounded amount of one metric (for checks and property tests)."""
    with _decimal.localcontext(_EXACT):
        return _exact(price, quantity)


def _exact(price: Price, quantity: Decimal) -> Decimal:
    billable = max(quantity - price.included, ZERO)
    if price.model == "per_unit":
        return billable * price.unit_price  # type: ignore[operator]
    if price.model == "package":
        return _packages(billable, price.package_size) * price.unit_price  # type: ignore[arg-type,operator]
    if price.model == "volume":
        tier, _ = _volume_tier(price.tiers, billable)
        return billable * tier.unit_price + (tier.flat_fee if billable > 0 else ZERO)
    total, lower = ZERO, ZERO
    for tier in price.tiers:
        top = billable if tier.up_to is None else min(billable, tier.up_to)
        if top - lower <= 0:
            break
        total += (top - lower) * tier.unit_price + tier.flat_fee
        if tier.up_to is None or billable <= tier.up_to:
            break
        lower = tier.up_to
    return total


def _packages(units: Decimal, size: Decimal) -> Decimal:
    """Every started package is due: 1,001 units in packages of 1,000 are 2 packages."""
    whole, rest = divmod(units, size)
    return whole + (1 if rest > 0 else 0)


def _volume_tier(tiers: tuple[Tier, ...], quantity: Decimal) -> tuple[Tier, Decimal]:
    lower = ZERO
    for tier in tiers:
        if tier.up_to is None or quantity <= tier.up_to:
            return tier, lower
        lower = tier.up_to
    raise RatingError(f"quantity {quantity} is above the last tier")  # validation forbids a bounded last tier


def _rounded_line(kind: LineKind, description: str, quantity: Decimal, unit_price: Decimal, currency: str,
                  metric: str | None, *, billed: Decimal | None = None, precision: Precision) -> InvoiceLine:
    amount = (quantity if billed is None else billed) * unit_price
    return InvoiceLine(kind, description, quantity, unit_price, round_money(amount, currency, precision), metric)


def _qty(value: Decimal) -> str:
    from .money import format_quantity

    return format_quantity(value)


def _range(lower: Decimal, up_to: Decimal | None) -> str:
    """A tier's units, after the word "units": `1 to 1,000`, `1,001 and above`, `above 0.5 up to 10`."""
    if lower != lower.to_integral_value():
        return f"above {_qty(lower)}" + (f" up to {_qty(up_to)}" if up_to is not None else "")
    return f"{_qty(lower + 1)} and above" if up_to is None else f"{_qty(lower + 1)} to {_qty(up_to)}"


def plan_snapshot(plan: PricePlan) -> dict:
    """The plan as JSON-ready data (exact decimal strings), stored on each invoice so that its
    period can be rated again exactly as it was, whatever the plan becomes."""
    def number(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    return {"id": plan.id, "name": plan.name, "currency": plan.currency, "base_fee": str(plan.base_fee),
            "minimum_commitment": str(plan.minimum_commitment), "free_metrics": list(plan.free_metrics),
            "prices": [{"metric": p.metric, "model": p.model, "description": p.description,
                        "unit_price": number(p.unit_price), "package_size": number(p.package_size),
                        "included": str(p.included),
                        "tiers": [{"up_to": number(t.up_to), "unit_price": str(t.unit_price),
                                   "flat_fee": str(t.flat_fee)} for t in p.tiers]} for p in plan.prices]}


def plan_from_snapshot(data: Mapping) -> PricePlan:
    def number(value: str | None) -> Decimal | None:
        return None if value is None else Decimal(value)

    return PricePlan(
        data["id"], data["name"], data["currency"],
        tuple(Price(p["metric"], p["model"], p["description"], number(p["unit_price"]), number(p["package_size"]),
                    tuple(Tier(number(t["up_to"]), Decimal(t["unit_price"]), Decimal(t["flat_fee"]))
                          for t in p["tiers"]), Decimal(p["included"])) for p in data["prices"]),
        Decimal(data["base_fee"]), Decimal(data["minimum_commitment"]), tuple(data.get("free_metrics", ())))
