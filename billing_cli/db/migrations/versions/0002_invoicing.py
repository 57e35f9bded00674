"""Invoicing: price plans (with prices and tiers), invoices, invoice lines, invoice number counters.

Revision ID: 0002_invoicing
Revises: 0001_foundation
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_invoicing"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "price_plans",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False),
        sa.Column("base_fee", sa.Numeric, nullable=False, server_default="0"),
        sa.Column("minimum_commitment", sa.Numeric, nullable=False, server_default="0"),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("base_fee >= 0 AND minimum_commitment >= 0", name="ck_price_plans_fees_not_negative"),
    )
    op.create_table(
        "plan_prices",
        sa.Column("plan_id", sa.String(100), sa.ForeignKey("price_plans.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("metric", sa.String(100), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("model", sa.String(20), nullable=False),
        sa.Column("description", sa.String(255), nullable=False),
        sa.Column("unit_price", sa.Numeric),
        sa.Column("package_size", sa.Numeric),
        sa.Column("included", sa.Numeric, nullable=False, server_default="0"),
        sa.CheckConstraint("model IN ('per_unit', 'graduated', 'volume', 'package')", name="ck_plan_prices_model"),
        sa.CheckConstraint("unit_price >= 0 AND included >= 0 AND package_size > 0",
                           name="ck_plan_prices_not_negative"),
    )
    op.create_table(
        "plan_price_tiers",
        sa.Column("plan_id", sa.String(100), primary_key=True),
        sa.Column("metric", sa.String(100), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("up_to", sa.Numeric),
        sa.Column("unit_price", sa.Numeric, nullable=False),
        sa.Column("flat_fee", sa.Numeric, nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(["plan_id", "metric"], ["plan_prices.plan_id", "plan_prices.metric"],
                                ondelete="CASCADE", name="fk_plan_price_tiers_price"),
        sa.CheckConstraint("unit_price >= 0 AND flat_fee >= 0 AND (up_to IS NULL OR up_to > 0)",
                           name="ck_plan_price_tiers_not_negative"),
    )
    op.create_table(
        "invoices",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("organization_id", sa.String(255), nullable=False),
        sa.Column("period_start", sa.Date, nullable=False),
        sa.Column("number", sa.String(32), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False, server_default="issued"),
        sa.Column("currency", sa.CHAR(3), nullable=False),
        sa.Column("subtotal", sa.Numeric, nullable=False),
        sa.Column("total", sa.Numeric, nullable=False),
        sa.Column("plan_id", sa.String(100), nullable=False),
        sa.Column("bill_to_name", sa.String(255), nullable=False),
        sa.Column("bill_to_email", sa.String(255), nullable=False),
        sa.Column("issue_date", sa.Date, nullable=False),
        sa.Column("due_date", sa.Date, nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("voided_at", TZ),
        sa.Column("void_reason", sa.Text),
        sa.Column("replaces_invoice_id", sa.BigInteger, sa.ForeignKey("invoices.id")),
        sa.Column("pdf_sha256", sa.CHAR(64)),
        sa.Column("pdf_bytes", sa.Integer),
        sa.Column("pdf_rendered_at", TZ),
        sa.Column("pdf_path", sa.Text),
        sa.Column("s3_key", sa.Text),
        sa.Column("s3_uploaded_at", TZ),
        sa.Column("stripe_invoice_id", sa.String(255)),
        sa.Column("stripe_status", sa.String(32)),
        sa.Column("stripe_updated_at", TZ),
        sa.Column("emailed_at", TZ),
        sa.Column("email_message_id", sa.String(255)),
        sa.CheckConstraint("status IN ('issued', 'void')", name="ck_invoices_status"),
        sa.CheckConstraint("extract(day from period_start) = 1", name="ck_invoices_period_is_a_month"),
        sa.CheckConstraint("due_date >= issue_date", name="ck_invoices_due_after_issue"),
    )
    # The exactly-once guarantee lives here, not only in code: one live invoice per org and month.
    op.create_index("uq_invoices_one_live_per_org_month", "invoices", ["organization_id", "period_start"],
                    unique=True, postgresql_where=sa.text("status <> 'void'"))
    op.create_index("idx_invoices_period_start", "invoices", ["period_start"])
    op.create_table(
        "invoice_lines",
        sa.Column("invoice_id", sa.BigInteger, sa.ForeignKey("invoices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("line_no", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("metric", sa.String(100)),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("unit_price", sa.Numeric, nullable=False),
        sa.Column("amount", sa.Numeric, nullable=False),
    )
    op.create_table(
        "invoice_number_counters",
        sa.Column("period_start", sa.Date, primary_key=True),
        sa.Column("last_number", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("invoice_number_counters")
    op.drop_table("invoice_lines")
    op.drop_table("invoices")
    op.drop_table("plan_price_tiers")
    op.drop_table("plan_prices")
    op.drop_table("price_plans")
