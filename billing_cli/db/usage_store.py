"""Reads for invoicing: active organizations with their month's usage, hours not yet aggregated."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from ..periods import Month


@dataclass(frozen=True)
class OrganizationRow:
    id: str
    name: str
    email: str
    currency: str
    price_plan_id: str | None
    stripe_customer_id: str | None = None


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


def count_active(session: Connection, only: list[str] | None = None, shard: Shard = Shard()) -> int:
    where, params = _filters(only, shard)
    return session.execute(text(f"SELECT count(*) FROM organizations WHERE status = 'active'{where}"),
                           params).scalar_one()


def stale_hours(session: Connection, month: Month) -> list[datetime]:
    """Hours of the month whose events changed since they were aggregated (or never were):
    late events, removed events, or an hour the hourly job missed."""
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
        ORDER BY 1
    """), {"start": month.start, "end": month.end})
    return [r.hour_start for r in rows]


def organizations_with_usage(conn: Connection, month: Month, *, batch_size: int, only: list[str] | None = None,
                             shard: Shard = Shard(), live_hours: list[datetime] | None = None,
                             ) -> Iterator[list[tuple[OrganizationRow, dict[str, Decimal]]]]:
    """Active organizations with their month's usage per metric, in batches, from ONE ordered pass
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
    rows = conn.execute(text(f"""
        SELECT o.id, o.name, o.email, o.currency, o.price_plan_id, o.stripe_customer_id, u.metric, u.quantity
        FROM organizations o
        LEFT JOIN (SELECT organization_id, metric, sum(quantity) AS quantity FROM ({source}) s GROUP BY 1, 2) u
               ON u.organization_id = o.id
        WHERE o.status = 'active'{where}
        ORDER BY o.id
    """), {**params, "start": month.start, "end": month.end, "live": live_hours or []},
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
                                  row.stripe_customer_id)
            current = (org, {})
        if row.metric is not None:
            current[1][row.metric] = Decimal(row.quantity)
    if current is not None:
        batch.append(current)
    if batch:
        yield batch
