"""Taxes on an invoice: which rates apply to a buyer, and the tax of each. Pure: no I/O.

The rules (docs/taxes.md):
- exempt (organizations.tax_exempt): 0%, with the exemption's mention;
- EU cross-border B2B (seller and buyer in two EU member states, the buyer with a valid EU VAT id):
  reverse charge, 0%, with the legal mention (Art. 196 Directive 2006/112/EC);
- otherwise the rates of the buyer's country (and of its region, e.g. Canada's GST plus Quebec's
  QST) in force on the first day of the invoiced period. No rate there is a data error, never a
  silent 0%: a finance team that means 0% (an export outside the scope of VAT) lists a 0% rate
  with its mention for that country.

The tax of each rate is computed on the invoice's taxable subtotal (every line, adjustments and the
credit moved included: credit is net of tax) and rounded once, with the one rounding rule.
"""

from __future__ import annotations

import decimal as _decimal
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum

from .addresses import BillingDetails
from .money import ZERO, Precision, round_money
from .tax_ids import EU_COUNTRIES, TaxIdError, check_tax_id

REVERSE_CHARGE_MENTION = "Reverse charge: VAT to be accounted for by the recipient, Art. 196 Directive 2006/112/EC"
EXEMPT_MENTION = "Tax exempt: the customer is exempt from tax, so no tax is charged on this invoice"

_PERCENT = _decimal.Context(prec=80, traps=[_decimal.Inexact, _decimal.InvalidOperation, _decimal.Overflow])


class Treatment(StrEnum):
    STANDARD = "standard"  # the rate is charged
    REVERSE_CHARGE = "reverse_charge"  # the buyer accounts for the VAT: 0% here
    EXEMPT = "exempt"  # the buyer is exempt: 0%


class TaxError(ValueError):
    """An organization's data that taxes cannot be computed from: names the column to fix."""


@dataclass(frozen=True)
class TaxRate:
    """One version of a rate: a jurisdiction (country, optional region), a name, a percentage,
    in force from a date until the next version of the same jurisdiction and name."""

    country: str  # ISO 3166-1 alpha-2
    region: str | None  # as organizations.billing_region holds it (e.g. QC, CA for California), or None
    name: str  # VAT, GST, QST, sales tax
    percentage: Decimal
    effective_from: date
    mention: str | None = None  # printed with the tax (e.g. why a 0% rate is 0%)
    id: int | None = None  # its row in tax_rates, once stored

    @property
    def jurisdiction(self) -> str:
        return f"{self.country}-{self.region}" if self.region else self.country

    @property
    def key(self) -> tuple[str, str, str, date]:
        """What identifies a version in the taxes file and in tax_rates."""
        return (self.country, (self.region or "").upper(), self.name, self.effective_from)


@dataclass(frozen=True)
class InvoiceTax:
    """One line of an invoice's tax breakdown."""

    name: str
    country: str
    region: str | None
    percentage: Decimal
    taxable_amount: Decimal
    amount: Decimal
    treatment: Treatment = Treatment.STANDARD
    mention: str | None = None
    rate_id: int | None = None  # the tax_rates row (a charged or listed rate); None: reverse charge, exempt

    @property
    def jurisdiction(self) -> str:
        return f"{self.country}-{self.region}" if self.region else self.country

    @property
    def label(self) -> str:
        """`VAT 20% (GB)`, `QST 9.975% (CA-QC)`."""
        return f"{self.name} {format_percentage(self.percentage)} ({self.jurisdiction})"


@dataclass(frozen=True)
class TaxSetup:
    """What taxes depend on besides the buyer: the seller's country and every version of every rate."""

    seller_country: str
    seller_tax_id: str
    rates: tuple[TaxRate, ...] = ()

    def in_force(self, country: str, region: str | None, on: date) -> list[TaxRate]:
        """The rates of the country, and of the region, in force on `on`: per jurisdiction and name,
        the version with the latest effective date not after `on`."""
        region_key = (region or "").strip().upper()
        latest: dict[tuple[str, str, str], TaxRate] = {}
        for rate in self.rates:
            rate_region = (rate.region or "").upper()
            if rate.country != country or rate.effective_from > on or rate_region not in ("", region_key):
                continue
            key = (rate.country, rate_region, rate.name)
            if key not in latest or latest[key].effective_from < rate.effective_from:
                latest[key] = rate
        return sorted(latest.values(), key=lambda r: (bool(r.region), r.name))


def format_percentage(value: Decimal) -> str:
    """`20%`, `9.975%`, `0%`: every significant digit, never rounded."""
    text = f"{value.normalize(_PERCENT):f}"
    return f"{text}%"


def taxes_for(base: Decimal, currency: str, buyer: BillingDetails, setup: TaxSetup, on: date, *,
              precision: Precision = Precision.ISO) -> tuple[InvoiceTax, ...]:
    """The tax breakdown of an invoice whose taxable subtotal is `base`, for the period starting `on`;
    TaxError (naming the column to fix) when the buyer's data does not allow it."""
    country = (buyer.country or "").strip().upper()
    if not country:
        raise TaxError("no billing country, and taxes are on (INVOICE_TAXES): set organizations.billing_country")
    tax_id = None
    if buyer.tax_id and buyer.tax_id.strip():
        try:
            tax_id = check_tax_id(buyer.tax_id, country)
        except TaxIdError as exc:
            raise TaxError(f"{exc}: fix organizations.tax_id (or clear it)") from None
    region = " ".join((buyer.region or "").split()) or None
    if buyer.tax_exempt:
        return (InvoiceTax("Tax exempt", country, None, ZERO, base, _zero(currency), Treatment.EXEMPT,
                           EXEMPT_MENTION),)
    if (country != setup.seller_country and country in EU_COUNTRIES and setup.seller_country in EU_COUNTRIES
            and tax_id is not None and tax_id.is_eu_vat):
        return (InvoiceTax("VAT reverse charge", country, None, ZERO, base, _zero(currency), Treatment.REVERSE_CHARGE,
                           REVERSE_CHARGE_MENTION),)
    rates = setup.in_force(country, region, on)
    if not rates:
        where = f"{country}-{region}" if region else country
        raise TaxError(f"no tax rate for {where} in force on {on.isoformat()}: add one to the taxes file and run "
                       "`billing taxes apply` (a 0% rate with its mention if no tax is due), or fix "
                       "organizations.billing_country")
    return tuple(InvoiceTax(rate.name, rate.country, rate.region, rate.percentage, base,
                            tax_amount(base, rate.percentage, currency, precision), Treatment.STANDARD, rate.mention,
                            rate.id) for rate in rates)


def tax_amount(base: Decimal, percentage: Decimal, currency: str, precision: Precision = Precision.ISO) -> Decimal:
    """THE tax of one rate: base x percentage / 100, exact, then rounded once by money.round_money."""
    exact = _PERCENT.divide(_PERCENT.multiply(base, percentage), Decimal(100))
    return round_money(exact, currency, precision)


def tax_total(taxes: Iterable[InvoiceTax]) -> Decimal:
    from .money import exact_sum

    return exact_sum(t.amount for t in taxes)


def mentions(taxes: Iterable[InvoiceTax]) -> tuple[str, ...]:
    """The legal mentions an invoice prints, once each, in order."""
    seen: list[str] = []
    for tax in taxes:
        if tax.mention and tax.mention not in seen:
            seen.append(tax.mention)
    return tuple(seen)


def _zero(currency: str) -> Decimal:
    return round_money(ZERO, currency)
