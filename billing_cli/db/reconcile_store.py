"""Reads for `billing reconcile`: the month's usage at every stage (events, roll-ups, billed), the
live invoices with their lines, and organizations owed fees but not invoiced. Read-only; each
query returns only what disagrees (or what must be checked outside), streamed."""

from __future__ import annotations

from collections.abc import Iterator
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


def usage_differences(conn: Connection, month: Month, only: list[str] | None, *,
                      events_pruned: bool = False) -> Iterator[UsageRow]:
    """(organization, metric) pairs whose events, roll-up and billed quantities are not all equal,
    from one pass over each source (a hash join of three monthly GROUP BYs). For a month whose
    events were pruned, the roll-ups stand for the events (they are what is left of them).

    Streamed as PostgreSQL sends the rows, without a server-side cursor: PostgreSQL never runs a
    cursor's query in parallel, and this is the month's largest GROUP BY (bench/reconcile.py)."""
    org = " AND organization_id = ANY(:only)" if only else ""
    events, at = ("usage_hourly", "hour_start") if events_pruned else ("usage_events", "occurred_at")
    sql = f"""
        WITH ev AS (
            SELECT organization_id, metric, sum(quantity) AS q FROM {events}
            WHERE {at} >= :start AND {at} < :end{org} GROUP BY 1, 2
        ), hr AS (
            SELECT organization_id, metric, sum(quantity) AS q FROM usage_hourly
            WHERE hour_start >= :start AND hour_start < :end{org} GROUP BY 1, 2
        ), bl AS (
            SELECT i.organization_id, u.metric, sum(u.quantity) AS q
            FROM invoice_usage u JOIN invoices i ON i.id = u.invoice_id
            WHERE i.status <> 'void' AND u.period_start = :period{org.replace("organization_id", "i.organization_id")}
            GROUP BY 1, 2
        ), pairs AS (
            SELECT coalesce(ev.organization_id, hr.organization_id, bl.organization_id) AS organization_id,
                   coalesce(ev.metric, hr.metric, bl.metric) AS metric,
                   coalesce(ev.q, 0) AS events, coalesce(hr.q, 0) AS rolled_up, coalesce(bl.q, 0) AS billed
            FROM ev FULL JOIN hr ON hr.organization_id = ev.organization_id AND hr.metric = ev.metric
            FULL JOIN bl ON bl.organization_id = coalesce(ev.organization_id, hr.organization_id)
                        AND bl.metric = coalesce(ev.metric, hr.metric)
        )
        SELECT p.*, o.id IS NOT NULL AS known, coalesce(p.metric = ANY(pp.free_metrics), false) AS free
        FROM pairs p
        LEFT JOIN organizations o ON o.id = p.organization_id
        LEFT JOIN price_plans pp ON pp.id = o.price_plan_id
        WHERE p.events <> p.rolled_up OR p.rolled_up <> p.billed OR o.id IS NULL
        ORDER BY 1, 2
    """
    params = {"start": month.start, "end": month.end, "period": month.first_day, "only": only or []}
    for row in engine.stream_rows(conn, text(sql), params):
        yield UsageRow(row.organization_id, row.metric, Decimal(row.events), Decimal(row.rolled_up),
                       Decimal(row.billed), row.known, row.free)


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
    tax_total: Decimal = Decimal(0)  # as stored on the invoice
    taxes_total: Decimal = Decimal(0)  # the sum of its tax breakdown (invoice_taxes)


def live_invoices(conn: Connection, month: Month, only: list[str] | None) -> Iterator[InvoiceRow]:
    """Every live invoice of the month with its lines, in number order, streamed."""
    org = " AND i.organization_id = ANY(:only)" if only else ""
    rows = conn.execute(text(f"""
        SELECT i.id, i.organization_id, i.number, i.currency, i.subtotal, i.total, i.tax_total, i.pdf_sha256,
               (SELECT coalesce(sum(t.amount), 0) FROM invoice_taxes t WHERE t.invoice_id = i.id) AS taxes_total,
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
                         r.pdf_sha256, r.s3_key, r.stripe_invoice_id, r.emailed_at, Decimal(r.tax_total),
                         Decimal(r.taxes_total))


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
