"""What became of the Stripe invoice of an invoice we voided (a regeneration): pending until it is
voided in Stripe (open), credited in full (paid) or deleted (draft).

Revision ID: 0007_stripe_reversals
Revises: 0006_stripe_hosted_url
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_stripe_reversals"
down_revision = "0006_stripe_hosted_url"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("invoices", sa.Column("stripe_reversal", sa.String(16), nullable=True))
    op.add_column("invoices", sa.Column("stripe_credit_note_id", sa.String(255), nullable=True))
    op.add_column("invoices", sa.Column("stripe_reversed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_check_constraint("ck_invoices_stripe_reversal", "invoices",
                               "stripe_reversal IN ('pending', 'voided', 'credited', 'deleted')")
    op.create_check_constraint("ck_invoices_stripe_reversal_only_void", "invoices",
                               "stripe_reversal IS NULL OR status = 'void'")
    # Invoices voided before this migration whose Stripe invoice may still be open or paid.
    op.execute("UPDATE invoices SET stripe_reversal = 'pending' WHERE status = 'void' AND stripe_invoice_id IS NOT NULL")
    op.create_index("ix_invoices_stripe_reversal_pending", "invoices", ["organization_id"],
                    postgresql_where=sa.text("stripe_reversal = 'pending'"))


def downgrade() -> None:
    op.drop_index("ix_invoices_stripe_reversal_pending", table_name="invoices")
    op.drop_constraint("ck_invoices_stripe_reversal_only_void", "invoices")
    op.drop_constraint("ck_invoices_stripe_reversal", "invoices")
    op.drop_column("invoices", "stripe_reversed_at")
    op.drop_column("invoices", "stripe_credit_note_id")
    op.drop_column("invoices", "stripe_reversal")
