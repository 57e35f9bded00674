"""Numbers and money as a reader of the invoice expects them, in the invoice's locale (Babel, CLDR).

Only the presentation is local: every amount is rounded by `money.round_money` first, and a unit
price is never rounded. Digits: an amount has its currency's ISO 4217 minor unit (2 for EUR, 0 for
JPY, 3 for KWD); a unit price too, and more only when the price has more significant digits
(0.005 USD, 0.5 JPY). Latin digits in every locale.

The result is folded with NFKC so that it can be drawn with the invoice's fonts: CLDR's narrow
no-break space (fr: `1 234,56 €`) becomes a space, the full-width yen sign (ja) `¥`. A currency
symbol made of letters is set apart from the digits (`KWD 1.230`, `1.230 KWD`), as CLDR says.
"""

from __future__ import annotations

import copy
import decimal
import re
import unicodedata
from decimal import Decimal
from functools import cache

from .money import minor_units, round_money

DEFAULT_LOCALE = "en"
_WIDE = decimal.Context(prec=200, rounding=decimal.ROUND_HALF_UP, traps=[decimal.InvalidOperation])
_BIDI_MARKS = dict.fromkeys(map(ord, "\u200e\u200f\u061c"))  # Arabic and Hebrew locales add them
# A number with thousands separators as rating writes it into line descriptions: 1,000 / 100,001.5
_GROUPED_NUMBER = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]|\.\d)")
# CLDR's currency spacing, which Babel leaves out: a symbol of letters never touches the digits (KWD 1.230).
_LETTER_BESIDE_DIGIT = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")


def check_locale(tag: str) -> str:
    """The locale identifier (`de`, `de_CH`, `pt-BR` → `pt_BR`) if CLDR knows it, else ValueError."""
    from babel import Locale, UnknownLocaleError

    try:
        return str(Locale.parse(tag.replace("-", "_")))
    except (UnknownLocaleError, ValueError, TypeError):
        raise ValueError("not a locale known to CLDR: use e.g. en, en_GB, de, fr_CH, ja") from None


def unit_price_places(price: Decimal, currency: str) -> int:
    """The currency's decimals, or more when the price needs them (never fewer, never rounded)."""
    return max(minor_units(currency), -min(0, price.normalize(_WIDE).as_tuple().exponent))  # type: ignore[operator]


class NumberFormat:
    """The number formats of one locale (the Babel lookups are cached per locale)."""

    def __init__(self, locale: str = DEFAULT_LOCALE) -> None:
        self.locale = check_locale(locale)

    def money(self, amount: Decimal, currency: str) -> str:
        """`€1,234.56` (en), `1.234,56 €` (de), `￥1,235` → `¥1,235` (ja): rounded to the minor unit."""
        places = minor_units(currency)
        return _apply(self.locale, "currency", round_money(amount, currency), places, currency)

    def amount(self, amount: Decimal, currency: str) -> str:
        """A line amount without the currency (the column says it): `1,234.56`, `1.234,56`."""
        return _apply(self.locale, "decimal", round_money(amount, currency), minor_units(currency))

    def unit_price(self, price: Decimal, currency: str) -> str:
        """`1,000` JPY, `0.50` USD, `0.005` USD, `1,5` (de) JPY: every significant digit kept."""
        return _apply(self.locale, "decimal", price, unit_price_places(price, currency))

    def in_text(self, text: str) -> str:
        """The numbers with thousands separators in a line description (`units 1,001 to 10,000`,
        written by rating, in English) in this locale (`units 1.001 to 10.000` in de); nothing
        else in the text changes, and in English nothing at all."""
        if self.locale == DEFAULT_LOCALE:
            return text
        return _GROUPED_NUMBER.sub(lambda m: self.quantity(Decimal(m.group().replace(",", ""))), text)

    def quantity(self, quantity: Decimal) -> str:
        """Every significant digit of a quantity: `1,500`, `12.345`, `12,345` (de)."""
        places = -min(0, quantity.normalize(_WIDE).as_tuple().exponent)  # type: ignore[operator]
        return _apply(self.locale, "decimal", quantity, places)


def _apply(locale: str, kind: str, value: Decimal, places: int, currency: str | None = None) -> str:
    pattern = _pattern(locale, kind, places)
    # Babel quantizes to `places` in the current context: wide enough for any NUMERIC, and exact
    # (the value has no more digits than `places`), whatever the caller's context says.
    with decimal.localcontext(_WIDE):
        text = pattern.apply(value, _locale(locale), currency=currency, currency_digits=False)
    text = unicodedata.normalize("NFKC", text).translate(_BIDI_MARKS)
    return _LETTER_BESIDE_DIGIT.sub(" ", text) if currency else text


@cache
def _locale(tag: str):  # noqa: ANN202 - babel.Locale, imported lazily
    from babel import Locale

    return Locale.parse(tag)


@cache
def _pattern(locale: str, kind: str, places: int):  # noqa: ANN202 - babel.numbers.NumberPattern
    loc = _locale(locale)
    base = loc.currency_formats["standard"] if kind == "currency" else loc.decimal_formats[None]
    pattern = copy.copy(base)
    pattern.frac_prec = (places, places)  # exactly the decimals asked for: never padded to 2, never cut
    return pattern
