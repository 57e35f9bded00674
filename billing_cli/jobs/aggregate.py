"""aggregate-hourly: roll raw usage events up into usage_hourly, one transaction per hour."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy.exc import DBAPIError, OperationalError

from ..db.engine import Transactions
from ..db.partitions import MonthPruned, StrayEvents
from ..db.usage_rollup import (HourReport, MetricTotals, apply_hour, late_hours, preview_hour, record_late_scan,
                               unaggregated_hours)
from ..outcomes import Job, run_outcome
from ..periods import HOUR, HourRange
from ..summary import RunSummary


@dataclass(kw_only=True)
class HourResult(HourReport):
    hour: datetime
    seconds: float = 0.0
    error: str | None = None

    @property
    def events(self) -> int:
        return sum(m.events for m in self.metrics)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class AggregationResult:
    window: HourRange
    dry_run: bool
    late_hours: list[datetime] = field(default_factory=list)  # rolled up again besides the window
    hours: list[HourResult] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    # metric -> every organization with usage of it in the hours rolled up (distinct over hours)
    organizations_by_metric: dict[str, set[str]] = field(default_factory=dict)
    # events in usage_events' DEFAULT partition (outside every monthly partition), whatever the window
    default_partition: StrayEvents = field(default_factory=StrayEvents)

    def add(self, hour: HourResult) -> None:
        for metric, ids in hour.organization_ids.items():
            self.organizations_by_metric.setdefault(metric, set()).update(ids)
        hour.organization_ids = {}
        self.hours.append(hour)

    @property
    def failed_hours(self) -> list[HourResult]:
        return [h for h in self.hours if not h.ok]

    @property
    def ok(self) -> bool:
        return not self.failed_hours

    @property
    def events(self) -> int:
        return sum(h.events for h in self.hours)

    @property
    def organizations(self) -> int:
        """Distinct organizations with usage in the hours rolled up."""
        return len(set().union(*self.organizations_by_metric.values()))

    @property
    def orphan_events(self) -> int:
        return sum(h.orphan_events for h in self.hours)

    @property
    def orphan_ids(self) -> list[str]:
        return sorted({i for h in self.hours for i in h.orphan_ids})

    def totals_by_metric(self) -> list[MetricTotals]:
        """Per metric over the window; `organizations` counts each organization once."""
        sums: dict[str, tuple[int, Decimal]] = {}
        for hour in self.hours:
            for m in hour.metrics:
                events, quantity = sums.get(m.metric, (0, Decimal(0)))
                sums[m.metric] = (events + m.events, quantity + m.quantity)
        return [MetricTotals(metric, len(self.organizations_by_metric.get(metric, ())), *sums[metric])
                for metric in sorted(sums)]

    def summary(self) -> RunSummary:
        return RunSummary(
            job=Job.AGGREGATE_HOURLY, period=self.window,
            outcome=run_outcome(ok=self.ok, interrupted=self.interrupted),
            dry_run=self.dry_run, seconds=self.seconds,
            counts={"hours": len(self.hours), "failed_hours": len(self.failed_hours), "events": self.events,
                    "organizations": self.organizations,
                    "orphan_events": self.orphan_events,
                    "default_partition_events": self.default_partition.events},
            failed=[{"organization_id": "-", "errors": [["hour", f"{h.hour:%Y-%m-%dT%H}:00Z {h.error}"]]}
                    for h in self.failed_hours],
        )

    def json_extra(self) -> dict:
        return {"default_partition": self.default_partition.as_dict()}


def find_late_hours(transactions: Transactions, window: HourRange, *, lookback: int = 0,
                    dry_run: bool = False) -> list[datetime]:
    """Hours before the window to roll up again: those whose events changed since they were rolled
    up (late arrivals, in-place edits and deletions), and, among the `lookback` hours just before
    it, those never rolled up (a missed or failed run). Found without reading an unchanged hour's
    events, so a lookback hour costs a lookup, not a second read of its events. The scan is
    recorded with what it found (the next one counts its margin from it), except in a dry run."""
    with transactions() as conn:
        late = late_hours(conn, window.start)
        if not dry_run:
            record_late_scan(conn, late)
        changed = set(late)
        if lookback:
            changed.update(unaggregated_hours(conn, window.start - lookback * HOUR, window.start))
    return sorted(changed)


def aggregate_hours(
    transactions: Transactions,
    window: HourRange,
    *,
    late_hours: list[datetime] = (),  # type: ignore[assignment]
    dry_run: bool = False,
    on_hour: Callable[[HourResult], None] | None = None,
    stop: threading.Event | None = None,
    still_locked: Callable[[], None] = lambda: None,
) -> AggregationResult:
    """Roll up every hour of `late_hours`, then of `window`, each in its own transaction, so a
    crash keeps finished hours and a failed hour does not stop the others. Running it again gives
    identical rows. A dry run computes the same report read-only."""
    started = time.perf_counter()
    result = AggregationResult(window=window, dry_run=dry_run, late_hours=list(late_hours))
    result.interrupted = _roll_up_hours(transactions, [*late_hours, *window.hours()], _reporting(result, on_hour),
                                        dry_run=dry_run, stop=stop, still_locked=still_locked)
    result.seconds = time.perf_counter() - started
    return result


def aggregate_scheduled(
    transactions: Transactions,
    window: HourRange,
    *,
    lookback: int = 0,
    dry_run: bool = False,
    late_found: Callable[[list[datetime]], None] = lambda hours: None,
    on_hour: Callable[[HourResult], None] | None = None,
    stop: threading.Event | None = None,
    still_locked: Callable[[], None] = lambda: None,
) -> AggregationResult:
    """The scheduled run: the window's hours are rolled up on one connection while the late-events
    check (`find_late_hours`) runs on another, then the older hours it found. A roll-up is one
    INSERT ... SELECT, which PostgreSQL never runs in parallel, so the check takes the server's other
    core instead of adding its time to the run's. `late_found` hears the late hours when the check
    ends, before any hour is reported (`on_hour`, on the calling thread, window hours first). The
    hours are the same as `find_late_hours` then `aggregate_hours` would roll up: the check looks
    only before the window, and a late hour is rolled up after the check that found it."""
    started = time.perf_counter()
    result = AggregationResult(window=window, dry_run=dry_run)
    report = _reporting(result, on_hour)
    window_hours: list[HourResult] = []  # reported on this thread once the check has ended
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="roll-up") as pool:
        window_done = pool.submit(_roll_up_hours, transactions, list(window.hours()), window_hours.append,
                                  dry_run=dry_run, stop=stop, still_locked=still_locked)
        # On an error here, leaving the pool waits for the window's roll-up (it commits whole or not).
        result.late_hours = find_late_hours(transactions, window, lookback=lookback, dry_run=dry_run)
        late_found(result.late_hours)
        result.interrupted = window_done.result()
    for hour in window_hours:
        report(hour)
    if not result.interrupted:
        result.interrupted = _roll_up_hours(transactions, result.late_hours, report, dry_run=dry_run, stop=stop,
                                            still_locked=still_locked)
    result.seconds = time.perf_counter() - started
    return result


def _roll_up_hours(transactions: Transactions, hours: list[datetime], done: Callable[[HourResult], None], *,
                   dry_run: bool, stop: threading.Event | None = None,
                   still_locked: Callable[[], None] = lambda: None) -> bool:
    """Each hour rolled up in its own transaction, in order, its result handed to `done`. True if
    SIGTERM stopped it first (the hours done so far are committed)."""
    roll_up = preview_hour if dry_run else apply_hour
    for hour in hours:
        if stop is not None and stop.is_set():
            return True
        still_locked()  # raises once the run's lock is lost: another run may be rolling up beside it
        done(_one_hour(transactions, hour, roll_up))
    return False


def _reporting(result: AggregationResult, on_hour: Callable[[HourResult], None] | None) -> Callable[[HourResult], None]:
    def report(hour: HourResult) -> None:
        result.add(hour)
        if on_hour is not None:
            on_hour(hour)
    return report


def aggregate_one_hour(transactions: Transactions, start: datetime) -> HourResult:
    """Roll up one hour for real (invoicing uses it for hours whose events changed)."""
    return _one_hour(transactions, start, apply_hour)


def _one_hour(transactions: Transactions, start: datetime,
              roll_up: Callable[..., HourReport]) -> HourResult:
    began = time.perf_counter()
    try:
        with transactions() as conn:
            report = roll_up(conn, start, start + HOUR)
        result = HourResult(hour=start, **vars(report))
    except MonthPruned as exc:  # its roll-up stays as it was
        result = HourResult(hour=start, error=str(exc))
    except OperationalError:
        raise  # the database itself is gone: the whole run stops (exit 4), nothing half-written
    except DBAPIError as exc:
        result = HourResult(hour=start, error=str(exc.orig).strip().splitlines()[0] if exc.orig is not None
                            else str(exc))
    result.seconds = time.perf_counter() - began
    return result
