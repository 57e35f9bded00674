"""UTC hour and month windows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing_cli.errors import UsageError
from billing_cli.periods import HourRange, Month, aggregation_window, parse_hour

NOW = datetime(2024, 3, 1, 0, 20, tzinfo=UTC)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2024-01-31T13", "2024-01-31T13:00", "2024-01-31T13:00:00Z",
                                  "2024-01-31 13", "2024-01-31T13:00:00+00:00"])
def test_parse_hour_spellings(text: str) -> None:
    assert parse_hour(text) == utc(2024, 1, 31, 13)


@pytest.mark.parametrize("text", ["2024-01-31", "2024-01-31T25", "2024-02-30T10", "yesterday",
                                  "2024-01-31T13:30", "2024-01-31T13:00+02:00"])
def test_bad_hours_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--hour"):
        parse_hour(text)


def test_default_window_is_the_previous_full_hour_crossing_a_month() -> None:
    assert aggregation_window(now=NOW) == HourRange(utc(2024, 2, 29, 23), utc(2024, 3, 1, 0))


def test_lookback_widens_the_window_backwards() -> None:
    window = aggregation_window(now=NOW, lookback=2)
    assert window == HourRange(utc(2024, 2, 29, 21), utc(2024, 3, 1, 0)) and len(window) == 3


def test_range_is_inclusive_of_both_ends() -> None:
    window = aggregation_window(now=NOW, from_="2024-01-31T10", to="2024-01-31T12")
    assert list(window.hours()) == [utc(2024, 1, 31, 10), utc(2024, 1, 31, 11), utc(2024, 1, 31, 12)]


@pytest.mark.parametrize("kwargs,message", [
    ({"from_": "2024-01-31T12", "to": "2024-01-31T10"}, "is after --to"),
    ({"from_": "2024-01-31T12"}, "go together"),
    ({"hour": "2024-01-31T12", "to": "2024-01-31T13"}, "cannot be combined"),
    ({"hour": "2024-03-01T00"}, "has not finished yet"),
    ({"lookback": -1}, "--lookback"),
])
def test_window_usage_errors(kwargs, message) -> None:
    with pytest.raises(UsageError, match=message):
        aggregation_window(now=NOW, **kwargs)


def test_months() -> None:
    assert Month.parse("2024-01").start == utc(2024, 1, 1)
    assert Month.parse("2024-12").end == utc(2025, 1, 1)
    assert Month.previous(utc(2024, 1, 1, 0, 0)) == Month(2023, 12)
    assert len(Month(2024, 2).hours()) == 29 * 24
    assert str(Month(2024, 3)) == "2024-03"
    for bad in ("2024-1", "2024-13", "24-01", "January"):
        with pytest.raises(UsageError, match="--month"):
            Month.parse(bad)
