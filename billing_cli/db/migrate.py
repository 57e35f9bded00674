"""Schema migrations (Alembic): upgrade, current revision, and the check that jobs run before work."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, Engine, text

from ..errors import SchemaOutdated

MIGRATIONS = Path(__file__).with_name("migrations")

# The revisions in order; the last one is the schema this program needs. A test checks that this
# list matches the Alembic scripts, so the check below needs no Alembic import on every cron run.
REVISIONS: tuple[str, ...] = ("0001_foundation", "0002_invoicing", "0003_job_runs", "0004_usage_completeness",
                             "0005_stripe_customers", "0006_stripe_hosted_url",
                             "0007_stripe_reversals", "0008_customer_billing_details", "0009_taxes",
                             "0010_credit_notes",
                             "0011_partition_usage_events",
                             "0012_billing_periods",
                             "0013_line_period_bounds",
                             "0014_pruned_month_partition",
                             "0015_invoice_fee_share",
                             "0016_brin_autosummarize",
                             "0017_job_runs_session",
                             "0018_late_usage_scan",
                             "0019_anchor_changes_once",
                             "0020_anchor_history",
                             "0021_partition_change_triggers")
HEAD = REVISIONS[-1]

# Serialises concurrent `db upgrade` runs (two pods starting at once): pg_advisory_xact_lock key.
_MIGRATION_LOCK = 7_263_001


def alembic_config(connection: Connection):  # -> alembic.config.Config
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply migrations up to `revision`; returns (before, after)."""
    from alembic import command

    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        before = current_revision(conn)
        command.upgrade(alembic_config(conn), revision)
        after = current_revision(conn)
    return before, after


def current_revision(conn: Connection) -> str | None:
    exists = conn.execute(text("SELECT to_regclass('alembic_version') IS NOT NULL")).scalar_one()
    if not exists:
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


def check_schema(engine: Engine) -> None:
    """Refuse to run against a schema this program does not match."""
    with engine.connect() as conn:
        current = current_revision(conn)
    if current == HEAD:
        return
    if current is None:
        raise SchemaOutdated("the database has no billing schema yet",
                             hint="Run `billing db upgrade` first.")
    if current in REVISIONS:
        raise SchemaOutdated(f"the database schema is behind (at {current}, this program needs {HEAD})",
                             hint="Run `billing db upgrade` first.")
    raise SchemaOutdated(f"the database schema ({current}) is newer than this program knows ({HEAD})",
                         hint="Deploy the billing version that matches the database.")
