"""`billing status` and `billing runs`: the run history, and the health check built on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from ..periods import Month

JOBS = ("aggregate-hourly", "invoice-monthly", "legacy-run")
MONTHLY = ("invoice-monthly", "legacy-run")  # either one bills the month


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


def recent_runs(conn: Connection, *, job: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    where = "WHERE job = :job" if job else ""
    rows = conn.execute(text(f"""
        SELECT id, job, period, shard, dry_run, status, started_at, finished_at, duration_seconds, counts,
               errors, revenue, failed, message, host, version
        FROM job_runs {where} ORDER BY started_at DESC, id DESC LIMIT :limit
    """), {"job": job, "limit": limit}).mappings().all()
    return [dict(r) for r in rows]


def job_statuses(conn: Connection, now: datetime, thresholds: Thresholds = Thresholds()) -> list[JobStatus]:
    statuses = []
    for job in JOBS:
        status = JobStatus(job)
        last = conn.execute(text("SELECT * FROM job_runs WHERE job = :job AND NOT dry_run "
                                 "ORDER BY started_at DESC, id DESC LIMIT 1"), {"job": job}).mappings().first()
        success = conn.execute(text("SELECT * FROM job_runs WHERE job = :job AND NOT dry_run AND "
                                    "status = 'succeeded' ORDER BY finished_at DESC LIMIT 1"),
                               {"job": job}).mappings().first()
        status.last_run = dict(last) if last else None
        status.last_success = dict(success) if success else None
        if last is not None:
            if last["status"] in ("failed", "partial", "interrupted"):
                status.problems.append(f"last run ({last['period']}) {last['status']}"
                                       + (f": {last['message']}" if last["message"] else ""))
        stuck = conn.execute(text("SELECT min(started_at) FROM job_runs WHERE job = :job AND status = 'running' "
                                  "AND started_at < :limit"),
                             {"job": job, "limit": now - thresholds.stuck_after}).scalar_one()
        if stuck is not None:
            status.problems.append(f"a run is running since {stuck:%Y-%m-%d %H:%M}Z, longer than "
                                   f"{_hours(thresholds.stuck_after)}: stuck, or the process died")
        if job == "aggregate-hourly":
            if success is None:
                status.problems.append("never succeeded")
            elif now - success["finished_at"] > thresholds.aggregate_max_age:
                status.problems.append(f"last success {_ago(now, success['finished_at'])} ago, more than "
                                       f"{_hours(thresholds.aggregate_max_age)}")
        statuses.append(status)
    problem = _monthly_problem(conn, now, thresholds)
    if problem:
        next(s for s in statuses if s.job == "invoice-monthly").problems.append(problem)
    return statuses


def _monthly_problem(conn: Connection, now: datetime, thresholds: Thresholds) -> str | None:
    """The previous month must be invoiced (by invoice-monthly or legacy-run, every shard) by the
    deadline day."""
    if now.day < thresholds.invoice_deadline_day:
        return None
    month = str(Month.previous(now))
    runs = conn.execute(text("""
        SELECT shard FROM job_runs WHERE job = ANY(:jobs) AND period = :month AND NOT dry_run
          AND status = 'succeeded'
    """), {"jobs": list(MONTHLY), "month": month}).scalars().all()
    if any(shard is None for shard in runs):
        return None
    by_count: dict[int, set[int]] = {}
    for shard in runs:
        index, _, count = shard.partition("/")
        by_count.setdefault(int(count), set()).add(int(index))
    if any(len(indexes) == count for count, indexes in by_count.items()):
        return None
    return f"{month} is not invoiced successfully yet (deadline: day {thresholds.invoice_deadline_day} of {now:%Y-%m})"


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:g} h"


def _ago(now: datetime, then: datetime) -> str:
    minutes = int((now - then).total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
