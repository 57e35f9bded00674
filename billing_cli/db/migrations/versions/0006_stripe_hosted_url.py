"""The address of Stripe's hosted page for each sent invoice, linked from the invoice e-mail.

Revision ID: 0006_stripe_hosted_url
Revises: 0005_stripe_customers
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_stripe_hosted_url"
down_revision = "0005_stripe_customers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("invoices", sa.Column("stripe_hosted_url", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("invoices", "stripe_hosted_url")
