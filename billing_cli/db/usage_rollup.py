"""The hourly roll-up of usage_events into usage_hourly: one set-based statement per hour.

`apply_hour` writes (and records the hour in aggregated_hours), one roll-up of an hour at a time
(`lock_hours`); `preview_hour` computes the same report read-only. Both run in the caller's
transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from ..periods import HOUR, Month
from .partitions import hold_default_partition, refuse_pruned_hour

# Every event is rolled up, whatever its organization's status, and even when the organization
# has no row yet ("orphan" usage: counted and reported, billed once the row exists). Events are
# grouped per (organization, metric, hour) first, so the checks against organizations touch
# thousands of groups, not millions of events.
_GROUPED = """
WITH grouped AS (
    SELECT organization_id, metric, date_trunc('hour', occurred_at, 'UTC') AS hour_start,
           sum(quantity) AS quantity, count(*) AS event_count, max(received_at) AS last_received_at
    FROM usage_events
    WHERE occurred_at >= :start AND occurred_at < :end
    GROUP BY 1, 2, 3
),
orphans AS (
    SELECT g.organization_id, g.event_count FROM grouped g
    WHERE NOT EXISTS (SELECT 1 FROM organizations o WHERE o.id = g.organization_id)
),
stale AS (
    SELECT h.organization_id, h.metric, h.hour_start
    FROM usage_hourly h
    WHERE h.hour_start >= :start AND h.hour_start < :end
      AND NOT EXISTS (SELECT 1 FROM grouped g WHERE g.organization_id = h.organization_id
                      AND g.metric = h.metric AND g.hour_start = h.hour_start)
),
seen_changes AS (
    SELECT hour_start, change_id FROM usage_event_changes WHERE hour_start >= :start AND hour_start < :end
)"""

# The result rows both statements return: one per metric, then one 'changes' row.
_REPORT = """
SELECT 'metric' AS kind, metric, count(*) AS organizations, sum(event_count)::bigint AS events,
       sum(quantity) AS quantity, NULL::bigint AS inserted, NULL::bigint AS updated,
       NULL::bigint AS deleted, NULL::bigint AS orphan_events, NULL::text[] AS orphan_ids,
       array_agg(organization_id) AS organization_ids
FROM grouped GROUP BY metric
UNION ALL
SELECT 'changes', NULL, (SELECT count(DISTINCT organization_id) FROM grouped), NULL, NULL,
       {inserted}, {updated}, {deleted},
       (SELECT coalesce(sum(event_count), 0) FROM orphans),
       (SELECT coalesce(array_agg(DISTINCT organization_id), '{{}}') FROM orphans), NULL
"""


# The routing of a changed day to the billing month whose period holds it follows anchors.py in SQL
# (the roll-up statement must stay one statement): these render its pieces for the organization `o`.
def _utc(day: str) -> str:
    """Midnight UTC of a DATE."""
    return f"(CAST({day} AS timestamp) AT TIME ZONE 'UTC')"


def _anchor_at(moment: str) -> str:
    """Anchor.at: the anchor day in force for a period starting at `moment`: the day before the first
    change made at or after it (anchor_changes, by its primary key), else the day now."""
    return ("(SELECT a.anchor FROM (SELECT c.anchor_before AS anchor, c.changed_at FROM anchor_changes c "
            f"WHERE c.organization_id = o.id AND c.changed_at >= {moment} "
            "UNION ALL SELECT o.billing_anchor_day, CAST('infinity' AS timestamptz)) a "
            "ORDER BY a.changed_at LIMIT 1)")


def _anchor_start(anchor: str, month: str) -> str:
    """anchors.anchor_start: midnight UTC of day `anchor` of `month` (its first day, a DATE), clamped
    to the month's last day; the 1st when `anchor` is NULL."""
    return _utc(f"{month} + least(coalesce({anchor}, 1), CAST({month} + interval '1 month' AS date) - {month}) - 1")


# The end of the period starting in the month before the changed day's (d.previous), of an
# organization with (or that had) an anchor day, as anchors.billing_period and period_store compute
# it: its live invoice's end, else from where it starts (the end of the live invoice of the month
# before it; else where the period of that month ended, which started on the anchor day in force on
# the 1st of the month before: anchors._start, exact unless the anchor changed in that month too) to
# the anchor day in force then, in the day's month. Two lookups by the one-live-invoice index.
_BEFORE_PREVIOUS = "CAST(d.previous - interval '1 month' AS date)"
_PERIOD_BEFORE = f"""
                    SELECT coalesce(billed.period_end, {_anchor_start(_anchor_at("started.at"), "d.month")})
                    FROM (SELECT coalesce(
                              (SELECT p.period_end FROM invoices p
                               WHERE p.organization_id = d.organization_id AND p.status <> 'void'
                                 AND p.billing_month = {_BEFORE_PREVIOUS}
                                 AND p.period_end >= {_utc("d.previous")} AND p.period_end < {_utc("d.month")}),
                              {_anchor_start(_anchor_at(_anchor_start(
                                  _anchor_at(_utc("CAST(d.previous - interval '2 month' AS date)")),
                                  _BEFORE_PREVIOUS)), "d.previous")}) AS at) started
                    LEFT JOIN invoices billed ON billed.organization_id = d.organization_id
                         AND billed.status <> 'void' AND billed.billing_month = d.previous"""

# Upsert changed rows, delete rows whose events disappeared, and record what the hour looked like:
# its event count and latest arrival (aggregated_hours), that its in-place edits are now seen
# (usage_event_changes: exactly the change ids this statement saw), and which organizations'
# months changed (usage_revisions: invoicing bills the difference of a month already billed).
APPLY_SQL = _GROUPED + """,
upserted AS (
    INSERT INTO usage_hourly AS h (organization_id, metric, hour_start, quantity, event_count, updated_at)
    SELECT organization_id, metric, hour_start, quantity, event_count, now() FROM grouped
    ON CONFLICT (organization_id, metric, hour_start) DO UPDATE
        SET quantity = EXCLUDED.quantity, event_count = EXCLUDED.event_count, updated_at = now()
        WHERE (h.quantity, h.event_count) IS DISTINCT FROM (EXCLUDED.quantity, EXCLUDED.event_count)
    RETURNING organization_id, hour_start, (xmax = 0) AS inserted
),
removed AS (
    DELETE FROM usage_hourly h USING stale s
    WHERE h.organization_id = s.organization_id AND h.metric = s.metric AND h.hour_start = s.hour_start
    RETURNING h.organization_id, h.hour_start
),
revised AS (
    INSERT INTO usage_revisions AS r (organization_id, period_start, revised_at)
    SELECT DISTINCT d.organization_id, coalesce(
               -- the billing month of the invoiced period holding the day (an anchored period spans two months)
               (SELECT CASE WHEN d.day < i.period_end THEN i.billing_month END FROM invoices i
                WHERE i.organization_id = d.organization_id AND i.status <> 'void' AND i.period_start <= d.day
                ORDER BY i.period_start DESC LIMIT 1),
               -- not invoiced yet: the day's month, unless the period starting in the month before
               -- still holds the day (a calendar month's never does)
               CASE WHEN o.billing_anchor_day IS NULL
                         AND NOT EXISTS (SELECT 1 FROM anchor_changes c WHERE c.organization_id = o.id) THEN d.month
                    WHEN d.day < (""" + _PERIOD_BEFORE + """) THEN d.previous ELSE d.month END), now()
    FROM (SELECT DISTINCT organization_id, date_trunc('day', hour_start, 'UTC') AS day,
                 CAST(date_trunc('month', hour_start AT TIME ZONE 'UTC') AS date) AS month,
                 CAST(date_trunc('month', hour_start AT TIME ZONE 'UTC') - interval '1 month' AS date) AS previous
          FROM (SELECT organization_id, hour_start FROM upserted UNION ALL
                SELECT organization_id, hour_start FROM removed) c) d
    LEFT JOIN organizations o ON o.id = d.organization_id
    ON CONFLICT (organization_id, period_start) DO UPDATE
        SET revision = r.revision + 1, revised_at = EXCLUDED.revised_at
    RETURNING 1
),
cleared AS (
    DELETE FROM usage_event_changes c USING seen_changes s
    WHERE c.hour_start = s.hour_start AND c.change_id = s.change_id
    RETURNING 1
),
recorded AS (
    INSERT INTO aggregated_hours AS a (hour_start, aggregated_at, event_count, last_received_at)
    SELECT hours.hour_start, now(), coalesce(sum(g.event_count), 0), max(g.last_received_at)
    FROM generate_series(CAST(:start AS timestamptz), CAST(:end AS timestamptz) - interval '1 hour',
                         interval '1 hour') AS hours(hour_start)
    LEFT JOIN grouped g ON g.hour_start = hours.hour_start
    GROUP BY hours.hour_start
    ON CONFLICT (hour_start) DO UPDATE
        SET aggregated_at = EXCLUDED.aggregated_at, event_count = EXCLUDED.event_count,
            last_received_at = EXCLUDED.last_received_at
    RETURNING 1
)""" + _REPORT.format(
    inserted="(SELECT count(*) FROM upserted WHERE inserted)",
    updated="(SELECT count(*) FROM upserted WHERE NOT inserted)",
    deleted="(SELECT count(*) FROM removed)",
)

# The same computation, read-only: what APPLY_SQL would change.
PREVIEW_SQL = _GROUPED + _REPORT.format(
    inserted="""(SELECT count(*) FROM grouped a WHERE NOT EXISTS (SELECT 1 FROM usage_hourly h
                 WHERE h.organization_id = a.organization_id AND h.metric = a.metric
                 AND h.hour_start = a.hour_start))""",
    updated="""(SELECT count(*) FROM grouped a JOIN usage_hourly h ON h.organization_id = a.organization_id
                AND h.metric = a.metric AND h.hour_start = a.hour_start
                WHERE (h.quantity, h.event_count) IS DISTINCT FROM (a.quantity, a.event_count))""",
    deleted="(SELECT count(*) FROM stale)",
)


@dataclass(frozen=True)
class MetricTotals:
    metric: str
    organizations: int
    events: int
    quantity: Decimal


@dataclass
class HourReport:
    """What one hour's roll-up found and changed."""

    metrics: list[MetricTotals] = field(default_factory=list)
    organizations: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    orphan_events: int = 0  # events of organization ids with no organizations row (rolled up all the same)
    orphan_ids: list[str] = field(default_factory=list)
    # metric -> the organizations with usage of it this hour: merged into the run's distinct
    # counts as each hour ends, then dropped (a month's run keeps one set, not 744 lists)
    organization_ids: dict[str, list[str]] = field(default_factory=dict, repr=False)


# Namespace of the hour locks: the first key of PostgreSQL's two-key advisory locks, whose key space
# is apart from the one-key (bigint) locks every other lock of billing takes (run_store.lock_key,
# the organizations' locks, migrations): pg_locks tells them apart by objsubid (2 here, 1 there).
_HOUR_LOCKS = 7_263_010
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def lock_hours(conn: Connection, start: datetime, end: datetime) -> None:
    """Wait for every other transaction rolling up an hour of [start, end), then keep them out until
    this one commits. In READ COMMITTED each statement reads its own snapshot: taken after this
    lock, the roll-up's statement sees what the previous roll-up of the hour committed, and every
    event it saw. Without it, two roll-ups of the same hour at once (invoice-monthly's shards each
    rolling up the month's changed hours, beside aggregate-hourly's late hours) could end with the
    older snapshot's totals written over the newer ones while the newer one had already cleared the
    hour's change marker: an edit never rolled up. The hours of one call are locked in ascending
    order, in one statement, so two calls over overlapping ranges never wait for each other in a
    cycle (a transaction that rolled up several hours by several calls would have to go oldest
    first; every roll-up today is one hour in its own transaction)."""
    first, last = _hour_number(start), _hour_number(end - HOUR)
    conn.execute(text("SELECT count(pg_advisory_xact_lock(CAST(:space AS integer), h)) "
                      "FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS h"),
                 {"space": _HOUR_LOCKS, "first": first, "last": last})


def _hour_number(hour: datetime) -> int:
    """Whole hours since 1970 (UTC): the hour's lock key, an int4 until the year 246,953."""
    return int((hour - _EPOCH) // HOUR)


def apply_hour(conn: Connection, start: datetime, end: datetime) -> HourReport:
    lock_hours(conn, start, end)  # before anything reads: the statement's snapshot comes after it
    refuse_pruned_hour(conn, start)
    hold_default_partition(conn, Month.containing(start))  # its rows moved meanwhile: read where they are
    conn.execute(text("SET LOCAL work_mem = '256MB'"))  # a busy hour's hash aggregate spills with 4MB
    return _report(conn.execute(text(APPLY_SQL), {"start": start, "end": end}))


def preview_hour(conn: Connection, start: datetime, end: datetime) -> HourReport:
    conn.execute(text("SET TRANSACTION READ ONLY"))
    refuse_pruned_hour(conn, start)
    hold_default_partition(conn, Month.containing(start))
    return _report(conn.execute(text(PREVIEW_SQL), {"start": start, "end": end}))


def _report(rows) -> HourReport:
    report = HourReport()
    for row in rows:
        if row.kind == "metric":
            report.metrics.append(MetricTotals(row.metric, row.organizations, row.events, row.quantity))
            report.organization_ids[row.metric] = row.organization_ids
        else:
            report.organizations = row.organizations
            report.inserted, report.updated, report.deleted = row.inserted, row.updated, row.deleted
            report.orphan_events, report.orphan_ids = int(row.orphan_events), sorted(row.orphan_ids)
    report.metrics.sort(key=lambda m: m.metric)
    return report


def unaggregated_hours(conn: Connection, start: datetime, end: datetime) -> list[datetime]:
    """The hours from `start` to `end` that were never rolled up (a missed or failed run), by the
    primary key of aggregated_hours: no event is read."""
    return list(conn.execute(text("""
        SELECT h FROM generate_series(CAST(:start AS timestamptz), CAST(:end AS timestamptz) - interval '1 hour',
                                      interval '1 hour') AS h
        WHERE NOT EXISTS (SELECT 1 FROM aggregated_hours a WHERE a.hour_start = h) ORDER BY 1
    """), {"start": start, "end": end}).scalars())


def late_hours(conn: Connection, before: datetime) -> list[datetime]:
    """Hours before `before` whose events changed since they were rolled up, found cheaply: events
    that arrived since the previous scan (by the BRIN index on received_at, with an hour of margin
    for slow producer transactions), hours whose events were edited or deleted in place (the
    triggers' usage_event_changes), and the hours the previous scan found that no roll-up has read
    since it. Hours of pruned months are left out: their roll-ups are final. Read-only:
    `record_late_scan` records the scan, in the same transaction.

    The margin counts from the previous scan (late_usage_scan.scanned_at), not from the latest
    roll-up: any roll-up (invoicing's stale hours, an --hour run) would move that one, past events
    that no scan had looked for yet. Before the first scan ever, it counts from the first roll-up
    ever (min(aggregated_at)): every event that can have arrived after a roll-up; nothing rolled up,
    nothing late. (0018 records the latest roll-up as the first scan of an existing database.)

    The margin would make every recent hour look late: its events arrived in the hour before the
    previous scan, whether that scan's run rolled them up or not. So the hours whose roll-up
    recorded an arrival within the margin (aggregated_hours.last_received_at), usually the last one
    or two, are compared instead: the hour's event count now, by the occurred_at index (it includes
    received_at: an index-only scan where the pages are all-visible), against the count its roll-up
    recorded. Behind a roll-up's back events are only added (an edit or deletion is in
    usage_event_changes), so an equal count means the same events. The arrivals of every other hour
    are found as before, the compared hours' rows being dropped before the grouping.

    The thresholds are read first and passed as values: inside the query they would be unknown to
    the planner, which then expects a third of every partition to match, and the cost of that
    estimate, growing with the table's history, switches on JIT compilation (hundreds of
    milliseconds at six months of history, for a check that finds nothing). For the same reason JIT
    is off for the rest of this (short) transaction: the check reads a few blocks per partition."""
    conn.execute(text("SET LOCAL jit = off"))
    previous = conn.execute(text("""
        SELECT coalesce(s.scanned_at, (SELECT min(aggregated_at) FROM aggregated_hours)) - interval '1 hour' AS since,
               s.scanned_at, coalesce(s.found_hours, '{}') AS found_hours
        FROM (SELECT 1) one LEFT JOIN late_usage_scan s ON true
    """)).one()
    since = previous.since
    compared = list(conn.execute(text("""
        SELECT hour_start FROM aggregated_hours
        WHERE last_received_at >= CAST(:since AS timestamptz) AND hour_start < :before
    """), {"since": since, "before": before}).scalars())
    return list(conn.execute(text("""
        SELECT hour_start FROM (
            SELECT DISTINCT date_trunc('hour', e.occurred_at, 'UTC') AS hour_start FROM usage_events e
            WHERE e.received_at >= CAST(:since AS timestamptz)
              AND e.occurred_at < :before
              AND date_trunc('hour', e.occurred_at, 'UTC') <> ALL(CAST(:compared AS timestamptz[]))
            UNION
            SELECT a.hour_start FROM aggregated_hours a
            WHERE a.hour_start = ANY(CAST(:compared AS timestamptz[]))
              AND a.event_count <> (SELECT count(*) FROM usage_events e
                                    WHERE e.occurred_at >= a.hour_start
                                      AND e.occurred_at < a.hour_start + interval '1 hour')
            UNION
            SELECT hour_start FROM usage_event_changes WHERE hour_start < :before
            UNION
            -- found by the previous scan and not read by a roll-up since (its run stopped first, or
            -- the hour failed); a roll-up whose transaction began after the scan's read it later
            -- than the scan began: what it may have missed arrived within this scan's margin
            SELECT f.hour_start FROM unnest(CAST(:found AS timestamptz[])) AS f(hour_start)
            WHERE f.hour_start < :before
              AND NOT EXISTS (SELECT 1 FROM aggregated_hours a WHERE a.hour_start = f.hour_start
                              AND a.aggregated_at >= CAST(:scanned_at AS timestamptz))
        ) changed
        WHERE NOT EXISTS (SELECT 1 FROM usage_pruned_months p
                          WHERE p.period_start = CAST(date_trunc('month', hour_start AT TIME ZONE 'UTC') AS date))
        ORDER BY 1
    """), {"before": before, "since": since, "compared": compared, "found": previous.found_hours,
           "scanned_at": previous.scanned_at}).scalars())


def record_late_scan(conn: Connection, found: list[datetime]) -> None:
    """Record a late-events scan and the hours it found, in the scan's own transaction: its start
    (now()) is where the next scan's margin counts from, and the hours stay late for the next scan
    until a roll-up that began after this one has read them. Only a scan whose result is acted on
    records it (not a dry run): the scheduled run, which rolls the hours up next."""
    conn.execute(text("""
        INSERT INTO late_usage_scan AS s (id, scanned_at, found_hours) VALUES (true, now(), CAST(:found AS timestamptz[]))
        ON CONFLICT (id) DO UPDATE SET scanned_at = EXCLUDED.scanned_at, found_hours = EXCLUDED.found_hours
    """), {"found": found})
