"""Money: Decimal amounts, ISO 4217 currencies and their minor units, the one rounding rule.

Every amount that reaches an invoice line goes through `round_money`: half-up to the currency's
minor unit. Unit prices are never rounded. Floats are refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Context, Decimal, Inexact, InvalidOperation, Overflow

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

# Rounding itself is inexact by design: it runs in its own context (wide enough for any NUMERIC
# sum), whatever traps the caller's context sets.
_ROUNDING = Context(prec=80, rounding=ROUND_HALF_UP, traps=[InvalidOperation])


class CurrencyError(ValueError):
    pass


def check_currency(code: str) -> str:
    """The code itself if it is an active ISO 4217 currency, else CurrencyError."""
    if code not in MINOR_UNITS:
        raise CurrencyError(f"{code!r} is not an ISO 4217 currency code (e.g. USD, EUR, JPY)")
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


def round_money(amount: Decimal, currency: str) -> Decimal:
    """THE rounding rule: half-up to the currency's minor unit (2 for USD, 0 for JPY, 3 for KWD)."""
    return amount.quantize(Decimal(1).scaleb(-minor_units(currency)), rounding=ROUND_HALF_UP, context=_ROUNDING)


def to_minor_units(amount: Decimal, currency: str) -> int:
    """An already rounded amount as an integer of minor units (cents), as Stripe wants it."""
    scaled = amount.scaleb(minor_units(currency), context=_ROUNDING)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} {currency} is not rounded to the currency's minor unit")
    return int(scaled)


def format_money(amount: Decimal, currency: str) -> str:
    """`1,234.50 USD`, with the currency's number of decimals."""
    return f"{round_money(amount, currency):,} {currency}"


def format_unit_price(price: Decimal) -> str:
    """A unit price with all of its significant digits (never rounded), at least two decimals."""
    text = f"{price.normalize():f}"
    whole, _, frac = text.partition(".")
    return f"{int(whole):,}.{frac.ljust(2, '0')}" if not whole.startswith("-") else text


def format_quantity(quantity: Decimal) -> str:
    text = f"{quantity.normalize():f}"
    whole, dot, frac = text.partition(".")
    return f"{int(whole):,}{dot}{frac}"
