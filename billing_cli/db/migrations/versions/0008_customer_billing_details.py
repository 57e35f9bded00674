"""The customer's billing details, written by the account service: postal address, country (ISO
3166-1 alpha-2), tax id and tax exemption; and their snapshot on each invoice, so that an invoice
is rendered again exactly as it was issued, whatever the organization becomes.

Every new organizations column is nullable or has a default: the account service's existing
inserts and updates keep working. The country is checked by billing when it invoices (a bad code
fails that organization alone), never by a constraint that would reject the other service's writes.

Revision ID: 0008_customer_billing_details
Revises: 0007_stripe_reversals
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_customer_billing_details"
down_revision = "0007_stripe_reversals"
branch_labels = None
depends_on = None

_ADDRESS = (("billing_address_line1", 255), ("billing_address_line2", 255), ("billing_postal_code", 32),
            ("billing_city", 255), ("billing_region", 255), ("billing_country", 64), ("tax_id", 64))


def upgrade() -> None:
    for name, length in _ADDRESS:
        op.add_column("organizations", sa.Column(name, sa.String(length), nullable=True))
    op.add_column("organizations", sa.Column("tax_exempt", sa.Boolean(), nullable=False,
                                             server_default=sa.false()))
    op.add_column("invoices", sa.Column("bill_to_address", sa.ARRAY(sa.Text()), nullable=True))
    op.add_column("invoices", sa.Column("bill_to_tax_id", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("invoices", "bill_to_tax_id")
    op.drop_column("invoices", "bill_to_address")
    op.drop_column("organizations", "tax_exempt")
    for name, _ in reversed(_ADDRESS):
        op.drop_column("organizations", name)
