"""Money: Decimal amounts, ISO 4217 currencies and their minor units, the one rounding rule, and
the amounts Stripe can charge.

Every amount that reaches an invoice line goes through `round_money`: half-up to the currency's
minor unit. Unit prices are never rounded. Floats are refused.

Stripe has rules of its own, apart from ISO 4217 (its "Supported currencies" documentation): its
API counts zero-decimal currencies (including MGA, two decimals in ISO) in whole units and
three-decimal ones in thousandths whose last digit must be 0, and takes ISK in hundredths that
must be whole krónur. When invoices are charged through Stripe, they are kept in what Stripe can
charge (`Precision.STRIPE`): the same half-up rule, to the unit Stripe can charge (two decimals
for KWD, whole units for MGA and ISK), so the PDF shows exactly what Stripe charges. E-invoices
(EN 16931) carry at most two decimals, so with them on, invoices of a three-decimal currency are
kept in hundredths (`Precision.EN16931`) and the e-invoice states exactly the stored amounts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum
from decimal import ROUND_DOWN, ROUND_HALF_UP, Context, Decimal, Inexact, InvalidOperation, Overflow

# ISO 4217 active codes and their minor units (exponent). Codes not listed have 2 decimals.
_ZERO_DECIMALS = {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
                  "VND", "VUV", "XAF", "XOF", "XPF"}
_THREE_DECIMALS = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}
_FOUR_DECIMALS = {"CLF", "UYW"}
_TWO_DECIMALS = {
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN",
    "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHE", "CHF",
    "CHW", "CNY", "COP", "COU", "CRC", "CUP", "CVE", "CZK", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB",
    "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF",
    "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR", "KPW", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN",
    "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN", "PGK", "PHP", "PKR",
    "PLN", "QAR", "RON", "RSD", "RUB", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS",
    "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD", "TZS",
    "UAH", "USD", "USN", "UYU", "UZS", "VED", "VES", "WST", "XCD", "XCG", "YER", "ZAR", "ZMW", "ZWG",
}
MINOR_UNITS: dict[str, int] = {
    **{c: 2 for c in _TWO_DECIMALS}, **{c: 0 for c in _ZERO_DECIMALS},
    **{c: 3 for c in _THREE_DECIMALS}, **{c: 4 for c in _FOUR_DECIMALS},
}

ZERO = Decimal(0)
# EN 16931 (e-invoices) allows at most two decimals in an amount (its rules BR-DEC-09 to BR-DEC-23).
EN16931_DECIMALS = 2

# Rounding itself is inexact by design: it runs in its own context (wide enough for any NUMERIC
# sum), whatever traps the caller's context sets.
_ROUNDING = Context(prec=80, rounding=ROUND_HALF_UP, traps=[InvalidOperation])


class CurrencyError(ValueError):
    pass


class Precision(Enum):
    """The unit invoice amounts are rounded to."""

    ISO = "iso"  # the currency's ISO 4217 minor unit
    STRIPE = "stripe"  # what Stripe can charge in the currency (never finer than ISO, nor than EN16931)
    EN16931 = "en16931"  # e-invoices: at most hundredths, the finest amount EN 16931 carries (BR-DEC)


# Stripe's presentment currencies (docs: Supported currencies), with its API exponents and the
# step its amounts must be a multiple of.
STRIPE_ZERO_DECIMAL = frozenset({"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX",
                                 "VND", "VUV", "XAF", "XOF", "XPF"})
STRIPE_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})  # the last digit must be 0
STRIPE_WHOLE_HUNDREDTHS = frozenset({"ISK"})  # two decimals in the API, amounts divisible by 100
STRIPE_CURRENCIES = frozenset({
    "USD", "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN",
    "BMD", "BND", "BOB", "BRL", "BSD", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CNY", "COP", "CRC", "CVE",
    "CZK", "DKK", "DOP", "DZD", "EGP", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GIP", "GMD", "GTQ", "GYD",
    "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "ISK", "JMD", "KES", "KGS", "KHR", "KYD", "KZT", "LAK",
    "LBP", "LKR", "LRD", "LSL", "MAD", "MDL", "MKD", "MMK", "MNT", "MOP", "MUR", "MVR", "MWK", "MXN", "MYR",
    "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "QAR", "RON",
    "RSD", "RUB", "SAR", "SBD", "SCR", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SZL", "THB", "TJS", "TOP",
    "TRY", "TTD", "TWD", "TZS", "UAH", "UYU", "UZS", "WST", "XCD", "YER", "ZAR", "ZMW",
}) | STRIPE_ZERO_DECIMAL | STRIPE_THREE_DECIMAL


def stripe_api_exponent(currency: str) -> int:
    """How many decimals Stripe's API counts amounts of the currency in."""
    return 0 if currency in STRIPE_ZERO_DECIMAL else 3 if currency in STRIPE_THREE_DECIMAL else 2


def _stripe_step(currency: str) -> int:
    return 100 if currency in STRIPE_WHOLE_HUNDREDTHS else 10 if currency in STRIPE_THREE_DECIMAL else 1


def exponent(currency: str, precision: Precision = Precision.ISO) -> int:
    """The decimals invoice amounts are kept in."""
    iso = minor_units(currency)
    if precision is Precision.ISO:
        return iso
    if precision is Precision.EN16931:
        return min(iso, EN16931_DECIMALS)
    if currency not in STRIPE_CURRENCIES:
        raise CurrencyError(f"Stripe does not charge in {currency}: bill it without Stripe, or in another currency")
    step_digits = len(str(_stripe_step(currency))) - 1
    return min(iso, stripe_api_exponent(currency) - step_digits)


def to_stripe_amount(amount: Decimal, currency: str) -> int:
    """An amount as the integer Stripe's API takes; ValueError if Stripe cannot charge it exactly."""
    scaled = amount.scaleb(stripe_api_exponent(currency), context=_ROUNDING)
    if scaled != scaled.to_integral_value() or int(scaled) % _stripe_step(currency):
        raise ValueError(f"{amount} {currency} cannot be charged by Stripe exactly")
    return int(scaled)


def check_currency(code: str) -> str:
    """The code itself if it is an active ISO 4217 currency, else CurrencyError."""
    if code not in MINOR_UNITS:
        import difflib

        upper = code.upper()
        close = [upper] if upper in MINOR_UNITS else difflib.get_close_matches(upper, MINOR_UNITS, 1)
        hint = f"did you mean {close[0]}?" if close else "e.g. USD, EUR, JPY"
        raise CurrencyError(f"{code!r} is not an ISO 4217 currency code ({hint})")
    return code


def minor_units(currency: str) -> int:
    return MINOR_UNITS[check_currency(currency)]


def decimal(value: str | int | Decimal) -> Decimal:
    """Build an exact Decimal from text or an integer; a float is a bug and is refused."""
    if isinstance(value, float):
        raise TypeError("money and quantities are never floats: pass a string or a Decimal")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not result.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return result


# Sums of money are exact: an amount that cannot be held exactly is an error, never a rounding.
_EXACT_SUM = Context(prec=60, rounding=ROUND_HALF_UP, traps=[InvalidOperation, Inexact, Overflow])


def exact_sum(amounts: Iterable[Decimal]) -> Decimal:
    """The exact sum of already rounded amounts (an invoice's total); ArithmeticError if it needs
    more than 60 digits, never a silently rounded total."""
    total = ZERO
    for amount in amounts:
        total = _EXACT_SUM.add(total, amount)
    return total


def apportion(total: Decimal, weights: Sequence[Decimal], currency: str,
              precision: Precision = Precision.ISO) -> list[Decimal]:
    """`total` split into one part per weight, in proportion, each part a whole number of the unit of
    `precision` and the parts adding up to exactly `total` (an invoice's tax of one rate, shared out
    over its lines). The largest-remainder rule, in exact fractions: each exact share rounded down to
    the unit, then the units still missing one each to the largest remainders (the earlier part on a
    tie). ValueError when `total` is not a whole number of units, or the weights add up to zero and
    `total` does not."""
    from fractions import Fraction
    from math import floor

    if not isinstance(total, Decimal) or not all(isinstance(w, Decimal) for w in weights):
        raise TypeError("money is apportioned in Decimals, never floats")
    unit = Decimal(1).scaleb(-exponent(currency, precision))
    units = Fraction(total) / Fraction(unit)
    if units.denominator != 1:
        raise ValueError(f"{total} {currency} is not a whole number of {unit} {currency}: it cannot be apportioned")
    whole = sum((Fraction(w) for w in weights), Fraction(0))
    if whole == 0:
        if units:
            raise ValueError(f"{total} {currency} cannot be apportioned over weights that add up to zero")
        return [_units(0, unit, currency) for _ in weights]
    shares = [units * Fraction(w) / whole for w in weights]
    parts = [floor(share) for share in shares]
    missing = int(units) - sum(parts)  # 0 <= missing < len(weights): each share lost less than one unit
    by_remainder = sorted(range(len(parts)), key=lambda i: (parts[i] - shares[i], i))  # largest remainder first
    for i in by_remainder[:missing]:
        parts[i] += 1
    return [_units(part, unit, currency) for part in parts]


def _units(count: int, unit: Decimal, currency: str) -> Decimal:
    """`count` units, written with the currency's ISO decimals (as round_money writes amounts)."""
    return (unit * count).quantize(Decimal(1).scaleb(-minor_units(currency)), context=_ROUNDING)


def round_money(amount: Decimal, currency: str, precision: Precision = Precision.ISO) -> Decimal:
    """THE rounding rule: half-up to the currency's minor unit (2 for USD, 0 for JPY, 3 for KWD;
    with Stripe: what it can charge, e.g. 2 for KWD, 0 for MGA)."""
    return _to_unit(amount, currency, precision, ROUND_HALF_UP)


def movable_credit(amount: Decimal, currency: str, precision: Precision = Precision.ISO) -> Decimal:
    """The part of a credit balance an invoice can move at `precision`: toward zero, never rounded
    up, so that moving credit never creates any (a credit kept at a finer unit than Stripe charges,
    e.g. 0.235 KWD, moves 0.23; the rest stays, under one unit). Amounts are otherwise rounded by
    round_money alone."""
    return _to_unit(amount, currency, precision, ROUND_DOWN)


def _to_unit(amount: Decimal, currency: str, precision: Precision, rounding: str) -> Decimal:
    """`amount` in the unit of `precision`, written with the currency's ISO decimals."""
    places = Decimal(1).scaleb(-exponent(currency, precision))
    return amount.quantize(places, rounding=rounding, context=_ROUNDING).quantize(
        Decimal(1).scaleb(-minor_units(currency)), context=_ROUNDING)


def format_money(amount: Decimal, currency: str) -> str:
    """`1,234.50 USD`, with the currency's number of decimals."""
    return f"{round_money(amount, currency):,} {currency}"


def format_unit_price(price: Decimal, currency: str | None = None) -> str:
    """A unit price with all of its significant digits (never rounded), and at least the currency's
    decimals (`1,000` JPY, `5.00` USD, `0.005` USD; two without a currency)."""
    text = f"{price.normalize(_ROUNDING):f}"  # never rounded to the default 28 digits
    whole, _, frac = text.partition(".")
    places = 2 if currency is None else minor_units(currency)
    if whole.startswith("-"):
        return text
    frac = frac.ljust(places, "0")
    return f"{int(whole):,}.{frac}" if frac else f"{int(whole):,}"


def format_quantity(quantity: Decimal) -> str:
    text = f"{quantity.normalize(_ROUNDING):f}"  # never rounded to the default 28 digits
    whole, dot, frac = text.partition(".")
    return f"{int(whole):,}{dot}{frac}"
