"""anchor_history: every billing-anchor change of an organization, not only the last.

Until now only the last change was stored (organizations.billing_anchor_previous / _changed_at), so a
period that started before the change before it was computed with the wrong anchor once its invoice
was voided and invoiced again (anchor 15 -> 1 on 20 Feb, then -> 20 on 10 Apr: February's period,
15 Feb - 14 Mar, became 15 - 29 Feb and the March days went unbilled).

- anchor_changes: one row per change, (organization_id, changed_at) -> anchor_before, anchor_after.
  The anchor in force for a period starting at a moment is the anchor before the first change made
  at or after it, else the anchor day now (anchors.Anchor.at).
- The trigger trg_organizations_anchor_changed keeps it, beside the two columns, which stay as they
  are (the last change; other services may read them): a change inserts a row, or, when the change
  before has not reached its boundary, replaces that one's row (0019: two changes within one period
  act as one). It now also fires on a write of the two columns by hand (an operator dating a change):
  the last row follows them, and both set to NULL ("never changed") clear the organization's history.
  Other services' inserts and updates of organizations keep working unchanged.
- Backfill: the last change of each organization, which is all that was stored; earlier changes are
  lost (a period older than an organization's last change before this migration keeps the anchor the
  last change started from, as before).

Revision ID: 0020_anchor_history
Revises: 0019_anchor_changes_once
"""

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0020_anchor_history"
down_revision = "0019_anchor_changes_once"
branch_labels = None
depends_on = None

# The boundary the change before waits for, as in 0019 (anchors.anchor_start in SQL): midnight UTC of
# the previous anchor's day in the change's month, or the next one, clamped to a shorter month's last
# day (the 1st for calendar months). The session's time zone plays no part.
_FUNCTION = """
    CREATE OR REPLACE FUNCTION billing_organization_anchor_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        month date;
        boundary timestamptz;
        merged boolean := false;
    BEGIN
        IF NEW.billing_anchor_day IS DISTINCT FROM OLD.billing_anchor_day THEN
            NEW.billing_anchor_previous := OLD.billing_anchor_day;
            IF OLD.billing_anchor_changed_at IS NOT NULL THEN
                FOR later IN 0..1 LOOP
                    month := date_trunc('month', OLD.billing_anchor_changed_at AT TIME ZONE 'UTC')
                             + later * interval '1 month';
                    boundary := CAST(month + least(coalesce(OLD.billing_anchor_previous, 1),
                                                   CAST(month + interval '1 month' AS date) - month) - 1
                                     AS timestamp) AT TIME ZONE 'UTC';
                    EXIT WHEN boundary > OLD.billing_anchor_changed_at;
                END LOOP;
                IF now() < boundary THEN  -- the change before never took effect: this one replaces it
                    NEW.billing_anchor_previous := OLD.billing_anchor_previous;
                    merged := true;
                END IF;
            END IF;
            NEW.billing_anchor_changed_at := now();
            IF merged THEN
                UPDATE anchor_changes SET changed_at = now(), anchor_after = NEW.billing_anchor_day
                WHERE organization_id = OLD.id AND changed_at = OLD.billing_anchor_changed_at;
                merged := FOUND;
            END IF;
            IF NOT merged THEN
                INSERT INTO anchor_changes (organization_id, changed_at, anchor_before, anchor_after)
                VALUES (NEW.id, now(), NEW.billing_anchor_previous, NEW.billing_anchor_day)
                ON CONFLICT (organization_id, changed_at) DO UPDATE
                    SET anchor_before = EXCLUDED.anchor_before, anchor_after = EXCLUDED.anchor_after;
            END IF;
        ELSIF (NEW.billing_anchor_previous, NEW.billing_anchor_changed_at)
              IS DISTINCT FROM (OLD.billing_anchor_previous, OLD.billing_anchor_changed_at) THEN
            -- the last change written by hand (an operator dating it): its row follows
            IF NEW.billing_anchor_changed_at IS NULL THEN  -- never changed: no history
                DELETE FROM anchor_changes WHERE organization_id = OLD.id;
            ELSE
                DELETE FROM anchor_changes WHERE organization_id = OLD.id AND changed_at = OLD.billing_anchor_changed_at;
                INSERT INTO anchor_changes (organization_id, changed_at, anchor_before, anchor_after)
                VALUES (NEW.id, NEW.billing_anchor_changed_at, NEW.billing_anchor_previous, NEW.billing_anchor_day)
                ON CONFLICT (organization_id, changed_at) DO UPDATE
                    SET anchor_before = EXCLUDED.anchor_before, anchor_after = EXCLUDED.anchor_after;
            END IF;
        END IF;
        RETURN NEW;
    END $$
"""

_TRIGGER = """
    CREATE TRIGGER trg_organizations_anchor_changed
    BEFORE UPDATE OF billing_anchor_day, billing_anchor_previous, billing_anchor_changed_at ON organizations
    FOR EACH ROW EXECUTE FUNCTION billing_organization_anchor_changed()
"""


def _function_of_0019() -> str:
    """The trigger function as 0019_anchor_changes_once made it (one text of it, not a copy)."""
    path = Path(__file__).with_name("0019_anchor_changes_once.py")
    spec = importlib.util.spec_from_file_location("billing_migration_0019", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._FUNCTION


def upgrade() -> None:
    op.create_table(
        "anchor_changes",
        sa.Column("organization_id", sa.String(255), primary_key=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("anchor_before", sa.SmallInteger, nullable=True),
        sa.Column("anchor_after", sa.SmallInteger, nullable=True),
    )
    op.execute("""
        INSERT INTO anchor_changes (organization_id, changed_at, anchor_before, anchor_after)
        SELECT id, billing_anchor_changed_at, billing_anchor_previous, billing_anchor_day
        FROM organizations WHERE billing_anchor_changed_at IS NOT NULL""")
    op.execute(_FUNCTION)
    op.execute("DROP TRIGGER trg_organizations_anchor_changed ON organizations")
    op.execute(_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER trg_organizations_anchor_changed ON organizations")
    op.execute(_function_of_0019())
    op.execute("""
        CREATE TRIGGER trg_organizations_anchor_changed BEFORE UPDATE OF billing_anchor_day ON organizations
        FOR EACH ROW EXECUTE FUNCTION billing_organization_anchor_changed()
    """)
    op.drop_table("anchor_changes")
