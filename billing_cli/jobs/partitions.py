"""usage_events' partitions as jobs see them: made ahead for the current and the next month (with
the DEFAULT partition's stray events counted), and `billing usage prune` (plan, then act)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlalchemy.exc import DBAPIError, OperationalError

from ..db import partitions as store
from ..db.engine import Transactions
from ..errors import Refused
from ..outcomes import MONTHLY_JOBS, Job, month_is_invoiced, run_outcome
from ..periods import Month
from ..summary import RunSummary


@dataclass
class PartitionUpkeep:
    """What making the partitions ahead did (or, in a dry run, would do), and the stray events."""

    created: list[store.CreatedPartition] = field(default_factory=list)
    failed: list[tuple[Month, str]] = field(default_factory=list)  # not created this time: the next run retries
    stray: store.StrayEvents = field(default_factory=store.StrayEvents)
    dry_run: bool = False


def months_ahead(now: datetime) -> list[Month]:
    """The months whose partitions must exist: the current one and the next."""
    current = Month.containing(now)
    return [current, current.next()]


def keep_partitions_ahead(transactions: Transactions, now: datetime, *, dry_run: bool = False,
                          lock_timeout_seconds: int = 10) -> PartitionUpkeep:
    """Create the current and next month's partitions if missing (each in its own transaction, with
    its rows moved out of the default partition), then count the default partition's events. A dry
    run creates nothing and reports what it would create. A partition that cannot be made now (its
    lock not granted in time) is reported and left to the next run: its events go to the default
    partition meanwhile, billed all the same."""
    upkeep = PartitionUpkeep(dry_run=dry_run)
    for month in months_ahead(now):
        try:
            with transactions() as conn:
                if dry_run:
                    upkeep.created += [store.CreatedPartition(m, 0) for m in store.missing_partitions(conn, [month])]
                elif (created := store.create_month_partition(conn, month,
                                                              lock_timeout_seconds=lock_timeout_seconds)) is not None:
                    upkeep.created.append(created)
        except DBAPIError as exc:
            if isinstance(exc, OperationalError) and _sqlstate(exc) != _LOCK_NOT_AVAILABLE:
                raise  # the database is gone
            upkeep.failed.append((month, _first_line(exc)))
    with transactions() as conn:
        upkeep.stray = store.stray_events(conn)
    return upkeep


class PruneStatus(StrEnum):
    PRUNED = "pruned"  # dropped (a dry run: would be)
    REFUSED = "refused"  # not invoiced and reconciled, and not forced: nothing was dropped
    FAILED = "failed"  # the drop failed (e.g. the lock was not granted in time): a rerun retries it


@dataclass
class MonthPrune:
    partition: store.MonthPartition
    status: PruneStatus = PruneStatus.PRUNED
    reasons: list[str] = field(default_factory=list)  # why it is refused, or why it failed

    @property
    def month(self) -> Month:
        return self.partition.month

    def as_dict(self) -> dict[str, object]:
        return {"month": str(self.month), "partition": self.partition.name, "events": self.partition.events,
                "bytes": self.partition.bytes, "status": self.status.value, "reasons": self.reasons}


@dataclass
class PruneResult:
    before: Month
    dry_run: bool
    force: bool
    months: list[MonthPrune] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    def _with(self, status: PruneStatus) -> list[MonthPrune]:
        return [m for m in self.months if m.status == status]

    @property
    def pruned(self) -> list[MonthPrune]:
        return self._with(PruneStatus.PRUNED)

    @property
    def failed(self) -> list[MonthPrune]:
        return self._with(PruneStatus.FAILED)

    def summary(self) -> RunSummary:
        return RunSummary(
            job=Job.USAGE_PRUNE, period=self.before.prev(),
            outcome=run_outcome(ok=not self.failed, interrupted=self.interrupted),
            dry_run=self.dry_run, seconds=self.seconds,
            counts={"months": len(self.months), "pruned": len(self.pruned), "failed": len(self.failed),
                    "events": sum(m.partition.events for m in self.pruned),
                    "bytes": sum(m.partition.bytes for m in self.pruned)},
            failed=[{"organization_id": "-", "errors": [["partition", f"{m.month}: {'; '.join(m.reasons)}"]]}
                    for m in self.failed],
        )

    def json_extra(self) -> dict[str, object]:
        return {"before": str(self.before), "forced": self.force, "months": [m.as_dict() for m in self.months]}


_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout: the drop waited too long behind other sessions


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def _first_line(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)


def refusal_reasons(record: store.MonthRecord) -> list[str]:
    """Why a month's events may not be dropped yet: every event must be rolled up and every change
    of its usage billed, it must be invoiced (every shard), and its latest reconcile over every
    organization must have succeeded after its usage last changed."""
    reasons = []
    if record.unrolled_hours:
        reasons.append(f"{record.unrolled_hours} hour(s) with events not rolled up yet")
    if not month_is_invoiced(record.invoiced_shards):
        reasons.append("not invoiced (no successful invoice-monthly or legacy-run over every organization)")
    if record.unbilled_organizations:
        reasons.append(f"usage of {record.unbilled_organizations} organization(s) not billed yet (changed after its "
                       "invoice, or in a period not invoiced yet)")
    if record.reconcile_status is None:
        reasons.append("not reconciled (no billing reconcile over every organization)")
    elif record.reconcile_status != "succeeded":
        reasons.append(f"its latest billing reconcile ended {record.reconcile_status}")
    elif record.revised_since_reconcile:
        reasons.append("its usage changed after the latest billing reconcile")
    return reasons


def plan_prune(transactions: Transactions, before: Month, *, force: bool) -> tuple[list[MonthPrune], datetime]:
    """Every monthly partition before `before`, oldest first, with why it may not be dropped; and
    the database's time of the check."""
    with transactions() as conn:
        checked_at = store.database_now(conn)
        plan = [MonthPrune(p) for p in store.month_partitions(conn, before=before)]
        for item in plan:
            record = store.month_record(conn, item.month, list(MONTHLY_JOBS), Job.RECONCILE)
            item.reasons = refusal_reasons(record)
            if item.reasons and not force:
                item.status = PruneStatus.REFUSED
    return plan, checked_at


def prune_months(transactions: Transactions, before: Month, *, dry_run: bool, force: bool,
                 stop: threading.Event | None = None, on_month=None) -> PruneResult:
    """Drop the partitions of the months before `before`, all or none: if any month is refused, no
    partition is dropped (Refused). Each drop is its own transaction, so a failed one (its lock not
    granted in time) leaves the others done and a rerun retries it. A dry run drops nothing."""
    started = time.perf_counter()
    plan, checked_at = plan_prune(transactions, before, force=force)
    result = PruneResult(before, dry_run, force, plan)
    refused = [m for m in result.months if m.status == PruneStatus.REFUSED]
    if refused:
        for item in result.months:
            if on_month is not None:
                on_month(item)
        shown = "; ".join(f"{m.month}: {', '.join(m.reasons)}" for m in refused)
        raise Refused(f"{len(refused)} of {len(result.months)} month(s) before {before} cannot be pruned, so "
                      f"nothing was dropped ({shown})",
                      hint="Invoice and reconcile them first (billing reconcile --month YYYY-MM), "
                           "or pass --force to drop them anyway.")
    for index, item in enumerate(result.months):
        if stop is not None and stop.is_set():  # SIGTERM: the months dropped so far stay dropped
            result.interrupted = True
            result.months = result.months[:index]
            break
        if not dry_run:
            try:
                with transactions() as conn:
                    store.drop_month_partition(conn, item.partition, forced=bool(item.reasons),
                                               recheck_since=None if force else checked_at)
            except store.MonthChanged as exc:
                item.status = PruneStatus.FAILED
                item.reasons = [str(exc)]
            except DBAPIError as exc:
                if isinstance(exc, OperationalError) and _sqlstate(exc) != _LOCK_NOT_AVAILABLE:
                    raise  # the database is gone: the run stops (exit 4)
                item.status = PruneStatus.FAILED
                item.reasons = [_first_line(exc)]
        if on_month is not None:
            on_month(item)
    result.seconds = time.perf_counter() - started
    return result
