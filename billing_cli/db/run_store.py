"""The run history (`job_runs`) and the advisory locks that keep runs of the same work apart.

Every function runs on the caller's connection; the caller decides when to commit.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from .. import __version__
from ..summary import RunSummary


def lock_key(scope: str) -> int:
    """A stable signed 64-bit advisory lock key for a scope such as `invoice:2024-01:1/4`."""
    return int.from_bytes(hashlib.sha256(f"billing:{scope}".encode()).digest()[:8], "big", signed=True)


def try_lock(conn: Connection, scope: str) -> bool:
    """Take the session-level lock of `scope` if nobody holds it (never waits)."""
    return bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key(scope)}).scalar_one())


def holds_lock(conn: Connection, scope: str) -> bool:
    """Whether this session still holds the lock of `scope` (pg_locks splits the 64-bit key)."""
    key = lock_key(scope) & 0xFFFF_FFFF_FFFF_FFFF
    return bool(conn.execute(text("""
        SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                       AND classid = CAST(:high AS oid) AND objid = CAST(:low AS oid) AND objsubid = 1)
    """), {"high": key >> 32, "low": key & 0xFFFF_FFFF}).scalar_one())


def try_lock_organization(conn: Connection, organization_id: str) -> bool:
    """The session lock one process holds while it issues, voids or delivers the organization's
    invoices (whatever its run, month or shard)."""
    return try_lock(conn, f"organization:{organization_id}")


def unlock_organization(conn: Connection, organization_id: str) -> None:
    unlock(conn, f"organization:{organization_id}")


def lock_and_unlock_organizations(conn: Connection, calls: Sequence[tuple[bool, str]]) -> list[bool | None]:
    """try_lock_organization and unlock_organization for several organizations in one statement,
    in the order given: (True, organization) takes its lock (answer: whether it was free), (False,
    organization) releases it (answer: None). Each lock is still its own."""
    held = conn.execute(text(
        "SELECT CASE WHEN t.take THEN pg_try_advisory_lock(t.k) ELSE pg_advisory_unlock(t.k) END "
        "FROM unnest(CAST(:keys AS bigint[]), CAST(:takes AS boolean[])) WITH ORDINALITY AS t(k, take, n) ORDER BY n"),
        {"keys": [lock_key(f"organization:{org}") for _, org in calls],
         "takes": [take for take, _ in calls]}).scalars().all()
    return [bool(answer) if take else None for (take, _), answer in zip(calls, held, strict=True)]


def unlock(conn: Connection, scope: str) -> None:
    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(scope)})


def start_run(conn: Connection, *, job: str, period: str, shard: str | None, dry_run: bool,
              parameters: dict[str, Any], targeted: bool = False) -> int:
    """Record a run as running; returns its id. `targeted`: limited to some organizations. `conn`
    is the session the run holds until it ends: recorded, it tells when the run is gone (_GONE)."""
    return conn.execute(text("""
        INSERT INTO job_runs (job, period, shard, dry_run, targeted, parameters, host, version, session_pid,
                              session_started_at)
        VALUES (:job, :period, :shard, :dry, :targeted, CAST(:params AS jsonb), :host, :version, pg_backend_pid(),
                (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())) RETURNING id
    """), {"job": job, "period": period, "shard": shard, "dry": dry_run, "targeted": targeted,
           "params": json.dumps(parameters, default=str), "host": socket.gethostname(),
           "version": __version__}).scalar_one()


def finish_run(conn: Connection, run_id: int, *, status: str, seconds: float, message: str | None,
               summary: RunSummary | None) -> None:
    conn.execute(text("""
        UPDATE job_runs SET status = :status, finished_at = now(), duration_seconds = :seconds,
            counts = CAST(:counts AS jsonb), errors = CAST(:errors AS jsonb),
            revenue = CAST(:revenue AS jsonb), failed = CAST(:failed AS jsonb), message = :message
        WHERE id = :id
    """), {"id": run_id, "status": status, "seconds": round(seconds, 3),
           "counts": json.dumps(summary.counts if summary else {}),
           "errors": json.dumps(summary.errors if summary else {}),
           "revenue": json.dumps(summary.revenue if summary else {}),
           "failed": json.dumps(summary.failed[:1000] if summary else []), "message": message})


_RUN_COLUMNS = ("id, job, period, shard, dry_run, targeted, status, started_at, finished_at, duration_seconds, counts, "
                "errors, revenue, failed, message, host, version")


def recent_runs(conn: Connection, *, job: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    where = "WHERE job = :job" if job else ""
    rows = conn.execute(text(f"SELECT {_RUN_COLUMNS} FROM job_runs {where} "
                             "ORDER BY started_at DESC, id DESC LIMIT :limit"),
                        {"job": job, "limit": limit}).mappings().all()
    return [dict(r) for r in rows]


def last_run(conn: Connection, job: str) -> dict[str, Any] | None:
    """The job's latest real (not dry, not limited to some organizations) run: what its health is
    judged from."""
    row = conn.execute(text(f"SELECT {_RUN_COLUMNS} FROM job_runs WHERE job = :job AND NOT dry_run AND NOT targeted "
                            "ORDER BY started_at DESC, id DESC LIMIT 1"), {"job": job}).mappings().first()
    return dict(row) if row else None


def last_run_of_each_period(conn: Connection, job: str) -> list[dict[str, Any]]:
    """The job's latest real run (as `last_run`) of each period it ran for, oldest period first: a
    check of one month says nothing about another's (billing reconcile)."""
    return [dict(row) for row in conn.execute(text(
        f"SELECT DISTINCT ON (period) {_RUN_COLUMNS} FROM job_runs WHERE job = :job AND NOT dry_run AND NOT targeted "
        "ORDER BY period, started_at DESC, id DESC"), {"job": job}).mappings()]


def last_success(conn: Connection, job: str) -> dict[str, Any] | None:
    row = conn.execute(text(f"SELECT {_RUN_COLUMNS} FROM job_runs WHERE job = :job AND NOT dry_run "
                            "AND NOT targeted AND status = 'succeeded' ORDER BY finished_at DESC LIMIT 1"),
                       {"job": job}).mappings().first()
    return dict(row) if row else None


# A run `r` marked running whose process is provably gone (SIGKILL, the OOM killer, a lost node):
# the session it held from its start to its end is no longer there. A pid the server reuses has
# another start time; a session whose start time we may not read counts as there. A standby
# (pg_is_in_recovery) does not see the primary's sessions: nothing is gone as far as it knows. A
# row recorded before sessions were (0017) is gone once a later real run of the same job, period
# and shard has ended: that run held the same lock, so the older one had let it go.
_GONE = """(r.status = 'running' AND CASE
    WHEN r.session_pid IS NOT NULL THEN NOT pg_is_in_recovery() AND NOT EXISTS (
        SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.session_pid
          AND (a.backend_start IS NULL OR r.session_started_at IS NULL OR a.backend_start = r.session_started_at))
    ELSE NOT r.dry_run AND EXISTS (
        SELECT 1 FROM job_runs l WHERE l.job = r.job AND l.period = r.period AND l.shard IS NOT DISTINCT FROM r.shard
          AND NOT l.dry_run AND l.started_at > r.started_at AND l.status <> 'running')
    END)"""

ABANDONED = "abandoned"  # job_runs.status of a run found gone without having recorded its end


def running_since(conn: Connection, job: str, before: datetime) -> datetime | None:
    """When the oldest run of the job still running started, if it started before `before` (a run
    marked running whose process is gone is not running)."""
    return conn.execute(text(f"SELECT min(started_at) FROM job_runs r WHERE job = :job AND status = 'running' "
                             f"AND started_at < :before AND NOT {_GONE}"), {"job": job, "before": before}).scalar_one()


def is_gone(conn: Connection, run_id: int) -> bool:
    """Whether the run is marked running but its process is gone (it never recorded its end)."""
    return bool(conn.execute(text(f"SELECT {_GONE} FROM job_runs r WHERE id = :id"), {"id": run_id}).scalar())


def abandon_gone_runs(conn: Connection, job: str) -> list[int]:
    """Mark `abandoned` the runs of `job` marked running whose process is gone; returns their ids."""
    return list(conn.execute(text(f"""
        UPDATE job_runs r SET status = '{ABANDONED}',
            message = 'its process ended without recording how the run ended (killed: SIGKILL, the OOM killer, '
                      || 'a lost node); what it recorded stands, and the next run of the job completes the rest'
        WHERE job = :job AND {_GONE} RETURNING id
    """), {"job": job}).scalars())


def succeeded_shards_since(conn: Connection, jobs: list[str], periods: list[str], since: datetime,
                           ) -> dict[str, list[str | None]]:
    """Per period label: the shard of every successful real run over all organizations that
    started at or after `since` (None: a whole run)."""
    found: dict[str, list[str | None]] = {period: [] for period in periods}
    for period, shard in conn.execute(text("""
        SELECT period, shard FROM job_runs WHERE job = ANY(:jobs) AND period = ANY(:periods) AND NOT dry_run
          AND NOT targeted AND status = 'succeeded' AND started_at >= :since
    """), {"jobs": jobs, "periods": periods, "since": since}):
        found[period].append(shard)
    return found
