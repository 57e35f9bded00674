"""Credit notes: the document that cancels a void invoice the customer had already been sent, with
its own gapless number per month (CN-2024-01-000001), its lines (the invoice's, negated) and how
far its delivery got (PDF, S3, e-mail; its Stripe side is the void invoice's `stripe_reversal`).

One credit note per invoice at most: a unique constraint on `invoice_id`, so no rerun, crash or
race can ever credit an invoice twice.

Revision ID: 0010_credit_notes
Revises: 0009_taxes
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_credit_notes"
down_revision = "0009_taxes"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "credit_note_number_counters",
        sa.Column("period_start", sa.Date, primary_key=True),
        sa.Column("last_number", sa.Integer, nullable=False),
    )
    op.create_table(
        "credit_notes",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("number", sa.String(32), nullable=False, unique=True),
        sa.Column("invoice_id", sa.BigInteger, sa.ForeignKey("invoices.id"), nullable=False),
        sa.Column("organization_id", sa.String(255), nullable=False),
        sa.Column("period_start", sa.Date, nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False),
        sa.Column("subtotal", sa.Numeric, nullable=False),  # the negated lines' sum
        sa.Column("tax_total", sa.Numeric, nullable=False, server_default="0"),  # the invoice's tax, reversed
        sa.Column("total", sa.Numeric, nullable=False),  # subtotal + tax_total: minus the invoice's total
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("issue_date", sa.Date, nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("pdf_sha256", sa.CHAR(64)),
        sa.Column("pdf_bytes", sa.Integer),
        sa.Column("pdf_rendered_at", TZ),
        sa.Column("s3_key", sa.Text),
        sa.Column("s3_uploaded_at", TZ),
        sa.Column("emailed_at", TZ),
        sa.Column("email_message_id", sa.Text),
        sa.UniqueConstraint("invoice_id", name="uq_credit_notes_one_per_invoice"),
    )
    op.create_index("ix_credit_notes_organization", "credit_notes", ["organization_id"])
    op.create_index("ix_credit_notes_undelivered", "credit_notes", ["organization_id"],
                    postgresql_where=sa.text("emailed_at IS NULL OR s3_uploaded_at IS NULL OR pdf_sha256 IS NULL"))
    op.create_table(
        "credit_note_lines",
        sa.Column("credit_note_id", sa.BigInteger, sa.ForeignKey("credit_notes.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("line_no", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("metric", sa.String(100)),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("unit_price", sa.Numeric, nullable=False),
        sa.Column("amount", sa.Numeric, nullable=False),
        sa.Column("period_start", sa.Date, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("credit_note_lines")
    op.drop_index("ix_credit_notes_undelivered", table_name="credit_notes")
    op.drop_index("ix_credit_notes_organization", table_name="credit_notes")
    op.drop_table("credit_notes")
    op.drop_table("credit_note_number_counters")
