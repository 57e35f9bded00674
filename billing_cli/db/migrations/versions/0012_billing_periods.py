"""Billing periods per organization: an anchor day, and each invoice's period as an interval.

- organizations.billing_anchor_day: NULL (calendar months, the default) or 1..31 (CHECK), written by
  other services. billing_anchor_previous and billing_anchor_changed_at are kept by a trigger (like
  status_changed_at), so a change takes effect at the next period boundary whoever makes it.
- invoices.period_start (DATE, the billed month) becomes invoices.billing_month: the month the
  period starts in, which names the period (invoice number, the per-month counter, one live
  invoice per organization and month). New invoices.period_start / period_end (TIMESTAMPTZ, UTC,
  half-open, midnight-aligned): the period itself, filled for existing invoices from their month.
- uq_invoices_one_live_period: one live invoice per organization and period start, beside the
  existing one per organization and billing month (a period never starts in another month).
- price_plan_versions: every definition `billing plans apply` gave a plan, from when it is in force
  (a period is rated with the version in force when it starts). Existing plans get theirs on their
  next change (the definition until then, in force since 1970).

Revision ID: 0012_billing_periods
Revises: 0011_partition_usage_events
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012_billing_periods"
down_revision = "0011_partition_usage_events"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("organizations", sa.Column("billing_anchor_day", sa.SmallInteger, nullable=True))
    op.create_check_constraint("ck_organizations_billing_anchor_day", "organizations",
                               "billing_anchor_day BETWEEN 1 AND 31")
    op.add_column("organizations", sa.Column("billing_anchor_previous", sa.SmallInteger, nullable=True))
    op.add_column("organizations", sa.Column("billing_anchor_changed_at", TZ, nullable=True))
    op.execute("""
        CREATE FUNCTION billing_organization_anchor_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.billing_anchor_day IS DISTINCT FROM OLD.billing_anchor_day THEN
                NEW.billing_anchor_previous := OLD.billing_anchor_day;
                NEW.billing_anchor_changed_at := now();
            END IF;
            RETURN NEW;
        END $$
    """)
    op.execute("""
        CREATE TRIGGER trg_organizations_anchor_changed BEFORE UPDATE OF billing_anchor_day ON organizations
        FOR EACH ROW EXECUTE FUNCTION billing_organization_anchor_changed()
    """)

    op.alter_column("invoices", "period_start", new_column_name="billing_month")
    op.add_column("invoices", sa.Column("period_start", TZ, nullable=True))
    op.add_column("invoices", sa.Column("period_end", TZ, nullable=True))
    op.execute("UPDATE invoices SET period_start = billing_month::timestamp AT TIME ZONE 'UTC', "
               "period_end = (billing_month + interval '1 month')::timestamp AT TIME ZONE 'UTC'")
    op.alter_column("invoices", "period_start", nullable=False)
    op.alter_column("invoices", "period_end", nullable=False)
    op.create_check_constraint("ck_invoices_period", "invoices", """
        period_start < period_end
        AND period_start = date_trunc('day', period_start, 'UTC') AND period_end = date_trunc('day', period_end, 'UTC')
        AND date_trunc('month', period_start, 'UTC') = billing_month::timestamp AT TIME ZONE 'UTC'""")
    op.create_index("uq_invoices_one_live_period", "invoices", ["organization_id", "period_start"], unique=True,
                    postgresql_where=sa.text("status <> 'void'"))

    op.create_table(
        "price_plan_versions",
        sa.Column("plan_id", sa.String(100), sa.ForeignKey("price_plans.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("effective_from", TZ, primary_key=True),
        sa.Column("snapshot", postgresql.JSONB, nullable=False),
        sa.Column("applied_at", TZ, nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("price_plan_versions")
    op.drop_index("uq_invoices_one_live_period", table_name="invoices")
    op.drop_constraint("ck_invoices_period", "invoices")
    op.drop_column("invoices", "period_end")
    op.drop_column("invoices", "period_start")
    op.alter_column("invoices", "billing_month", new_column_name="period_start")
    op.execute("DROP TRIGGER trg_organizations_anchor_changed ON organizations")
    op.execute("DROP FUNCTION billing_organization_anchor_changed()")
    op.drop_column("organizations", "billing_anchor_changed_at")
    op.drop_column("organizations", "billing_anchor_previous")
    op.drop_constraint("ck_organizations_billing_anchor_day", "organizations")
    op.drop_column("organizations", "billing_anchor_day")
