"""Rating is a pure function: hand-computed examples for every model, boundaries, and properties."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_cli.money import round_money
from billing_cli.periods import Month
from billing_cli.pricing import Price, PricePlan, RatingError, Tier, exact_amount, rate

JAN = Month(2024, 1)
GRADUATED = (Tier(D(1000), D("0.01")), Tier(D(10000), D("0.008")), Tier(None, D("0.005")))


def plan(*prices: Price, currency: str = "USD", base_fee: str = "0", minimum: str = "0") -> PricePlan:
    return PricePlan("p", "Pro", currency, prices, D(base_fee), D(minimum))


def amounts(usage: dict[str, str], p: PricePlan) -> list[tuple[str, D, D, D]]:
    rated = rate({k: D(v) for k, v in usage.items()}, p, JAN)
    assert rated.total == sum(line.amount for line in rated.lines)
    return [(line.kind, line.quantity, line.unit_price, line.amount) for line in rated.lines]


def test_per_unit() -> None:
    p = plan(Price("api", "per_unit", "API calls", unit_price=D("0.002")))
    assert amounts({"api": "1234"}, p) == [("usage", D(1234), D("0.002"), D("2.47"))]  # 2.468 -> 2.47


def test_per_unit_with_included_units() -> None:
    p = plan(Price("api", "per_unit", "API calls", unit_price=D("0.01"), included=D(1000)))
    assert amounts({"api": "1500"}, p) == [("usage", D(500), D("0.01"), D("5.00"))]
    assert amounts({"api": "800"}, p) == [("usage", D(800), D("0.01"), D("0.00"))]  # all free, still shown


@pytest.mark.parametrize("quantity,expected", [
    ("1000", [(D(1000), D("10.00"))]),                                        # exactly at up_to
    ("1001", [(D(1000), D("10.00")), (D(1), D("0.01"))]),                    # 0.008 -> 0.01
    ("10000", [(D(1000), D("10.00")), (D(9000), D("72.00"))]),
    ("25000", [(D(1000), D("10.00")), (D(9000), D("72.00")), (D(15000), D("75.00"))]),
    ("0.5", [(D("0.5"), D("0.01"))]),                                        # 0.005 -> 0.01 half-up
])
def test_graduated(quantity: str, expected) -> None:
    p = plan(Price("api", "graduated", "API calls", tiers=GRADUATED))
    assert [(q, a) for _, q, _, a in amounts({"api": quantity}, p)] == expected


def test_graduated_with_flat_fee_and_included() -> None:
    tiers = (Tier(D(100), D("0"), D("5.00")), Tier(None, D("0.10"), D("2.00")))
    p = plan(Price("api", "graduated", "API calls", tiers=tiers, included=D(50)))
    assert amounts({"api": "250"}, p) == [
        ("tier", D(100), D(0), D("0.00")), ("flat_fee", D(1), D("5.00"), D("5.00")),
        ("tier", D(100), D("0.10"), D("10.00")), ("flat_fee", D(1), D("2.00"), D("2.00")),
    ]


@pytest.mark.parametrize("quantity,unit_price,amount", [
    ("1000", "0.01", "10.00"),      # exactly at the first bound: first tier
    ("1000.5", "0.008", "8.00"),    # 8.004
    ("10001", "0.005", "50.01"),    # 50.005 -> 50.01
])
def test_volume(quantity: str, unit_price: str, amount: str) -> None:
    p = plan(Price("api", "volume", "API calls", tiers=GRADUATED))
    assert amounts({"api": quantity}, p) == [("usage", D(quantity), D(unit_price), D(amount))]


def test_volume_tier_flat_fee() -> None:
    tiers = (Tier(D(10), D("1"), D("3")), Tier(None, D("0.5"), D("7")))
    p = plan(Price("seats", "volume", "Seats", tiers=tiers))
    assert amounts({"seats": "20"}, p) == [("usage", D(20), D("0.5"), D("10.00")),
                                           ("flat_fee", D(1), D("7"), D("7.00"))]


@pytest.mark.parametrize("quantity,packages", [("1", 1), ("1000", 1), ("1001", 2), ("2000", 2), ("0.1", 1)])
def test_package_every_started_block(quantity: str, packages: int) -> None:
    p = plan(Price("api", "package", "API calls", unit_price=D("5.00"), package_size=D(1000)))
    assert amounts({"api": quantity}, p) == [("usage", D(packages), D("5.00"), D("5.00") * packages)]


def test_zero_usage_and_no_fee_is_nothing_to_bill() -> None:
    p = plan(Price("api", "per_unit", "API calls", unit_price=D("1")))
    assert rate({}, p, JAN).is_empty and rate({"api": D(0)}, p, JAN).is_empty


def test_base_fee_and_minimum_commitment() -> None:
    p = plan(Price("api", "per_unit", "API calls", unit_price=D("0.01")), base_fee="20", minimum="100")
    assert amounts({"api": "1000"}, p) == [("base_fee", D(1), D(20), D("20.00")),
                                           ("usage", D(1000), D("0.01"), D("10.00")),
                                           ("minimum", D(1), D("70.00"), D("70.00"))]
    assert amounts({"api": "20000"}, p)[-1][0] == "usage"  # above the minimum: no top-up
    assert amounts({}, p)[-1] == ("minimum", D(1), D("80.00"), D("80.00"))  # fee only, topped up


def test_very_large_quantities_are_exact() -> None:
    p = plan(Price("tokens", "per_unit", "Tokens", unit_price=D("0.000001")))
    assert amounts({"tokens": "1000000000000"}, p) == [("usage", D(10**12), D("0.000001"), D("1000000.00"))]
    huge = rate({"tokens": D("123456789012345678901234567890.123456789")}, p, JAN)
    assert huge.total == D("123456789012345678901234.57")


def test_a_quantity_too_large_to_price_exactly_is_an_error() -> None:
    p = plan(Price("tokens", "per_unit", "Tokens", unit_price=D("0.000000000000000000000000000001")))
    with pytest.raises(RatingError, match="too large"):
        rate({"tokens": D("9" * 70)}, p, JAN)


def test_zero_decimal_and_three_decimal_currencies() -> None:
    yen = plan(Price("api", "per_unit", "API", unit_price=D("0.15")), currency="JPY")
    assert amounts({"api": "1001"}, yen) == [("usage", D(1001), D("0.15"), D("150"))]  # 150.15
    dinar = plan(Price("api", "per_unit", "API", unit_price=D("0.0015")), currency="KWD")
    assert amounts({"api": "1001"}, dinar) == [("usage", D(1001), D("0.0015"), D("1.502"))]  # 1.5015


def test_unpriced_metrics_are_reported() -> None:
    p = plan(Price("api", "per_unit", "API", unit_price=D("1")))
    assert rate({"api": D(1), "gpu": D(5)}, p, JAN).unpriced_metrics == ("gpu",)


# -- properties ------------------------------------------------------------------------------------

quantities = st.decimals(min_value=0, max_value=10**9, places=3, allow_nan=False, allow_infinity=False)
prices = st.decimals(min_value=0, max_value=100, places=6, allow_nan=False, allow_infinity=False)


@st.composite
def tier_lists(draw) -> tuple[Tier, ...]:
    bounds = sorted(draw(st.sets(st.integers(min_value=1, max_value=10**7), min_size=0, max_size=4)))
    tiers = [Tier(D(b), draw(prices), draw(st.sampled_from([D(0), D("1.50")]))) for b in bounds]
    return (*tiers, Tier(None, draw(prices), draw(st.sampled_from([D(0), D("2.25")]))))


@st.composite
def any_price(draw) -> Price:
    model = draw(st.sampled_from(["per_unit", "graduated", "volume", "package"]))
    included = draw(st.sampled_from([D(0), D(100), D("0.5")]))
    if model in ("graduated", "volume"):
        return Price("m", model, "M", tiers=draw(tier_lists()), included=included)
    size = D(draw(st.integers(min_value=1, max_value=5000))) if model == "package" else None
    return Price("m", model, "M", unit_price=draw(prices), package_size=size, included=included)


@settings(max_examples=300, deadline=None)
@given(price=any_price(), quantity=quantities, currency=st.sampled_from(["USD", "JPY", "KWD"]),
       base_fee=st.sampled_from(["0", "10"]), minimum=st.sampled_from(["0", "500"]))
def test_lines_always_sum_to_the_total(price, quantity, currency, base_fee, minimum) -> None:
    rated = rate({"m": quantity}, plan(price, currency=currency, base_fee=base_fee, minimum=minimum), JAN)
    assert rated.total == sum(line.amount for line in rated.lines)
    for line in rated.lines:
        assert line.amount == round_money(line.amount, currency) and line.amount >= 0
    if rated.lines:
        assert rated.total >= D(minimum)


@settings(max_examples=300, deadline=None)
@given(tiers=tier_lists(), quantity=quantities)
def test_graduated_never_charges_more_than_per_unit_at_the_highest_tier_price(tiers, quantity) -> None:
    tiers = tuple(Tier(t.up_to, t.unit_price) for t in tiers)  # the comparison is about unit prices
    highest = max(t.unit_price for t in tiers)
    graduated = Price("m", "graduated", "M", tiers=tiers)
    flat = Price("m", "per_unit", "M", unit_price=highest)
    assert exact_amount(graduated, quantity) <= exact_amount(flat, quantity)
    lines = rate({"m": quantity}, plan(graduated), JAN).lines
    # Each line is rounded on its own: at most half a cent per line above the exact amount.
    assert sum(line.amount for line in lines) <= round_money(quantity * highest, "USD") + D("0.005") * len(lines)
