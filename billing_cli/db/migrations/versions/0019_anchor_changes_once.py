"""anchor_changes_once: two anchor changes before the first takes effect act as one.

The trigger recorded the anchor day before each change as billing_anchor_previous. A second change
made before the first one's boundary (15 -> 20, then -> 25, both during 15 Feb - 15 Mar) recorded 20,
an anchor no period ever started with: the period under way then ended on 20 March instead of
keeping its end, 15 March, and its fee was prorated as a changed period (34 of 29 days). The
trigger now keeps billing_anchor_previous while the change before has not reached its boundary (the
first day of the previous anchor after that change), so the change runs from the anchor the period
under way started with to the latest (docs/plans.md, "Changing the anchor").

Revision ID: 0019_anchor_changes_once
Revises: 0018_late_usage_scan
"""

from alembic import op

revision = "0019_anchor_changes_once"
down_revision = "0018_late_usage_scan"
branch_labels = None
depends_on = None


# anchors.anchor_start in SQL: midnight UTC of the previous anchor's day in the change's month, or
# the next one (clamped to a shorter month's last day, the 1st for calendar months): the boundary the
# change before waits for. The session's time zone plays no part. (0020's downgrade restores it.)
_FUNCTION = """
    CREATE OR REPLACE FUNCTION billing_organization_anchor_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        month date;
        boundary timestamptz;
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
                END IF;
            END IF;
            NEW.billing_anchor_changed_at := now();
        END IF;
        RETURN NEW;
    END $$
"""


def upgrade() -> None:
    op.execute(_FUNCTION)


def downgrade() -> None:
    op.execute("""
        CREATE OR REPLACE FUNCTION billing_organization_anchor_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.billing_anchor_day IS DISTINCT FROM OLD.billing_anchor_day THEN
                NEW.billing_anchor_previous := OLD.billing_anchor_day;
                NEW.billing_anchor_changed_at := now();
            END IF;
            RETURN NEW;
        END $$
    """)
