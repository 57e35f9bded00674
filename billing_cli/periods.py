"""Hour and month windows in UTC: an hour is [hh:00, hh+1:00), a month is [1st 00:00, next 1st 00:00)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from .errors import UsageError

HOUR = timedelta(hours=1)

_HOUR_FORMAT = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2})(?::00(?::00)?)?(?:Z|\+00:00)?$")
_MONTH_FORMAT = re.compile(r"^(\d{4})-(\d{2})$")


def utc_now() -> datetime:
    return datetime.now(UTC)


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def parse_hour(text: str, *, option: str = "--hour") -> datetime:
    """`2024-01-31T13` (or `…T13:00`, `…T13:00:00Z`) -> the start of that UTC hour."""
    match = _HOUR_FORMAT.match(text.strip())
    if not match:
        raise UsageError(f"{option} {text!r} is not an hour: use YYYY-MM-DDTHH in UTC, e.g. 2024-01-31T13")
    try:
        return datetime(*(int(part) for part in match.groups()), tzinfo=UTC)  # type: ignore[misc]
    except ValueError as exc:
        raise UsageError(f"{option} {text!r} is not a valid hour: {exc}") from None


def parse_moment(text: str, *, option: str) -> datetime:
    """`2024-03-01` (midnight UTC) or an hour (`2024-03-01T06`, see parse_hour)."""
    if re.match(r"^\d{4}-\d{2}-\d{2}$", text.strip()):
        try:
            return datetime.fromisoformat(text.strip()).replace(tzinfo=UTC)
        except ValueError as exc:
            raise UsageError(f"{option} {text!r} is not a valid day: {exc}") from None
    return parse_hour(text, option=option)


def format_hour(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:00Z")


@dataclass(frozen=True)
class HourRange:
    """Whole UTC hours from `start` (inclusive) to `end` (exclusive)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise UsageError(f"empty hour range: {format_hour(self.start)} is not before {format_hour(self.end)}")
        if floor_hour(self.start) != self.start or floor_hour(self.end) != self.end:
            raise ValueError("hour ranges start and end on whole hours")

    def hours(self) -> Iterator[datetime]:
        moment = self.start
        while moment < self.end:
            yield moment
            moment += HOUR

    def __len__(self) -> int:
        return int((self.end - self.start) / HOUR)

    def __str__(self) -> str:
        if len(self) == 1:
            return f"{format_hour(self.start)} (1 hour)"
        return f"{format_hour(self.start)} .. {format_hour(self.end - HOUR)} ({len(self)} hours)"


def aggregation_window(
    *, now: datetime, hour: str | None = None, from_: str | None = None, to: str | None = None,
    lookback: int = 0,
) -> HourRange:
    """The hours `aggregate-hourly` rolls up: the previous full hour, `--hour`, or `--from`..`--to`
    (both inclusive), widened by `lookback` hours before it for late events."""
    if hour is not None and (from_ is not None or to is not None):
        raise UsageError("--hour cannot be combined with --from/--to: give one hour or one range")
    if (from_ is None) != (to is None):
        raise UsageError("--from and --to go together: give both ends of the range (inclusive)")
    if lookback < 0:
        raise UsageError("--lookback must be 0 or more hours")
    if from_ is not None and to is not None:
        first, last = parse_hour(from_, option="--from"), parse_hour(to, option="--to")
        if first > last:
            raise UsageError(f"--from {from_} is after --to {to}: the range must go forward in time")
    else:
        first = last = parse_hour(hour) if hour is not None else floor_hour(now) - HOUR
    if last + HOUR > floor_hour(now):
        raise UsageError(f"hour {format_hour(last)} has not finished yet (now {now:%Y-%m-%dT%H:%MZ}): "
                         "only past hours can be aggregated")
    return HourRange(first - lookback * HOUR, last + HOUR)


@dataclass(frozen=True, order=True)
class Month:
    """A calendar month in UTC."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str, *, option: str = "--month") -> Month:
        match = _MONTH_FORMAT.match(text.strip())
        if not match or not 1 <= int(match.group(2)) <= 12:
            raise UsageError(f"{option} {text!r} is not a month: use YYYY-MM, e.g. 2024-01")
        if not 1900 <= int(match.group(1)) <= 9998:
            raise UsageError(f"{option} {text!r} is out of range: use a year from 1900 to 9998")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def containing(cls, moment: datetime) -> Month:
        moment = moment.astimezone(UTC)
        return cls(moment.year, moment.month)

    @classmethod
    def containing_date(cls, day: date) -> Month:
        return cls(day.year, day.month)

    @classmethod
    def previous(cls, now: datetime) -> Month:
        return cls.containing(now).prev()

    def prev(self) -> Month:
        return Month(self.year - 1, 12) if self.month == 1 else Month(self.year, self.month - 1)

    def next(self) -> Month:
        return Month(self.year + 1, 1) if self.month == 12 else Month(self.year, self.month + 1)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.next().start

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(days=1)).date()

    def hours(self) -> HourRange:
        return HourRange(self.start, self.end)

    def minus(self, months: int) -> Month:
        index = self.year * 12 + self.month - 1 - months
        return Month(index // 12, index % 12 + 1)

    @property
    def label(self) -> str:
        """`January 2024`, for documents."""
        return f"{self.start:%B %Y}"

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def invoicing_month(month: str | None, process_month: str | None, *, now: datetime, force: bool = False) -> Month:
    """The month `invoice-monthly` bills: `--month`, else PROCESS_MONTH, else the previous month.
    A month that has not ended is refused unless forced (it would bill a partial month)."""
    if month is not None:
        chosen = Month.parse(month)
    elif process_month is not None:
        chosen = Month.parse(process_month, option="PROCESS_MONTH")
    else:
        chosen = Month.previous(now)
    current = Month.containing(now)
    if chosen >= current and not force:
        when = "is in the future" if chosen > current else "has not ended yet"
        raise UsageError(f"month {chosen} {when} (now {now:%Y-%m-%d %H:%M}Z): invoicing it would bill a partial "
                         "month; pass --force to do it anyway")
    return chosen


Period = Month | HourRange  # what a run covers: a month, or a window of hours


def iso_utc(moment: datetime, timespec: str = "auto") -> str:
    """`2024-01-01T00:00:00Z`: how machine-readable output writes a time."""
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def period_json(period: Period) -> dict[str, str]:
    """A run's period in machine-readable output: its label and its half-open interval."""
    return {"label": str(period), "start": iso_utc(period.start), "end": iso_utc(period.end)}


_HOURS_LABEL = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}):00Z(?: \.\. (\d{4}-\d{2}-\d{2}T\d{2}):00Z)? \(\d+ hours?\)$")


def parse_period(label: str) -> Period | None:
    """The period a run's label names (`str(period)`, as job_runs.period holds it); None for a
    label this program does not write."""
    hours = _HOURS_LABEL.match(label)
    try:
        if hours:
            first = parse_hour(hours.group(1))
            return HourRange(first, parse_hour(hours.group(2) or hours.group(1)) + HOUR)
        if _MONTH_FORMAT.match(label):
            return Month.parse(label)
    except (UsageError, ValueError):
        return None
    return None


def period_label_json(label: str) -> dict[str, str | None]:
    """A recorded run's period in machine-readable output: {label, start, end}, the interval
    null when the label is not one this program writes."""
    period = parse_period(label)
    return period_json(period) if period is not None else {"label": label, "start": None, "end": None}
