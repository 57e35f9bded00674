"""Money: the one rounding rule, minor units, ISO 4217 codes, no floats."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_cli.money import (
    CurrencyError,
    apportion,
    check_currency,
    decimal,
    format_money,
    format_quantity,
    format_unit_price,
    STRIPE_CURRENCIES,
    Precision,
    exact_sum,
    round_money,
    to_stripe_amount,
)

# Stripe's rules, written out here from its "Supported currencies" documentation, independently of
# money.py: the API's decimals, and the step an amount must be a multiple of.
STRIPE_ZERO = {"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF",
               "XOF", "XPF"}
STRIPE_THREE = {"BHD", "JOD", "KWD", "OMR", "TND"}


def read_as_stripe_does(amount: int, currency: str) -> Decimal:
    decimals = 0 if currency in STRIPE_ZERO else 3 if currency in STRIPE_THREE else 2
    step = 100 if currency == "ISK" else 10 if currency in STRIPE_THREE else 1
    assert amount % step == 0, f"Stripe refuses {amount} {currency}: not a multiple of {step}"
    return Decimal(amount).scaleb(-decimals)


@pytest.mark.parametrize("amount,currency,expected", [
    ("1.005", "USD", "1.01"), ("1.004999", "USD", "1.00"), ("2.5", "JPY", "3"), ("3.5", "JPY", "4"),
    ("0.0005", "KWD", "0.001"), ("0.0004", "BHD", "0.000"), ("-1.005", "EUR", "-1.01"),
    ("999999999999999999999999.995", "USD", "1000000000000000000000000.00"),
])
def test_round_half_up_to_the_minor_unit(amount: str, currency: str, expected: str) -> None:
    rounded = round_money(Decimal(amount), currency)
    assert rounded == Decimal(expected) and str(rounded) == expected


@pytest.mark.parametrize("currency", sorted(STRIPE_CURRENCIES))
def test_what_we_print_is_what_stripe_charges_in_every_currency_it_supports(currency: str) -> None:
    for exact in ("1234.5678", "0.4449", "99999.995", "7"):
        ours = round_money(Decimal(exact), currency, Precision.STRIPE)
        printed = format_money(ours, currency)
        charged = read_as_stripe_does(to_stripe_amount(ours, currency), currency)
        assert charged == ours and printed == format_money(charged, currency), (currency, exact, printed)


def test_stripe_precision_where_stripe_differs_from_iso() -> None:
    stripe = Precision.STRIPE
    assert round_money(Decimal("1.2345"), "KWD") == Decimal("1.235")  # ISO: three decimals
    assert round_money(Decimal("1.2345"), "KWD", stripe) == Decimal("1.230")  # Stripe: the last one 0
    assert to_stripe_amount(Decimal("1.230"), "KWD") == 1230
    assert round_money(Decimal("1234.56"), "MGA", stripe) == Decimal("1235.00")  # zero-decimal at Stripe
    assert to_stripe_amount(Decimal("1235.00"), "MGA") == 1235
    assert to_stripe_amount(Decimal("1235"), "ISK") == 123500  # hundredths of whole krónur
    with pytest.raises(ValueError, match="cannot be charged by Stripe exactly"):
        to_stripe_amount(Decimal("1.234"), "KWD")
    with pytest.raises(CurrencyError, match="Stripe does not charge in IQD"):
        round_money(Decimal(1), "IQD", stripe)


def test_sums_are_exact_far_beyond_28_digits() -> None:
    lines = [Decimal("123456789012345678901234567.61"), Decimal("0.06")]
    assert exact_sum(lines) == Decimal("123456789012345678901234567.67")  # sum() rounds to ...567.7
    assert sum(lines) != exact_sum(lines)
    with pytest.raises(ArithmeticError):
        exact_sum([Decimal("1" * 70), Decimal("0.01")])


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


def test_long_quantities_and_prices_print_every_digit() -> None:
    """Decimal's default context holds 28 digits: printing must never round to it."""
    from billing_cli.localized import NumberFormat

    long = Decimal("123456789012345678901234567890.123456789")
    assert format_quantity(long) == "123,456,789,012,345,678,901,234,567,890.123456789"
    assert format_unit_price(long) == "123,456,789,012,345,678,901,234,567,890.123456789"
    german = NumberFormat("de")
    assert german.quantity(long) == "123.456.789.012.345.678.901.234.567.890,123456789"
    assert german.unit_price(long, "JPY") == german.quantity(long)
    assert german.money(Decimal("12345678901234567890123456789012345678.455"), "EUR") == \
        "12.345.678.901.234.567.890.123.456.789.012.345.678,46 €"


def test_adjustments_and_credit_of_a_period_billed_before_stripe_was_on_are_chargeable_by_stripe() -> None:
    """KWD has 3 decimals (ISO) but Stripe charges it in hundredths: a month billed without Stripe
    (0.235 KWD) and adjusted on an invoice that goes to Stripe, and a credit carried from before,
    give amounts Stripe can charge; rounding never creates credit."""
    from billing_cli.composition import PeriodRecord, compose, period_delta
    from billing_cli.money import Precision, movable_credit, to_stripe_amount
    from billing_cli.periods import Month
    from billing_cli.pricing import Price, PricePlan

    plan = PricePlan("k", "K", "KWD", (Price("api_calls", "per_unit", "API calls", Decimal("0.0047")),))
    january = Month(2024, 1)
    billed = {1: {"api_calls": Decimal("0.235")}}  # 50 calls x 0.0047 = 0.235 KWD, billed with ISO precision
    record = PeriodRecord(january, {"api_calls": Decimal("60")}, billed, {1: {"api_calls": Decimal("50")}}, plan)
    delta = period_delta(record, plan, fees=True, label="Adjustment", precision=Precision.STRIPE)
    # Now 60 x 0.0047 = 0.282 -> 0.28 at Stripe's precision; 0.28 - 0.235 = 0.045 -> 0.05 (half up; the
    # 0.005 over is part of the next re-rating's difference).
    assert [line.amount for line in delta.lines] == [Decimal("0.050")]
    assert [to_stripe_amount(line.amount, "KWD") for line in delta.lines] == [50]

    # A credit of 0.235 KWD carried before Stripe was on: 0.23 is applied, 0.005 stays.
    assert movable_credit(Decimal("0.235"), "KWD", Precision.STRIPE) == Decimal("0.230")
    assert movable_credit(Decimal("-0.235"), "KWD", Precision.STRIPE) == Decimal("-0.230")
    invoice = compose(Month(2024, 3), {"api_calls": Decimal("100")}, plan, fees=lambda _: True,
                      credit_balance=Decimal("0.235"), precision=Precision.STRIPE)
    assert [(line.kind, line.amount) for line in invoice.lines] == [("usage", Decimal("0.470")),
                                                                      ("credit_applied", Decimal("-0.230"))]
    assert [to_stripe_amount(line.amount, "KWD") for line in invoice.lines] == [470, -230]
    # Credit that was applied, then voided (a balance of -0.235): 0.23 is taken back, never 0.24.
    taken = compose(Month(2024, 3), {"api_calls": Decimal("100")}, plan, fees=lambda _: True,
                    credit_balance=Decimal("-0.235"), precision=Precision.STRIPE)
    assert [(line.kind, line.amount) for line in taken.lines] == [("usage", Decimal("0.470")),
                                                                  ("credit_applied", Decimal("0.230"))]


# -- apportioning a tax over lines -------------------------------------------------------------


def test_apportion_shares_out_exactly_the_total_by_the_largest_remainders() -> None:
    # 3.99 over 10.50 + 10.50: 1.995 each, rounded down to 1.99; the missing cent to the first (a tie).
    assert apportion(Decimal("3.99"), [Decimal("10.50"), Decimal("10.50")], "EUR") == [Decimal("2.00"),
                                                                                      Decimal("1.99")]
    # 34.74 over 49.03 + 124.68: 9.8054.. and 24.9345..: the cent to the larger remainder, the first.
    assert apportion(Decimal("34.74"), [Decimal("49.03"), Decimal("124.68")], "GBP") == [Decimal("9.81"),
                                                                                        Decimal("24.93")]
    # KWD kept in what Stripe charges (hundredths), written with its three ISO decimals.
    assert apportion(Decimal("0.500"), [Decimal("10.000"), Decimal("0.010")], "KWD", Precision.STRIPE) == \
        [Decimal("0.500"), Decimal("0.000")]
    assert apportion(Decimal("10"), [Decimal("1")] * 3, "ISK", Precision.STRIPE) == [Decimal("4"), Decimal("3"),
                                                                                    Decimal("3")]
    # A credit line takes a negative share of the tax on the subtotal it lowers.
    assert apportion(Decimal("10.00"), [Decimal("100"), Decimal("-50")], "EUR") == [Decimal("20.00"),
                                                                                   Decimal("-10.00")]
    assert apportion(Decimal("0.00"), [Decimal("0"), Decimal("0")], "EUR") == [Decimal("0.00"), Decimal("0.00")]


def test_apportion_refuses_what_cannot_be_shared_out_in_whole_units() -> None:
    with pytest.raises(ValueError, match="not a whole number"):
        apportion(Decimal("0.501"), [Decimal("1")], "KWD", Precision.STRIPE)
    with pytest.raises(ValueError, match="add up to zero"):
        apportion(Decimal("1.00"), [Decimal("1"), Decimal("-1")], "EUR")
    with pytest.raises(TypeError):
        apportion(Decimal("1.00"), [0.5, 0.5], "EUR")  # type: ignore[list-item]


cents = st.integers(min_value=-10**9, max_value=10**9).map(lambda n: Decimal(n).scaleb(-2))


@settings(max_examples=300, deadline=None)
@given(weights=st.lists(cents, min_size=1, max_size=30), tax_cents=st.integers(min_value=0, max_value=10**8))
def test_apportioned_parts_add_up_to_the_total_each_within_one_unit_of_its_exact_share(weights, tax_cents) -> None:
    from fractions import Fraction

    whole = sum(weights)
    total = Decimal(tax_cents).scaleb(-2) if whole else Decimal("0.00")
    parts = apportion(total, weights, "EUR")
    assert sum(parts) == total and len(parts) == len(weights)
    for part, weight in zip(parts, weights):
        assert part == part.quantize(Decimal("0.01"))
        if whole:
            assert abs(Fraction(part) - Fraction(total) * Fraction(weight) / Fraction(whole)) < Fraction(1, 100)
