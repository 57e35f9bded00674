"""usage_events range-partitioned by month on occurred_at, so that old months are dropped whole
(`billing usage prune`) instead of deleted row by row, and every index stays the size of a month.

- The existing table is converted with its rows: one partition per month that has events (up to
  next month), one for the current and the next month, and a DEFAULT partition for stray
  timestamps (anything later). Ids are kept and the identity sequence continues where it was; the
  indexes, the CHECK, the grants and the statement triggers of 0004 (usage_event_changes) are
  recreated on the partitioned table, where they see every partition.
- Duplicate deliveries: a unique index on a partitioned table must contain the partition key, so
  UNIQUE (organization_id, idempotency_key) becomes UNIQUE (organization_id, idempotency_key,
  occurred_at): a retried event carries the same occurred_at (docs/schema.md says what changes
  for `INSERT ... ON CONFLICT`).
- billing_usage_events_partition(month): creates a month's partition once (concurrent callers wait
  for each other), moving that month's rows out of the DEFAULT partition in the same transaction
  (PostgreSQL refuses to create a partition whose range has rows in the default one). `billing db
  upgrade` and `aggregate-hourly` call it; an operator may call it for a backfilled month.
- usage_pruned_months: the months whose events `billing usage prune` dropped (their hourly
  roll-ups stay, and are never recomputed from the events that are gone).

The conversion copies every row while it holds the table's lock: producers' inserts wait for it
(docs/operations.md gives the measured rate and the way to convert a very large table).

Revision ID: 0011_partition_usage_events
Revises: 0010_credit_notes
"""

from alembic import op

revision = "0011_partition_usage_events"
down_revision = "0010_credit_notes"
branch_labels = None
depends_on = None

_COLUMNS = "id, organization_id, metric, quantity, occurred_at, idempotency_key, received_at"

# The 0004 trigger function is unchanged (it reads the transition tables, whatever the table's form).
_TRIGGERS = """
    CREATE TRIGGER trg_usage_events_updated AFTER UPDATE ON usage_events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION billing_usage_events_changed();
    CREATE TRIGGER trg_usage_events_deleted AFTER DELETE ON usage_events
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION billing_usage_events_changed();
"""

# Grants and owner of the table being replaced, given to its replacement (other services insert
# with their own roles).
_COPY_GRANTS = """
DO $$
DECLARE
    g record;
    old_owner oid := (SELECT relowner FROM pg_class WHERE oid = '{old}'::regclass);
BEGIN
    FOR g IN
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS who,
               a.privilege_type, a.is_grantable
        FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE c.oid = '{old}'::regclass AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT %s ON {new} TO %s%s', g.privilege_type, g.who,
                       CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    IF old_owner <> (SELECT relowner FROM pg_class WHERE oid = '{new}'::regclass) THEN
        EXECUTE format('ALTER TABLE {new} OWNER TO %I', (SELECT rolname FROM pg_roles WHERE oid = old_owner));
    END IF;
END $$
"""

_PARTITION_FUNCTION = """
CREATE FUNCTION billing_usage_events_partition(month date) RETURNS bigint LANGUAGE plpgsql AS $$
-- Creates usage_events_YYYY_MM for the month containing `month` (UTC) unless it exists; returns
-- how many events it moved there from the DEFAULT partition, or NULL when it already existed.
DECLARE
    first_day date := date_trunc('month', month::timestamp)::date;
    lower_bound timestamptz := first_day::timestamp AT TIME ZONE 'UTC';
    upper_bound timestamptz := (first_day + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    part text := 'usage_events_' || to_char(first_day, 'YYYY_MM');
    moved bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7263009);  -- one creator at a time (db upgrade beside aggregate-hourly)
    IF to_regclass(part) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    -- No insert may land in the default partition between the move and the attach (inserts of
    -- other months are routed elsewhere and do not wait).
    LOCK TABLE usage_events_default IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('CREATE TABLE %I (LIKE usage_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
    EXECUTE format('WITH moved AS (DELETE FROM usage_events_default WHERE occurred_at >= $1 AND occurred_at < $2 '
                   'RETURNING *) INSERT INTO %I SELECT * FROM moved', part) USING lower_bound, upper_bound;
    GET DIAGNOSTICS moved = ROW_COUNT;
    -- The range as a CHECK first, so the attach need not scan the rows just moved.
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (occurred_at >= %L AND occurred_at < %L)',
                   part, part || '_range', lower_bound, upper_bound);
    EXECUTE format('ALTER TABLE usage_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   part, lower_bound, upper_bound);
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', part, part || '_range');
    RETURN moved;
END $$
"""


def upgrade() -> None:
    op.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")
    op.execute("DROP TRIGGER trg_usage_events_updated ON usage_events")
    op.execute("DROP TRIGGER trg_usage_events_deleted ON usage_events")
    op.execute("ALTER TABLE usage_events RENAME TO usage_events_unpartitioned")
    # Their names go to the new table's indexes; the old table is dropped below anyway.
    op.execute("DROP INDEX idx_usage_events_occurred_at, idx_usage_events_received_at")
    op.execute("ALTER TABLE usage_events_unpartitioned DROP CONSTRAINT uq_usage_events_org_idempotency_key, "
               "DROP CONSTRAINT usage_events_pkey")

    op.execute("""
        CREATE TABLE usage_events (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY,
            organization_id VARCHAR(255) NOT NULL,
            metric VARCHAR(100) NOT NULL,
            quantity NUMERIC NOT NULL,
            occurred_at TIMESTAMPTZ NOT NULL,
            idempotency_key VARCHAR(255),
            received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            CONSTRAINT ck_usage_events_quantity_not_negative CHECK (quantity >= 0)
        ) PARTITION BY RANGE (occurred_at)
    """)
    op.execute("CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT")
    op.execute(_PARTITION_FUNCTION)
    # A partition for every month with events up to the next one (later timestamps are strays: the
    # default partition keeps them, and reports them), and for the current and next month.
    op.execute("""
        SELECT billing_usage_events_partition(m) FROM (
            SELECT DISTINCT CAST(date_trunc('month', occurred_at AT TIME ZONE 'UTC') AS date) AS m
            FROM usage_events_unpartitioned
            WHERE occurred_at < date_trunc('month', now(), 'UTC') + interval '2 months'
            UNION SELECT CAST(date_trunc('month', now() AT TIME ZONE 'UTC') AS date)
            UNION SELECT CAST(date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month' AS date)
        ) months ORDER BY m
    """)
    op.execute(f"INSERT INTO usage_events ({_COLUMNS}) SELECT {_COLUMNS} FROM usage_events_unpartitioned")
    # Indexes after the rows: one build per partition instead of a row-by-row insert into each.
    op.execute("ALTER TABLE usage_events ADD CONSTRAINT usage_events_pkey PRIMARY KEY (id, occurred_at)")
    op.execute("ALTER TABLE usage_events ADD CONSTRAINT uq_usage_events_org_idempotency_key_occurred_at "
               "UNIQUE (organization_id, idempotency_key, occurred_at)")
    op.execute("CREATE INDEX idx_usage_events_occurred_at ON usage_events (occurred_at) INCLUDE (received_at)")
    op.execute("CREATE INDEX idx_usage_events_received_at ON usage_events USING brin (received_at)")
    _continue_identity("usage_events_unpartitioned", "usage_events")
    op.execute(_COPY_GRANTS.format(old="usage_events_unpartitioned", new="usage_events"))
    op.execute("DROP TABLE usage_events_unpartitioned")
    op.execute(_TRIGGERS)

    op.execute("""
        CREATE TABLE usage_pruned_months (
            period_start DATE PRIMARY KEY CHECK (date_trunc('month', period_start) = period_start),
            pruned_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            events BIGINT NOT NULL,
            bytes BIGINT NOT NULL,
            forced BOOLEAN NOT NULL
        )
    """)


def _continue_identity(old: str, new: str) -> None:
    """The new identity sequence continues after the old one (not after max(id): ids of deleted
    events are never given again)."""
    op.execute(f"""
        DO $$
        DECLARE
            old_seq text := pg_get_serial_sequence('{old}', 'id');
            last bigint;
            called boolean;
        BEGIN
            EXECUTE format('SELECT last_value, is_called FROM %s', old_seq) INTO last, called;
            last := greatest(CASE WHEN called THEN last ELSE last - 1 END, (SELECT max(id) FROM {new}), 0);
            IF last > 0 THEN
                PERFORM setval(pg_get_serial_sequence('{new}', 'id'), last, true);
            END IF;
        END $$
    """)


def downgrade() -> None:
    op.execute("DROP TABLE usage_pruned_months")
    op.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")
    op.execute("ALTER TABLE usage_events RENAME TO usage_events_partitioned")
    op.execute("DROP INDEX idx_usage_events_occurred_at, idx_usage_events_received_at")
    op.execute("ALTER TABLE usage_events_partitioned DROP CONSTRAINT usage_events_pkey, "
               "DROP CONSTRAINT uq_usage_events_org_idempotency_key_occurred_at")
    op.execute("""
        CREATE TABLE usage_events (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            organization_id VARCHAR(255) NOT NULL,
            metric VARCHAR(100) NOT NULL,
            quantity NUMERIC NOT NULL,
            occurred_at TIMESTAMPTZ NOT NULL,
            idempotency_key VARCHAR(255),
            received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            CONSTRAINT ck_usage_events_quantity_not_negative CHECK (quantity >= 0)
        )
    """)
    op.execute(f"INSERT INTO usage_events ({_COLUMNS}) SELECT {_COLUMNS} FROM usage_events_partitioned")
    # Fails (and rolls back) if one key was delivered twice with different times: resolve those first.
    op.execute("ALTER TABLE usage_events ADD CONSTRAINT uq_usage_events_org_idempotency_key "
               "UNIQUE (organization_id, idempotency_key)")
    op.execute("CREATE INDEX idx_usage_events_occurred_at ON usage_events (occurred_at) INCLUDE (received_at)")
    op.execute("CREATE INDEX idx_usage_events_received_at ON usage_events USING brin (received_at)")
    _continue_identity("usage_events_partitioned", "usage_events")
    op.execute(_COPY_GRANTS.format(old="usage_events_partitioned", new="usage_events"))
    op.execute("DROP TABLE usage_events_partitioned")  # its partitions and their triggers with it
    op.execute("DROP FUNCTION billing_usage_events_partition(date)")
    op.execute(_TRIGGERS)
