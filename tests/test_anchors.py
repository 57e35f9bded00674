"""Billing periods computed from anchor days (pure): clamping in short months, anchor changes, fee shares."""

from __future__ import annotations

from datetime import date
from decimal import Decimal as D

import pytest

from billing_cli.anchors import Anchor, AnchorError, BillingPeriod, billing_period, day_range, fee_share
from billing_cli.periods import Month
from billing_cli.pricing import rate
from billing_cli.plan_file import parse_plans
from tests.data import utc

JAN_2024, FEB_2024, JAN_2023, FEB_2023 = Month(2024, 1), Month(2024, 2), Month(2023, 1), Month(2023, 2)

# (anchor, year) -> the periods starting in January and in February, worked out on a calendar.
# 2024 is a leap year (29 February), 2023 is not.
ACROSS_FEBRUARY = {
    (1, 2024): ((utc(2024, 1, 1), utc(2024, 2, 1)), (utc(2024, 2, 1), utc(2024, 3, 1))),
    (15, 2024): ((utc(2024, 1, 15), utc(2024, 2, 15)), (utc(2024, 2, 15), utc(2024, 3, 15))),
    (28, 2024): ((utc(2024, 1, 28), utc(2024, 2, 28)), (utc(2024, 2, 28), utc(2024, 3, 28))),
    (29, 2024): ((utc(2024, 1, 29), utc(2024, 2, 29)), (utc(2024, 2, 29), utc(2024, 3, 29))),
    (30, 2024): ((utc(2024, 1, 30), utc(2024, 2, 29)), (utc(2024, 2, 29), utc(2024, 3, 30))),
    (31, 2024): ((utc(2024, 1, 31), utc(2024, 2, 29)), (utc(2024, 2, 29), utc(2024, 3, 31))),
    (1, 2023): ((utc(2023, 1, 1), utc(2023, 2, 1)), (utc(2023, 2, 1), utc(2023, 3, 1))),
    (15, 2023): ((utc(2023, 1, 15), utc(2023, 2, 15)), (utc(2023, 2, 15), utc(2023, 3, 15))),
    (28, 2023): ((utc(2023, 1, 28), utc(2023, 2, 28)), (utc(2023, 2, 28), utc(2023, 3, 28))),
    (29, 2023): ((utc(2023, 1, 29), utc(2023, 2, 28)), (utc(2023, 2, 28), utc(2023, 3, 29))),
    (30, 2023): ((utc(2023, 1, 30), utc(2023, 2, 28)), (utc(2023, 2, 28), utc(2023, 3, 30))),
    (31, 2023): ((utc(2023, 1, 31), utc(2023, 2, 28)), (utc(2023, 2, 28), utc(2023, 3, 31))),
}


@pytest.mark.parametrize(("anchor", "year"), sorted(ACROSS_FEBRUARY))
def test_anchor_days_across_february_in_leap_and_common_years(anchor: int, year: int) -> None:
    january, february = ACROSS_FEBRUARY[(anchor, year)]
    first = billing_period(Month(year, 1), Anchor(anchor))
    second = billing_period(Month(year, 2), Anchor(anchor), previous_end=first.end)
    assert (first.start, first.end) == january
    assert (second.start, second.end) == february
    assert first.end == second.start  # no day billed twice, none left out
    # Without the previous invoice (e.g. the first one), the anchor alone gives the same period.
    assert billing_period(Month(year, 2), Anchor(anchor)) == second


def test_anchor_31_runs_jan_31_to_feb_29_to_mar_31() -> None:
    periods = [billing_period(Month(2024, m), Anchor(31)) for m in (1, 2, 3)]
    assert [(p.start.date(), p.last_day) for p in periods] == [
        (date(2024, 1, 31), date(2024, 2, 28)), (date(2024, 2, 29), date(2024, 3, 30)),
        (date(2024, 3, 31), date(2024, 4, 29))]
    assert [p.days for p in periods] == [29, 31, 30]


def test_no_anchor_is_the_calendar_month() -> None:
    assert billing_period(JAN_2024) == BillingPeriod.calendar(JAN_2024)
    assert BillingPeriod.calendar(JAN_2024).label == "January 2024"


def test_labels_name_both_days_inclusive() -> None:
    assert billing_period(JAN_2024, Anchor(15)).label == "15 Jan – 14 Feb 2024"
    assert billing_period(Month(2023, 12), Anchor(20)).label == "20 Dec 2023 – 19 Jan 2024"
    assert day_range(date(2024, 1, 17), date(2024, 1, 31)) == "17–31 Jan 2024"


def test_an_anchor_change_waits_for_the_period_under_way_then_one_period_changes_length() -> None:
    # Anchor 15, changed to 1 on 20 February (during the period 15 Feb - 15 Mar).
    anchor = Anchor(1, previous=15, changed_at=utc(2024, 2, 20, 9))
    january = billing_period(JAN_2024, anchor)
    february = billing_period(FEB_2024, anchor, previous_end=january.end)
    march = billing_period(Month(2024, 3), anchor, previous_end=february.end)
    april = billing_period(Month(2024, 4), anchor, previous_end=march.end)
    assert (january.start, january.end) == (utc(2024, 1, 15), utc(2024, 2, 15))
    assert (february.start, february.end) == (utc(2024, 2, 15), utc(2024, 3, 15))  # unchanged: under way
    assert (march.start, march.end) == (utc(2024, 3, 15), utc(2024, 4, 1))  # the one shorter period
    assert (march.days, march.regular_days) == (17, 31)  # prorated against 1 Mar - 1 Apr
    assert (april.start, april.end, april.regular_start) == (utc(2024, 4, 1), utc(2024, 5, 1), None)


def test_a_later_anchor_makes_the_changing_period_longer_than_a_month() -> None:
    anchor = Anchor(20, previous=None, changed_at=utc(2024, 1, 10))  # calendar months until now
    january = billing_period(JAN_2024, anchor)
    february = billing_period(FEB_2024, anchor, previous_end=january.end)
    assert (january.start, january.end) == (utc(2024, 1, 1), utc(2024, 2, 1))
    assert (february.start, february.end) == (utc(2024, 2, 1), utc(2024, 3, 20))
    assert (february.days, february.regular_days) == (48, 29)  # 20 Feb - 20 Mar is the regular period


# Anchor 15, changed to 1 on 20 February, to 20 on 10 April and to 10 on 3 June: each period keeps
# the anchor in force when it started, whatever came after (month -> start, end, regular start).
THREE_CHANGES = Anchor.from_history(10, [(utc(2024, 6, 3), 20), (utc(2024, 2, 20, 9), 15), (utc(2024, 4, 10, 9), 1)])
THREE_CHANGES_PERIODS = {
    1: (utc(2024, 1, 15), utc(2024, 2, 15), None), 2: (utc(2024, 2, 15), utc(2024, 3, 15), None),
    3: (utc(2024, 3, 15), utc(2024, 4, 1), utc(2024, 3, 1)), 4: (utc(2024, 4, 1), utc(2024, 5, 1), None),
    5: (utc(2024, 5, 1), utc(2024, 6, 20), utc(2024, 5, 20)), 6: (utc(2024, 6, 20), utc(2024, 7, 10), utc(2024, 6, 10)),
    7: (utc(2024, 7, 10), utc(2024, 8, 10), None)}


def test_every_period_keeps_the_anchor_it_started_with_after_three_changes() -> None:
    chained, end = {}, None
    for month in THREE_CHANGES_PERIODS:
        period = billing_period(Month(2024, month), THREE_CHANGES, previous_end=end)
        chained[month], end = (period.start, period.end, period.regular_start), period.end
    assert chained == THREE_CHANGES_PERIODS
    # without the invoice of the month before (voided, or nothing to bill): the same days
    alone = {m: billing_period(Month(2024, m), THREE_CHANGES) for m in THREE_CHANGES_PERIODS}
    assert {m: (p.start, p.end, p.regular_start) for m, p in alone.items()} == THREE_CHANGES_PERIODS


def test_an_anchor_outside_the_month_is_a_data_error() -> None:
    with pytest.raises(AnchorError, match="billing_anchor_day"):
        billing_period(JAN_2024, Anchor(32))


def test_fee_share_counts_whole_days_from_creation_and_to_deactivation() -> None:
    january = BillingPeriod.calendar(JAN_2024)
    created = fee_share(january, created_at=utc(2024, 1, 17, 10, 32), active=True, status_changed_at=None)
    assert created is not None and (created.days, created.of_days) == (15, 31)
    assert created.label == "17–31 Jan (15 of 31 days)"
    gone = fee_share(january, created_at=utc(2023, 1, 1), active=False, status_changed_at=utc(2024, 1, 10, 8))
    assert gone is not None and (gone.days, gone.first, gone.last) == (10, date(2024, 1, 1), date(2024, 1, 10))
    assert fee_share(january, created_at=utc(2024, 2, 1), active=True, status_changed_at=None) is None
    assert fee_share(january, created_at=None, active=False, status_changed_at=utc(2023, 12, 31)) is None
    whole = fee_share(january, created_at=utc(2023, 5, 1), active=True, status_changed_at=None)
    assert whole is not None and whole.is_whole


PLAN = parse_plans("""
[[plan]]
id = "team"
name = "Team"
currency = "USD"
base_fee = 10
minimum_commitment = 50

  [[plan.price]]
  metric = "api_calls"
  description = "API calls"
  model = "per_unit"
  unit_price = 0.01
""")[0]


def test_base_fee_and_minimum_are_prorated_and_rounded_once_usage_is_not() -> None:
    share = fee_share(BillingPeriod.calendar(JAN_2024), created_at=utc(2024, 1, 17, 10), active=True,
                      status_changed_at=None)
    rated = rate({"api_calls": D("100")}, PLAN, JAN_2024, fees=share)
    # base 10 × 15/31 = 4.8387… -> 4.84; usage 100 × 0.01 = 1.00 (never prorated);
    # minimum 50 × 15/31 = 24.1935… ; top-up 24.1935… - 5.84 = 18.3535… -> 18.35; total 24.19.
    assert [(line.kind, line.description, line.amount) for line in rated.lines] == [
        ("base_fee", "Base fee, 17–31 Jan (15 of 31 days)", D("4.84")),
        ("usage", "API calls", D("1.00")),
        ("minimum", "Minimum commitment top-up (to 24.19 USD, 17–31 Jan (15 of 31 days))", D("18.35"))]
    assert rated.total == D("24.19")


def test_a_whole_period_rates_exactly_as_before() -> None:
    whole = fee_share(BillingPeriod.calendar(JAN_2024), created_at=utc(2023, 1, 1), active=True,
                      status_changed_at=None)
    assert rate({"api_calls": D("100")}, PLAN, JAN_2024, fees=whole) == rate({"api_calls": D("100")}, PLAN, JAN_2024)
