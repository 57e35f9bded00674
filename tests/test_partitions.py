"""usage_events partitioned by month: the migration converts a table with its rows, ids, indexes,
grants and triggers; partitions are made ahead (rows moved out of the default partition); the
default partition is reported; `billing usage prune` drops whole months only when they are
invoiced and reconciled (or forced), keeps the roll-ups, and leaves the other months billable."""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, ProgrammingError
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.db.migrate import HEAD, upgrade
from billing_cli.errors import ExitCode
from billing_cli.db.partitions import create_month_partition, drop_month_partition
from billing_cli.jobs.aggregate import HourResult, aggregate_one_hour
from billing_cli.jobs.partitions import keep_partitions_ahead
from billing_cli.periods import Month, utc_now
from tests.data import PLANS, add_event, add_org, hourly_rows, set_plan, table_snapshot, utc
from tests.test_json_output import assert_valid

runner = CliRunner()


def run(db_url: str, *args: str, **env: str):
    return runner.invoke(app, list(args), env={"DATABASE_URL": db_url, **env})


def partition_of(conn, key: str) -> str:
    return conn.execute(text("SELECT tableoid::regclass::text FROM usage_events WHERE idempotency_key = :k"),
                        {"k": key}).scalar_one()


def exists(conn, table: str) -> bool:
    return conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar_one()


def transactions_of(engine):
    @contextmanager
    def begin():
        with engine.begin() as conn:
            yield conn
    return begin


# -- the migration ---------------------------------------------------------------------------------

@pytest.fixture
def ingest_role(empty_db_url):
    """A role of another service that inserts events (roles are cluster-wide: a unique name)."""
    name = f"billing_test_ingest_{os.getpid()}"
    engine = create_engine(empty_db_url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP ROLE IF EXISTS {name}"))
        conn.execute(text(f"CREATE ROLE {name}"))
    yield name
    with engine.begin() as conn:
        conn.execute(text(f"DROP OWNED BY {name}"))
        conn.execute(text(f"DROP ROLE {name}"))
    engine.dispose()


def test_the_migration_converts_the_table_with_its_rows_ids_grants_and_triggers(empty_db_url, ingest_role) -> None:
    engine = create_engine(empty_db_url)
    upgrade(engine, "0008_customer_billing_details")
    this_month = Month.containing(utc_now())
    far_future = this_month.next().next().next()
    with engine.begin() as conn:
        conn.execute(text(f"GRANT INSERT, SELECT ON usage_events TO {ingest_role}"))
        add_event(conn, "o1", "api", "1", utc(2024, 1, 31, 23), key="jan")
        add_event(conn, "o1", "api", "2", utc(2024, 2, 1, 0), key="feb")
        add_event(conn, "o1", "api", "3", this_month.start + timedelta(hours=5), key="now")
        add_event(conn, "o1", "api", "4", far_future.start, key="stray")
        add_event(conn, "o1", "api", "5", utc(2024, 2, 3, 0), key="deleted")
        conn.execute(text("DELETE FROM usage_events WHERE idempotency_key = 'deleted'"))
        conn.execute(text("DELETE FROM usage_event_changes"))
        ids_before = dict(conn.execute(text("SELECT idempotency_key, id FROM usage_events")).all())

    assert upgrade(engine) == ("0008_customer_billing_details", HEAD)

    with engine.begin() as conn:
        assert dict(conn.execute(text("SELECT idempotency_key, id FROM usage_events")).all()) == ids_before
        assert partition_of(conn, "jan") == "usage_events_2024_01"
        assert partition_of(conn, "feb") == "usage_events_2024_02"
        assert partition_of(conn, "now") == f"usage_events_{this_month.year}_{this_month.month:02d}"
        assert partition_of(conn, "stray") == "usage_events_default"  # after next month: a stray timestamp
        nxt = this_month.next()
        assert exists(conn, f"usage_events_{nxt.year}_{nxt.month:02d}")
        # The identity continues after the old sequence: the deleted event's id is never given again.
        new_id = conn.execute(text("INSERT INTO usage_events (organization_id, metric, quantity, occurred_at) "
                                   "VALUES ('o1', 'api', 1, now()) RETURNING id")).scalar_one()
        assert new_id == max(ids_before.values()) + 2
        # The other service's grants moved to the new table.
        assert conn.execute(text("SELECT has_table_privilege(:r, 'usage_events', 'INSERT')"),
                            {"r": ingest_role}).scalar_one()
        # Indexes on every partition.
        indexes = set(conn.execute(text("SELECT pg_get_indexdef(indexrelid) FROM pg_index "
                                        "WHERE indrelid = 'usage_events_2024_01'::regclass")).scalars())
        assert any("UNIQUE" in i and "(organization_id, idempotency_key, occurred_at)" in i for i in indexes)
        assert any("(occurred_at) INCLUDE (received_at)" in i for i in indexes)
        assert any("brin (received_at)" in i for i in indexes)

    # The 0004 statement triggers work on the partitioned table: an edit, a move to another month
    # (a row moving between partitions), a delete; each hour touched is recorded.
    with engine.begin() as conn:
        conn.execute(text("UPDATE usage_events SET quantity = 10 WHERE idempotency_key = 'jan'"))
        conn.execute(text("UPDATE usage_events SET occurred_at = '2024-02-05T07:30Z' WHERE idempotency_key = 'feb'"))
        conn.execute(text("DELETE FROM usage_events WHERE idempotency_key = 'stray'"))
        changed = set(conn.execute(text("SELECT hour_start FROM usage_event_changes")).scalars())
        assert partition_of(conn, "feb") == "usage_events_2024_02"
    assert changed == {utc(2024, 1, 31, 23), utc(2024, 2, 1, 0), utc(2024, 2, 5, 7), far_future.start}
    engine.dispose()


def test_duplicate_deliveries_are_kept_out_and_on_conflict_says_what_changed(engine) -> None:
    insert = ("INSERT INTO usage_events (organization_id, metric, quantity, occurred_at, idempotency_key) "
              "VALUES ('o1', 'api', 1, '2024-01-10T10:00Z', 'k1')")
    with engine.begin() as conn:
        conn.execute(text(insert))
        assert conn.execute(text(insert + " ON CONFLICT DO NOTHING")).rowcount == 0
        assert conn.execute(text(insert + " ON CONFLICT (organization_id, idempotency_key, occurred_at) "
                                          "DO NOTHING")).rowcount == 0
    # The error names the partition's index (usage_events_<partition>_organization_id_idempotency_key_…).
    with pytest.raises(IntegrityError, match=r"Key \(organization_id, idempotency_key, occurred_at\)"), \
            engine.begin() as conn:
        conn.execute(text(insert))
    # The old conflict target has no unique index any more: documented in docs/schema.md.
    with pytest.raises(ProgrammingError, match="no unique or exclusion constraint"), engine.begin() as conn:
        conn.execute(text(insert + " ON CONFLICT (organization_id, idempotency_key) DO NOTHING"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_events")).scalar_one() == 1


# -- partitions made ahead, the default partition ------------------------------------------------------

def test_a_partition_made_later_takes_its_rows_out_of_the_default_partition(engine) -> None:
    later = Month.containing(utc_now()).next().next()  # no partition yet
    with engine.begin() as conn:
        add_event(conn, "o1", "api", "7", later.start + timedelta(days=3), key="early-bird")
        add_event(conn, "o1", "api", "1", utc(2024, 5, 1), key="old")
        assert partition_of(conn, "early-bird") == "usage_events_default"
        before = table_snapshot(conn, "usage_events")

    # A month later, the hourly job makes that month's partition (and the next one's).
    upkeep = keep_partitions_ahead(transactions_of(engine), later.prev().start + timedelta(days=2))

    assert [(c.name, c.moved_events) for c in upkeep.created] == [
        (f"usage_events_{later.year}_{later.month:02d}", 1)]
    assert upkeep.stray.as_dict() == {"events": 1, "months": {"2024-05": 1}}
    with engine.begin() as conn:
        assert partition_of(conn, "early-bird") == f"usage_events_{later.year}_{later.month:02d}"
        assert table_snapshot(conn, "usage_events") == before  # moved, not changed
        assert conn.execute(text("SELECT count(*) FROM usage_event_changes")).scalar_one() == 0
    again = keep_partitions_ahead(transactions_of(engine), later.prev().start + timedelta(days=2))
    assert again.created == []


def _waiting_on_a_lock(engine, pid: int) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p"),
                                 {"p": pid}).scalar())


def test_a_roll_up_while_the_month_s_partition_is_being_made_reads_the_moved_events(engine) -> None:
    """An operator makes a backfilled month's partition (as the default-partition warning says) while
    invoice-monthly or aggregate-hourly rolls up an hour of that month. The partition's function
    moves the month's rows out of the default partition and attaches the partition in one
    transaction; a roll-up that started meanwhile must not read the default partition after the
    move with the partitions as they were before it: the hour would be recorded with no events
    (its usage deleted, a credit on the next invoice) while its 5 units are still there."""
    hour = utc(2024, 5, 10, 13)
    with engine.begin() as conn:
        add_org(conn, "acme")
        add_event(conn, "acme", "api_calls", "5", hour + timedelta(minutes=10), key="backfilled")
        assert partition_of(conn, "backfilled") == "usage_events_default"
    maker = engine.connect()
    making = maker.begin()
    assert create_month_partition(maker, Month(2024, 5)).moved_events == 1  # not committed yet

    pid: list[int] = []
    rolled_up: list[HourResult] = []

    def transactions():
        @contextmanager
        def begin():
            with engine.begin() as conn:
                pid.append(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
                yield conn
        return begin()

    roll_up = threading.Thread(target=lambda: rolled_up.append(aggregate_one_hour(transactions, hour)))
    roll_up.start()
    for _ in range(200):
        if pid and _waiting_on_a_lock(engine, pid[0]):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the roll-up never waited for the partition being made")
    making.commit()
    roll_up.join(30)
    maker.close()

    assert rolled_up and rolled_up[0].ok and rolled_up[0].events == 1
    with engine.begin() as conn:
        assert partition_of(conn, "backfilled") == "usage_events_2024_05"
        assert hourly_rows(conn) == [("acme", "api_calls", hour, Decimal(5), 1)]
        assert conn.execute(text("SELECT event_count FROM aggregated_hours WHERE hour_start = :h"),
                            {"h": hour}).scalar_one() == 1


def test_every_partition_summarizes_its_arrivals_as_they_fill(engine) -> None:
    # The late-events check reads recent arrivals through the BRIN index on received_at; a block range
    # it has not summarized is read whole, so every partition's index summarizes ranges as they fill
    # (autosummarize), those made by the migration and those made later alike.
    later = Month.containing(utc_now()).next().next()
    keep_partitions_ahead(transactions_of(engine), later.prev().start + timedelta(days=2))
    with engine.connect() as conn:
        options = dict(conn.execute(text("""
            SELECT p.relname, coalesce(array_to_string(c.reloptions, ','), '')
            FROM pg_inherits hi JOIN pg_class c ON c.oid = hi.inhrelid
            JOIN pg_index x ON x.indexrelid = c.oid JOIN pg_class p ON p.oid = x.indrelid
            WHERE hi.inhparent = 'idx_usage_events_received_at'::regclass
        """)).all())
    assert f"usage_events_{later.year}_{later.month:02d}" in options and "usage_events_default" in options
    assert set(options.values()) == {"autosummarize=on"}, options


def test_a_partition_that_cannot_be_made_now_is_reported_and_made_by_the_next_run(engine) -> None:
    later = Month.containing(utc_now()).next().next()
    with engine.begin() as conn:
        add_event(conn, "o1", "api", "7", later.start, key="early")
    with engine.connect() as reader:  # a long read of the default partition holds its lock
        reader.execute(text("LOCK TABLE usage_events_default IN ACCESS SHARE MODE"))
        blocked = keep_partitions_ahead(transactions_of(engine), later.prev().start, lock_timeout_seconds=1)
        reader.rollback()

    assert blocked.created == [] and [m for m, _ in blocked.failed] == [later]
    assert "lock timeout" in blocked.failed[0][1]
    with engine.connect() as conn:
        assert partition_of(conn, "early") == "usage_events_default"  # kept, billed all the same
    retried = keep_partitions_ahead(transactions_of(engine), later.prev().start)
    assert [(c.month, c.moved_events) for c in retried.created] == [(later, 1)] and retried.failed == []


def test_aggregate_hourly_makes_partitions_ahead_and_reports_the_default_partition(db_url, engine,
                                                                                 clean_env) -> None:
    nxt = Month.containing(utc_now()).next()
    name = f"usage_events_{nxt.year}_{nxt.month:02d}"
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {name}"))
        add_org(conn, "acme")
        for n in range(3):
            add_event(conn, "acme", "api_calls", "5", utc(2024, 1, 10, 9, n), key=f"e{n}")
        add_event(conn, "acme", "api_calls", "1", utc(2024, 3, 2, 9), key="march")

    dry = run(db_url, "aggregate-hourly", "--hour", "2024-01-10T09", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert f"would create partition {name}" in dry.stderr
    with engine.connect() as conn:
        assert not exists(conn, name)

    result = run(db_url, "aggregate-hourly", "--hour", "2024-01-10T09", "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert_valid("aggregate-hourly", report)
    assert report["counts"]["default_partition_events"] == 4 and report["counts"]["events"] == 3
    assert report["default_partition"] == {"events": 4, "months": {"2024-01": 3, "2024-03": 1}}
    assert f"created partition {name}" in result.stderr
    warning = [line for line in result.stderr.splitlines()
               if line.startswith("warning:") and "default partition" in line]
    assert len(warning) == 1 and "2024-01 (3), 2024-03 (1)" in warning[0]
    with engine.connect() as conn:
        assert exists(conn, name)
        assert hourly_rows(conn) == [("acme", "api_calls", utc(2024, 1, 10, 9), 15, 3)]

    # Once the backfilled months have partitions, the default partition is empty and nothing is said.
    with engine.begin() as conn:
        conn.execute(text("SELECT billing_usage_events_partition('2024-01-01'), "
                          "billing_usage_events_partition('2024-03-01')"))
    quiet = run(db_url, "aggregate-hourly", "--hour", "2024-01-10T09", "--json")
    assert json.loads(quiet.stdout)["counts"]["default_partition_events"] == 0
    assert "default partition" not in quiet.stderr


def test_db_upgrade_makes_the_partitions_of_this_month_and_the_next(db_url, engine, clean_env) -> None:
    this_month = Month.containing(utc_now())
    names = [f"usage_events_{m.year}_{m.month:02d}" for m in (this_month, this_month.next())]
    with engine.begin() as conn:
        for name in names:
            conn.execute(text(f"DROP TABLE {name}"))
        add_event(conn, "o1", "api", "1", this_month.start + timedelta(minutes=1), key="now")
        assert partition_of(conn, "now") == "usage_events_default"

    result = run(db_url, "db", "upgrade", "--plain")

    assert result.exit_code == 0, result.output
    assert f"created partition {names[0]} for {this_month}, 1 events moved into it from the default partition" \
        in result.stderr
    with engine.connect() as conn:
        assert all(exists(conn, name) for name in names)
        assert partition_of(conn, "now") == names[0]


# -- billing usage prune ----------------------------------------------------------------------------------

def plans_with_two_partitions(db_url, engine, tmp_path) -> None:
    """The plans applied, and the partitions of January and February 2024."""
    plans = tmp_path / "plans.toml"
    plans.write_text(PLANS)
    assert run(db_url, "plans", "apply", str(plans)).exit_code == 0
    with engine.begin() as conn:
        conn.execute(text("SELECT billing_usage_events_partition('2024-01-01'), "
                          "billing_usage_events_partition('2024-02-01')"))


@pytest.fixture
def billed_months(db_url, engine, tmp_path, clean_env):
    """January and February 2024 with their own partitions, rolled up and invoiced (no deliveries)."""
    plans_with_two_partitions(db_url, engine, tmp_path)
    with engine.begin() as conn:
        add_org(conn, "acme")
        set_plan(conn, "acme", "pro")
        for day in (10, 11, 12):  # received as they occurred, long ago
            add_event(conn, "acme", "api_calls", "100", utc(2024, 1, day, 9), key=f"jan-{day}",
                      received_at=utc(2024, 1, day, 9, 1))
            add_event(conn, "acme", "api_calls", "50", utc(2024, 2, day, 9), key=f"feb-{day}",
                      received_at=utc(2024, 2, day, 9, 1))
    assert run(db_url, "aggregate-hourly", "--from", "2024-01-10T09", "--to", "2024-01-12T09").exit_code == 0
    assert run(db_url, "aggregate-hourly", "--from", "2024-02-10T09", "--to", "2024-02-12T09").exit_code == 0
    for month in ("2024-01", "2024-02"):
        result = run(db_url, "invoice-monthly", "--month", month)
        assert result.exit_code == 0, result.output
    return db_url


def prune(db_url: str, *args: str):
    result = run(db_url, "usage", "prune", "--json", *args)
    assert result.stdout.startswith("{"), (result.exit_code, result.output, result.exception)
    report = json.loads(result.stdout)
    assert_valid("usage-prune", report)
    return result, report


def events_in(conn, month: str) -> int:
    start = Month.parse(month).start
    return conn.execute(text("SELECT count(*) FROM usage_events WHERE occurred_at >= :s AND occurred_at < :e"),
                        {"s": start, "e": Month.parse(month).end}).scalar_one()


def test_prune_refuses_a_month_that_is_not_reconciled_and_drops_nothing(billed_months, engine) -> None:
    result, report = prune(billed_months, "--before", "2024-02")

    assert result.exit_code == ExitCode.REFUSED
    assert report["outcome"] == "failed" and report["counts"] == {}
    assert "2024-01: not reconciled" in report["message"] and "--force" in report["message"]
    assert "nothing was dropped" in result.stderr
    with engine.connect() as conn:
        assert exists(conn, "usage_events_2024_01") and events_in(conn, "2024-01") == 3
        assert conn.execute(text("SELECT status, message FROM job_runs WHERE job = 'usage-prune'")).one()[0] == "failed"


def test_prune_refuses_a_month_whose_usage_changed_after_its_reconcile(billed_months, engine) -> None:
    assert run(billed_months, "reconcile", "--month", "2024-01").exit_code == 0
    with engine.begin() as conn:  # a late event for January, after the reconcile
        add_event(conn, "acme", "api_calls", "1", utc(2024, 1, 20, 9), key="late")

    result, report = prune(billed_months, "--before", "2024-02")

    assert result.exit_code == ExitCode.REFUSED
    assert "2024-01: 1 hour(s) with events not rolled up yet" in report["message"]
    with engine.connect() as conn:
        assert events_in(conn, "2024-01") == 4


def test_a_dry_run_shows_the_plan_and_changes_nothing(billed_months, engine) -> None:
    assert run(billed_months, "reconcile", "--month", "2024-01").exit_code == 0
    with engine.connect() as conn:
        before = table_snapshot(conn, "usage_events", "usage_hourly", "invoices", "usage_pruned_months")

    result, report = prune(billed_months, "--before", "2024-02", "--dry-run")

    assert result.exit_code == 0, result.output
    assert report["dry_run"] is True and report["counts"]["pruned"] == 1 and report["counts"]["events"] == 3
    assert [(m["month"], m["partition"], m["status"]) for m in report["months"]] == [
        ("2024-01", "usage_events_2024_01", "pruned")]
    rich = run(billed_months, "usage", "prune", "--before", "2024-02", "--dry-run", "--rich")
    assert rich.exit_code == 0, rich.output
    assert "✅ 2024-01  would drop usage_events_2024_01: 3 events rolled up" in rich.output
    assert "1 of 1 month(s) before 2024-02 would be dropped" in rich.output and "(dry run: nothing dropped)" in rich.output
    with engine.connect() as conn:
        assert table_snapshot(conn, "usage_events", "usage_hourly", "invoices", "usage_pruned_months") == before
        assert exists(conn, "usage_events_2024_01")


def test_prune_drops_the_reconciled_month_and_keeps_its_roll_ups(billed_months, engine) -> None:
    assert run(billed_months, "reconcile", "--month", "2024-01").exit_code == 0
    with engine.connect() as conn:
        rollups = table_snapshot(conn, "usage_hourly", "aggregated_hours")
        invoices = table_snapshot(conn, "invoices", "invoice_lines")

    result = run(billed_months, "usage", "prune", "--before", "2024-02", "--plain")

    assert result.exit_code == 0, result.output
    assert "month month=2024-01 partition=usage_events_2024_01 status=pruned events=3" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("summary job=usage-prune before=2024-02 months=1 pruned=1 "
                                                     "failed=0 events=3")
    with engine.connect() as conn:
        assert not exists(conn, "usage_events_2024_01") and events_in(conn, "2024-01") == 0
        assert events_in(conn, "2024-02") == 3  # --before is exclusive
        assert table_snapshot(conn, "usage_hourly", "aggregated_hours") == rollups
        assert conn.execute(text("SELECT period_start::text, events, forced FROM usage_pruned_months")).one() == \
            ("2024-01-01", 3, False)
        assert conn.execute(text("SELECT status, period FROM job_runs WHERE job = 'usage-prune'")).one() == \
            ("succeeded", "2024-01")

    # The pruned month still reconciles (its roll-ups stand for the events) and is not billed again.
    again = run(billed_months, "reconcile", "--month", "2024-01", "--json")
    assert again.exit_code == 0, again.output
    assert run(billed_months, "invoice-monthly", "--month", "2024-01").exit_code == 0
    with engine.connect() as conn:
        assert table_snapshot(conn, "invoices", "invoice_lines") == invoices
    # Its hours are never recomputed from the events that are gone: an explicit backfill says why.
    hour = run(billed_months, "aggregate-hourly", "--hour", "2024-01-10T09", "--plain")
    assert hour.exit_code == ExitCode.PARTIAL
    assert "status=error" in hour.stdout and "the events of 2024-01 were pruned" in hour.stdout
    # An event arriving later for a pruned month lands in the default partition and is reported;
    # the scheduled run does not touch the month's roll-ups for it.
    with engine.begin() as conn:
        add_event(conn, "acme", "api_calls", "9", utc(2024, 1, 10, 9, 30), key="too-late")
        assert partition_of(conn, "too-late") == "usage_events_default"
    scheduled = run(billed_months, "aggregate-hourly", "--json")
    assert scheduled.exit_code == 0, scheduled.output
    assert json.loads(scheduled.stdout)["default_partition"]["months"] == {"2024-01": 1}
    with engine.connect() as conn:
        assert table_snapshot(conn, "usage_hourly") == {"usage_hourly": rollups["usage_hourly"]}

    # Running it again: nothing left before 2024-02.
    rerun, report = prune(billed_months, "--before", "2024-02")
    assert rerun.exit_code == 0 and report["counts"]["months"] == 0


def test_a_month_after_the_pruned_one_is_still_billed_and_reconciled_right(billed_months, engine) -> None:
    assert run(billed_months, "reconcile", "--month", "2024-01").exit_code == 0
    assert run(billed_months, "usage", "prune", "--before", "2024-02").exit_code == 0
    with engine.begin() as conn:  # a late event for February, billed by a regeneration
        add_event(conn, "acme", "api_calls", "25", utc(2024, 2, 20, 9), key="feb-late")
    assert run(billed_months, "aggregate-hourly", "--hour", "2024-02-20T09").exit_code == 0

    regenerated = run(billed_months, "invoice-monthly", "--month", "2024-02", "--org", "acme", "--regenerate")
    assert regenerated.exit_code == 0, regenerated.output
    reconciled = run(billed_months, "reconcile", "--month", "2024-02", "--json")

    assert reconciled.exit_code == 0, reconciled.output
    with engine.connect() as conn:
        # 175 calls at 0.01 plus the base fee of 10.
        total = conn.execute(text("SELECT total::text FROM invoices WHERE billing_month = '2024-02-01' "
                                  "AND status <> 'void'")).scalar_one()
    assert total == "11.75"


def test_an_event_arriving_between_the_check_and_the_drop_stops_that_drop(billed_months, engine) -> None:
    from billing_cli.db.partitions import MonthChanged, database_now, month_partitions

    with engine.begin() as conn:
        checked_at = database_now(conn)
        [january] = month_partitions(conn, before=Month(2024, 2))
    with engine.begin() as conn:  # a late event, after the check that allowed the month
        add_event(conn, "acme", "api_calls", "1", utc(2024, 1, 25, 9), key="in-between")
    with pytest.raises(MonthChanged, match="events of 2024-01 arrived or were edited while it was being pruned"), \
            engine.begin() as conn:
        drop_month_partition(conn, january, forced=False, recheck_since=checked_at)
    with engine.connect() as conn:
        assert exists(conn, "usage_events_2024_01") and events_in(conn, "2024-01") == 4
        assert conn.execute(text("SELECT count(*) FROM usage_pruned_months")).scalar_one() == 0


def test_force_drops_a_month_that_is_not_reconciled_and_says_so(billed_months, engine) -> None:
    result, report = prune(billed_months, "--before", "2024-03", "--force")

    assert result.exit_code == 0, result.output
    assert [(m["month"], m["status"]) for m in report["months"]] == [("2024-01", "pruned"), ("2024-02", "pruned")]
    assert all("not reconciled" in " ".join(m["reasons"]) for m in report["months"])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT period_start::text, forced FROM usage_pruned_months ORDER BY 1")).all() == \
            [("2024-01-01", True), ("2024-02-01", True)]
        assert events_in(conn, "2024-01") == events_in(conn, "2024-02") == 0
        assert conn.execute(text("SELECT count(*) FROM usage_hourly")).scalar_one() == 6


def test_prune_refuses_the_current_month_and_a_bad_month(db_url, clean_env) -> None:
    after = str(Month.containing(utc_now()).next())
    future = run(db_url, "usage", "prune", "--before", after, "--force")
    assert future.exit_code == ExitCode.USAGE and "current month" in future.stderr
    bad = run(db_url, "usage", "prune", "--before", "2024-13")
    assert bad.exit_code == ExitCode.USAGE and "--before '2024-13' is not a month" in bad.stderr


def test_prune_refuses_a_month_whose_anchored_period_the_invoicing_run_left_for_later(db_url, engine, tmp_path,
                                                                                        clean_env, monkeypatch) -> None:
    """The January run of 5 February 2024 succeeds but leaves acme15's period 15 Jan - 14 Feb (not
    over yet) for a later run. January's partition holds that period's events of 20 January: it is
    not pruned, though the run succeeded, because that usage is billed by no invoice yet."""
    import billing_cli.runs.invoicing as invoicing_run

    plans_with_two_partitions(db_url, engine, tmp_path)
    with engine.begin() as conn:
        for org_id in ("acme", "acme15"):
            add_org(conn, org_id)
            set_plan(conn, org_id, "pro")
            add_event(conn, org_id, "api_calls", "100", utc(2024, 1, 20, 9), key=f"{org_id}-jan",
                      received_at=utc(2024, 1, 20, 9, 1))
        conn.execute(text("UPDATE organizations SET billing_anchor_day = 15 WHERE id = 'acme15'"))
        conn.execute(text("UPDATE organizations SET billing_anchor_previous = NULL, billing_anchor_changed_at = NULL "
                          "WHERE id = 'acme15'"))
    assert run(db_url, "aggregate-hourly", "--hour", "2024-01-20T09").exit_code == 0
    monkeypatch.setattr(invoicing_run, "utc_now", lambda: utc(2024, 2, 5, 0, 5))
    january = run(db_url, "invoice-monthly", "--month", "2024-01", "--json")
    assert january.exit_code == 0, january.output
    assert json.loads(january.stdout)["counts"]["invoiced"] == 1  # acme; acme15's period has not ended
    with engine.connect() as conn:
        assert conn.execute(text("SELECT organization_id FROM invoices")).scalars().all() == ["acme"]
        assert conn.execute(text("SELECT status FROM job_runs WHERE job = 'invoice-monthly'")).scalar_one() == \
            "succeeded"

    # Its reconcile says so too: the period's usage is rolled up and billed by no invoice.
    reconciled = run(db_url, "reconcile", "--month", "2024-01", "--json")
    assert reconciled.exit_code == ExitCode.MISMATCH, reconciled.output
    assert ("unbilled_usage", "acme15") in {(d["kind"], d["organization_id"])
                                            for d in json.loads(reconciled.stdout)["differences"]}

    result, report = prune(db_url, "--before", "2024-02")

    assert result.exit_code == ExitCode.REFUSED, result.output
    assert "2024-01: usage of 1 organization(s) not billed yet" in report["message"], report["message"]
    assert "its latest billing reconcile ended mismatch" in report["message"]
    with engine.connect() as conn:
        assert exists(conn, "usage_events_2024_01") and events_in(conn, "2024-01") == 2
        # The check that refuses it, on its own (reconcile aside): acme15's usage of January is unbilled.
        from billing_cli.db.partitions import month_record
        assert month_record(conn, Month(2024, 1), ["invoice-monthly", "legacy-run"], "reconcile"
                            ).unbilled_organizations == 1


def test_an_event_arriving_for_a_pruned_month_is_reported_until_someone_deals_with_it(billed_months, engine) -> None:
    """January is pruned; an event for 10 January still arrives. aggregate-hourly reports it (never
    as billed: the month is closed), and the partition function the report points to for backfilled
    months refuses a pruned month: recreating January's partition would take the event out of the
    default partition, where it is reported, into one nothing reads (its hours are final), so it
    would be neither billed nor reported any more."""
    from sqlalchemy.exc import DBAPIError

    assert run(billed_months, "reconcile", "--month", "2024-01").exit_code == 0
    assert run(billed_months, "usage", "prune", "--before", "2024-02").exit_code == 0
    with engine.begin() as conn:
        add_event(conn, "acme", "api_calls", "9", utc(2024, 1, 10, 9, 30), key="too-late")
    scheduled = run(billed_months, "aggregate-hourly", "--json")
    assert scheduled.exit_code == 0, scheduled.output
    assert json.loads(scheduled.stdout)["default_partition"] == {"events": 1, "months": {"2024-01": 1}}
    warning = next(line for line in scheduled.stderr.splitlines() if "default partition" in line)
    assert "occurred_at in pruned months: 2024-01 (1)): NOT rolled up or billed" in warning, warning

    with pytest.raises(DBAPIError, match="the events of 2024-01 were pruned"), engine.begin() as conn:
        conn.execute(text("SELECT billing_usage_events_partition('2024-01-01')"))
    with engine.connect() as conn:
        assert partition_of(conn, "too-late") == "usage_events_default" and not exists(conn, "usage_events_2024_01")
    again = run(billed_months, "aggregate-hourly", "--json")
    assert json.loads(again.stdout)["default_partition"]["months"] == {"2024-01": 1}  # still reported
