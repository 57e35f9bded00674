"""Run history: job_runs (one row per run, written at start and at the end).

Revision ID: 0003_job_runs
Revises: 0002_invoicing
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003_job_runs"
down_revision = "0002_invoicing"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("job", sa.String(50), nullable=False),
        sa.Column("period", sa.String(100), nullable=False),
        sa.Column("shard", sa.String(20)),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("parameters", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("status", sa.String(16), nullable=False, server_default="running"),
        sa.Column("started_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", TZ),
        sa.Column("duration_seconds", sa.Numeric),
        sa.Column("counts", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("errors", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("revenue", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("failed", postgresql.JSONB, nullable=False, server_default="[]"),
        sa.Column("message", sa.Text),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("version", sa.String(50), nullable=False),
        sa.CheckConstraint("status IN ('running', 'succeeded', 'partial', 'failed', 'interrupted')",
                           name="ck_job_runs_status"),
    )
    op.create_index("idx_job_runs_job_started", "job_runs", ["job", sa.text("started_at DESC")])


def downgrade() -> None:
    op.drop_table("job_runs")
