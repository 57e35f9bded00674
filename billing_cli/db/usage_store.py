"""Reads for invoicing: active organizations in batches, a month's usage, hours not yet aggregated."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from ..periods import Month
from .engine import Transactions


@dataclass(frozen=True)
class OrganizationRow:
    id: str
    name: str
    email: str
    currency: str
    price_plan_id: str | None


@dataclass(frozen=True)
class Shard:
    """This process's share of the organizations: a stable hash of the id, so adding organizations
    never moves the others between shards (the same function in SQL and in Python)."""

    index: int = 0
    count: int = 1

    SQL = "mod(('x' || substr(md5(id), 1, 8))::bit(32)::bigint, :shard_count) = :shard_index"

    def owns(self, organization_id: str) -> bool:
        import hashlib

        return int(hashlib.md5(organization_id.encode()).hexdigest()[:8], 16) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index + 1}/{self.count}"


def _filters(only: list[str] | None, shard: Shard) -> tuple[str, dict]:
    where = " AND id = ANY(:only)" if only else ""
    if shard.count > 1:
        where += f" AND {Shard.SQL}"
    return where, {"only": only or [], "shard_count": shard.count, "shard_index": shard.index}


def count_active(session: Connection, only: list[str] | None = None, shard: Shard = Shard()) -> int:
    where, params = _filters(only, shard)
    return session.execute(text(f"SELECT count(*) FROM organizations WHERE status = 'active'{where}"),
                           params).scalar_one()


def active_organizations(transactions: Transactions, *, batch_size: int, only: list[str] | None = None,
                         shard: Shard = Shard()) -> Iterator[list[OrganizationRow]]:
    """Active organizations in id order, one batch at a time (keyset pagination: memory stays flat
    however many organizations there are, and each batch is its own short read)."""
    after = ""
    where, params = _filters(only, shard)
    while True:
        with transactions() as session:
            rows = session.execute(text(f"""
                SELECT id, name, email, currency, price_plan_id FROM organizations
                WHERE status = 'active' AND id > :after{where}
                ORDER BY id LIMIT :limit
            """), {"after": after, "limit": batch_size, **params}).all()
        if not rows:
            return
        yield [OrganizationRow(r.id, r.name, r.email, (r.currency or "").strip(), r.price_plan_id) for r in rows]
        after = rows[-1].id


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


def monthly_usage(session: Connection, month: Month, organization_ids: list[str],
                  live_hours: list[datetime] | None = None) -> dict[str, dict[str, Decimal]]:
    """Total quantity per (organization, metric) for the month, from usage_hourly. `live_hours`
    (a dry run's not-yet-aggregated hours) are summed from the raw events instead."""
    params = {"ids": organization_ids, "start": month.start, "end": month.end, "live": live_hours or []}
    hourly = "SELECT organization_id, metric, quantity FROM usage_hourly " \
             "WHERE organization_id = ANY(:ids) AND hour_start >= :start AND hour_start < :end"
    if live_hours:
        query = f"""
            SELECT organization_id, metric, sum(quantity) AS quantity FROM (
                {hourly} AND NOT (hour_start = ANY(:live))
                UNION ALL
                SELECT organization_id, metric, quantity FROM usage_events
                WHERE organization_id = ANY(:ids) AND occurred_at >= :start AND occurred_at < :end
                  AND date_trunc('hour', occurred_at, 'UTC') = ANY(:live)
            ) u GROUP BY 1, 2"""
    else:
        query = f"SELECT organization_id, metric, sum(quantity) AS quantity FROM ({hourly}) u GROUP BY 1, 2"
    usage: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for row in session.execute(text(query), params):
        usage[row.organization_id][row.metric] = Decimal(row.quantity)
    return usage
