"""`billing status`: each job's health, judged from the run history."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from ..db import period_store, run_store
from ..outcomes import MONTHLY_JOBS, SCHEDULED_JOBS, Job, RunOutcome, month_is_invoiced
from ..periods import Month


@dataclass(frozen=True)
class Thresholds:
    aggregate_max_age: timedelta = timedelta(hours=2)
    invoice_grace: timedelta = timedelta(hours=24)  # every period that ended longer ago is invoiced
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
        # A reconcile proves one month: the latest of each month's counts, so that checking another
        # month (the daily run moving on to the next, or an operator's --month) never hides one
        # whose check found a difference. It stays a problem until that month is checked clean.
        judged = run_store.last_run_of_each_period(conn, job) if job == Job.RECONCILE else [last] if last else []
        for run in judged:
            if run["status"] in _UNHEALTHY_ENDINGS:
                status.problems.append(f"last run ({run['period']}) {run['status']}"
                                       + (f": {run['message']}" if run["message"] else ""))
        if last is not None and last["status"] not in _UNHEALTHY_ENDINGS and (
                last["status"] == run_store.ABANDONED or run_store.is_gone(conn, last["id"])):
            status.problems.append(f"last run ({last['period']}) died without recording how it ended (killed: "
                                   "SIGKILL, the OOM killer, a lost node); the next run completes its work")
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
            problem = _periods_problem(conn, now, thresholds)
            if problem:
                status.problems.append(problem)
        statuses.append(status)
    return statuses


def _periods_problem(conn: Connection, now: datetime, thresholds: Thresholds) -> str | None:
    """Every billing period that ended more than the grace before now must be invoiced: a
    successful run (invoice-monthly or legacy-run, whole or every shard of one split, not limited
    with --org) started after the latest such period ended, for the month that period starts in
    (a daily run of the month after catches it up too)."""
    cutoff = now - thresholds.invoice_grace
    ended = period_store.latest_period_end(conn, cutoff)
    key = Month.containing(ended).prev()  # a period ending in month M starts in M - 1
    labels = [str(key), str(key.next())]
    runs = run_store.succeeded_shards_since(conn, list(MONTHLY_JOBS), labels, ended)
    if any(month_is_invoiced(shards) for shards in runs.values() if shards):
        return None
    return (f"the billing periods that ended at {ended:%Y-%m-%d %H:%M}Z (starting in {key}) are not invoiced "
            f"successfully yet, {_ago(now, ended)} later (grace: {_hours(thresholds.invoice_grace)})")


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:g} h"


def _ago(now: datetime, then: datetime) -> str:
    minutes = int((now - then).total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
