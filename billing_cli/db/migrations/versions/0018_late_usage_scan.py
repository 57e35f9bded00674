"""late_usage_scan: when the scheduled run last looked for late events, and which hours it found.

The late-events check reads the events received since an hour before the last roll-up (the hour
is the margin for slow producer transactions). "The last roll-up" was max(aggregated_at), which any
roll-up moves: invoice-monthly's stale hours or an `aggregate-hourly --hour` run, a minute before
the scheduled run, moved the margin past an event that no scan had looked for yet, and that event
was never rolled up. The margin now counts from the previous scan itself, recorded here in the
scan's own transaction together with the hours it found: those stay late for the next scan until a
roll-up after the scan has read them, so a run that stops before rolling them up loses none.

On an existing database the row starts at max(aggregated_at): the first scan after the upgrade
reads exactly what the check before it would have read. On a new one there is no row until the
first scan (which then reads from an hour before the first roll-up ever: usage_rollup.late_hours).

Revision ID: 0018_late_usage_scan
Revises: 0017_job_runs_session
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0018_late_usage_scan"
down_revision = "0017_job_runs_session"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "late_usage_scan",
        sa.Column("id", sa.Boolean, primary_key=True, server_default=sa.true()),
        sa.Column("scanned_at", TZ, nullable=False),
        sa.Column("found_hours", postgresql.ARRAY(TZ), nullable=False, server_default="{}"),
        sa.CheckConstraint("id", name="ck_late_usage_scan_one_row"),
    )
    op.execute("INSERT INTO late_usage_scan (id, scanned_at) "
               "SELECT true, max(aggregated_at) FROM aggregated_hours HAVING max(aggregated_at) IS NOT NULL")


def downgrade() -> None:
    op.drop_table("late_usage_scan")
