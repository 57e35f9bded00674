"""Reads for `billing reconcile`: the month's usage at every stage (events, roll-ups, billed), the
live invoices with their lines, and organizations owed fees but not invoiced. Read-only; each
query returns only what disagrees (or what must be checked outside), streamed."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from ..periods import Month
from ..pricing import PricePlan
from . import engine, period_store, plan_store


# Anchored organizations' periods starting in a month: organization id -> (start, end), half-open.
Windows = dict[str, tuple[datetime, datetime]]


@dataclass(frozen=True)
class UsageRow:
    organization_id: str
    metric: str
    events: Decimal  # the sum of the month's raw events
    rolled_up: Decimal  # the sum of usage_hourly
    billed: Decimal  # the sum billed by live invoices (their own month and adjustments)
    known: bool  # the organization has an organizations row
    # The plan lists the metric as free: the plan the month's live invoice was rated with (its late
    # usage is rated again with it), else the plan's definition in force when the period started.
    free: bool
    due: bool = True  # its period of the month has ended: what it used should be billed by now

    @property
    def period_running(self) -> bool:
        """Its period has not ended and no invoice billed any of it: nothing to compare with yet."""
        return not self.due and self.billed == 0


USAGE_QUERY_WORK_MEM = "64MB"  # per hash table of the usage query, for this transaction only


def usage_differences(conn: Connection, month: Month, only: list[str] | None, *,
                      pruned: Collection[Month] = (), windows: Windows | None = None) -> Iterator[UsageRow]:
    """(organization, metric) pairs whose events, roll-up and billed quantities are not all equal,
    from one pass over each source (a hash join of three monthly GROUP BYs). `pruned`: the months
    whose events were pruned (`pruned_months`): there the roll-ups stand for the events (they are
    what is left of them), elsewhere the events are read, also for the days an anchored period has
    in the next month.

    Streamed as PostgreSQL sends the rows, without a server-side cursor: PostgreSQL never runs a
    cursor's query in parallel, and this is the month's largest GROUP BY (bench/reconcile.py).
    `windows`: `period_windows` of the month, when the caller read them already."""
    org = " AND organization_id = ANY(:only)" if only else ""
    windows = period_windows(conn, month, only) if windows is None else windows
    read_end = max([month.end, *(end for _, end in windows.values())])
    events, spans = _event_rows(month, read_end, pruned, org)
    if windows:  # anchored periods: each such organization's own hours, the others' the month's
        period_join = """LEFT JOIN unnest(CAST(:period_orgs AS varchar[]), CAST(:period_starts AS timestamptz[]),
                             CAST(:period_ends AS timestamptz[])) AS p(org, ps, pe) ON p.org = s.organization_id"""
        in_period = "((p.org IS NULL AND s.at < :end) OR (s.at >= p.ps AND s.at < p.pe))"
        ev_source = f"""SELECT s.organization_id, s.metric, s.quantity FROM (
                {events}) s {period_join} WHERE {in_period}"""
        hr_source = f"""SELECT s.organization_id, s.metric, s.quantity FROM (
                SELECT organization_id, metric, quantity, hour_start AS at FROM usage_hourly
                WHERE hour_start >= :start AND hour_start < :read_end{org}) s {period_join} WHERE {in_period}"""
        ev = f"SELECT organization_id, metric, sum(quantity) AS q FROM ({ev_source}) e GROUP BY 1, 2"
        hr = f"SELECT organization_id, metric, sum(quantity) AS q FROM ({hr_source}) h GROUP BY 1, 2"
    else:
        ev = f"SELECT organization_id, metric, sum(quantity) AS q FROM ({events}) e GROUP BY 1, 2"
        hr = f"""SELECT organization_id, metric, sum(quantity) AS q FROM usage_hourly
            WHERE hour_start >= :start AND hour_start < :end{org} GROUP BY 1, 2"""
    sql = f"""
        WITH ev AS (
            {ev}
        ), hr AS (
            {hr}
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
        SELECT p.*, o.id IS NOT NULL AS known, o.price_plan_id, coalesce(w.ps, :start) AS period_start,
               coalesce(li.plan_snapshot -> 'free_metrics' @> jsonb_build_array(p.metric), false) AS billed_free,
               li.plan_snapshot IS NOT NULL AS billed_with_snapshot, coalesce(w.pe, :end) <= now() AS due
        FROM pairs p
        LEFT JOIN organizations o ON o.id = p.organization_id
        LEFT JOIN invoices li ON li.organization_id = p.organization_id AND li.billing_month = :period
                              AND li.status <> 'void'
        LEFT JOIN unnest(CAST(:period_orgs AS varchar[]), CAST(:period_starts AS timestamptz[]),
                         CAST(:period_ends AS timestamptz[])) AS w(org, ps, pe) ON w.org = p.organization_id
        WHERE p.events <> p.rolled_up OR p.rolled_up <> p.billed OR o.id IS NULL
        ORDER BY 1, 2
    """
    params = {"start": month.start, "end": month.end, "period": month.first_day, "only": only or [],
              "read_end": read_end, "period_orgs": list(windows),
              "period_starts": [start for start, _ in windows.values()],
              "period_ends": [end for _, end in windows.values()], **spans}
    # The month's (organization, metric) groups, 29,000 for 10,000 organizations, take about 14 MB a
    # hash table; with the server's default work_mem (4 MB) each parallel worker spilled them to disk
    # in batches. Room for them: the query took 6% less (bench/reconcile.py's data, docs/benchmarks.md).
    conn.execute(text(f"SET LOCAL work_mem = '{USAGE_QUERY_WORK_MEM}'"))
    # Free: as the plan the month's live invoice was rated with says (its late usage is rated again
    # with it), else as the plan's definition in force when the period started (what will rate it).
    versions = plan_store.load_plan_versions(conn, list(conn.execute(text("SELECT id FROM price_plans")).scalars()))
    for row in engine.stream_rows(conn, text(sql), params):
        if row.billed_with_snapshot:
            free = row.billed_free
        else:
            plan = versions.at(row.price_plan_id, row.period_start) if row.price_plan_id else None
            free = plan is not None and row.metric in plan.free_metrics
        yield UsageRow(row.organization_id, row.metric, Decimal(row.events), Decimal(row.rolled_up),
                       Decimal(row.billed), row.known, free, row.due)


def pruned_months(conn: Connection, month: Month) -> frozenset[Month]:
    """Of `month` and the next (an anchored period of `month` ends in it), those whose events
    `billing usage prune` dropped: their roll-ups stay, and stand for the events."""
    return frozenset(Month.containing_date(day) for day in conn.execute(text(
        "SELECT period_start FROM usage_pruned_months WHERE period_start = ANY(:days)"),
        {"days": [month.first_day, month.next().first_day]}).scalars())


def _event_rows(month: Month, read_end: datetime, pruned: Collection[Month], org: str) -> tuple[str, dict]:
    """SQL for the raw events from the month's start to `read_end`, as (organization_id, metric,
    quantity, at) rows, with its parameters: a pruned month's hours from usage_hourly (its events
    are gone), every other month's from usage_events."""
    spans: list[tuple[str, datetime, datetime]] = []  # (table, from, to): one per run of months read alike
    current = month
    while current.start < read_end:
        table, end = "usage_hourly" if current in pruned else "usage_events", min(current.end, read_end)
        if spans and spans[-1][0] == table:
            spans[-1] = (table, spans[-1][1], end)
        else:
            spans.append((table, current.start, end))
        current = current.next()
    parts, params = [], {}
    for n, (table, start, end) in enumerate(spans):
        at = "hour_start" if table == "usage_hourly" else "occurred_at"
        parts.append(f"SELECT organization_id, metric, quantity, {at} AS at FROM {table} "
                     f"WHERE {at} >= :from_{n} AND {at} < :to_{n}{org}")
        params |= {f"from_{n}": start, f"to_{n}": end}
    return "\n                UNION ALL ".join(parts), params


def period_windows(conn: Connection, month: Month, only: list[str] | None) -> Windows:
    """The organizations whose period starting in the month is not the calendar month, with its
    interval: as their live invoice billed it, else as their anchor gives it."""
    windows = {org: (p.start, p.end) for org, p in period_store.anchored_periods(conn, month, only=only).periods.items()}
    org = " AND organization_id = ANY(:only)" if only else ""
    for row in conn.execute(text(f"""
        SELECT organization_id, period_start, period_end FROM invoices
        WHERE billing_month = :period AND status <> 'void' AND (period_start <> :start OR period_end <> :end){org}
    """), {"period": month.first_day, "start": month.start, "end": month.end, "only": only or []}):
        windows[row.organization_id] = (row.period_start, row.period_end)
    return windows


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
    totals_differ: bool = False  # its lines do not add up to its subtotal, its taxes to its tax, or the two to its total


def count_live_invoices(conn: Connection, month: Month, only: list[str] | None) -> int:
    org = " AND organization_id = ANY(:only)" if only else ""
    return conn.execute(text(f"SELECT count(*) FROM invoices WHERE billing_month = :period AND status <> 'void'{org}"),
                        {"period": month.first_day, "only": only or []}).scalar_one()


def live_invoices(conn: Connection, month: Month, only: list[str] | None, *, every: bool = True,
                  unsent: bool = False) -> Iterator[InvoiceRow]:
    """The live invoices of the month with their lines, in number order, streamed, each with whether
    its amounts add up (compared here, in exact NUMERIC arithmetic). `every`: all of them (each is to
    be checked outside the database: Stripe, S3); otherwise only those whose amounts do not add up,
    and, with `unsent`, those not e-mailed."""
    org = " AND i.organization_id = ANY(:only)" if only else ""
    differs = ("(coalesce(sum(l.amount), 0) <> i.subtotal OR i.tax_total <> (SELECT coalesce(sum(t.amount), 0) "
               "FROM invoice_taxes t WHERE t.invoice_id = i.id) OR i.subtotal + i.tax_total <> i.total)")
    having = "" if every else f" HAVING {differs}" + (" OR i.emailed_at IS NULL" if unsent else "")
    rows = conn.execute(text(f"""
        SELECT i.id, i.organization_id, i.number, i.currency, i.subtotal, i.total, i.tax_total, i.pdf_sha256,
               (SELECT coalesce(sum(t.amount), 0) FROM invoice_taxes t WHERE t.invoice_id = i.id) AS taxes_total,
               CASE WHEN i.s3_uploaded_at IS NOT NULL THEN i.s3_key END AS s3_key, i.stripe_invoice_id, i.emailed_at,
               coalesce(sum(l.amount), 0) AS lines_total, {differs} AS totals_differ,
               coalesce(array_agg(l.line_no ORDER BY l.line_no) FILTER (WHERE l.line_no IS NOT NULL), '{{}}') AS line_nos,
               coalesce(array_agg(l.amount ORDER BY l.line_no) FILTER (WHERE l.line_no IS NOT NULL), '{{}}') AS amounts
        FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id
        WHERE i.billing_month = :period AND i.status <> 'void'{org}
        GROUP BY i.id{having} ORDER BY i.number
    """), {"period": month.first_day, "only": only or []}, execution_options={"yield_per": 500})
    for r in rows:
        yield InvoiceRow(r.id, r.organization_id, r.number, r.currency, Decimal(r.subtotal), Decimal(r.total),
                         Decimal(r.lines_total), tuple(zip(r.line_nos, (Decimal(a) for a in r.amounts), strict=True)),
                         r.pdf_sha256, r.s3_key, r.stripe_invoice_id, r.emailed_at, Decimal(r.tax_total),
                         Decimal(r.taxes_total), r.totals_differ)


def owed_fees_not_invoiced(conn: Connection, month: Month, only: list[str] | None, *,
                           windows: Windows | None = None) -> list[str]:
    """Organizations whose plan has a base fee or a minimum, that existed before their period of
    the month ended and were active in it, with no invoice billing that period: their fees were
    never billed. The period is the calendar month, or an anchored organization's own period
    starting in the month (`period_windows`, or `windows` when the caller read them already), and
    only a period that has ended is owed. The plan's fees are those of its definition in force when
    the period started (the one invoice-monthly rates it with), not of its latest."""
    org = " AND o.id = ANY(:only)" if only else ""
    windows = period_windows(conn, month, only) if windows is None else windows
    rows = conn.execute(text(f"""
        SELECT o.id, o.price_plan_id, coalesce(w.ps, :start) AS period_start
        FROM organizations o JOIN price_plans p ON p.id = o.price_plan_id
        LEFT JOIN unnest(CAST(:period_orgs AS varchar[]), CAST(:period_starts AS timestamptz[]),
                         CAST(:period_ends AS timestamptz[])) AS w(org, ps, pe) ON w.org = o.id
        WHERE o.created_at < coalesce(w.pe, :end)
          AND coalesce(w.pe, :end) <= now()
          AND (o.status = 'active' OR (o.status_changed_at > coalesce(w.ps, :start)
                                       AND o.status_changed_at > o.created_at)){org}
          AND NOT EXISTS (SELECT 1 FROM invoices i JOIN invoice_periods ip ON ip.invoice_id = i.id
                          WHERE i.organization_id = o.id AND i.status <> 'void' AND ip.period_start = :period)
        ORDER BY 1
    """), {"start": month.start, "end": month.end, "period": month.first_day, "only": only or [],
           "period_orgs": list(windows), "period_starts": [start for start, _ in windows.values()],
           "period_ends": [end for _, end in windows.values()]}).all()
    versions = plan_store.load_plan_versions(conn, sorted({row.price_plan_id for row in rows}))
    return [row.id for row in rows if _owes_fees(versions.at(row.price_plan_id, row.period_start))]


def _owes_fees(plan: PricePlan | None) -> bool:
    return plan is not None and (plan.base_fee > 0 or plan.minimum_commitment > 0)
