"""The lifecycle every scheduled job shares, written once:
settings -> database -> signals -> lock -> job_runs record -> job -> metrics -> notifications -> result.

A run that fails goes through the same path as one that succeeds: its summary (outcome
`failed`, and why) is recorded, pushed and notified, and returned with the error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..config import Settings
from ..db import run_store
from ..db.connect import open_database
from ..db.engine import Database
from ..errors import AlreadyRunning, BillingError, ExitCode
from ..outcomes import RunOutcome
from ..summary import RunSummary
from .completion import notify, push_metrics
from .signals import stop_on_signals


class RunView(Protocol):
    """What a run tells whoever watches it (the terminal, the logs)."""

    def notice(self, text: str) -> None: ...
    def warning(self, text: str) -> None: ...
    def set_context(self, **fields: object) -> None: ...  # added to every log line from now on


class JobResult(Protocol):
    def summary(self) -> RunSummary: ...


R = TypeVar("R", bound=JobResult)


class Notify(Enum):
    """When a run sends its completion notifications (e-mail, webhook)."""

    ALWAYS = "always"
    ON_PROBLEMS = "on problems"  # only when it failed or some of its work failed
    NEVER = "never"


@dataclass(frozen=True)
class RunSpec:
    job: str
    period: str
    lock_scope: str  # runs with the same scope never overlap
    dry_run: bool
    parameters: dict[str, Any] = field(default_factory=dict)
    shard: str | None = None  # "2/4"; None for a run over every organization
    pool_size: int = 5  # database connections
    notify: Notify = Notify.ALWAYS


@dataclass
class Finished(Generic[R]):
    """How a run ended: its summary always; the job's result unless an error stopped it."""

    summary: RunSummary
    result: R | None = None
    error: BillingError | None = None

    @property
    def exit_code(self) -> ExitCode:
        return self.error.exit_code if self.error is not None else self.summary.outcome.exit_code


def run_job(spec: RunSpec, settings: Settings, view: RunView,
            job: Callable[[Database, threading.Event], R]) -> Finished[R]:
    """Run `job` inside the lifecycle. An overlapping run (AlreadyRunning) is raised untouched: it
    did nothing, so it records, pushes and notifies nothing."""
    started = time.perf_counter()
    finished: Finished[R]
    try:
        with open_database(settings, notice=view.notice, pool_size=spec.pool_size) as db, \
                stop_on_signals(view.warning) as stop, _recorded(db.engine, spec) as record:
            view.set_context(job=spec.job, run_id=record.run_id)
            result = job(db, stop)
            record.summary = result.summary()
            finished = Finished(record.summary, result)
    except AlreadyRunning:
        raise
    except BillingError as exc:
        finished = Finished(RunSummary.failed_run(spec.job, spec.period, str(exc), spec.dry_run,
                                                  time.perf_counter() - started), error=exc)
    push_metrics(settings, view.warning, finished.summary, spec.shard)
    problems = finished.summary.outcome in (RunOutcome.FAILED, RunOutcome.PARTIAL)
    if spec.notify == Notify.ALWAYS or (spec.notify == Notify.ON_PROBLEMS and problems):
        notify(settings, view.warning, view.notice, finished.summary)
    return finished


@dataclass
class _Record:
    run_id: int
    summary: RunSummary | None = None  # set when the job returns
    started: float = field(default_factory=time.perf_counter)


@contextmanager
def _recorded(engine: Engine, spec: RunSpec) -> Iterator[_Record]:
    """Take the run's lock (or raise AlreadyRunning, touching nothing), record the run as running,
    and record how it ended. The lock is a session lock on a connection held for the whole run:
    if the process dies, the database drops the connection and the lock with it, so a killed run
    never leaves a stale lock. A dry run writes nothing, so it takes no lock: an operator's
    preview must never block the scheduled run."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        if not spec.dry_run and not run_store.try_lock(conn, spec.lock_scope):
            raise AlreadyRunning(f"another {spec.job} run for {spec.period}"
                                 f"{f' (shard {spec.shard})' if spec.shard else ''} is in progress: it holds the "
                                 "lock, so this run did nothing",
                                 hint="Wait for it to finish; `billing status` shows it.")
        try:
            record = _Record(run_store.start_run(conn, job=spec.job, period=spec.period, shard=spec.shard,
                                                 dry_run=spec.dry_run, parameters=spec.parameters))
            try:
                yield record
            except KeyboardInterrupt:
                _finish(conn, record, RunOutcome.INTERRUPTED, "interrupted by a signal")
                raise
            except BillingError as exc:
                _finish(conn, record, RunOutcome.FAILED, str(exc))
                raise
            except Exception as exc:
                _finish(conn, record, RunOutcome.FAILED, f"unexpected error: {type(exc).__name__}")
                raise
            else:
                summary = record.summary
                _finish(conn, record, summary.outcome if summary else RunOutcome.SUCCEEDED,
                        summary.message if summary else None)
        finally:
            if not spec.dry_run:
                try:
                    run_store.unlock(conn, spec.lock_scope)
                except SQLAlchemyError:
                    pass  # the connection is gone, and the lock went with it


def _finish(conn, record: _Record, status: RunOutcome, message: str | None) -> None:
    try:
        run_store.finish_run(conn, record.run_id, status=status, seconds=time.perf_counter() - record.started,
                             message=message, summary=record.summary)
    except SQLAlchemyError:  # the database itself may be what failed: the row then stays "running"
        pass
