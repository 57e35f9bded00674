"""Reads for invoicing: active organizations with their month's usage, hours not yet aggregated."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from ..addresses import BillingDetails
from ..anchors import Anchor, BillingPeriod
from ..periods import Month
from . import anchor_history
from .credit_note_store import STEP_MISSING


@dataclass(frozen=True)
class OrganizationRow:
    id: str
    name: str
    email: str
    currency: str
    price_plan_id: str | None
    stripe_customer_id: str | None = None
    status: str = "active"
    created_at: datetime | None = None
    status_changed_at: datetime | None = None  # kept by a trigger; NULL: unknown (before it existed)
    usage_revision: int = 0  # the revision of the month's usage read with it (usage_revisions)
    billing: BillingDetails = BillingDetails()  # postal address and tax id printed on its invoices
    period: BillingPeriod | None = None  # its period of the month, when not the calendar month (anchors.py)
    period_problem: str | None = None  # why its period cannot be computed (a data error)
    anchor: Anchor | None = None  # its anchor day and its changes, when it has (or had) one

    @property
    def active(self) -> bool:
        return self.status == "active"

    def billing_period(self, month: Month) -> BillingPeriod:
        return self.period if self.period is not None else BillingPeriod.calendar(month)


@dataclass(frozen=True)
class Shard:
    """This process's share of the organizations: a stable hash of the id, so adding organizations
    never moves the others between shards (the same function in SQL and in Python)."""

    index: int = 0
    count: int = 1

    @staticmethod
    def sql(column: str) -> str:
        return f"mod(('x' || substr(md5({column}), 1, 8))::bit(32)::bigint, :shard_count) = :shard_index"

    @classmethod
    def of(cls, organization_id: str, count: int) -> Shard:
        """The shard of a split into `count` that owns the organization."""
        import hashlib

        return cls(int(hashlib.md5(organization_id.encode()).hexdigest()[:8], 16) % count, count)

    def owns(self, organization_id: str) -> bool:
        return Shard.of(organization_id, self.count).index == self.index

    def __str__(self) -> str:
        return f"{self.index + 1}/{self.count}"


def _filters(only: list[str] | None, shard: Shard, column: str = "id") -> tuple[str, dict]:
    """` AND …` conditions on the organization id `column` for --org and the shard."""
    where = f" AND {column} = ANY(:only)" if only else ""
    if shard.count > 1:
        where += f" AND {Shard.sql(column)}"
    return where, {"only": only or [], "shard_count": shard.count, "shard_index": shard.index}


# Who is invoiced for a month: every active organization; an inactive one when it has usage in the
# month (its final invoice, or late usage), was active when the month began or later (it owes the
# month's fees), or has usage of an earlier month that changed since it was last invoiced.
_TO_INVOICE = """(o.status = 'active' OR o.status_changed_at >= :start
    OR EXISTS (SELECT 1 FROM usage_hourly h WHERE h.organization_id = o.id
               AND h.hour_start >= :start AND h.hour_start < :end)
    -- an anchored period reaches into the next month (:read_end: the latest period end); also the
    -- last one of an organization put back on calendar months, which keeps its end
    OR ((o.billing_anchor_day IS NOT NULL OR o.billing_anchor_previous IS NOT NULL) AND :read_end > :end
        AND EXISTS (SELECT 1 FROM usage_hourly h WHERE h.organization_id = o.id
                    AND h.hour_start >= :end AND h.hour_start < :read_end))
    OR EXISTS (SELECT 1 FROM usage_revisions r WHERE r.organization_id = o.id AND r.period_start >= :oldest
               AND r.period_start < :period AND r.revision > coalesce(
                   (SELECT max(p.revision) FROM invoices i JOIN invoice_periods p ON p.invoice_id = i.id
                    WHERE i.organization_id = o.id AND i.status <> 'void' AND p.period_start = r.period_start), 0)))"""


def count_to_invoice(session: Connection, month: Month, *, late_months: int, only: list[str] | None = None,
                     shard: Shard = Shard(), excluded: list[str] | None = None, uninvoiced_only: bool = False,
                     periods: Mapping[str, BillingPeriod] | None = None) -> int:
    """How many organizations organizations_with_usage streams (`excluded`: periods not ended yet;
    `periods`: the anchored ones, as it is given them)."""
    where, params = _filters(only, shard, column="o.id")
    where += _exclusions(excluded, uninvoiced_only)
    return session.execute(text(f"SELECT count(*) FROM organizations o WHERE {_TO_INVOICE}{where}"),
                           {**params, **_window(month, late_months, periods), "excluded": excluded or []}).scalar_one()


def uninvoiced(session: Connection, month: Month, *, late_months: int, only: list[str] | None = None,
               shard: Shard = Shard(), periods: Mapping[str, BillingPeriod] | None = None) -> list[str]:
    """The organizations to invoice for the month that have no live invoice of it (`periods`: the
    anchored ones, so that usage in the part of a period that reaches into the next month counts)."""
    where, params = _filters(only, shard, column="o.id")
    where += _exclusions(None, True)
    return list(session.execute(text(f"SELECT o.id FROM organizations o WHERE {_TO_INVOICE}{where} ORDER BY o.id"),
                                {**params, **_window(month, late_months, periods)}).scalars())


def _exclusions(excluded: list[str] | None, uninvoiced_only: bool) -> str:
    """` AND …` leaving out the organizations whose period has not ended (`excluded`), and with
    `uninvoiced_only` those with a live invoice of the month (a catch-up pass bills only the rest)."""
    where = " AND NOT (o.id = ANY(:excluded))" if excluded else ""
    if uninvoiced_only:
        where += (" AND NOT EXISTS (SELECT 1 FROM invoices li WHERE li.organization_id = o.id "
                  "AND li.billing_month = :period AND li.status <> 'void')")
    return where


def organizations_with_void_steps(session: Connection, month: Month, *, late_months: int,
                                  only: list[str] | None = None, shard: Shard = Shard(),
                                  excluded: list[str] | None = None,
                                  periods: Mapping[str, BillingPeriod] | None = None) -> list[OrganizationRow]:
    """The organizations organizations_with_usage leaves out (not invoiced for the month, or their
    period not ended: `excluded`) that still have a void invoice whose Stripe invoice is to be
    reversed, or a credit note with a step missing (whether or not that delivery is on: the caller
    decides). Read from those two partial indexes, so the cost is that of the few found."""
    where, params = _filters(only, shard, column="o.id")
    rows = session.execute(text(f"""
        WITH waiting AS (
            SELECT organization_id FROM invoices WHERE stripe_reversal = 'pending'
            UNION
            SELECT organization_id FROM credit_notes c WHERE {STEP_MISSING})
        SELECT o.id, o.name, o.email, o.currency, o.price_plan_id, o.stripe_customer_id, o.status, o.created_at,
               o.status_changed_at
        FROM organizations o JOIN waiting w ON w.organization_id = o.id
        WHERE (NOT coalesce({_TO_INVOICE}, false) OR o.id = ANY(:excluded)){where}
        ORDER BY o.id"""), {**params, **_window(month, late_months, periods), "excluded": excluded or []})
    return [OrganizationRow(r.id, r.name, r.email, (r.currency or "").strip(), r.price_plan_id, r.stripe_customer_id,
                            r.status, r.created_at, r.status_changed_at) for r in rows]


def unknown_organizations(session: Connection, ids: list[str]) -> list[str]:
    """The ids that have no organizations row."""
    known = set(session.execute(text("SELECT id FROM organizations WHERE id = ANY(:ids)"), {"ids": ids}).scalars())
    return sorted(set(ids) - known)


def _window(month: Month, late_months: int, periods: Mapping[str, BillingPeriod] | None = None) -> dict:
    return {"start": month.start, "end": month.end, "period": month.first_day,
            "oldest": month.minus(late_months).first_day, "read_end": _read_end(month, periods)}


def _read_end(month: Month, periods: Mapping[str, BillingPeriod] | None) -> datetime:
    """Where the hours a month's periods cover end: the month's end, or the latest anchored period's."""
    return max([month.end, *(p.end for p in (periods or {}).values())])


def stale_hours(session: Connection, month: Month, *, edited_since: Month | None = None,
                until: datetime | None = None) -> list[datetime]:
    """Hours of the month whose events changed since they were aggregated (or never were): late
    or removed events (the count or the latest arrival differs), events edited in place (the
    trigger's usage_event_changes, also in the earlier months from `edited_since`, whose changed
    usage the month's invoices adjust), or an hour the hourly job missed. `until`: the end of the
    latest period starting in the month, when anchored periods reach into the next one."""
    rows = session.execute(text("""
        WITH current AS (
            SELECT date_trunc('hour', occurred_at, 'UTC') AS hour_start, count(*) AS event_count,
                   max(received_at) AS last_received_at
            FROM usage_events WHERE occurred_at >= :start AND occurred_at < :end
            GROUP BY 1
        )
        SELECT c.hour_start FROM current c
        LEFT JOIN aggregated_hours a ON a.hour_start = c.hour_start
        WHERE a.hour_start IS NULL OR a.event_count <> c.event_count
           OR a.last_received_at IS DISTINCT FROM c.last_received_at
        UNION
        SELECT a.hour_start FROM aggregated_hours a
        WHERE a.hour_start >= :start AND a.hour_start < :end AND a.event_count > 0
          AND NOT EXISTS (SELECT 1 FROM current c WHERE c.hour_start = a.hour_start)
        UNION
        SELECT hour_start FROM usage_event_changes WHERE hour_start >= :edited_from AND hour_start < :end
        EXCEPT  -- a pruned month's roll-ups are final: its events are gone, not changed
        SELECT h FROM usage_pruned_months p, generate_series(CAST(p.period_start AS timestamp) AT TIME ZONE 'UTC',
            (p.period_start + interval '1 month' - interval '1 hour') AT TIME ZONE 'UTC', interval '1 hour') AS h
        WHERE p.period_start >= CAST(:edited_from AS timestamptz) AT TIME ZONE 'UTC'
        ORDER BY 1
    """), {"start": month.start, "end": max(month.end, until or month.end),
           "edited_from": (edited_since or month).start})
    return [r.hour_start for r in rows]


def organizations_with_usage(conn: Connection, month: Month, *, batch_size: int, late_months: int = 0,
                             only: list[str] | None = None, shard: Shard = Shard(),
                             live_hours: list[datetime] | None = None,
                             periods: Mapping[str, BillingPeriod] | None = None,
                             problems: Mapping[str, str] | None = None, excluded: list[str] | None = None,
                             uninvoiced_only: bool = False,
                             ) -> Iterator[list[tuple[OrganizationRow, dict[str, Decimal]]]]:
    """The organizations to invoice with their month's usage per metric, in batches, from ONE ordered pass
    over the month (a hash aggregate of usage_hourly joined to organizations, streamed through a
    server-side cursor): the cost is that of the bare monthly GROUP BY, whatever the number of
    organizations, and memory holds one batch. `live_hours` (a dry run's hours not aggregated yet)
    are summed from the raw events instead."""
    where, params = _filters(only, shard, column="o.id")
    where += _exclusions(excluded, uninvoiced_only)
    periods = periods or {}
    # Organizations on calendar months (the common case) are summed over the month alone; with
    # anchored periods, the hours read reach to the latest period end, and each anchored
    # organization keeps the hours of its own period (one pass still, a hash join on the periods).
    # :read_end is _read_end(month, periods) (in _window).
    hourly = ("SELECT organization_id, metric, quantity, hour_start FROM usage_hourly "
              "WHERE hour_start >= :start AND hour_start < :read_end")
    if only:  # a few organizations (--org, a catch-up pass): read their hours alone, not the month's
        hourly += " AND organization_id = ANY(:only)"
    if live_hours:
        source = f"""{hourly} AND NOT (hour_start = ANY(:live))
            UNION ALL
            SELECT organization_id, metric, quantity, date_trunc('hour', occurred_at, 'UTC') FROM usage_events
            WHERE occurred_at >= :start AND occurred_at < :read_end
              AND date_trunc('hour', occurred_at, 'UTC') = ANY(:live)"""
    else:
        source = hourly
    if periods:
        source = f"""SELECT s.organization_id, s.metric, s.quantity FROM ({source}) s
            LEFT JOIN unnest(CAST(:period_orgs AS varchar[]), CAST(:period_starts AS timestamptz[]),
                             CAST(:period_ends AS timestamptz[])) AS p(org, period_start, period_end)
                   ON p.org = s.organization_id
            WHERE (p.org IS NULL AND s.hour_start < :end)
               OR (s.hour_start >= p.period_start AND s.hour_start < p.period_end)"""
    # A cursor makes PostgreSQL plan for the first 10% of rows (index scans per organization, tens
    # of seconds on a big month); we read them all, so plan for all: one hash aggregate, ~the floor.
    conn.execute(text("SET LOCAL cursor_tuple_fraction = 1.0"))
    # The usage revision is read in the same statement, so it is the revision of exactly this usage.
    rows = conn.execute(text(f"""
        SELECT o.id, o.name, o.email, o.currency, o.price_plan_id, o.stripe_customer_id, o.status, o.created_at,
               o.status_changed_at, coalesce(r.revision, 0) AS revision,
               o.billing_address_line1, o.billing_address_line2, o.billing_postal_code,
               o.billing_city, o.billing_region, o.billing_country, o.tax_id, o.tax_exempt, o.billing_anchor_day,
               h.change_times, h.changes_before, u.metric, u.quantity
        FROM organizations o{anchor_history.JOIN}
        LEFT JOIN (SELECT organization_id, metric, sum(quantity) AS quantity FROM ({source}) s GROUP BY 1, 2) u
               ON u.organization_id = o.id
        LEFT JOIN usage_revisions r ON r.organization_id = o.id AND r.period_start = :period
        WHERE {_TO_INVOICE}{where}
        ORDER BY o.id
    """), {**params, **_window(month, late_months, periods), "live": live_hours or [],
           "excluded": excluded or [], "period_orgs": list(periods),
           "period_starts": [p.start for p in periods.values()], "period_ends": [p.end for p in periods.values()]},
        execution_options={"yield_per": 2000})  # a server-side cursor: rows arrive as they are read
    batch: list[tuple[OrganizationRow, dict[str, Decimal]]] = []
    current: tuple[OrganizationRow, dict[str, Decimal]] | None = None
    for row in rows:
        if current is None or current[0].id != row.id:
            if current is not None:
                batch.append(current)
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
            org = OrganizationRow(row.id, row.name, row.email, (row.currency or "").strip(), row.price_plan_id,
                                  row.stripe_customer_id, row.status, row.created_at, row.status_changed_at,
                                  row.revision,
                                  BillingDetails(row.billing_address_line1, row.billing_address_line2,
                                                 row.billing_postal_code, row.billing_city, row.billing_region,
                                                 row.billing_country, row.tax_id, row.tax_exempt),
                                  periods.get(row.id), (problems or {}).get(row.id),
                                  anchor_history.anchor_of(row)
                                  if row.billing_anchor_day is not None or row.change_times is not None
                                  else None)
            current = (org, {})
        if row.metric is not None:
            current[1][row.metric] = Decimal(row.quantity)
    if current is not None:
        batch.append(current)
    if batch:
        yield batch
