"""Migrations: up from empty, documented in docs/schema.md, the seed's table is adopted, constraints hold.

The migrations are the one declaration of the schema (there are no ORM models to keep in step):
what other services and readers rely on is checked against the migrated database itself."""

from __future__ import annotations

import re
from datetime import UTC

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from billing_cli.db.migrate import HEAD, REVISIONS, alembic_config, check_schema, current_revision, upgrade
from billing_cli.errors import SchemaOutdated
from tests.conftest import ROOT

CONTRACT_TABLES = {"organizations", "usage_events", "usage_hourly"}
BILLING_TABLES = {"aggregated_hours", "demo_organizations", "price_plans", "plan_prices", "plan_price_tiers",
                  "invoices", "invoice_lines", "invoice_number_counters", "job_runs", "alembic_version",
                  "usage_event_changes", "usage_revisions", "invoice_usage", "invoice_periods", "stripe_customers",
                  "invoice_taxes", "tax_rates",
                  "credit_notes", "credit_note_lines", "credit_note_number_counters",
                  "usage_pruned_months", "price_plan_versions", "late_usage_scan", "anchor_changes"}


def tables(engine) -> set[str]:
    """The tables, without usage_events' partitions (they come and go with the months)."""
    with engine.connect() as conn:
        partitions = set(conn.execute(text("SELECT relname FROM pg_class WHERE relispartition")).scalars())
    return set(inspect(engine).get_table_names()) - partitions


@pytest.fixture
def empty_engine(empty_db_url):
    engine = create_engine(empty_db_url)
    yield engine
    engine.dispose()


def test_upgrade_from_empty_creates_every_table(empty_engine) -> None:
    with pytest.raises(SchemaOutdated, match="billing db upgrade"):
        check_schema(empty_engine)

    before, after = upgrade(empty_engine)

    assert (before, after) == (None, HEAD)
    assert tables(empty_engine) == CONTRACT_TABLES | BILLING_TABLES
    check_schema(empty_engine)
    assert upgrade(empty_engine) == (HEAD, HEAD)  # idempotent


def test_revision_list_matches_the_alembic_scripts(engine) -> None:
    from alembic.script import ScriptDirectory

    with engine.connect() as conn:
        scripts = ScriptDirectory.from_config(alembic_config(conn))
        ordered = [s.revision for s in reversed(list(scripts.walk_revisions()))]
        assert current_revision(conn) == HEAD
    assert tuple(ordered) == REVISIONS and scripts.get_current_head() == HEAD


def test_docs_schema_describes_every_table_and_column_of_the_migrated_database(engine) -> None:
    """docs/schema.md is what other services read: each table has a section (a `###` heading naming
    it) that names each of its columns. A migration that adds a column without documenting it fails."""
    sections: dict[str, str] = {}
    for section in (ROOT / "docs" / "schema.md").read_text().split("\n### ")[1:]:
        heading, _, body = section.partition("\n")
        for table in CONTRACT_TABLES | BILLING_TABLES:
            if f"`{table}`" in heading:
                sections[table] = sections.get(table, "") + heading + body
    inspector = inspect(engine)
    undocumented = [f"{table}.{column['name']}" for table in sorted(tables(engine) - {"alembic_version"})
                    for column in inspector.get_columns(table)
                    if not re.search(rf"`{column['name']}[` ]", sections.get(table, ""))]
    assert undocumented == []


def test_the_late_usage_scan_of_an_existing_database_starts_at_its_latest_roll_up(empty_engine) -> None:
    """0018: the first scan after the upgrade reads what the check before it would have read (from
    an hour before the latest roll-up); a database with no roll-up yet has no scan."""
    upgrade(empty_engine, "0017_job_runs_session")
    with empty_engine.begin() as conn:
        conn.execute(text("INSERT INTO aggregated_hours (hour_start, aggregated_at, event_count) VALUES "
                          "('2024-01-31 12:00Z', '2024-01-31 13:00:05Z', 0), "
                          "('2024-01-31 13:00Z', '2024-01-31 14:00:05Z', 0)"))
    upgrade(empty_engine)
    with empty_engine.connect() as conn:
        scans = [tuple(r) for r in conn.execute(text("SELECT scanned_at, found_hours FROM late_usage_scan"))]
    assert [(str(at.astimezone(UTC)), found) for at, found in scans] == [("2024-01-31 14:00:05+00:00", [])]


def test_the_anchor_history_of_an_existing_database_starts_with_each_last_change(empty_engine) -> None:
    upgrade(empty_engine, "0019_anchor_changes_once")
    with empty_engine.begin() as conn:
        conn.execute(text("INSERT INTO organizations (id, name, email) VALUES ('moved', 'M', 'm@example.com'), "
                          "('steady', 'S', 's@example.com')"))
        conn.execute(text("UPDATE organizations SET billing_anchor_day = 15 WHERE id IN ('moved', 'steady')"))
        conn.execute(text("UPDATE organizations SET billing_anchor_day = 1 WHERE id = 'moved'"))
        conn.execute(text("UPDATE organizations SET billing_anchor_changed_at = '2024-02-20 09:00Z', "
                          "billing_anchor_previous = 15 WHERE id = 'moved'"))
        conn.execute(text("UPDATE organizations SET billing_anchor_changed_at = NULL, "
                          "billing_anchor_previous = NULL WHERE id = 'steady'"))
    upgrade(empty_engine)
    with empty_engine.connect() as conn:
        rows = conn.execute(text("SELECT organization_id, changed_at, anchor_before, anchor_after "
                                 "FROM anchor_changes")).all()
    assert [(r.organization_id, r.changed_at.astimezone(UTC).isoformat(), r.anchor_before, r.anchor_after)
            for r in rows] == [("moved", "2024-02-20T09:00:00+00:00", 15, 1)]


def test_the_seed_organizations_table_is_adopted_with_its_rows(empty_engine) -> None:
    with empty_engine.begin() as conn:
        conn.execute(text("""
            CREATE TABLE organizations (
                id VARCHAR(255) PRIMARY KEY, name VARCHAR(255) NOT NULL, email VARCHAR(255) NOT NULL,
                status VARCHAR(50) NOT NULL DEFAULT 'active',
                created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
                updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW())"""))
        conn.execute(text("CREATE INDEX idx_organizations_status ON organizations(status)"))
        conn.execute(text("INSERT INTO organizations (id, name, email) VALUES ('o1', 'One', 'a@b.co')"))

    upgrade(empty_engine)

    with empty_engine.connect() as conn:
        row = conn.execute(text("SELECT id, status, currency, price_plan_id FROM organizations")).one()
    assert tuple(row) == ("o1", "active", "USD", None)
    indexes = {i["name"] for i in inspect(empty_engine).get_indexes("organizations")}
    assert "idx_organizations_status" in indexes


def test_contract_columns(engine) -> None:
    columns = {c["name"]: c for c in inspect(engine).get_columns("organizations")}
    assert list(columns)[:6] == ["id", "name", "email", "status", "created_at", "updated_at"]
    assert str(columns["id"]["type"]) == "VARCHAR(255)"
    assert str(columns["currency"]["type"]) == "CHAR(3)" and not columns["currency"]["nullable"]
    # The customer's billing details: the account service's inserts that do not name them keep working.
    for name in ("billing_address_line1", "billing_address_line2", "billing_postal_code", "billing_city",
                 "billing_region", "billing_country", "tax_id"):
        assert columns[name]["nullable"], name
    assert not columns["tax_exempt"]["nullable"] and columns["tax_exempt"]["default"] == "false"
    usage = {c["name"]: str(c["type"]) for c in inspect(engine).get_columns("usage_events")}
    assert usage["quantity"] == "NUMERIC" and usage["occurred_at"] == "TIMESTAMP"
    pk = inspect(engine).get_pk_constraint("usage_hourly")["constrained_columns"]
    assert pk == ["organization_id", "metric", "hour_start"]


@pytest.mark.parametrize("statement", [
    "INSERT INTO usage_events (organization_id, metric, quantity, occurred_at) "
    "VALUES ('o', 'm', -1, now())",
    "INSERT INTO usage_events (organization_id, metric, quantity, occurred_at, idempotency_key) "
    "VALUES ('o', 'm', 1, now(), 'k'), ('o', 'm', 2, now(), 'k')",
    "INSERT INTO usage_hourly (organization_id, metric, hour_start, quantity, event_count) "
    "VALUES ('o', 'm', '2024-01-01T10:30:00Z', 1, 1)",
])
def test_constraints_reject_bad_rows(engine, statement: str) -> None:
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text(statement))


def test_the_same_idempotency_key_is_fine_for_two_organizations(engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO usage_events (organization_id, metric, quantity, occurred_at, "
                          "idempotency_key) VALUES ('o1', 'm', 1, now(), 'k'), ('o2', 'm', 1, now(), 'k'), "
                          "('o1', 'm', 1, now(), NULL), ('o1', 'm', 1, now(), NULL)"))
        assert conn.execute(text("SELECT count(*) FROM usage_events")).scalar_one() == 4
