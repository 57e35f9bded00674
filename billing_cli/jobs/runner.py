"""Around every job run: a PostgreSQL advisory lock (no overlapping runs) and the run history.

The lock is a session lock on a connection held for the whole run: if the process dies, the
database drops the connection and the lock with it, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from .. import __version__
from ..errors import AlreadyRunning, BillingError
from ..summary import RunSummary


def lock_key(scope: str) -> int:
    """A stable signed 64-bit advisory lock key for a scope such as `invoice:2024-01:shard 1/4`."""
    return int.from_bytes(hashlib.sha256(f"billing:{scope}".encode()).digest()[:8], "big", signed=True)


@dataclass
class RunRecord:
    id: int
    job: str
    started: float = field(default_factory=time.perf_counter)
    summary: RunSummary | None = None  # set by the command when the job returns

    def finish(self, summary: RunSummary) -> None:
        self.summary = summary


@contextmanager
def job_run(engine: Engine, *, job: str, scope: str, period: str, dry_run: bool,
            parameters: dict[str, Any], shard: str | None = None) -> Iterator[RunRecord]:
    """Take the job's lock (or raise AlreadyRunning, touching nothing), record the run as running,
    and record how it ended: succeeded / partial from its summary, failed on an error, interrupted
    on SIGTERM/SIGINT. A dry run writes nothing, so it takes no lock: an operator's preview must
    never block the scheduled run."""
    with engine.connect() as lock_conn:
        lock_conn = lock_conn.execution_options(isolation_level="AUTOCOMMIT")
        key = lock_key(scope)
        if not dry_run and not lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one():
            raise AlreadyRunning(f"another {job} run for {period}{f' (shard {shard})' if shard else ''} is in "
                                 "progress: it holds the lock, so this run did nothing",
                                 hint="Wait for it to finish; `billing status` shows it.")
        try:
            run_id = lock_conn.execute(text("""
                INSERT INTO job_runs (job, period, shard, dry_run, parameters, host, version)
                VALUES (:job, :period, :shard, :dry, CAST(:params AS jsonb), :host, :version) RETURNING id
            """), {"job": job, "period": period, "shard": shard, "dry": dry_run,
                   "params": json.dumps(parameters, default=str), "host": socket.gethostname(),
                   "version": __version__}).scalar_one()
            record = RunRecord(run_id, job)
            try:
                yield record
            except KeyboardInterrupt:
                _finish(lock_conn, record, "interrupted", "interrupted by a signal")
                raise
            except BillingError as exc:
                _finish(lock_conn, record, "failed", str(exc))
                raise
            except Exception as exc:
                _finish(lock_conn, record, "failed", f"unexpected error: {type(exc).__name__}")
                raise
            else:
                summary = record.summary
                status = "succeeded" if summary is None else summary.outcome
                _finish(lock_conn, record, status, summary.message if summary else None)
        finally:
            if not dry_run:
                try:
                    lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                except SQLAlchemyError:
                    pass  # the connection is gone, and the lock went with it


def _finish(conn, record: RunRecord, status: str, message: str | None) -> None:
    summary = record.summary
    try:
        conn.execute(text("""
            UPDATE job_runs SET status = :status, finished_at = now(), duration_seconds = :seconds,
                counts = CAST(:counts AS jsonb), errors = CAST(:errors AS jsonb),
                revenue = CAST(:revenue AS jsonb), failed = CAST(:failed AS jsonb), message = :message
            WHERE id = :id
        """), {"id": record.id, "status": status, "seconds": round(time.perf_counter() - record.started, 3),
               "counts": json.dumps(summary.counts if summary else {}),
               "errors": json.dumps(summary.errors if summary else {}),
               "revenue": json.dumps(summary.revenue if summary else {}),
               "failed": json.dumps(summary.failed[:1000] if summary else []), "message": message})
    except SQLAlchemyError:  # the database itself may be what failed: the row then stays "running"
        pass
