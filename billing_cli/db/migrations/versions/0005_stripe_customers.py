"""What billing last told Stripe about each customer (name, e-mail), to update it when they change.

Revision ID: 0005_stripe_customers
Revises: 0004_usage_completeness
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_stripe_customers"
down_revision = "0004_usage_completeness"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stripe_customers",
        sa.Column("organization_id", sa.String(255), primary_key=True),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("stripe_customers")
