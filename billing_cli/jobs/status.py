"""`billing status`: each job's health, judged from the run history."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from ..db import run_store
from ..outcomes import MONTHLY_JOBS, SCHEDULED_JOBS, Job, RunOutcome
from ..periods import Month

@dataclass(frozen=True)
class Thresholds:
    aggregate_max_age: timedelta = timedelta(hours=2)
    invoice_deadline_day: int = 2  # the previous month must be invoiced by this day of the month
    stuck_after: timedelta = timedelta(hours=6)


@dataclass
class JobStatus:
    job: str
    last_run: dict[str, Any] | None = None
    last_success: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self, now: datetime) -> dict[str, Any]:
        age = (now - self.last_success["finished_at"]).total_seconds() if self.last_success else None
        return {"job": self.job, "healthy": not self.problems, "problems": self.problems,
                "last_run": self.last_run, "last_success": self.last_success,
                "last_success_age_seconds": round(age) if age is not None else None}


_UNHEALTHY_ENDINGS = (RunOutcome.FAILED, RunOutcome.PARTIAL, RunOutcome.INTERRUPTED, RunOutcome.MISMATCH)


def job_statuses(conn: Connection, now: datetime, thresholds: Thresholds = Thresholds()) -> list[JobStatus]:
    statuses = []
    for job in SCHEDULED_JOBS:
        last, success = run_store.last_run(conn, job), run_store.last_success(conn, job)
        status = JobStatus(job.value, last, success)
        if last is not None and last["status"] in _UNHEALTHY_ENDINGS:
            status.problems.append(f"last run ({last['period']}) {last['status']}"
                                   + (f": {last['message']}" if last["message"] else ""))
        stuck = run_store.running_since(conn, job, now - thresholds.stuck_after)
        if stuck is not None:
            status.problems.append(f"a run is running since {stuck:%Y-%m-%d %H:%M}Z, longer than "
                                   f"{_hours(thresholds.stuck_after)}: stuck, or the process died")
        if job == Job.AGGREGATE_HOURLY:
            if success is None:
                status.problems.append("never succeeded")
            elif now - success["finished_at"] > thresholds.aggregate_max_age:
                status.problems.append(f"last success {_ago(now, success['finished_at'])} ago, more than "
                                       f"{_hours(thresholds.aggregate_max_age)}")
        if job == Job.INVOICE_MONTHLY:
            problem = _monthly_problem(conn, now, thresholds)
            if problem:
                status.problems.append(problem)
        statuses.append(status)
    return statuses


def month_is_invoiced(shards: list[str | None]) -> bool:
    """Whether successful runs cover the month: a whole run, or every shard of one split."""
    if any(shard is None for shard in shards):
        return True
    by_count: dict[int, set[int]] = {}
    for shard in shards:
        assert shard is not None
        index, _, count = shard.partition("/")
        by_count.setdefault(int(count), set()).add(int(index))
    return any(len(indexes) == count for count, indexes in by_count.items())


def _monthly_problem(conn: Connection, now: datetime, thresholds: Thresholds) -> str | None:
    """The previous month must be invoiced (by invoice-monthly or legacy-run, every shard) by the
    deadline day."""
    if now.day < thresholds.invoice_deadline_day:
        return None
    month = str(Month.previous(now))
    if month_is_invoiced(run_store.succeeded_shards(conn, list(MONTHLY_JOBS), month)):
        return None
    return f"{month} is not invoiced successfully yet (deadline: day {thresholds.invoice_deadline_day} of {now:%Y-%m})"


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:g} h"


def _ago(now: datetime, then: datetime) -> str:
    minutes = int((now - then).total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
