"""Reads for `billing reconcile`: the month's usage at every stage (events, roll-ups, billed), the
live invoices with their lines, and organizations owed fees but not invoiced. Read-only; each
query returns only what disagrees (or what must be checked outside), streamed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from ..periods import Month
from . import engine


@dataclass(frozen=True)
class UsageRow:
    organization_id: str
    metric: str
    events: Decimal  # the sum of the month's raw events
    rolled_up: Decimal  # the sum of usage_hourly
    billed: Decimal  # the sum billed by live invoices (their own month and adjustments)
    known: bool  # the organization has an organizations row
    free: bool  # the organization's plan lists the metric as free


# The month's usage at each stage, per (organization, metric), each sorted the same way (bytewise,
# COLLATE "C": the order Python compares str in, whatever the database's collation), so the four
# streams merge in one pass holding one row of each.
_ORDER = ' ORDER BY organization_id COLLATE "C", metric COLLATE "C"'
_EVENTS = """SELECT organization_id, metric, sum(quantity) AS q FROM usage_events
             WHERE occurred_at >= :start AND occurred_at < :end{org} GROUP BY 1, 2""" + _ORDER
_ROLLED_UP = """SELECT organization_id, metric, sum(quantity) AS q FROM usage_hourly
                WHERE hour_start >= :start AND hour_start < :end{org} GROUP BY 1, 2""" + _ORDER
_BILLED = """SELECT i.organization_id, u.metric, sum(u.quantity) AS q
             FROM invoice_usage u JOIN invoices i ON i.id = u.invoice_id
             WHERE i.status <> 'void' AND u.period_start = :period{org} GROUP BY 1, 2""" + _ORDER
_ORGANIZATIONS = """SELECT o.id AS organization_id, coalesce(pp.free_metrics, '{{}}') AS free_metrics
                    FROM organizations o LEFT JOIN price_plans pp ON pp.id = o.price_plan_id
                    WHERE true{org} ORDER BY o.id COLLATE "C"
"""


def usage_statements(month: Month, only: list[str] | None) -> dict[str, tuple[str, dict]]:
    """The four reads of `usage_differences`, by name: SQL text with :name parameters."""
    org = " AND organization_id = ANY(:only)" if only else ""
    params = {"start": month.start, "end": month.end, "period": month.first_day, "only": only or []}
    return {"usage_events": (_EVENTS.format(org=org), params),
            "usage_hourly": (_ROLLED_UP.format(org=org), params),
            "invoice_usage": (_BILLED.format(org=org.replace("organization_id", "i.organization_id")), params),
            "organizations": (_ORGANIZATIONS.format(org=org.replace("organization_id", "o.id")), params)}


def usage_differences(conns: Sequence[Connection], month: Month, only: list[str] | None) -> Iterator[UsageRow]:
    """(organization, metric) pairs whose events, roll-up and billed quantities are not all equal,
    and every pair of an organization with no organizations row.

    The month's two big GROUP BYs (raw events, hourly roll-ups) run at the same time, each on its
    own connection, with the billed quantities on a third: PostgreSQL 15 runs the aggregates of one
    query one after the other, so one query leaves a core idle while the other side waits. The
    four connections (`conns`; the first reads the organizations) read one snapshot, exported by the
    first, so the comparison is as consistent as one query's. Each side is streamed as PostgreSQL
    sends it, without a server-side cursor (a cursor's query never gets parallel workers), and the
    sorted streams are merged holding one row of each (bench/reconcile.py)."""
    main, *others = conns
    statements = usage_statements(month, only)
    engine.share_snapshot(main, others)
    reads = [(conn, text(statements[name][0]), statements[name][1])
             for conn, name in zip(others, ("usage_events", "usage_hourly", "invoice_usage"), strict=True)]
    with engine.concurrent_streams(reads) as sides:
        organizations = engine.stream_rows(main, text(statements["organizations"][0]),
                                           statements["organizations"][1])
        known = next(organizations, None)
        for (organization_id, metric), (events, rolled_up, billed) in _merged(sides):
            while known is not None and known.organization_id < organization_id:
                known = next(organizations, None)
            is_known = known is not None and known.organization_id == organization_id
            if events != rolled_up or rolled_up != billed or not is_known:
                yield UsageRow(organization_id, metric, events, rolled_up, billed, is_known,
                               is_known and metric in known.free_metrics)
        for _ in organizations:  # drained: the connection is free for the next query
            pass


def _merged(sides: list[Iterator]) -> Iterator[tuple[tuple[str, str], tuple[Decimal, ...]]]:
    """A full outer merge of streams of (organization_id, metric, q) sorted by the first two: each
    key once, with each stream's q (0 where a stream has no row for it)."""
    heads = [next(side, None) for side in sides]
    while True:
        keys = [(h.organization_id, h.metric) for h in heads if h is not None]
        if not keys:
            return
        key = min(keys)
        values = []
        for i, head in enumerate(heads):
            if head is not None and (head.organization_id, head.metric) == key:
                values.append(Decimal(head.q))
                heads[i] = next(sides[i], None)
            else:
                values.append(Decimal(0))
        yield key, tuple(values)


@dataclass(frozen=True)
class InvoiceRow:
    id: int
    organization_id: str
    number: str
    currency: str
    subtotal: Decimal
    total: Decimal
    lines_total: Decimal
    lines: tuple[tuple[int, Decimal], ...]  # (line number, amount)
    pdf_sha256: str | None
    s3_key: str | None
    stripe_invoice_id: str | None
    emailed_at: datetime | None


def live_invoices(conn: Connection, month: Month, only: list[str] | None) -> Iterator[InvoiceRow]:
    """Every live invoice of the month with its lines, in number order, streamed."""
    org = " AND i.organization_id = ANY(:only)" if only else ""
    rows = conn.execute(text(f"""
        SELECT i.id, i.organization_id, i.number, i.currency, i.subtotal, i.total, i.pdf_sha256,
               CASE WHEN i.s3_uploaded_at IS NOT NULL THEN i.s3_key END AS s3_key, i.stripe_invoice_id, i.emailed_at,
               coalesce(sum(l.amount), 0) AS lines_total,
               coalesce(array_agg(l.line_no ORDER BY l.line_no) FILTER (WHERE l.line_no IS NOT NULL), '{{}}') AS line_nos,
               coalesce(array_agg(l.amount ORDER BY l.line_no) FILTER (WHERE l.line_no IS NOT NULL), '{{}}') AS amounts
        FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id
        WHERE i.period_start = :period AND i.status <> 'void'{org}
        GROUP BY i.id ORDER BY i.number
    """), {"period": month.first_day, "only": only or []}, execution_options={"yield_per": 500})
    for r in rows:
        yield InvoiceRow(r.id, r.organization_id, r.number, r.currency, Decimal(r.subtotal), Decimal(r.total),
                         Decimal(r.lines_total), tuple(zip(r.line_nos, (Decimal(a) for a in r.amounts), strict=True)),
                         r.pdf_sha256, r.s3_key, r.stripe_invoice_id, r.emailed_at)


def owed_fees_not_invoiced(conn: Connection, month: Month, only: list[str] | None) -> list[str]:
    """Organizations whose plan has a base fee or a minimum, that existed before the month ended
    and were active in it, with no invoice billing the month: their fees were never billed."""
    org = " AND o.id = ANY(:only)" if only else ""
    return list(conn.execute(text(f"""
        SELECT o.id FROM organizations o JOIN price_plans p ON p.id = o.price_plan_id
        WHERE (p.base_fee > 0 OR p.minimum_commitment > 0) AND o.created_at < :end
          AND (o.status = 'active' OR o.status_changed_at > :start){org}
          AND NOT EXISTS (SELECT 1 FROM invoices i JOIN invoice_periods ip ON ip.invoice_id = i.id
                          WHERE i.organization_id = o.id AND i.status <> 'void' AND ip.period_start = :period)
        ORDER BY 1
    """), {"start": month.start, "end": month.end, "period": month.first_day, "only": only or []}).scalars())
