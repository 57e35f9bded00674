"""What was billed before, per organization: the live invoices, the credit they moved, and the
periods whose usage changed since they were billed (with that usage and what was billed for it).

Read for a batch of organizations before planning them; every function runs in the caller's
transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import Connection, text

from ..anchors import Anchor, AnchorError, BillingPeriod, billing_period, fees_from_json
from ..composition import Credit, Fees, PeriodRecord
from ..periods import Month
from ..pricing import CREDIT_KINDS, PricePlan, plan_from_snapshot


@dataclass(frozen=True)
class OrgHistory:
    """One organization's billing so far, as far as the next invoice needs it."""

    live_invoices: frozenset[int] = frozenset()  # ids of its live invoices, when read
    credits: dict[int, Credit] = field(default_factory=dict)  # live invoice id -> the sum of its credit lines
    own: PeriodRecord | None = None  # what live invoices billed for the invoiced month itself (no usage)
    own_billed_revision: int = 0  # the newest usage revision of the month that an invoice billed
    changed: dict[Month, PeriodRecord] = field(default_factory=dict)  # earlier periods with usage no invoice billed
    revisions: dict[Month, int] = field(default_factory=dict)  # the usage revision each changed period was read at
    too_old: tuple[Month, ...] = ()  # changed periods before the window: reported, not billed


def load_histories(conn: Connection, month: Month, organization_ids: list[str], *, late_months: int,
                   report_months: int = 12, anchors: Mapping[str, Anchor] | None = None,
                   replacing: Collection[int] = ()) -> dict[str, OrgHistory]:
    """For each organization: its live invoices and credit; what its live invoices billed for
    `month` itself; and every period from `late_months` before `month` whose usage revision is
    newer than what its invoices billed (read with that period's usage, what was billed for it,
    and the plan it was billed with). Changed periods up to `report_months` further back are listed
    as too old. `replacing`: invoices about to be voided and replaced (--regenerate): a period whose
    change only they billed is changed again, so that their replacements bill it as they did."""
    window_start = month.minus(late_months)
    live: dict[str, set[int]] = defaultdict(set)
    credits: dict[str, dict[int, Credit]] = defaultdict(dict)
    for row in conn.execute(text("""
        SELECT i.organization_id, i.id, i.currency,
               coalesce(sum(l.amount) FILTER (WHERE l.kind = ANY(:credit_kinds)), 0) AS credit
        FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id
        WHERE i.status <> 'void' AND i.organization_id = ANY(:ids)
        GROUP BY 1, 2
    """), {"ids": organization_ids, "credit_kinds": list(CREDIT_KINDS)}):
        live[row.organization_id].add(row.id)
        if row.credit:
            credits[row.organization_id][row.id] = Credit(Decimal(row.credit), row.currency.strip())

    changed = conn.execute(text("""
        SELECT r.organization_id, r.period_start, r.revision
        FROM usage_revisions r
        WHERE r.organization_id = ANY(:ids) AND r.period_start >= :oldest AND r.period_start < :period
          AND (r.revision > coalesce((SELECT max(p.revision) FROM invoices i
                                      JOIN invoice_periods p ON p.invoice_id = i.id
                                      WHERE i.organization_id = r.organization_id AND i.status <> 'void'
                                        AND i.id <> ALL(:replacing) AND p.period_start = r.period_start), 0)
               -- an earlier period an invoice about to be replaced adjusted: rated again without it
               -- (a later invoice that adjusted it too counted on what the replaced one billed)
               OR EXISTS (SELECT 1 FROM invoices i JOIN invoice_periods p ON p.invoice_id = i.id
                          WHERE i.id = ANY(:replacing) AND i.organization_id = r.organization_id
                            AND p.period_start = r.period_start AND i.billing_month <> r.period_start))
    """), {"ids": organization_ids, "oldest": window_start.minus(report_months).first_day,
           "period": month.first_day, "replacing": list(replacing)}).all()
    in_window = [(r.organization_id, Month.containing_date(r.period_start)) for r in changed
                 if r.period_start >= window_start.first_day]
    too_old: dict[str, list[Month]] = defaultdict(list)
    for r in changed:
        if r.period_start < window_start.first_day:
            too_old[r.organization_id].append(Month.containing_date(r.period_start))
    records = _period_records(conn, [*in_window, *((o, month) for o in organization_ids)], month, anchors or {})

    histories = {}
    for org_id in organization_ids:
        periods = {p: rec for (o, p), (rec, _, _) in records.items() if o == org_id and p != month}
        revisions = {p: revision for (o, p), (_, revision, _) in records.items() if o == org_id and p != month}
        own, _, own_billed = records[(org_id, month)]
        histories[org_id] = OrgHistory(frozenset(live.get(org_id, ())), credits.get(org_id, {}), own, own_billed,
                                       periods, revisions, tuple(sorted(too_old.get(org_id, ()))))
    return histories


def _period_records(conn: Connection, pairs: list[tuple[str, Month]], month: Month, anchors: Mapping[str, Anchor],
                    ) -> dict[tuple[str, Month], tuple[PeriodRecord, int, int]]:
    """For each (organization, period): usage now with its revision (read in the same statement),
    what each live invoice billed, the billing plan, and the newest revision an invoice billed.
    The invoiced month's own usage is not read here: the caller has it from the month's stream."""
    orgs = [o for o, _ in pairs]
    starts = [p.first_day for _, p in pairs]
    # A period no live invoice billed (usage before anything was invoiced): as the anchor gives it.
    assumed = {(o, p): _assumed(p, anchors.get(o)) for o, p in pairs}
    usage: dict[tuple[str, Month], dict[str, Decimal]] = defaultdict(dict)
    revision: dict[tuple[str, Month], int] = {}
    for row in conn.execute(text("""
        SELECT c.org, c.start, r.revision, h.metric, h.quantity
        FROM unnest(CAST(:orgs AS varchar[]), CAST(:starts AS date[]), CAST(:assumed_starts AS timestamptz[]),
                    CAST(:assumed_ends AS timestamptz[])) AS c(org, start, assumed_start, assumed_end)
        LEFT JOIN usage_revisions r ON r.organization_id = c.org AND r.period_start = c.start
        -- the period as its live invoice billed it (an anchored one is not the calendar month)
        LEFT JOIN LATERAL (
            SELECT i.period_start, i.period_end FROM invoices i
            WHERE i.organization_id = c.org AND i.billing_month = c.start AND i.status <> 'void' LIMIT 1) b ON true
        LEFT JOIN LATERAL (
            -- c.start <> :period inside: a one-time filter that skips the scan (a join filter would
            -- read every hour of the invoiced month, then drop it)
            SELECT u.metric, sum(u.quantity) AS quantity FROM usage_hourly u
            WHERE c.start <> :period AND u.organization_id = c.org
              AND u.hour_start >= coalesce(b.period_start, c.assumed_start)
              AND u.hour_start < coalesce(b.period_end, c.assumed_end)
            GROUP BY u.metric) h ON true
    """), {"orgs": orgs, "starts": starts, "period": month.first_day,
           "assumed_starts": [assumed[pair].start for pair in pairs],
           "assumed_ends": [assumed[pair].end for pair in pairs]}):
        key = (row.org, Month.containing_date(row.start))
        revision[key] = row.revision or 0
        if row.metric is not None:
            usage[key][row.metric] = Decimal(row.quantity)

    billed: dict[tuple[str, Month], dict[int, dict[str, Decimal]]] = defaultdict(lambda: defaultdict(dict))
    for row in conn.execute(text("""
        SELECT i.organization_id AS org, l.period_start, i.id, coalesce(l.metric, l.kind) AS charge,
               sum(l.amount) AS amount
        FROM unnest(CAST(:orgs AS varchar[]), CAST(:starts AS date[])) AS c(org, start)
        JOIN invoices i ON i.organization_id = c.org AND i.status <> 'void'
        JOIN invoice_lines l ON l.invoice_id = i.id AND l.period_start = c.start
        WHERE NOT (l.kind = ANY(:credit_kinds))
        GROUP BY 1, 2, 3, 4
    """), {"orgs": orgs, "starts": starts, "credit_kinds": list(CREDIT_KINDS)}):
        billed[(row.org, Month.containing_date(row.period_start))][row.id][row.charge] = Decimal(row.amount)

    billed_usage: dict[tuple[str, Month], dict[int, dict[str, Decimal]]] = defaultdict(lambda: defaultdict(dict))
    plans: dict[tuple[str, Month], PricePlan] = {}
    bounds: dict[tuple[str, Month], BillingPeriod] = {}
    fees: dict[tuple[str, Month], Fees] = {}  # only for invoices that stored them (0015 and later)
    for row in conn.execute(text("""
        SELECT i.organization_id AS org, u.period_start, i.id, u.metric, u.quantity
        FROM unnest(CAST(:orgs AS varchar[]), CAST(:starts AS date[])) AS c(org, start)
        JOIN invoices i ON i.organization_id = c.org AND i.status <> 'void'
        JOIN invoice_usage u ON u.invoice_id = i.id AND u.period_start = c.start
    """), {"orgs": orgs, "starts": starts}):
        billed_usage[(row.org, Month.containing_date(row.period_start))][row.id][row.metric] = Decimal(row.quantity)
    for row in conn.execute(text("""
        SELECT i.organization_id AS org, i.billing_month, i.period_start, i.period_end, i.plan_snapshot, i.fee_share
        FROM unnest(CAST(:orgs AS varchar[]), CAST(:starts AS date[])) AS c(org, start)
        JOIN invoices i ON i.organization_id = c.org AND i.billing_month = c.start AND i.status <> 'void'
    """), {"orgs": orgs, "starts": starts}):
        key = (row.org, Month.containing_date(row.billing_month))
        bounds[key] = BillingPeriod(key[1], row.period_start, row.period_end)
        if row.plan_snapshot is not None:
            plans[key] = plan_from_snapshot(row.plan_snapshot)
        if row.fee_share is not None:
            fees[key] = fees_from_json(row.fee_share)

    covered: dict[tuple[str, Month], int] = {}
    for row in conn.execute(text("""
        SELECT c.org, c.start, max(p.revision) AS revision
        FROM unnest(CAST(:orgs AS varchar[]), CAST(:starts AS date[])) AS c(org, start)
        JOIN invoices i ON i.organization_id = c.org AND i.status <> 'void'
        JOIN invoice_periods p ON p.invoice_id = i.id AND p.period_start = c.start
        GROUP BY 1, 2
    """), {"orgs": orgs, "starts": starts}):
        covered[(row.org, Month.containing_date(row.start))] = row.revision

    return {key: (PeriodRecord(key[1], usage.get(key, {}), dict(billed.get(key, {})),
                               dict(billed_usage.get(key, {})), plans.get(key), bounds.get(key, assumed[key]),
                               fees.get(key), key in fees),
                  revision.get(key, 0),
                  covered.get(key, 0))
            for key in pairs}


def _assumed(period: Month, anchor: Anchor | None) -> BillingPeriod:
    try:
        return billing_period(period, anchor) if anchor is not None else BillingPeriod.calendar(period)
    except AnchorError:
        return BillingPeriod.calendar(period)  # reported when the organization's own period is planned
