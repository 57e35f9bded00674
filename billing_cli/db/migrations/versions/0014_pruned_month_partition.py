"""billing_usage_events_partition refuses a month whose events were pruned.

An event that arrives for a pruned month lands in the DEFAULT partition, where aggregate-hourly
reports it on every run (it is not billed: the month's roll-ups are final). Making that month's
partition again, as the report advises for a backfilled month, would move the event out of the
default partition into a partition nothing reads: no longer reported, never billed, and dropped
unseen by the next `billing usage prune`. The function now raises instead, naming the month.

Revision ID: 0014_pruned_month_partition
Revises: 0013_line_period_bounds
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0014_pruned_month_partition"
down_revision = "0013_line_period_bounds"
branch_labels = None
depends_on = None

_EXISTS = """    IF to_regclass(part) IS NOT NULL THEN
        RETURN NULL;
    END IF;
"""

_REFUSE_PRUNED = """    IF EXISTS (SELECT 1 FROM usage_pruned_months p WHERE p.period_start = first_day) THEN
        RAISE EXCEPTION 'the events of % were pruned (billing usage prune): its partition is not made again',
            to_char(first_day, 'YYYY-MM')
            USING HINT = 'Events that arrive for a pruned month stay in the default partition, where '
                         'aggregate-hourly reports them; they are not billed (the month is closed). Find out '
                         'why they arrived, then delete them.';
    END IF;
"""


def _function_of_0011() -> str:
    """The function as 0011_partition_usage_events made it (one text of it, not a copy)."""
    path = Path(__file__).with_name("0011_partition_usage_events.py")
    spec = importlib.util.spec_from_file_location("billing_migration_0011", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module._PARTITION_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
    assert _EXISTS in text
    return text


def upgrade() -> None:
    op.execute(_function_of_0011().replace(_EXISTS, _EXISTS + _REFUSE_PRUNED, 1))


def downgrade() -> None:
    op.execute(_function_of_0011())
