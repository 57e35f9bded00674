"""The days each invoice line and credit note line bills, when they are not a calendar month.

An adjustment line bills an earlier period, named by its month (`period_start`). For an
organization with an anchor day that period is not the calendar month (15 Jan - 14 Feb 2024 is
named 2024-01), and the e-invoice and Stripe need its days. New `period_from` / `period_to`
(TIMESTAMPTZ, UTC, half-open, midnight-aligned) on `invoice_lines` and `credit_note_lines`: the
interval the line bills; NULL: the calendar month of `period_start`. Both are set or neither.

Existing lines are filled where their period was an anchored one: a line of the invoice's own month
takes the invoice's period; an adjustment takes the period of the organization's invoice of that
month (the live one, else the latest one); a credit note line takes the credited invoice's line's.
An adjustment of a period that was never invoiced has no stored days to take: it stays NULL (its
calendar month, as it was stated until now).

Revision ID: 0013_line_period_bounds
Revises: 0012_billing_periods
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_line_period_bounds"
down_revision = "0012_billing_periods"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
TABLES = ("invoice_lines", "credit_note_lines")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("period_from", TZ, nullable=True))
        op.add_column(table, sa.Column("period_to", TZ, nullable=True))
        op.create_check_constraint(f"ck_{table}_period_bounds", table, """
            (period_from IS NULL AND period_to IS NULL)
            OR (period_from IS NOT NULL AND period_to IS NOT NULL AND period_from < period_to
                AND period_from = date_trunc('day', period_from, 'UTC') AND period_to = date_trunc('day', period_to, 'UTC')
                AND date_trunc('month', period_from, 'UTC') = period_start::timestamp AT TIME ZONE 'UTC')""")
    # A line of the invoice's own period: the invoice's days.
    op.execute("""
        UPDATE invoice_lines l SET period_from = i.period_start, period_to = i.period_end
        FROM invoices i
        WHERE l.invoice_id = i.id AND l.period_start = i.billing_month
          AND (i.period_start, i.period_end) IS DISTINCT FROM
              (i.billing_month::timestamp AT TIME ZONE 'UTC',
               (i.billing_month + interval '1 month')::timestamp AT TIME ZONE 'UTC')""")
    # An adjustment: the days the organization's invoice of that month billed (the live one first).
    op.execute("""
        WITH adjusted AS (
            SELECT l.invoice_id, l.line_no, e.period_start, e.period_end
            FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id
            CROSS JOIN LATERAL (
                SELECT p.period_start, p.period_end FROM invoices p
                WHERE p.organization_id = i.organization_id AND p.billing_month = l.period_start
                ORDER BY p.status = 'void', p.id DESC LIMIT 1) e
            WHERE l.period_start <> i.billing_month
              AND (e.period_start, e.period_end) IS DISTINCT FROM
                  (l.period_start::timestamp AT TIME ZONE 'UTC',
                   (l.period_start + interval '1 month')::timestamp AT TIME ZONE 'UTC'))
        UPDATE invoice_lines l SET period_from = a.period_start, period_to = a.period_end
        FROM adjusted a WHERE l.invoice_id = a.invoice_id AND l.line_no = a.line_no""")
    # A credit note line: the credited invoice's line it negates.
    op.execute("""
        UPDATE credit_note_lines c SET period_from = l.period_from, period_to = l.period_to
        FROM credit_notes n, invoice_lines l
        WHERE c.credit_note_id = n.id AND l.invoice_id = n.invoice_id AND l.line_no = c.line_no
          AND l.period_from IS NOT NULL""")


def downgrade() -> None:
    for table in TABLES:
        op.drop_constraint(f"ck_{table}_period_bounds", table)
        op.drop_column(table, "period_to")
        op.drop_column(table, "period_from")
