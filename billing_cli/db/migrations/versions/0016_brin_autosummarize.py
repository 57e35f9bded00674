"""usage_events' BRIN index on received_at summarizes new block ranges as they fill (autosummarize).

The hourly late-events check reads the events received since the last roll-up through this index.
A BRIN index returns every block range it has not summarized as a possible match, and without
autosummarize a range is summarized only by a VACUUM of its partition; autovacuum runs on insert
volume (by default after a fifth of the partition's rows), so in the middle of a month the check
would read every event received since then: tens of hours of arrivals instead of two. With
autosummarize, autovacuum summarizes each range within about a minute of its filling
(autovacuum_naptime), so the check reads the ranges it needs (docs/scaling.md).

Existing partitions get the option, and their ranges not summarized yet are summarized now (a
read of the pages written since their last VACUUM); partitions made later get it from the
partition function. The parent index's own options cannot be changed (PostgreSQL: not for a
partitioned index), hence the function.

Revision ID: 0016_brin_autosummarize
Revises: 0015_invoice_fee_share
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0016_brin_autosummarize"
down_revision = "0015_invoice_fee_share"
branch_labels = None
depends_on = None

_ATTACHED = """    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', part, part || '_range');
"""

_AUTOSUMMARIZE = """    PERFORM billing_usage_events_autosummarize(part);
"""

# The BRIN index on received_at of one partition: autosummarize on.
_AUTOSUMMARIZE_FUNCTION = """
CREATE OR REPLACE FUNCTION billing_usage_events_autosummarize(part text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    brin text;
BEGIN
    FOR brin IN SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                JOIN pg_inherits h ON h.inhrelid = x.indexrelid
                WHERE x.indrelid = to_regclass(part) AND h.inhparent = 'idx_usage_events_received_at'::regclass LOOP
        EXECUTE format('ALTER INDEX %I SET (autosummarize = on)', brin);
    END LOOP;
END $$
"""


def _module(name: str):
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"billing_migration_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function_of_0014() -> str:
    """The partition function as 0014_pruned_month_partition left it (one text of it, not a copy)."""
    m14 = _module("0014_pruned_month_partition")
    return m14._function_of_0011().replace(m14._EXISTS, m14._EXISTS + m14._REFUSE_PRUNED, 1)


def upgrade() -> None:
    op.execute(_AUTOSUMMARIZE_FUNCTION)
    function = _function_of_0014()
    assert _ATTACHED in function
    op.execute(function.replace(_ATTACHED, _ATTACHED + _AUTOSUMMARIZE, 1))
    op.execute("""
        SELECT billing_usage_events_autosummarize(c.relname), brin_summarize_new_values(x.indexrelid)
        FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
        JOIN pg_index x ON x.indrelid = c.oid
        JOIN pg_inherits hi ON hi.inhrelid = x.indexrelid AND hi.inhparent = 'idx_usage_events_received_at'::regclass
        WHERE h.inhparent = 'usage_events'::regclass
    """)


def downgrade() -> None:
    op.execute(_function_of_0014())
    op.execute("DROP FUNCTION billing_usage_events_autosummarize(text)")
    op.execute("""
        DO $$
        DECLARE brin text;
        BEGIN
            FOR brin IN SELECT c.relname FROM pg_inherits hi JOIN pg_class c ON c.oid = hi.inhrelid
                        WHERE hi.inhparent = 'idx_usage_events_received_at'::regclass LOOP
                EXECUTE format('ALTER INDEX %I RESET (autosummarize)', brin);
            END LOOP;
        END $$
    """)
