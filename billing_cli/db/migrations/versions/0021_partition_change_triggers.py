"""In-place edits aimed at a partition of usage_events itself are recorded too.

The statement triggers of 0004 (usage_event_changes: the hours whose events were edited or deleted
in place) are on usage_events. PostgreSQL fires a statement trigger only on the table a statement
names: `UPDATE usage_events_2024_01 ...` or `DELETE FROM usage_events_default ...` (an operator
clearing stray events, a fix made on one month) recorded nothing, and an edit that keeps the
hour's event count was never rolled up or billed. Every partition now carries the same two
triggers, existing ones here and new ones from billing_usage_events_partition. A statement through
usage_events still fires only usage_events' own (never both). The partition function's own move
of a month's rows out of the DEFAULT partition is not an edit and stays unrecorded. (TRUNCATE of a partition is still not recorded: nothing in
billing truncates, and `billing usage prune` drops partitions whose months are closed.)

Revision ID: 0021_partition_change_triggers
Revises: 0020_anchor_history
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0021_partition_change_triggers"
down_revision = "0020_anchor_history"
branch_labels = None
depends_on = None

_TRIGGERS = """
    EXECUTE format('CREATE TRIGGER trg_usage_events_partition_updated AFTER UPDATE ON %I '
                   'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION billing_usage_events_changed()', {table});
    EXECUTE format('CREATE TRIGGER trg_usage_events_partition_deleted AFTER DELETE ON %I '
                   'REFERENCING OLD TABLE AS old_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION billing_usage_events_changed()', {table});
"""

# Where 0016 left the function: the partition attached, its BRIN index set to autosummarize.
_MADE = """    PERFORM billing_usage_events_autosummarize(part);
"""

# The function's move of a month's rows out of the DEFAULT partition is not an edit of them: the
# default partition's trigger is off for that one statement (the table is locked ACCESS EXCLUSIVE
# by then: nobody else's statement can run without it).
_MOVE = """    EXECUTE format('WITH moved AS (DELETE FROM usage_events_default"""
_MOVED = """    GET DIAGNOSTICS moved = ROW_COUNT;
"""
_TRIGGER_OFF = """    ALTER TABLE usage_events_default DISABLE TRIGGER trg_usage_events_partition_deleted;
"""
_TRIGGER_ON = """    ALTER TABLE usage_events_default ENABLE TRIGGER trg_usage_events_partition_deleted;
"""


def _module(name: str):
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"billing_migration_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function_of_0016() -> str:
    """billing_usage_events_partition as 0016_brin_autosummarize left it (its text, not a copy)."""
    m16 = _module("0016_brin_autosummarize")
    text = m16._function_of_0014().replace(m16._ATTACHED, m16._ATTACHED + m16._AUTOSUMMARIZE, 1)
    assert _MADE in text and _MOVE in text and _MOVED in text
    return text


def _function() -> str:
    """0016's function, giving each partition it makes the triggers, and moving rows untracked."""
    return (_function_of_0016()
            .replace(_MADE, _MADE + _TRIGGERS.format(table="part"), 1)
            .replace(_MOVE, _TRIGGER_OFF + _MOVE, 1)
            .replace(_MOVED, _MOVED + _TRIGGER_ON, 1))


def _on_every_partition(statement: str) -> str:
    return f"""
DO $$
DECLARE
    child text;
BEGIN
    FOR child IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                     WHERE i.inhparent = 'usage_events'::regclass LOOP
        {statement.strip()}
    END LOOP;
END $$
"""


def upgrade() -> None:
    op.execute(_on_every_partition(_TRIGGERS.format(table="child")))
    op.execute(_function())


def downgrade() -> None:
    op.execute(_function_of_0016())
    op.execute(_on_every_partition(
        "EXECUTE format('DROP TRIGGER IF EXISTS trg_usage_events_partition_updated ON %I', child);\n"
        "        EXECUTE format('DROP TRIGGER IF EXISTS trg_usage_events_partition_deleted ON %I', child);"))
