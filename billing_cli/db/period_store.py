"""Reads for billing periods: the organizations whose period of a month is not the calendar month.

Every function runs in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from ..anchors import DAY, AnchorError, BillingPeriod, FeeShare, billing_period, fees_from_json
from ..periods import Month
from . import anchor_history
from .usage_store import Shard, _filters


@dataclass(frozen=True)
class MonthPeriods:
    """The periods starting in a month of the organizations that have (or just had) an anchor day;
    every other organization's period is the calendar month. `problems`: organizations whose
    period cannot be computed (invoiced as a data error, the others go on)."""

    periods: dict[str, BillingPeriod]
    problems: dict[str, str]

    def not_due(self, now: datetime) -> list[str]:
        """The organizations whose period has not ended at `now`."""
        return sorted(org for org, period in self.periods.items() if period.end > now)

    @property
    def latest_end(self) -> datetime | None:
        return max((p.end for p in self.periods.values()), default=None)


def anchored_periods(conn: Connection, month: Month, *, only: list[str] | None = None,
                     shard: Shard = Shard()) -> MonthPeriods:
    """For each organization with an anchor day, or that had one: its period starting in `month`, computed from its
    anchor and the end of its live invoice of the month before (anchors.billing_period); the period
    its live invoice of `month` billed, if it has one (a later anchor change must not move the days
    of an invoice that is regenerated or checked)."""
    where, params = _filters(only, shard, column="o.id")
    rows = conn.execute(text(f"""
        SELECT o.id, o.billing_anchor_day, h.change_times, h.changes_before,
               p.period_end AS previous_end, i.period_start AS billed_start, i.period_end AS billed_end,
               i.fee_share AS billed_fees
        FROM organizations o{anchor_history.JOIN}
        LEFT JOIN invoices p ON p.organization_id = o.id AND p.billing_month = :previous AND p.status <> 'void'
        LEFT JOIN invoices i ON i.organization_id = o.id AND i.billing_month = :month AND i.status <> 'void'
        WHERE {anchor_history.ANCHORED}{where}
    """), {**params, "previous": month.prev().first_day, "month": month.first_day})
    periods: dict[str, BillingPeriod] = {}
    problems: dict[str, str] = {}
    for row in rows:
        anchor = anchor_history.anchor_of(row)
        try:
            period = billing_period(month, anchor, previous_end=row.previous_end)
            if row.billed_start is not None and (period.start, period.end) != (row.billed_start, row.billed_end):
                period = _as_billed(month, row.billed_start, row.billed_end, row.billed_fees)
        except (AnchorError, ValueError) as exc:
            problems[row.id] = str(exc)
            continue
        if not period.is_calendar_month or period.regular_start is not None:
            periods[row.id] = period
    return MonthPeriods(periods, problems)


def _as_billed(month: Month, start: datetime, end: datetime, fees: dict | None) -> BillingPeriod:
    """The period an invoice billed, with the length its fees were prorated against (stored with
    them: invoices.fee_share) when that was not its own."""
    share = fees_from_json(fees) if fees is not None else None
    regular = end - share.of_days * DAY if isinstance(share, FeeShare) else None
    return BillingPeriod(month, start, end, regular_start=regular if regular != start else None)


def any_anchored(conn: Connection) -> bool:
    """Whether any organization has (or had) an anchor day: without one, every period is a calendar month."""
    return bool(conn.execute(text(
        "SELECT EXISTS (SELECT 1 FROM organizations WHERE billing_anchor_day IS NOT NULL) "
        "OR EXISTS (SELECT 1 FROM anchor_changes)")).scalar_one())


def latest_period_end(conn: Connection, at_or_before: datetime) -> datetime:
    """The latest moment, at or before `at_or_before`, at which some organization's period ended:
    the 1st of its month for calendar months, else an anchored period's end (of the periods that
    start in the two months before)."""
    month = Month.containing(at_or_before)
    ends = [month.start]
    for earlier in (month.prev(), month.prev().prev()):
        ends += [p.end for p in anchored_periods(conn, earlier).periods.values()]
    return max(end for end in ends if end <= at_or_before)
