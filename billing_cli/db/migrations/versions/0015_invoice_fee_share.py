"""invoices.fee_share: the share of its period's fees an invoice billed.

Late usage of an invoiced period is billed by rating the whole period again and subtracting what
was billed. The fees in that rating must be those the period's invoice billed, not those the
organization's status gives today: an organization inactive in January and active again in
February must not be charged January's base fee by an adjustment. NULL: an invoice issued before
this revision (its share is not known; its period is rated with the fees the status gives now, as
before). Otherwise a JSON object: {"owed": false} (no fees), or {"days", "of_days", "first",
"last"} (anchors.FeeShare).

Revision ID: 0015_invoice_fee_share
Revises: 0014_pruned_month_partition
"""

from alembic import op

revision = "0015_invoice_fee_share"
down_revision = "0014_pruned_month_partition"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE invoices ADD COLUMN fee_share jsonb")
    op.execute("COMMENT ON COLUMN invoices.fee_share IS 'the share of its period''s base fee and minimum "
               "commitment the invoice billed: {\"owed\": false}, or {days, of_days, first, last}; NULL before 0015'")


def downgrade() -> None:
    op.execute("ALTER TABLE invoices DROP COLUMN fee_share")
