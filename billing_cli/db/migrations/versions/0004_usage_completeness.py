"""Usage completeness: every change to events noticed, late usage billed once, final invoices.

- organizations.status_changed_at, kept by a trigger (other services' inserts and updates of
  organizations keep working unchanged): when an organization churned, for its final invoice.
- usage_event_changes, kept by statement triggers on UPDATE and DELETE of usage_events: the hours
  whose events were edited in place (inserts are seen by the per-hour count and arrival time).
- usage_revisions: a revision number per (organization, month), raised by every roll-up that
  changes its usage. An invoice records the revision of each period it billed (invoice_periods),
  so a period whose revision is newer than anything billed has usage not billed yet. Numbers,
  not times: the revision is read in the same snapshot as the usage, so no race can hide a change.
- invoices.plan_snapshot, invoice_lines.period_start, invoice_usage, invoice_periods: what each
  invoice billed, per period and metric, with which plan, and which periods it accounted for, so a
  month can be rated again and only the difference billed.
- price_plans.free_metrics: metrics a plan deliberately does not charge for.
- job_runs.status 'mismatch': a `billing reconcile` run that found differences; job_runs.targeted:
  a run limited to some organizations (--org), which says nothing about the month's health.

Revision ID: 0004_usage_completeness
Revises: 0003_job_runs
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004_usage_completeness"
down_revision = "0003_job_runs"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    # -- organizations: when the status last changed ---------------------------------------------
    op.execute("ALTER TABLE organizations ADD COLUMN status_changed_at TIMESTAMPTZ")
    op.execute("UPDATE organizations SET status_changed_at = "
               "CASE WHEN status = 'active' THEN created_at ELSE updated_at END")
    op.execute("""
        CREATE FUNCTION billing_organization_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                NEW.status_changed_at := coalesce(NEW.status_changed_at, NEW.created_at, now());
            ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
                NEW.status_changed_at := now();
            END IF;
            RETURN NEW;
        END $$
    """)
    op.execute("""
        CREATE TRIGGER trg_organizations_status_changed BEFORE INSERT OR UPDATE OF status ON organizations
        FOR EACH ROW EXECUTE FUNCTION billing_organization_status_changed()
    """)

    # -- usage_events edited in place: which hours -------------------------------------------------
    op.create_table(
        "usage_event_changes",
        sa.Column("hour_start", TZ, primary_key=True),
        sa.Column("change_id", sa.BigInteger, nullable=False),
        sa.Column("changed_at", TZ, nullable=False, server_default=sa.func.now()),
    )
    op.execute("CREATE SEQUENCE usage_event_change_ids")
    op.execute("""
        CREATE FUNCTION billing_usage_events_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- One row per hour touched (before and after an UPDATE), with a fresh change id: the
            -- roll-up deletes exactly the ids it has seen, so a change made meanwhile stays.
            IF TG_OP = 'UPDATE' THEN
                INSERT INTO usage_event_changes (hour_start, change_id, changed_at)
                SELECT h, nextval('usage_event_change_ids'), now() FROM (
                    SELECT DISTINCT date_trunc('hour', occurred_at, 'UTC') AS h
                    FROM (SELECT occurred_at FROM old_rows UNION ALL SELECT occurred_at FROM new_rows) r) hours
                ON CONFLICT (hour_start) DO UPDATE SET change_id = EXCLUDED.change_id, changed_at = EXCLUDED.changed_at;
            ELSE
                INSERT INTO usage_event_changes (hour_start, change_id, changed_at)
                SELECT h, nextval('usage_event_change_ids'), now() FROM (
                    SELECT DISTINCT date_trunc('hour', occurred_at, 'UTC') AS h FROM old_rows) hours
                ON CONFLICT (hour_start) DO UPDATE SET change_id = EXCLUDED.change_id, changed_at = EXCLUDED.changed_at;
            END IF;
            RETURN NULL;
        END $$
    """)
    # Events that arrive late for an hour rolled up long ago: the hourly job finds them by arrival
    # time. BRIN: tiny and nearly free to maintain on a table filled in arrival order.
    op.execute("CREATE INDEX idx_usage_events_received_at ON usage_events USING brin (received_at)")
    op.execute("""
        CREATE TRIGGER trg_usage_events_updated AFTER UPDATE ON usage_events
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION billing_usage_events_changed()
    """)
    op.execute("""
        CREATE TRIGGER trg_usage_events_deleted AFTER DELETE ON usage_events
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION billing_usage_events_changed()
    """)

    # -- months whose roll-up changed ----------------------------------------------------------------
    op.create_table(
        "usage_revisions",
        sa.Column("organization_id", sa.String(255), primary_key=True),
        sa.Column("period_start", sa.Date, primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("revised_at", TZ, nullable=False, server_default=sa.func.now()),
    )

    # -- what each invoice billed -----------------------------------------------------------------------
    op.add_column("invoices", sa.Column("plan_snapshot", postgresql.JSONB))
    op.add_column("invoice_lines", sa.Column("period_start", sa.Date))
    op.execute("UPDATE invoice_lines l SET period_start = i.period_start FROM invoices i WHERE i.id = l.invoice_id")
    op.alter_column("invoice_lines", "period_start", nullable=False)
    op.create_table(
        "invoice_usage",
        sa.Column("invoice_id", sa.BigInteger, sa.ForeignKey("invoices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("period_start", sa.Date, primary_key=True),
        sa.Column("metric", sa.String(100), primary_key=True),
        sa.Column("quantity", sa.Numeric, nullable=False),
    )
    op.create_table(
        "invoice_periods",
        sa.Column("invoice_id", sa.BigInteger, sa.ForeignKey("invoices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("period_start", sa.Date, primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),  # the period's usage revision it billed
    )
    op.execute("INSERT INTO invoice_periods (invoice_id, period_start, revision) "
               "SELECT id, period_start, 0 FROM invoices")
    # Invoices issued before this revision billed their month's usage as it was rolled up then;
    # the best record of it now is the roll-up itself.
    op.execute("""
        INSERT INTO invoice_usage (invoice_id, period_start, metric, quantity)
        SELECT i.id, i.period_start, h.metric, sum(h.quantity)
        FROM invoices i JOIN usage_hourly h ON h.organization_id = i.organization_id
         AND h.hour_start >= i.period_start AND h.hour_start < i.period_start + interval '1 month'
        GROUP BY 1, 2, 3
    """)
    op.create_index("idx_invoices_organization", "invoices", ["organization_id", "period_start"])

    op.drop_constraint("ck_job_runs_status", "job_runs")
    op.create_check_constraint("ck_job_runs_status", "job_runs",
                               "status IN ('running', 'succeeded', 'partial', 'failed', 'interrupted', 'mismatch')")
    op.add_column("job_runs", sa.Column("targeted", sa.Boolean, nullable=False, server_default="false"))

    op.add_column("price_plans", sa.Column("free_metrics", postgresql.ARRAY(sa.String(100)), nullable=False,
                                           server_default="{}"))


def downgrade() -> None:
    op.drop_column("price_plans", "free_metrics")
    op.drop_column("job_runs", "targeted")
    op.drop_constraint("ck_job_runs_status", "job_runs")
    op.create_check_constraint("ck_job_runs_status", "job_runs",
                               "status IN ('running', 'succeeded', 'partial', 'failed', 'interrupted')")
    op.drop_index("idx_invoices_organization", "invoices")
    op.drop_table("invoice_periods")
    op.drop_table("invoice_usage")
    op.drop_column("invoice_lines", "period_start")
    op.drop_column("invoices", "plan_snapshot")
    op.drop_table("usage_revisions")
    op.execute("DROP INDEX idx_usage_events_received_at")
    op.execute("DROP TRIGGER trg_usage_events_deleted ON usage_events")
    op.execute("DROP TRIGGER trg_usage_events_updated ON usage_events")
    op.execute("DROP FUNCTION billing_usage_events_changed()")
    op.execute("DROP SEQUENCE usage_event_change_ids")
    op.drop_table("usage_event_changes")
    op.execute("DROP TRIGGER trg_organizations_status_changed ON organizations")
    op.execute("DROP FUNCTION billing_organization_status_changed()")
    op.execute("ALTER TABLE organizations DROP COLUMN status_changed_at")
