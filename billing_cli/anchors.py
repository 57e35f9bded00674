"""Billing periods of one organization: anchor days, the period that changes length when the anchor
changes, and the share of a period's fees an organization owes. Pure: no I/O, no clock.

A period is a half-open interval of whole UTC days, [start, end). Without an anchor it is the
calendar month. With anchor day d it runs from day d of one month to day d of the next, clamped to
a month's last day when the month is shorter (anchor 31: Jan 31 -> Feb 29 (2024) -> Mar 31).

Every month holds exactly one period start per organization, so a period is named by the month it
starts in (its *billing month*): `--month 2024-01` bills the periods that start in January, the
invoice number carries that month, and every table keyed by month (invoice_periods, invoice_usage,
usage_revisions, invoice_number_counters) keys the period by it.

Changing the anchor takes effect at the next period boundary: the period under way when the anchor
changed (or that ended but is not invoiced yet) keeps its old end; the next period runs from there to
the new anchor day of the following month, shorter or longer than a month, and its fees are prorated
by its length against a regular period ending on the same day (see `FeeShare`). Every change is
remembered (`Anchor`), so each period keeps the anchor in force when it started, however many
changes came after it.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from .periods import Month

DAY = timedelta(days=1)


def anchor_start(anchor: int | None, month: Month) -> datetime:
    """Midnight UTC of the anchor day in `month` (clamped to its last day); the 1st without an anchor."""
    if anchor is None:
        return month.start
    if not 1 <= anchor <= 31:
        raise AnchorError(anchor)
    day = min(anchor, calendar.monthrange(month.year, month.month)[1])
    return datetime(month.year, month.month, day, tzinfo=UTC)


class AnchorError(ValueError):
    """An anchor day outside 1..31 (the column's CHECK keeps it out; a copy of the data may not)."""

    def __init__(self, anchor: int) -> None:
        super().__init__(f"billing anchor day {anchor} is not a day of the month: set "
                         "organizations.billing_anchor_day to 1..31, or NULL for calendar months")


@dataclass(frozen=True)
class Anchor:
    """What an organization's periods are computed from: its anchor day now and every change of it
    (anchor_changes, kept by a trigger on organizations; the last change also in its columns)."""

    day: int | None = None  # billing_anchor_day now
    previous: int | None = None  # billing_anchor_previous: the day before the last change
    changed_at: datetime | None = None  # billing_anchor_changed_at: when it last changed (None: never)
    earlier: tuple[tuple[datetime, int | None], ...] = ()  # the changes before the last: (when, the day before it), oldest first

    @classmethod
    def from_history(cls, day: int | None, changes: Iterable[tuple[datetime, int | None]]) -> Anchor:
        """From the anchor day now and its changes as (when, the day before it), in any order."""
        *earlier, last = sorted(changes, key=lambda change: change[0]) or [(None, None)]
        return cls(day, last[1], last[0], tuple(earlier))

    @property
    def changes(self) -> tuple[tuple[datetime, int | None], ...]:
        """Every change as (when, the day before it), oldest first."""
        return self.earlier + ((self.changed_at, self.previous),) if self.changed_at is not None else self.earlier

    def at(self, moment: datetime) -> int | None:
        """The anchor in force for a period starting at `moment`: a change made at or after the start
        of a period waits for the period's end (the next boundary), so it is the day before the first
        change made at or after `moment`, else the day now."""
        for changed_at, before in self.changes:
            if changed_at >= moment:
                return before
        return self.day

    def changed_in(self, month: Month) -> bool:
        return any(month.start <= changed_at < month.end for changed_at, _ in self.changes)


CALENDAR = Anchor()


@dataclass(frozen=True)
class BillingPeriod:
    """One organization's period: [start, end) in UTC, named by the month it starts in. `regular_start`
    is where a regular period ending at `end` would have started: it differs from `start` only for the
    one period that changes length when the anchor changes (its fees are prorated by the ratio)."""

    month: Month
    start: datetime
    end: datetime
    regular_start: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end", "regular_start"):  # as read from the database: any offset, one instant
            if getattr(self, name) is not None:
                object.__setattr__(self, name, getattr(self, name).astimezone(UTC))
        if not self.start < self.end:
            raise ValueError(f"empty billing period {self.start} .. {self.end}")
        if Month.containing(self.start) != self.month:
            raise ValueError(f"a period of {self.month} starts in it, not on {self.start:%Y-%m-%d}")

    @property
    def days(self) -> int:
        return (self.end - self.start) // DAY

    @property
    def regular_days(self) -> int:
        """The length fees are computed against: the period's own, or a regular period's ending with it."""
        return (self.end - (self.regular_start or self.start)) // DAY

    @property
    def is_calendar_month(self) -> bool:
        return self.start == self.month.start and self.end == self.month.end

    @property
    def last_day(self) -> date:
        return (self.end - DAY).date()

    @property
    def label(self) -> str:
        """`January 2024` for a calendar month, else `15 Jan – 14 Feb 2024` (inclusive days)."""
        return self.month.label if self.is_calendar_month else day_range(self.start.date(), self.last_day)

    @classmethod
    def calendar(cls, month: Month) -> BillingPeriod:
        return cls(month, month.start, month.end)


def day_range(first: date, last: date) -> str:
    """`17–31 Jan 2024`, `15 Jan – 14 Feb 2024`, `20 Dec 2023 – 19 Jan 2024`: both days inclusive."""
    if first.year != last.year:
        return f"{first.day} {first:%b %Y} – {last.day} {last:%b %Y}"
    if first.month != last.month:
        return f"{first.day} {first:%b} – {last.day} {last:%b %Y}"
    if first == last:
        return f"{first.day} {first:%b %Y}"
    return f"{first.day}–{last.day} {last:%b %Y}"


def billing_period(month: Month, anchor: Anchor = CALENDAR, *, previous_end: datetime | None = None) -> BillingPeriod:
    """The organization's period that starts in `month`. `previous_end`: the end of its live invoice
    of the month before, the boundary its next period starts from (it knows the anchor that invoice
    was billed with, whatever the anchor is now)."""
    previous_end = previous_end.astimezone(UTC) if previous_end is not None else None
    if previous_end is not None and Month.containing(previous_end) == month and previous_end.hour == 0:
        start = previous_end
    else:
        start = _start(month, anchor)  # no invoice of the month before (nothing to bill then)
    in_force = anchor.at(start)
    end = anchor_start(in_force, month.next())
    regular = anchor_start(in_force, month)
    return BillingPeriod(month, start, end, regular_start=regular if regular != start else None)


def _start(month: Month, anchor: Anchor) -> datetime:
    """Where the period starting in `month` starts: the end of the one starting in the month before,
    which ends on the anchor day in force when it started. That start is known outright when the
    anchor did not change in the month before it (a change made there may come before or after it);
    else it is computed the same way, from further back."""
    first = month
    while anchor.changed_in(first.prev()):
        first = first.prev()
    start = anchor_start(anchor.at(first.prev().start), first)
    while first != month:
        first = first.next()
        start = anchor_start(anchor.at(start), first)
    return start


@dataclass(frozen=True)
class FeeShare:
    """The part of a period's base fee and minimum commitment an organization owes: `days` of
    `of_days`, by whole UTC days (the day it was created and the day it was deactivated count in
    full, unless it was deactivated at midnight). `of_days` is the period's length, or a regular period's for one that changed length."""

    days: int
    of_days: int
    first: date
    last: date

    @property
    def is_whole(self) -> bool:
        return self.days == self.of_days

    @property
    def label(self) -> str:
        """`17–31 Jan (15 of 31 days)` (without the year: the invoice's period says it)."""
        span = day_range(self.first, self.last)
        return f"{span.rsplit(' ', 1)[0]} ({self.days} of {self.of_days} days)"


def fees_as_json(fees: bool | FeeShare | None) -> dict[str, object]:
    """The fees an invoice billed for its period, as stored (invoices.fee_share)."""
    if isinstance(fees, FeeShare):
        return {"days": fees.days, "of_days": fees.of_days, "first": fees.first.isoformat(),
                "last": fees.last.isoformat()}
    return {"owed": bool(fees)}


def fees_from_json(stored: dict[str, object]) -> bool | FeeShare | None:
    """`fees_as_json` read back: True (all), None (none), or the share."""
    if "owed" in stored:
        return True if stored["owed"] else None
    return FeeShare(int(stored["days"]), int(stored["of_days"]),  # type: ignore[call-overload]
                    date.fromisoformat(str(stored["first"])), date.fromisoformat(str(stored["last"])))


def fee_share(period: BillingPeriod, *, created_at: datetime | None, active: bool,
              status_changed_at: datetime | None) -> FeeShare | None:
    """The fees owed for `period`: None when none are (created after it ended, or inactive before
    it began, or since an unknown time, or since it was created). Active: from the day it was created to the end;
    inactive: until the day its status changed (its final invoice: the final-invoice rule)."""
    first = period.start
    if created_at is not None:
        first = max(first, _day_of(created_at))
    last = period.end
    if not active:
        if status_changed_at is None or status_changed_at <= period.start:
            return None
        if created_at is not None and status_changed_at <= created_at:
            return None  # created inactive and never activated (the trigger stamps its creation time)
        last = min(last, _day_end(status_changed_at))
    if first >= last:
        return None
    return FeeShare((last - first) // DAY, period.regular_days, first.date(), (last - DAY).date())


def _day_of(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


def _day_end(moment: datetime) -> datetime:
    """The end of the UTC day `moment` falls in (a deactivation at 00:00 ends the day before)."""
    start = _day_of(moment)
    return start if start == moment else start + DAY
