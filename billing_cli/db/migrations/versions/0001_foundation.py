"""Foundation: organizations, usage_events, usage_hourly, aggregated_hours, demo_organizations.

Revision ID: 0001_foundation
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_foundation"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    # The seed's table, kept exactly (other services create and update organizations). If it is
    # already there (created by the seed's SQL), only billing's columns are added.
    op.execute("""
        CREATE TABLE IF NOT EXISTS organizations (
            id VARCHAR(255) PRIMARY KEY,
            name VARCHAR(255) NOT NULL,
            email VARCHAR(255) NOT NULL,
            status VARCHAR(50) NOT NULL DEFAULT 'active',
            created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
            updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
        )
    """)
    op.execute("CREATE INDEX IF NOT EXISTS idx_organizations_status ON organizations(status)")
    op.execute("ALTER TABLE organizations ADD COLUMN IF NOT EXISTS currency CHAR(3) NOT NULL DEFAULT 'USD'")
    op.execute("ALTER TABLE organizations ADD COLUMN IF NOT EXISTS price_plan_id VARCHAR(100)")
    op.execute("ALTER TABLE organizations ADD COLUMN IF NOT EXISTS stripe_customer_id VARCHAR(255)")

    op.create_table(
        "usage_events",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("organization_id", sa.String(255), nullable=False),
        sa.Column("metric", sa.String(100), nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("occurred_at", TZ, nullable=False),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("received_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("quantity >= 0", name="ck_usage_events_quantity_not_negative"),
        sa.UniqueConstraint("organization_id", "idempotency_key", name="uq_usage_events_org_idempotency_key"),
    )
    # "All events of one hour": a range scan on occurred_at. received_at is included so that the
    # completeness check (count and latest arrival per hour) is an index-only scan.
    op.execute("CREATE INDEX idx_usage_events_occurred_at ON usage_events (occurred_at) INCLUDE (received_at)")

    op.create_table(
        "usage_hourly",
        sa.Column("organization_id", sa.String(255), nullable=False),
        sa.Column("metric", sa.String(100), nullable=False),
        sa.Column("hour_start", TZ, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("event_count", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("organization_id", "metric", "hour_start", name="pk_usage_hourly"),
        sa.CheckConstraint("quantity >= 0", name="ck_usage_hourly_quantity_not_negative"),
        sa.CheckConstraint("date_trunc('hour', hour_start, 'UTC') = hour_start", name="ck_usage_hourly_whole_hour"),
    )
    op.create_index("idx_usage_hourly_hour_start", "usage_hourly", ["hour_start"])

    op.create_table(
        "aggregated_hours",
        sa.Column("hour_start", TZ, primary_key=True),
        sa.Column("aggregated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("event_count", sa.BigInteger, nullable=False),
        sa.Column("last_received_at", TZ),
    )

    op.create_table(
        "demo_organizations",
        sa.Column("organization_id", sa.String(255), primary_key=True),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("demo_organizations")
    op.drop_table("aggregated_hours")
    op.drop_table("usage_hourly")
    op.drop_table("usage_events")
    op.execute("ALTER TABLE organizations DROP COLUMN IF EXISTS stripe_customer_id")
    op.execute("ALTER TABLE organizations DROP COLUMN IF EXISTS price_plan_id")
    op.execute("ALTER TABLE organizations DROP COLUMN IF EXISTS currency")
