"""Money: the one rounding rule, minor units, ISO 4217 codes, no floats."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing_cli.money import (
    CurrencyError,
    check_currency,
    decimal,
    format_money,
    format_unit_price,
    round_money,
    to_minor_units,
)


@pytest.mark.parametrize("amount,currency,expected", [
    ("1.005", "USD", "1.01"), ("1.004999", "USD", "1.00"), ("2.5", "JPY", "3"), ("3.5", "JPY", "4"),
    ("0.0005", "KWD", "0.001"), ("0.0004", "BHD", "0.000"), ("-1.005", "EUR", "-1.01"),
    ("999999999999999999999999.995", "USD", "1000000000000000000000000.00"),
])
def test_round_half_up_to_the_minor_unit(amount: str, currency: str, expected: str) -> None:
    rounded = round_money(Decimal(amount), currency)
    assert rounded == Decimal(expected) and str(rounded) == expected


def test_minor_units_for_stripe() -> None:
    assert to_minor_units(Decimal("12.34"), "USD") == 1234
    assert to_minor_units(Decimal("1234"), "JPY") == 1234
    assert to_minor_units(Decimal("1.234"), "KWD") == 1234
    with pytest.raises(ValueError, match="not rounded"):
        to_minor_units(Decimal("1.234"), "USD")


def test_currency_codes() -> None:
    assert check_currency("EUR") == "EUR"
    for bad in ("usd", "EURO", "XXX", "ABC", ""):
        with pytest.raises(CurrencyError, match="ISO 4217"):
            check_currency(bad)


def test_floats_are_refused() -> None:
    with pytest.raises(TypeError, match="never floats"):
        decimal(0.1)  # type: ignore[arg-type]
    assert decimal("0.1") + decimal("0.2") == Decimal("0.3")
    with pytest.raises(ValueError):
        decimal("NaN")


def test_formatting() -> None:
    assert format_money(Decimal("1234.5"), "USD") == "1,234.50 USD"
    assert format_money(Decimal("1234"), "JPY") == "1,234 JPY"
    assert format_unit_price(Decimal("0.000001")) == "0.000001"
    assert format_unit_price(Decimal("1234.5")) == "1,234.50"
    assert format_unit_price(Decimal("5")) == "5.00"
