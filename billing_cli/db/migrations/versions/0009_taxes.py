"""Taxes: the versioned tax rates (`billing taxes apply`), each invoice's tax breakdown, and its
tax total. Invoices issued before (or with taxes off) have a tax total of 0 and no breakdown.

Revision ID: 0009_taxes
Revises: 0008_customer_billing_details
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_taxes"
down_revision = "0008_customer_billing_details"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tax_rates",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("country", sa.CHAR(2), nullable=False),
        sa.Column("region", sa.String(64), nullable=False, server_default=""),  # '' = the whole country
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("percentage", sa.Numeric, nullable=False),
        sa.Column("effective_from", sa.Date, nullable=False),
        sa.Column("mention", sa.Text),
        sa.Column("stripe_tax_rate_id", sa.String(255)),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("percentage >= 0 AND percentage < 100", name="ck_tax_rates_percentage"),
        sa.UniqueConstraint("country", "region", "name", "effective_from", name="uq_tax_rates_version"),
    )
    op.create_table(
        "invoice_taxes",
        sa.Column("invoice_id", sa.BigInteger, sa.ForeignKey("invoices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("country", sa.CHAR(2), nullable=False),
        sa.Column("region", sa.String(64)),
        sa.Column("percentage", sa.Numeric, nullable=False),
        sa.Column("taxable_amount", sa.Numeric, nullable=False),
        sa.Column("amount", sa.Numeric, nullable=False),
        sa.Column("treatment", sa.String(16), nullable=False),
        sa.Column("mention", sa.Text),
        sa.Column("tax_rate_id", sa.BigInteger, sa.ForeignKey("tax_rates.id")),
        sa.CheckConstraint("treatment IN ('standard', 'reverse_charge', 'exempt')", name="ck_invoice_taxes_treatment"),
        sa.CheckConstraint("treatment = 'standard' OR amount = 0", name="ck_invoice_taxes_zero_unless_standard"),
    )
    op.add_column("invoices", sa.Column("tax_total", sa.Numeric, nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("invoices", "tax_total")
    op.drop_table("invoice_taxes")
    op.drop_table("tax_rates")
