"""Reads for invoicing: active organizations with their month's usage, hours not yet aggregated."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from ..addresses import BillingDetails
from ..periods import Month


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
    stripe_customer_name: str | None = None  # what billing last told Stripe about it
    stripe_customer_email: str | None = None
    billing: BillingDetails = BillingDetails()  # postal address and tax id printed on its invoices

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True)
class Shard:
    """This process's share of the organizations: a stable hash of the id, so adding organizations
    never moves the others between shards (the same function in SQL and in Python)."""

    index: int = 0
    count: int = 1

    @staticmethod
    def sql(column: str) -> str:
        return f"mod(('x' || substr(md5({column}), 1, 8))::bit(32)::bigint, :shard_count) = :shard_index"

    def owns(self, organization_id: str) -> bool:
        import hashlib

        return int(hashlib.md5(organization_id.encode()).hexdigest()[:8], 16) % self.count == self.index

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
    OR EXISTS (SELECT 1 FROM usage_revisions r WHERE r.organization_id = o.id AND r.period_start >= :oldest
               AND r.period_start < :period AND r.revision > coalesce(
                   (SELECT max(p.revision) FROM invoices i JOIN invoice_periods p ON p.invoice_id = i.id
                    WHERE i.organization_id = o.id AND i.status <> 'void' AND p.period_start = r.period_start), 0)))"""


def count_to_invoice(session: Connection, month: Month, *, late_months: int, only: list[str] | None = None,
                     shard: Shard = Shard()) -> int:
    where, params = _filters(only, shard, column="o.id")
    return session.execute(text(f"SELECT count(*) FROM organizations o WHERE {_TO_INVOICE}{where}"),
                           {**params, **_window(month, late_months)}).scalar_one()


def unknown_organizations(session: Connection, ids: list[str]) -> list[str]:
    """The ids that have no organizations row."""
    known = set(session.execute(text("SELECT id FROM organizations WHERE id = ANY(:ids)"), {"ids": ids}).scalars())
    return sorted(set(ids) - known)


def _window(month: Month, late_months: int) -> dict:
    return {"start": month.start, "end": month.end, "period": month.first_day,
            "oldest": month.minus(late_months).first_day}


def stale_hours(session: Connection, month: Month, *, edited_since: Month | None = None) -> list[datetime]:
    """Hours of the month whose events changed since they were aggregated (or never were): late
    or removed events (the count or the latest arrival differs), events edited in place (the
    trigger's usage_event_changes, also in the earlier months from `edited_since`, whose changed
    usage the month's invoices adjust), or an hour the hourly job missed."""
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
    """), {"start": month.start, "end": month.end, "edited_from": (edited_since or month).start})
    return [r.hour_start for r in rows]


def organizations_with_usage(conn: Connection, month: Month, *, batch_size: int, late_months: int = 0,
                             only: list[str] | None = None, shard: Shard = Shard(),
                             live_hours: list[datetime] | None = None,
                             ) -> Iterator[list[tuple[OrganizationRow, dict[str, Decimal]]]]:
    """The organizations to invoice with their month's usage per metric, in batches, from ONE ordered pass
    over the month (a hash aggregate of usage_hourly joined to organizations, streamed through a
    server-side cursor): the cost is that of the bare monthly GROUP BY, whatever the number of
    organizations, and memory holds one batch. `live_hours` (a dry run's hours not aggregated yet)
    are summed from the raw events instead."""
    where, params = _filters(only, shard, column="o.id")
    hourly = ("SELECT organization_id, metric, quantity FROM usage_hourly "
              "WHERE hour_start >= :start AND hour_start < :end")
    if live_hours:
        source = f"""{hourly} AND NOT (hour_start = ANY(:live))
            UNION ALL
            SELECT organization_id, metric, quantity FROM usage_events
            WHERE occurred_at >= :start AND occurred_at < :end
              AND date_trunc('hour', occurred_at, 'UTC') = ANY(:live)"""
    else:
        source = hourly
    # A cursor makes PostgreSQL plan for the first 10% of rows (index scans per organization, tens
    # of seconds on a big month); we read them all, so plan for all: one hash aggregate, ~the floor.
    conn.execute(text("SET LOCAL cursor_tuple_fraction = 1.0"))
    # The usage revision is read in the same statement, so it is the revision of exactly this usage.
    rows = conn.execute(text(f"""
        SELECT o.id, o.name, o.email, o.currency, o.price_plan_id, o.stripe_customer_id, o.status, o.created_at,
               o.status_changed_at, coalesce(r.revision, 0) AS revision, sc.name AS sc_name,
               sc.email AS sc_email, o.billing_address_line1, o.billing_address_line2, o.billing_postal_code,
               o.billing_city, o.billing_region, o.billing_country, o.tax_id, o.tax_exempt, u.metric, u.quantity
        FROM organizations o
        LEFT JOIN (SELECT organization_id, metric, sum(quantity) AS quantity FROM ({source}) s GROUP BY 1, 2) u
               ON u.organization_id = o.id
        LEFT JOIN usage_revisions r ON r.organization_id = o.id AND r.period_start = :period
        LEFT JOIN stripe_customers sc ON sc.organization_id = o.id AND sc.customer_id = o.stripe_customer_id
        WHERE {_TO_INVOICE}{where}
        ORDER BY o.id
    """), {**params, **_window(month, late_months), "live": live_hours or []},
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
                                  row.revision, row.sc_name, row.sc_email,
                                  BillingDetails(row.billing_address_line1, row.billing_address_line2,
                                                 row.billing_postal_code, row.billing_city, row.billing_region,
                                                 row.billing_country, row.tax_id, row.tax_exempt))
            current = (org, {})
        if row.metric is not None:
            current[1][row.metric] = Decimal(row.quantity)
    if current is not None:
        batch.append(current)
    if batch:
        yield batch
