"""The lifecycle every scheduled job shares, written once:
settings -> database -> signals -> lock -> job_runs record -> job -> metrics -> notifications -> result.

A run that fails goes through the same path as one that succeeds: its summary (outcome
`failed` or `interrupted`, and why) is recorded, pushed and notified, then returned with the
error (or, for a bug or a second Ctrl-C, raised).
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
from ..errors import AlreadyRunning, BillingError, ExitCode, LockLost
from ..db.grouped import GroupedWrites
from ..outcomes import RunOutcome
from ..periods import Period
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


class NotifyWhen(Enum):
    """When a run sends its completion notifications (e-mail, webhook)."""

    ALWAYS = "always"
    ON_PROBLEMS = "on problems"  # only when it failed or some of its work failed
    NEVER = "never"


@dataclass(frozen=True)
class RunSpec:
    job: str
    period: Period  # job_runs.period holds its text
    lock_scope: str | None  # runs with the same scope never overlap; None: a read-only job, no lock
    dry_run: bool
    parameters: dict[str, Any] = field(default_factory=dict)
    shard: str | None = None  # "2/4"; None for a run over every organization
    targeted: bool = False  # limited to some organizations (--org): says nothing about the month
    pool_size: int = 5  # database connections
    notify: NotifyWhen = NotifyWhen.ALWAYS


@dataclass
class Finished(Generic[R]):
    """How a run ended: its summary always; the job's result unless an error stopped it."""

    summary: RunSummary
    result: R | None = None
    error: BillingError | KeyboardInterrupt | None = None  # a second Ctrl-C: raised after the summary

    @property
    def exit_code(self) -> ExitCode:
        if isinstance(self.error, BillingError):
            return self.error.exit_code
        return self.summary.outcome.exit_code


class LockGuard:
    """The run's locks, all held by its lock session. `check()` (or calling it): the run still holds
    its own lock before it takes more work: a killed database session (a failover, an
    administrator, a proxy) silently releases it, and a second run could then start beside this
    one; checked at most once a second, so it is cheap before every organization or hour.
    `hold(org)`: the lock on one organization, so that two processes (a whole run and a shard, an
    --org fix) never handle the same organization at once. The worker threads share the one
    session, taking turns for the short lock calls, which those waiting for a turn make together."""

    INTERVAL = 1.0

    def __init__(self, conn=None, scope: str | None = None) -> None:
        self._conn, self._scope = conn, scope
        self._mutex = threading.Lock()
        self._checked = float("-inf")
        # The workers that lock or unlock while another thread is at it queue up; the next one
        # sends all their calls, locks and unlocks alike, in one statement (the locks are still each
        # one's own).
        self._calls: GroupedWrites[tuple[bool, str], bool | None] = GroupedWrites(
            self._session, run_store.lock_and_unlock_organizations)

    def __call__(self) -> None:
        self.check()

    @contextmanager
    def hold(self, organization_id: str) -> Iterator[bool]:
        if self._conn is None:
            yield True
            return
        try:
            alone = bool(self._calls.submit((True, organization_id)))
        except SQLAlchemyError:
            raise self._lost() from None
        try:
            yield alone
        finally:
            if alone:
                try:
                    self._calls.submit((False, organization_id))
                except SQLAlchemyError:
                    pass  # the session is gone, and its locks with it; check() says so next

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """The lock session, to one thread at a time (it is not a transaction: autocommit)."""
        with self._mutex:
            yield self._conn

    def check(self) -> None:
        if self._conn is None or time.monotonic() - self._checked < self.INTERVAL:
            return
        with self._mutex:
            try:
                held = run_store.holds_lock(self._conn, self._scope)  # type: ignore[arg-type]
            except SQLAlchemyError:
                held = False
            if not held:
                raise self._lost()
            self._checked = time.monotonic()

    def _lost(self) -> LockLost:
        return LockLost(f"this run lost its lock ({self._scope}): its database session ended, so another run "
                        "could start beside it; it stopped before taking more work",
                        hint="Rerun to finish: what was done is recorded, and nothing is done twice.")


def run_job(spec: RunSpec, settings: Settings, view: RunView,
            job: Callable[[Database, threading.Event, LockGuard], R]) -> Finished[R]:
    """Run `job` inside the lifecycle. Whatever ends the run (success, a BillingError, a bug, a
    second Ctrl-C), its summary is recorded in job_runs, pushed and notified the same way; an
    expected error, or a second Ctrl-C, is returned with the summary, anything else is raised after that. An
    overlapping run (AlreadyRunning) did nothing: it records, pushes and notifies nothing."""
    record = _Record(spec)
    try:
        with open_database(settings, notice=view.notice, pool_size=spec.pool_size) as db, \
                stop_on_signals(view.warning) as stop, _recorded(db.engine, record) as record:
            view.set_context(job=spec.job, run_id=record.run_id)
            result = job(db, stop, record.guard)
            record.summary = result.summary()
    except AlreadyRunning:
        raise
    except BillingError as exc:
        _complete(settings, view, spec, record.ended(str(exc)))
        return Finished(record.summary, error=exc)  # type: ignore[arg-type]
    except BaseException as exc:
        reason = "interrupted by a signal" if isinstance(exc, KeyboardInterrupt) else \
            f"unexpected error: {type(exc).__name__}"
        _complete(settings, view, spec, record.ended(reason, interrupted=isinstance(exc, KeyboardInterrupt)))
        if isinstance(exc, KeyboardInterrupt):  # stopped at once: its summary is still the run's (--json)
            return Finished(record.summary, error=exc)  # type: ignore[arg-type]
        raise
    _complete(settings, view, spec, record.ended())
    return Finished(record.summary, result)


def _complete(settings: Settings, view: RunView, spec: RunSpec, summary: RunSummary) -> None:
    # A run limited by --org is pushed under its own group: it must not stand in for the month.
    push_metrics(settings, view.warning, summary, "targeted" if spec.targeted else spec.shard)
    problems = summary.outcome in (RunOutcome.FAILED, RunOutcome.PARTIAL)
    if spec.notify == NotifyWhen.ALWAYS or (spec.notify == NotifyWhen.ON_PROBLEMS and problems):
        notify(settings, view.warning, view.notice, summary)


@dataclass
class _Record:
    """One run as the lifecycle sees it: its job_runs id, its one clock, and how it ended."""

    spec: RunSpec
    run_id: int | None = None
    guard: LockGuard = field(default_factory=LockGuard)  # no lock (a dry run) checks nothing
    summary: RunSummary | None = None  # the job's summary when it returns; a failed one otherwise
    started: float = field(default_factory=time.perf_counter)
    closed: bool = False

    def ended(self, failure: str | None = None, *, interrupted: bool = False) -> RunSummary:
        """The run's summary, timed by the lifecycle's clock once: job_runs, the metrics, the
        notifications and --json all show the same figure."""
        if self.closed and self.summary is not None:
            return self.summary
        self.closed = True
        if failure is not None and (self.summary is None or self.summary.outcome == RunOutcome.SUCCEEDED):
            spec = self.spec
            self.summary = RunSummary.failed_run(spec.job, spec.period, failure, spec.dry_run, 0.0)
            if interrupted:
                self.summary.outcome = RunOutcome.INTERRUPTED
        assert self.summary is not None
        self.summary.seconds = time.perf_counter() - self.started
        return self.summary


@contextmanager
def _recorded(engine: Engine, record: _Record) -> Iterator[_Record]:
    """Take the run's lock (or raise AlreadyRunning, touching nothing), record the run as running,
    and record how it ended. The lock is a session lock on a connection held for the whole run:
    if the process dies, the database drops the connection and the lock with it, so a killed run
    never leaves a stale lock, and its row (still `running`) is marked `abandoned` by the job's
    next run (run_store._GONE tells). A dry run changes no billing data, so it takes no lock: an
    operator's preview must never block the scheduled run (it is recorded in job_runs, marked)."""
    spec = record.spec
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        locking = not spec.dry_run and spec.lock_scope is not None
        if locking and not run_store.try_lock(conn, spec.lock_scope):  # type: ignore[arg-type]
            raise AlreadyRunning(f"another {spec.job} run for {spec.period}"
                                 f"{f' (shard {spec.shard})' if spec.shard else ''} is in progress: it holds the "
                                 "lock, so this run did nothing",
                                 hint="Wait for it to finish; `billing status` shows it.")
        if locking:
            record.guard = LockGuard(conn, spec.lock_scope)
        if not spec.dry_run:
            # Earlier runs of the job killed before they could record their end (SIGKILL): their
            # sessions are gone, so they are too. Marked, they no longer look like runs in progress.
            run_store.abandon_gone_runs(conn, spec.job)
        try:
            record.run_id = run_store.start_run(conn, job=spec.job, period=str(spec.period), shard=spec.shard,
                                                dry_run=spec.dry_run, parameters=spec.parameters,
                                                targeted=spec.targeted)
            try:
                yield record
            except KeyboardInterrupt:
                _finish(engine, conn, record.run_id, record.ended("interrupted by a signal", interrupted=True))
                raise
            except BillingError as exc:
                _finish(engine, conn, record.run_id, record.ended(str(exc)))
                raise
            except Exception as exc:
                _finish(engine, conn, record.run_id, record.ended(f"unexpected error: {type(exc).__name__}"))
                raise
            else:
                _finish(engine, conn, record.run_id, record.ended())
        finally:
            if locking:
                try:
                    run_store.unlock(conn, spec.lock_scope)  # type: ignore[arg-type]
                except SQLAlchemyError:
                    pass  # the connection is gone, and the lock went with it


def _finish(engine: Engine, conn, run_id: int, summary: RunSummary) -> None:
    """Record how the run ended: on the lock's session, or, if that session is gone (how a lost
    lock shows), on a new one; only if the database itself is gone does the row stay "running"."""
    for attempt in (conn, None):
        try:
            if attempt is None:
                with engine.begin() as fresh:
                    run_store.finish_run(fresh, run_id, status=summary.outcome, seconds=summary.seconds,
                                         message=summary.message, summary=summary)
            else:
                run_store.finish_run(attempt, run_id, status=summary.outcome, seconds=summary.seconds,
                                     message=summary.message, summary=summary)
            return
        except SQLAlchemyError:
            continue
