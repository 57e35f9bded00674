"""billing usage prune: a request resolved against the configuration, run in the lifecycle."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from ..config import load_settings
from ..db.engine import Database
from ..errors import UsageError
from ..jobs.partitions import MonthPrune, PruneResult, prune_months
from ..outcomes import Job
from ..periods import Month, utc_now
from .lifecycle import Finished, LockGuard, NotifyWhen, RunSpec, RunView, run_job


@dataclass(frozen=True)
class PruneRequest:
    before: str
    dry_run: bool | None = None
    force: bool = False


class PruneView(RunView, Protocol):
    def prune_started(self, before: Month, dry_run: bool, force: bool, database: str) -> None: ...
    def month_done(self, month: MonthPrune, dry_run: bool) -> None: ...


def run_usage_prune(request: PruneRequest, view: PruneView) -> Finished[PruneResult]:
    settings = load_settings()
    dry_run = settings.dry_run if request.dry_run is None else request.dry_run
    before = Month.parse(request.before, option="--before")
    current = Month.containing(utc_now())
    if before > current:
        raise UsageError(f"--before {before} is after the current month ({current}): the current month's events "
                         "are still being written and billed, so they can never be pruned")
    # job_runs.period: the last month the run covers (every month up to it).
    spec = RunSpec(job=Job.USAGE_PRUNE, period=before.prev(), lock_scope=Job.USAGE_PRUNE, dry_run=dry_run,
                   parameters={"before": str(before), "force": request.force}, notify=NotifyWhen.ON_PROBLEMS)

    def prune(db: Database, stop: threading.Event, guard: LockGuard) -> PruneResult:
        view.prune_started(before, dry_run, request.force, db.where)
        guard()
        return prune_months(db.transactions, before, dry_run=dry_run, force=request.force, stop=stop,
                            on_month=lambda month: view.month_done(month, dry_run))

    return run_job(spec, settings, view, prune)
