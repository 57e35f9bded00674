"""job_runs records the database session of each run, and a run found dead is marked `abandoned`.

A run holds one database session from its start to its end (it holds the run's lock, and records
the run). A process killed with SIGKILL (the OOM killer, Kubernetes after its grace period) never
records its end: its row stayed `running` for ever, and `billing status --check` called the job
stuck even after a rerun had finished the work. The session's backend pid and start time tell
whether it is still there (pg_stat_activity): once it is gone, so is the run.

Revision ID: 0017_job_runs_session
Revises: 0016_brin_autosummarize
"""

import sqlalchemy as sa
from alembic import op

revision = "0017_job_runs_session"
down_revision = "0016_brin_autosummarize"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job_runs", sa.Column("session_pid", sa.Integer, nullable=True))
    op.add_column("job_runs", sa.Column("session_started_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint("ck_job_runs_status", "job_runs")
    op.create_check_constraint(
        "ck_job_runs_status", "job_runs",
        "status IN ('running', 'succeeded', 'partial', 'failed', 'interrupted', 'mismatch', 'abandoned')")


def downgrade() -> None:
    op.execute("UPDATE job_runs SET status = 'running' WHERE status = 'abandoned'")  # as they were
    op.drop_constraint("ck_job_runs_status", "job_runs")
    op.create_check_constraint("ck_job_runs_status", "job_runs",
                               "status IN ('running', 'succeeded', 'partial', 'failed', 'interrupted', 'mismatch')")
    op.drop_column("job_runs", "session_started_at")
    op.drop_column("job_runs", "session_pid")
