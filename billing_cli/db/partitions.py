"""usage_events' monthly partitions: created ahead, the DEFAULT partition's stray events counted,
old months dropped whole, and the months whose events were dropped. On the caller's connection.

The partitions are made by the SQL function billing_usage_events_partition (migration 0011_partition_usage_events), so
`billing db upgrade`, `aggregate-hourly` and an operator in psql create them the same way: once,
with the month's rows moved out of the DEFAULT partition in the same transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, text

from ..periods import Month

_PARTITION_NAME = re.compile(r"^usage_events_(\d{4})_(\d{2})$")


def partition_name(month: Month) -> str:
    return f"usage_events_{month.year:04d}_{month.month:02d}"


@dataclass(frozen=True)
class CreatedPartition:
    month: Month
    moved_events: int  # rows moved there from the default partition

    @property
    def name(self) -> str:
        return partition_name(self.month)


def create_month_partition(conn: Connection, month: Month, *, lock_timeout_seconds: int = 10) -> CreatedPartition | None:
    """The month's partition, unless it exists (None then). Waits at most the timeout for the
    default partition's lock (a long read of it holds it off) rather than hold inserts queued."""
    conn.execute(text(f"SET LOCAL lock_timeout = '{int(lock_timeout_seconds)}s'"))
    moved = conn.execute(text("SELECT billing_usage_events_partition(:day)"), {"day": month.first_day}).scalar_one()
    return None if moved is None else CreatedPartition(month, int(moved))


def missing_partitions(conn: Connection, months: list[Month]) -> list[Month]:
    """Which of these months have no partition yet (what a dry run would create)."""
    return [m for m in months
            if conn.execute(text("SELECT to_regclass(:name) IS NULL"), {"name": partition_name(m)}).scalar_one()]


@dataclass
class StrayEvents:
    """Events in the DEFAULT partition: their occurred_at falls in no monthly partition (a clock far
    off, or a month backfilled before its partition was made). Billed normally all the same."""

    events: int = 0
    by_month: dict[str, int] = field(default_factory=dict)  # "YYYY-MM" -> events
    # Those of by_month's months whose events were pruned: these strays are NOT billed (the month is
    # closed), and the month's partition is not made again (it would hide them).
    pruned: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"events": self.events, "months": self.by_month}


def stray_events(conn: Connection) -> StrayEvents:
    """Counted exactly, per month of occurred_at: the default partition is meant to stay (nearly) empty."""
    if conn.execute(text("SELECT to_regclass('usage_events_default') IS NULL")).scalar_one():
        return StrayEvents()
    rows = conn.execute(text("""
        SELECT s.month, s.events, p.period_start IS NOT NULL AS pruned FROM (
            SELECT CAST(date_trunc('month', occurred_at AT TIME ZONE 'UTC') AS date) AS first_day,
                   to_char(date_trunc('month', occurred_at AT TIME ZONE 'UTC'), 'YYYY-MM') AS month, count(*) AS events
            FROM usage_events_default GROUP BY 1, 2) s
        LEFT JOIN usage_pruned_months p ON p.period_start = s.first_day
        ORDER BY 1
    """)).all()
    return StrayEvents(sum(r.events for r in rows), {r.month: r.events for r in rows},
                       tuple(r.month for r in rows if r.pruned))


@dataclass(frozen=True)
class MonthPartition:
    month: Month
    name: str
    bytes: int  # table and indexes on disk
    events: int  # as rolled up (aggregated_hours), without reading the partition


def month_partitions(conn: Connection, *, before: Month | None = None) -> list[MonthPartition]:
    """The monthly partitions, oldest first (only those before `before` when given)."""
    rows = conn.execute(text("""
        SELECT c.relname AS name, pg_total_relation_size(c.oid) AS bytes
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'usage_events'::regclass ORDER BY c.relname
    """)).all()
    found = []
    for row in rows:
        match = _PARTITION_NAME.match(row.name)
        if not match:
            continue  # the default partition
        month = Month(int(match.group(1)), int(match.group(2)))
        if before is None or month < before:
            found.append((month, row.name, row.bytes))
    return [MonthPartition(month, name, size, rolled_up_events(conn, month)) for month, name, size in found]


def rolled_up_events(conn: Connection, month: Month) -> int:
    return conn.execute(text("SELECT CAST(coalesce(sum(event_count), 0) AS bigint) FROM aggregated_hours "
                             "WHERE hour_start >= :start AND hour_start < :end"),
                        {"start": month.start, "end": month.end}).scalar_one()


@dataclass(frozen=True)
class MonthRecord:
    """What the run history and the data say about a month, for deciding whether to prune it."""

    invoiced_shards: list[str | None]  # shards of the successful real invoicing runs
    reconcile_status: str | None  # the latest real reconcile of the month over every organization
    revised_since_reconcile: bool  # a roll-up changed the month's usage after that reconcile began
    unrolled_hours: int  # hours whose events changed since they were rolled up (or were never)
    unbilled_organizations: int  # organizations whose month changed after their invoices billed it


def month_record(conn: Connection, month: Month, invoicing_jobs: list[str], reconcile_job: str) -> MonthRecord:
    """Exact, without time margins: the events against the roll-ups (per hour, as invoicing checks
    them: an index-only scan of the month), the roll-ups' revisions against those invoices billed,
    and the run history."""
    from .usage_store import stale_hours

    params = {"period": str(month), "jobs": invoicing_jobs, "reconcile": reconcile_job, "day": month.first_day}
    shards = list(conn.execute(text("""
        SELECT shard FROM job_runs WHERE job = ANY(:jobs) AND period = :period AND NOT dry_run
          AND NOT targeted AND status = 'succeeded'
    """), params).scalars())
    last = conn.execute(text("""
        SELECT status, started_at FROM job_runs WHERE job = :reconcile AND period = :period AND NOT dry_run
          AND NOT targeted AND status <> 'running' ORDER BY started_at DESC, id DESC LIMIT 1
    """), params).first()
    revised = last is not None and conn.execute(text(
        "SELECT EXISTS (SELECT 1 FROM usage_revisions WHERE period_start = :day AND revised_at > :since)"),
        {**params, "since": last.started_at}).scalar_one()
    unbilled = conn.execute(text("""
        SELECT count(*) FROM usage_revisions r
        WHERE r.period_start = :day
          AND r.revision > coalesce((SELECT max(p.revision) FROM invoices i
                                     JOIN invoice_periods p ON p.invoice_id = i.id
                                     WHERE i.organization_id = r.organization_id AND i.status <> 'void'
                                       AND p.period_start = r.period_start), 0)
    """), params).scalar_one()
    return MonthRecord(shards, last.status if last else None, revised, len(stale_hours(conn, month)), unbilled)


class MonthChanged(Exception):
    """Events of a month being pruned arrived or were edited after the month was checked."""


def drop_month_partition(conn: Connection, partition: MonthPartition, *, forced: bool,
                         recheck_since: datetime | None, lock_timeout_seconds: int = 10) -> None:
    """Drop the month's events (one catalog change, no row-by-row DELETE, no trigger), record the
    month as pruned, and forget edits of its hours that no roll-up has seen. Its roll-ups stay.
    Dropping needs a moment's exclusive lock on usage_events: it waits at most the timeout rather
    than hold every producer's insert queued behind it. Once the lock is held nothing can change,
    and the month is checked again cheaply since `recheck_since` (the check that allowed it; None
    with --force): an event that arrived meanwhile (by the BRIN index on received_at, with an hour
    of margin for producers' transactions still open then) or an in-place edit raises MonthChanged.
    `forced`: recorded, the month was dropped without being invoiced and reconciled."""
    conn.execute(text(f"SET LOCAL lock_timeout = '{int(lock_timeout_seconds)}s'"))
    conn.execute(text("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE"))
    window = {"start": partition.month.start, "end": partition.month.end, "since": recheck_since}
    if recheck_since is not None and conn.execute(text("""
        SELECT EXISTS (SELECT 1 FROM usage_events WHERE occurred_at >= :start AND occurred_at < :end
                       AND received_at >= CAST(:since AS timestamptz) - interval '1 hour')
            OR EXISTS (SELECT 1 FROM usage_event_changes WHERE hour_start >= :start AND hour_start < :end)
    """), window).scalar_one():
        raise MonthChanged(f"events of {partition.month} arrived or were edited while it was being pruned: let "
                           "aggregate-hourly roll them up, then prune again")
    conn.execute(text("""
        INSERT INTO usage_pruned_months (period_start, events, bytes, forced) VALUES (:day, :events, :bytes, :forced)
        ON CONFLICT (period_start) DO UPDATE SET pruned_at = now(), events = EXCLUDED.events,
            bytes = EXCLUDED.bytes, forced = EXCLUDED.forced
    """), {"day": partition.month.first_day, "events": partition.events, "bytes": partition.bytes, "forced": forced})
    conn.execute(text("DELETE FROM usage_event_changes WHERE hour_start >= :start AND hour_start < :end"),
                 {"start": partition.month.start, "end": partition.month.end})
    conn.execute(text(f'DROP TABLE "{partition.name}"'))


class MonthPruned(Exception):
    """An hour of a month whose events were pruned: its roll-up is final and must not be recomputed."""


def refuse_pruned_hour(conn: Connection, hour: datetime) -> None:
    """Raise MonthPruned for an hour of a pruned month. The lock on usage_events itself (not its
    partitions) makes a prune wait for this transaction, or this check see the prune: an hour is
    never rolled up from a partition dropped meanwhile."""
    conn.execute(text("LOCK TABLE ONLY usage_events IN ACCESS SHARE MODE"))
    month = Month.containing(hour)
    if is_pruned(conn, month):
        raise MonthPruned(f"the events of {month} were pruned (billing usage prune): its hourly roll-ups are kept "
                          "as they are and cannot be computed again")


def hold_default_partition(conn: Connection, month: Month) -> None:
    """Before a statement reads the month's events while they are in the DEFAULT partition (the month
    has no partition of its own): wait for that partition being made, if it is (billing_usage_events_partition
    moves the month's rows out of the default partition, then attaches the new one), and keep it from
    being made until this transaction ends. A statement that began while it was being made would
    plan with the partitions as they were, wait for the default partition's lock, then read it after
    the move: the month's events in neither. Taken in a statement of its own, so the next statement
    plans with the new partition. Once the month has its partition, nothing is taken."""
    if conn.execute(text("SELECT to_regclass(:name) IS NULL AND to_regclass('usage_events_default') IS NOT NULL"),
                    {"name": partition_name(month)}).scalar_one():
        conn.execute(text("LOCK TABLE usage_events_default IN ACCESS SHARE MODE"))


def database_now(conn: Connection) -> datetime:
    return conn.execute(text("SELECT now()")).scalar_one()


def is_pruned(conn: Connection, month: Month) -> bool:
    return conn.execute(text("SELECT EXISTS (SELECT 1 FROM usage_pruned_months WHERE period_start = :day)"),
                        {"day": month.first_day}).scalar_one()
