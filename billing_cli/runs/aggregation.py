"""aggregate-hourly: a request resolved against the configuration, run in the lifecycle."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ..config import load_settings
from ..db.engine import Database
from ..errors import UsageError
from ..jobs.aggregate import AggregationResult, HourResult, aggregate_hours, aggregate_scheduled
from ..jobs.partitions import PartitionUpkeep, keep_partitions_ahead
from ..outcomes import Job
from ..periods import HourRange, aggregation_window, utc_now
from .lifecycle import Finished, LockGuard, NotifyWhen, RunSpec, RunView, run_job


@dataclass(frozen=True)
class AggregateRequest:
    """aggregate-hourly's flags as given; None means "from the configuration"."""

    hour: str | None = None
    from_: str | None = None
    to: str | None = None
    lookback: int | None = None
    dry_run: bool | None = None

    @property
    def scheduled(self) -> bool:
        """No hours given: the scheduled run (the previous hour, the lookback, and late hours)."""
        return self.hour is None and self.from_ is None and self.to is None

    def widening(self) -> int:
        """Hours added before an explicit window and rolled up again whatever they hold: --lookback
        given on the command line. The scheduled run widens nothing: it checks its lookback hours
        cheaply instead (`checked_hours`)."""
        return self.lookback if self.lookback is not None and not self.scheduled else 0

    def checked_hours(self, configured: int) -> int:
        """The scheduled run's lookback (AGGREGATE_LOOKBACK_HOURS, or --lookback): hours before
        the previous one that are rolled up again only if they were never rolled up; hours whose
        events changed are found and rolled up again whatever their age."""
        if not self.scheduled:
            return 0
        if self.lookback is not None and self.lookback < 0:
            raise UsageError("--lookback must be 0 or more hours")
        return self.lookback if self.lookback is not None else configured

    def why(self, widened: int, checked: int) -> str:
        """Which hours a run processes, and why, for its start line."""
        if self.hour is not None:
            chosen = f"--hour {self.hour}"
        elif self.from_ is not None:
            chosen = f"--from {self.from_} --to {self.to}"
        else:
            chosen = "the previous full hour"
        if widened:
            return f"{chosen}, and the {widened} hour(s) before it for late events (--lookback={widened})"
        if self.scheduled:
            source = "--lookback" if self.lookback is not None else "AGGREGATE_LOOKBACK_HOURS"
            return (f"{chosen}, and older hours whose events changed since they were rolled up or, among "
                    f"the {checked} before it ({source}={checked}), that were never rolled up")
        return chosen


class AggregationView(RunView, Protocol):
    def aggregation_started(self, window: HourRange, why: str, late_hours: list[datetime], dry_run: bool,
                            database: str) -> None: ...
    def hour_done(self, hour: HourResult) -> None: ...
    def partitions_kept(self, upkeep: PartitionUpkeep) -> None: ...


def run_aggregate_hourly(request: AggregateRequest, view: AggregationView) -> Finished[AggregationResult]:
    settings = load_settings()
    dry_run = settings.dry_run if request.dry_run is None else request.dry_run
    widened, checked = request.widening(), request.checked_hours(settings.aggregate_lookback_hours)
    now = utc_now()
    window = aggregation_window(now=now, hour=request.hour, from_=request.from_, to=request.to,
                                lookback=widened)
    spec = RunSpec(job=Job.AGGREGATE_HOURLY, period=window, lock_scope=Job.AGGREGATE_HOURLY, dry_run=dry_run,
                   parameters={"window": str(window)},
                   notify=NotifyWhen.ON_PROBLEMS if settings.notify_on_aggregate_errors else NotifyWhen.NEVER)

    def aggregate(db: Database, stop: threading.Event, guard: LockGuard) -> AggregationResult:
        # usage_events' partitions for this month and the next exist before their events arrive
        # (made before any roll-up reads the table: their DDL would wait for it).
        upkeep = keep_partitions_ahead(db.transactions, now, dry_run=dry_run)

        def started(late: list[datetime]) -> None:
            view.aggregation_started(window, request.why(widened, checked), late, dry_run, db.where)
            view.partitions_kept(upkeep)

        if request.scheduled:  # also older hours whose events changed since, found beside the roll-up
            result = aggregate_scheduled(db.transactions, window, lookback=checked, dry_run=dry_run,
                                         late_found=started, on_hour=view.hour_done, stop=stop, still_locked=guard)
        else:  # an explicit window means exactly that window
            started([])
            result = aggregate_hours(db.transactions, window, dry_run=dry_run, stop=stop, on_hour=view.hour_done,
                                     still_locked=guard)
        result.default_partition = upkeep.stray
        return result

    return run_job(spec, settings, view, aggregate)
