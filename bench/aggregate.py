"""Benchmark of `billing aggregate-hourly` on one busy hour.

Loads N synthetic usage events into the hour 2024-01-31T13:00Z..14:00Z (client-side COPY;
10,000 active organizations and 5 metrics by default) into a scratch database, plus history: the
H hours before it (default 24) with the same organizations and metrics, R events per hour
(default R = N, the measured hour's rate). A real usage_events table holds weeks of history, and
that matters: the hourly statement reads one hour's range of the occurred_at index, whereas a
per-organization query through the (organization_id, idempotency_key) index reads all of that
organization's history. It then times, on the same data and in the same run:

  (a) `billing aggregate-hourly --hour 2024-01-31T13 --lookback 0 --plain`, the whole process;
  (b) the bare statement (`billing_cli.db.usage_rollup.APPLY_SQL`, after SET LOCAL work_mem) run by
      `psql -f` as a process: the floor;
  (c) the naive way: one aggregation query per active organization, from Python (psycopg), in two
      variants side by side:
      (c1) psycopg defaults: after 5 executions the statement is prepared on the server, and
           PostgreSQL then switches to a generic plan (what a naive script gets);
      (c2) prepare_threshold=None: never prepared, so a custom plan for every organization.

  (d) the "late hours" check that the scheduled run (no --hour) makes before its window:
      `billing_cli.db.usage_rollup.late_hours(conn, before)`, in-process on one SQLAlchemy
      connection (billing_cli.db.engine.make_engine), one transaction per call, like
      jobs/aggregate.find_late_hours. It reads the events received since the last roll-up (minus
      an hour of margin) through the BRIN index on received_at, and usage_event_changes.

(a), (b) and (c) aggregate only the measured hour. usage_hourly, aggregated_hours and
usage_revisions are truncated before every measurement, so each one is the same fresh first
aggregation; (a) and (b) alternate their order, and (d) follows each pair. Every run's
usage_hourly must equal the first run's, whose per-metric totals must equal the generator's (exact
decimals): otherwise the script stops with an error.
Targets: (a) <= 1.3 x (b), and (a) >= 10 x faster than (c); the ratio is reported for (c1) and
(c2), and --check requires both. (d) is reported as a share of (b), the statement that the check
precedes, and flagged EXPENSIVE above 15% (no --check target); its plan (EXPLAIN ANALYZE) is printed.

Arrival times, for (d): events arrive as they occur. The data's timeline is shifted to the present:
with T the top of the UTC hour at which the load begins, the measured hour's events have received_at
in the hour before T (occurred_at's offset in its hour plus 0.05-3 s), the hour before it in the
hour before that, and so on (the table is filled in arrival order, as in production). For (d),
aggregated_hours holds a year of hourly runs, the last one at T - 1 hour (it rolled up the hour
before the measured one, with its lookback), and usage_event_changes is empty: the situation of the
scheduled run at T, whose window with the default lookback (2 hours) is [HOUR - 2 h, HOUR + 1 h), so
`before` = HOUR - 2 h. Its check must find no late hour; afterwards, one late event (occurred 5 hours
before the measured hour, received now) is added in a transaction that is rolled back, and the check
must then find exactly that hour.

(e) the scheduled run, `billing aggregate-hourly --plain` (no --hour, the default lookback), as a
whole process in the steady state: the history hours rolled up beforehand (apply_hour, once), each
recorded in aggregated_hours 5 s after its end with what its roll-up saw, the measured hour not rolled
up. Its clock alone is pinned to just after the measured hour (STEADY_LAUNCHER), so the measured
hour is "the previous hour". Each run must roll up the measured hour equal to the reference; any
other hour it rolls up (found late) is printed. Target: (e) <= 1.15 x (b). In the same state and
rounds: (b2) the statement by psql, (e') find_late_hours + aggregate_hours in-process (and the
check's share), (b') the statement in-process; with --baseline-code DIR, (e0): (e) with the
billing_cli found in DIR (before/after on the same data). The roll-up's own seconds inside (a), (e)
and (e0) come from their --plain summaries.

If a naive loop over every organization would take more than ~2 minutes, it is timed on an evenly
spaced sample of organizations and extrapolated linearly (the output says so).

    /tmp/venv/bin/python bench/aggregate.py [--events N] [--history-hours H] [--history-rate R]
                                            [--repeat R] [--check]

The scratch database (billing_bench_aggregate, or --scratch-database) is created on the server named by --database-url
(default: BENCH_DATABASE_URL, else postgresql://root@127.0.0.1:5432/test) and dropped at the end.
Exit status: 0, or 1 with --check when a target is missed; 2 on any error or mismatch.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import common  # bench/common.py: machine info, scratch databases
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from billing_cli.db.usage_rollup import APPLY_SQL, late_hours

HOUR_ARG = "2024-01-31T13"
HOUR_START = datetime(2024, 1, 31, 13, tzinfo=UTC)
HOUR_END = HOUR_START + timedelta(hours=1)
LOOKBACK_HOURS = 2  # AGGREGATE_LOOKBACK_HOURS' default ((e) checks that the process says so)
LOOKBACK = timedelta(hours=LOOKBACK_HOURS)  # the scheduled run's window starts 2 h earlier
LATE_BEFORE = HOUR_START - LOOKBACK  # late_hours(conn, before): the scheduled run's window start
LATE_CHECK_EXPENSIVE = 0.15  # (d) above this share of (b) is reported as expensive
STEADY_TARGET = 1.15  # (e) <= this x (b): the scheduled run in the steady state (issue 16)
# The clock of the (e) process: a few seconds after the measured hour ends, so that "the previous
# hour" is the measured one. Only that process's billing_cli.periods.utc_now is replaced, by
# STEADY_LAUNCHER; the production code knows nothing of it.
PINNED_NOW = HOUR_END + timedelta(seconds=5)
# In the steady state, each hour was rolled up by the run at its end, this long after it: after its
# last event arrived (0.05-3 s after it occurred), so the roll-up saw every event of its hour.
PREVIOUS_RUN_DELAY = timedelta(seconds=5)
STEADY_LAUNCHER = """\
import sys
from datetime import datetime
import billing_cli.periods
pinned = datetime.fromisoformat(sys.argv.pop(1))
billing_cli.periods.utc_now = lambda: pinned
from billing_cli.cli import main
sys.argv[0] = "billing"
main()
"""
PREVIOUS_RUNS = 365 * 24  # hourly runs recorded in aggregated_hours for (d)
SCRATCH_DB = "billing_bench_aggregate"
DEFAULT_ADMIN_URL = "postgresql://root@127.0.0.1:5432/test"
METRIC_NAMES = ["api_calls", "storage_gb_hours", "compute_seconds", "egress_gb", "seats",
                "builds", "messages", "jobs", "queries", "minutes"]
NAIVE_FULL_BUDGET = 120.0   # seconds: above this (estimated), the naive loop is sampled
NAIVE_REPEAT_BUDGET = 300.0  # seconds: repeat the full naive loop only if R runs fit in this
NAIVE_PROBE = 200            # organizations timed (and rolled back) to estimate the naive loop

NAIVE_SQL = """
INSERT INTO usage_hourly (organization_id, metric, hour_start, quantity, event_count)
SELECT organization_id, metric, date_trunc('hour', occurred_at, 'UTC'), sum(quantity), count(*)
FROM usage_events
WHERE organization_id = %s AND occurred_at >= %s AND occurred_at < %s
GROUP BY 1, 2, 3
ON CONFLICT (organization_id, metric, hour_start) DO UPDATE
    SET quantity = EXCLUDED.quantity, event_count = EXCLUDED.event_count
"""

COLUMNS = "organization_id, metric, hour_start, quantity, event_count"


BenchError = common.BenchError


# --- arguments and machine -------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the hour (default 1,000,000)")
    parser.add_argument("--organizations", type=int, default=10_000, help="active organizations (default 10,000)")
    parser.add_argument("--metrics", type=int, default=5, help=f"metrics, at most {len(METRIC_NAMES)} (default 5)")
    parser.add_argument("--history-hours", type=int, default=24, metavar="H",
                        help="hours of history loaded before the measured hour (default 24; 0 = none)")
    parser.add_argument("--history-rate", type=int, default=None, metavar="R",
                        help="events per history hour (default: --events, the measured hour's rate)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is reported")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_ADMIN_URL),
                        help="admin URL of the server where the scratch database is created "
                             "(default: BENCH_DATABASE_URL, else %(default)s)")
    parser.add_argument("--scratch-database", default=SCRATCH_DB, metavar="NAME",
                        help="name of the scratch database, created and dropped (default %(default)s)")
    parser.add_argument("--baseline-code", default=None, metavar="DIR",
                        help="also time (e0): the scheduled run of (e) with the billing_cli package found in DIR "
                             "(put first on PYTHONPATH; e.g. a `git archive` of the code before a change), in the "
                             "same rounds as (e): before and after on the same data")
    parser.add_argument("--naive-sample", type=int, default=None, metavar="K",
                        help="time the naive loop on K organizations and extrapolate; 0 = always all "
                             "organizations. Default: all if estimated under ~2 minutes, else 500")
    parser.add_argument("--seed", type=int, default=20240131, help="random seed of the synthetic data")
    parser.add_argument("--keep-database", action="store_true", help="do not drop the scratch database")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    if not 1 <= args.metrics <= len(METRIC_NAMES):
        parser.error(f"--metrics must be between 1 and {len(METRIC_NAMES)}")
    if args.events < 1 or args.organizations < 1 or args.repeat < 1:
        parser.error("--events, --organizations and --repeat must be positive")
    if args.history_rate is None:
        args.history_rate = args.events
    if args.history_hours < 0 or args.history_rate < 0:
        parser.error("--history-hours and --history-rate must not be negative")
    return args


# --- scratch database and data ---------------------------------------------------------------

def scratch_url(admin_url: str, database: str = SCRATCH_DB) -> str:
    return common.scratch_url(admin_url, database)


def recreate_database(admin_url: str, database: str = SCRATCH_DB, *, drop_only: bool = False) -> None:
    common.recreate_database(admin_url, database, drop_only=drop_only)


def billing_env(url: str) -> dict[str, str]:
    """The environment of the `billing` processes: this database, and no `.env` or DRY_RUN surprise."""
    env = dict(os.environ)
    env.update(DATABASE_URL=url, DRY_RUN="false", BILLING_ENV_FILE=os.devnull)
    return env


@dataclass
class Truth:
    """What the generator wrote, per metric: events and the quantity in hundredths (exact)."""

    events: dict[str, int] = field(default_factory=dict)
    hundredths: dict[str, int] = field(default_factory=dict)

    def quantity(self, metric: str) -> Decimal:
        return Decimal(self.hundredths[metric]).scaleb(-2)


def org_ids(count: int) -> list[str]:
    return [f"org_{i:06d}" for i in range(count)]


def write_hour(copy: psycopg.Copy, rng: random.Random, orgs: Sequence[str], metrics: Sequence[str],
               hour_start: datetime, events: int, truth: Truth | None, arrival_shift: timedelta) -> None:
    """`events` events spread uniformly over one hour, in chunks of COPY FROM STDIN text. Each
    arrives (received_at) at occurred_at + arrival_shift (whole hours) + 0.05-3 s; the delay is
    derived from the instant, not drawn, so the events themselves are what the seed always gave."""
    hour_prefix = hour_start.strftime("%Y-%m-%d %H")
    arrival_hour = f"{hour_start + arrival_shift:%Y-%m-%d %H}:"
    arrival_next = f"{hour_start + arrival_shift + timedelta(hours=1):%Y-%m-%d %H}:"
    chunk = 50_000
    for first in range(0, events, chunk):
        lines = []
        for _ in range(min(chunk, events - first)):
            org = orgs[rng.randrange(len(orgs))]
            metric = metrics[rng.randrange(len(metrics))]
            # Exact decimals: whole units mostly, sometimes hundredths ('1.25'); never floats.
            cents = rng.randrange(1, 11) * 100 if rng.random() < 0.7 else rng.randrange(1, 1001)
            micros = rng.randrange(3_600_000_000)
            seconds, micro = divmod(micros, 1_000_000)
            minute, second = divmod(seconds, 60)
            received = micros + 50_000 + micros * 2_654_435_761 % 2_950_000
            arrival = arrival_hour
            if received >= 3_600_000_000:
                received, arrival = received - 3_600_000_000, arrival_next
            r_seconds, r_micro = divmod(received, 1_000_000)
            if truth is not None:
                truth.events[metric] += 1
                truth.hundredths[metric] += cents
            lines.append(f"{org}\t{metric}\t{cents // 100}.{cents % 100:02d}\t"
                         f"{hour_prefix}:{minute:02d}:{second:02d}.{micro:06d}+00\t"
                         f"{arrival}{r_seconds // 60:02d}:{r_seconds % 60:02d}.{r_micro:06d}+00\n")
        copy.write("".join(lines))


@dataclass
class Loaded:
    truth: Truth
    history_events: int
    history_seconds: float
    hour_seconds: float
    vacuum_seconds: float
    table_size: str
    arrival_shift: timedelta  # received_at = occurred_at + this (+ seconds): the timeline ends at T


def load_data(conn: psycopg.Connection, args: argparse.Namespace) -> Loaded:
    """Organizations (all active), then the history hours oldest first, then the measured hour: the
    table's physical order is arrival order, as in production. COPY FROM STDIN throughout."""
    orgs = org_ids(args.organizations)
    metrics = METRIC_NAMES[:args.metrics]
    copy_events = "COPY usage_events (organization_id, metric, quantity, occurred_at, received_at) FROM STDIN"
    # T, the top of the current hour: the measured hour's events arrived in the hour before it.
    now_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    shift = now_hour - HOUR_END
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy("COPY organizations (id, name, email, status) FROM STDIN") as copy:
            copy.write("".join(f"{o}\tOrganization {o}\tbilling+{o}@example.com\tactive\n" for o in orgs))
        # usage_events is partitioned by month: the data's months get their partitions, as a live
        # table's have (otherwise the events would all land in the default partition).
        cur.execute("SELECT billing_usage_events_partition(CAST(m AS date)) FROM generate_series("
                    "date_trunc('month', CAST(%s AS timestamp)), CAST(%s AS timestamp), interval '1 month') AS m",
                    ((HOUR_START - args.history_hours * timedelta(hours=1)).replace(tzinfo=None),
                     HOUR_START.replace(tzinfo=None)))

    started = time.perf_counter()
    history_rng = random.Random(args.seed + 1)
    for back in range(args.history_hours, 0, -1):
        if not args.history_rate:
            break
        with conn.transaction(), conn.cursor() as cur, cur.copy(copy_events) as copy:
            write_hour(copy, history_rng, orgs, metrics, HOUR_START - back * timedelta(hours=1),
                       args.history_rate, None, shift)
        done = args.history_hours - back + 1
        if done % 6 == 0 or done == args.history_hours:
            print(f"  history: {done}/{args.history_hours} hours, {time.perf_counter() - started:.0f} s",
                  flush=True)
    history_seconds = time.perf_counter() - started

    started = time.perf_counter()
    truth = Truth({m: 0 for m in metrics}, {m: 0 for m in metrics})
    with conn.transaction(), conn.cursor() as cur, cur.copy(copy_events) as copy:
        write_hour(copy, random.Random(args.seed), orgs, metrics, HOUR_START, args.events, truth, shift)
    hour_seconds = time.perf_counter() - started

    # VACUUM as well as ANALYZE: sets hint bits and the visibility map now, so that the first
    # timed run does not pay for them.
    started = time.perf_counter()
    conn.execute("VACUUM (ANALYZE) organizations")
    conn.execute("VACUUM (ANALYZE) usage_events")
    vacuum_seconds = time.perf_counter() - started
    size = conn.execute("SELECT pg_size_pretty(sum(pg_total_relation_size(relid))) "
                        "FROM pg_partition_tree('usage_events')").fetchone()[0]
    return Loaded(truth, args.history_hours * args.history_rate, history_seconds, hour_seconds,
                  vacuum_seconds, size, shift)


# --- the three measurements ------------------------------------------------------------------

def reset(conn: psycopg.Connection) -> None:
    # usage_revisions too: the roll-up statement raises each changed organization's revision of the
    # month, so without it every run after the first would update, not insert, those rows.
    conn.execute("TRUNCATE usage_hourly, aggregated_hours, usage_revisions")


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def psql_script(path: Path) -> Path:
    """APPLY_SQL with its two parameters as timestamptz literals, in one transaction, like the job."""
    literals = {"start": f"'{HOUR_START:%Y-%m-%dT%H:%M:%S}+00'::timestamptz",
                "end": f"'{HOUR_END:%Y-%m-%dT%H:%M:%S}+00'::timestamptz"}
    # `:name` not preceded by ':' (a `::cast`) or a word character, and not followed by one.
    pattern = re.compile(r"(?<![:\w]):(start|end)\b")
    statement = pattern.sub(lambda m: literals[m.group(1)], APPLY_SQL)
    if re.search(r"(?<![:\w]):[A-Za-z_]", statement):
        raise BenchError("APPLY_SQL has a bind parameter other than :start and :end")
    path.write_text("BEGIN;\nSET LOCAL work_mem = '256MB';\n" + statement.strip() + ";\nCOMMIT;\n")
    return path


def run_billing(billing: str, env: dict[str, str]) -> str:
    return common.run_checked([billing, "aggregate-hourly", "--hour", HOUR_ARG, "--lookback", "0", "--plain"],
                              env=env).stdout


def rollup_seconds(stdout: str) -> float:
    """The roll-up's own time inside a `--plain` run: its summary's seconds (aggregate_hours, every
    hour it rolled up; not the start-up, the late-hours check or the partition upkeep)."""
    summary = common.plain_records(stdout, "summary")
    if len(summary) != 1 or "seconds" not in summary[0]:
        raise BenchError(f"no summary with seconds in:\n{stdout[-2000:]}")
    return float(summary[0]["seconds"])


def run_psql(url: str, script: Path) -> None:
    common.run_checked(["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(script)])


# The two naive variants: psycopg's default prepare_threshold (5), and never prepared.
NAIVE_VARIANTS = {
    "c1": ("naive loop, psycopg defaults", {}),
    "c2": ("naive loop, prepare_threshold=None", {"prepare_threshold": None}),
}


def run_naive(url: str, organizations: Sequence[str] | None, variant: str, *, commit: bool = True) -> None:
    """The naive way: one aggregation query per active organization, one transaction."""
    with psycopg.connect(url, **NAIVE_VARIANTS[variant][1]) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM organizations WHERE status = 'active'")]
        if organizations is not None:
            ids = list(organizations)
        with conn.cursor() as cur:
            for org in ids:
                cur.execute(NAIVE_SQL, (org, HOUR_START, HOUR_END))
        if commit:
            conn.commit()
        else:
            conn.rollback()


# --- (d): the scheduled run's late-hours check ------------------------------------------------

@dataclass
class LateCheck:
    times: list[float] = field(default_factory=list)
    found_after_late_event: list[datetime] = field(default_factory=list)
    late_event_hour: datetime | None = None
    plan: list[str] = field(default_factory=list)


def late_check_state(conn: psycopg.Connection, args: argparse.Namespace, loaded: Loaded) -> None:
    """aggregated_hours as the scheduled run at T finds it: a year of hourly runs, each hour rolled
    up by the run at its end and again by the next two (the lookback); the last run was at T - 1 h
    (+2 s, its duration), and its late-events scan at T - 1 h. No in-place edits pending
    (usage_event_changes empty)."""
    conn.execute("TRUNCATE aggregated_hours, usage_event_changes")
    conn.execute("""
        INSERT INTO aggregated_hours (hour_start, aggregated_at, event_count, last_received_at)
        SELECT h, least(h + interval '3 hours', %(measured)s) + %(shift)s + interval '2 seconds',
               CASE WHEN h >= %(history)s THEN %(rate)s ELSE 0 END,
               CASE WHEN h >= %(history)s THEN h + interval '1 hour' + %(shift)s END
        FROM generate_series(%(measured)s - %(runs)s * interval '1 hour', %(measured)s - interval '1 hour',
                             interval '1 hour') AS h
    """, {"measured": HOUR_START, "shift": loaded.arrival_shift, "runs": PREVIOUS_RUNS,
          "history": HOUR_START - args.history_hours * timedelta(hours=1), "rate": args.history_rate})
    # That run's late-events scan, at its start: the next scan's margin counts from it (0018).
    conn.execute("TRUNCATE late_usage_scan")
    conn.execute("INSERT INTO late_usage_scan (id, scanned_at) VALUES (true, %(measured)s + %(shift)s)",
                 {"measured": HOUR_START, "shift": loaded.arrival_shift})
    conn.execute("ANALYZE aggregated_hours")


def time_late_check(engine) -> float:
    """One late-hours check, as the job makes it: its own transaction, on a connected engine."""
    with engine.begin() as conn:
        started = time.perf_counter()
        found = late_hours(conn, LATE_BEFORE)
        seconds = time.perf_counter() - started
    if found:
        raise BenchError(f"(d) found late hours {found} in data that has none")
    return seconds


class _Recorder:
    """A SQLAlchemy connection that records the statements run through it (late_hours runs a
    SET LOCAL and reads its threshold first: only its last statement is the check's query)."""

    def __init__(self, conn) -> None:
        self.conn, self.statements = conn, []

    def execute(self, statement, parameters=None, **kwargs):
        self.statements.append((str(getattr(statement, "text", statement)), dict(parameters or {})))
        return self.conn.execute(statement, parameters, **kwargs)


def late_check_extras(engine, check: LateCheck) -> None:
    """Its plan, and one late event (rolled back): the check must then find exactly its hour."""
    from sqlalchemy import text

    with engine.begin() as conn:  # its last statement, explained in the transaction late_hours set up
        recorder = _Recorder(conn)
        late_hours(recorder, LATE_BEFORE)
        statement, params = recorder.statements[-1]
        check.plan = common.explain_analyze(conn, statement, params)
    check.late_event_hour = HOUR_START - timedelta(hours=5)
    with engine.connect() as conn, conn.begin() as transaction:
        conn.execute(text("INSERT INTO usage_events (organization_id, metric, quantity, occurred_at) "
                          "VALUES (:org, :metric, 1, :at)"),
                     {"org": org_ids(1)[0], "metric": METRIC_NAMES[0],
                      "at": check.late_event_hour + timedelta(minutes=17)})
        check.found_after_late_event = late_hours(conn, LATE_BEFORE)
        transaction.rollback()
    if check.found_after_late_event != [check.late_event_hour]:
        raise BenchError(f"(d) after one late event for {check.late_event_hour:%Y-%m-%dT%H}:00Z the check found "
                         f"{check.found_after_late_event}")


# --- verification ----------------------------------------------------------------------------

def metric_totals(conn: psycopg.Connection, table: str, orgs: Sequence[str] | None = None,
                  measured_hour: bool = False) -> list[tuple]:
    where, params = ("WHERE organization_id = ANY(%s)", [list(orgs)]) if orgs is not None else ("", [])
    if measured_hour:
        where, params = "WHERE hour_start >= %s AND hour_start < %s", [HOUR_START, HOUR_END]
    return conn.execute(
        sql.SQL("SELECT metric, count(*), sum(event_count), sum(quantity) FROM {} " + where +
                " GROUP BY metric ORDER BY metric").format(sql.Identifier(table)), params).fetchall()


def save_reference(conn: psycopg.Connection, truth: Truth, events: int) -> list[tuple]:
    """Keep the first run's usage_hourly and check it against the generator."""
    conn.execute(f"CREATE TABLE bench_reference AS SELECT {COLUMNS} FROM usage_hourly")
    totals = metric_totals(conn, "bench_reference")
    got = {m: (events_, quantity) for m, _, events_, quantity in totals}
    want = {m: (truth.events[m], truth.quantity(m)) for m in truth.events if truth.events[m]}
    if got != want:
        raise BenchError(f"usage_hourly per-metric totals differ from the generated events:\n"
                         f"  got  {got}\n  want {want}")
    recorded = conn.execute("SELECT event_count FROM aggregated_hours WHERE hour_start = %s",
                            (HOUR_START,)).fetchone()
    if recorded is None or recorded[0] != events:
        raise BenchError(f"aggregated_hours records {recorded} events for the hour, expected {events}")
    return totals


def verify(conn: psycopg.Connection, label: str, orgs: Sequence[str] | None = None, *,
           measured_hour: bool = False) -> None:
    """usage_hourly must equal the reference, row for row (restricted to `orgs` when given; with
    `measured_hour`, usage_hourly's rows of the measured hour only: the steady state of (e) also
    holds the history's)."""
    where, params = ("WHERE organization_id = ANY(%s)", [list(orgs)] * 4) if orgs is not None else ("", [])
    if measured_hour:
        where, params = "WHERE hour_start >= %s AND hour_start < %s", [HOUR_START, HOUR_END] * 4
    diff = conn.execute(f"""
        SELECT count(*) FROM (
            (SELECT {COLUMNS} FROM usage_hourly {where} EXCEPT ALL SELECT {COLUMNS} FROM bench_reference {where})
            UNION ALL
            (SELECT {COLUMNS} FROM bench_reference {where} EXCEPT ALL SELECT {COLUMNS} FROM usage_hourly {where})
        ) d""", params).fetchone()[0]
    ours, ref = metric_totals(conn, "usage_hourly", orgs, measured_hour), metric_totals(conn, "bench_reference", orgs)
    if diff or ours != ref:
        raise BenchError(f"{label}: usage_hourly differs from the reference ({diff} rows differ)\n"
                         f"  got       {ours}\n  reference {ref}")


# --- (e): the scheduled run in the steady state ------------------------------------------------

@dataclass
class Steady:
    """(e), (e'), (b'), (b2): the measured hour rolled up in the steady state, where the history
    hours (the lookback among them) were rolled up by earlier runs and are unchanged."""

    process: list[float] = field(default_factory=list)      # (e)
    baseline: list[float] = field(default_factory=list)     # (e0): (e) with --baseline-code
    # the roll-up's own seconds inside the processes (their summaries): (a), (e), (e0)
    job_rollup: list[float] = field(default_factory=list)
    process_rollup: list[float] = field(default_factory=list)
    baseline_rollup: list[float] = field(default_factory=list)
    psql: list[float] = field(default_factory=list)         # (b2)
    in_process: list[float] = field(default_factory=list)   # (e')
    check: list[float] = field(default_factory=list)        # (e')'s find_late_hours part
    bare: list[float] = field(default_factory=list)         # (b')
    history_rows: int = 0
    setup_seconds: float = 0.0
    start_line: str = ""
    # per run of (e) and (e'): the hours rolled up besides the measured one (the target: none)
    again_process: list[list[datetime]] = field(default_factory=list)
    again_baseline: list[list[datetime]] = field(default_factory=list)
    again_in_process: list[list[datetime]] = field(default_factory=list)


def steady_setup(conn: psycopg.Connection, engine, args: argparse.Namespace, loaded: Loaded,
                 steady: Steady) -> None:
    """Roll up every history hour once, oldest first, as the hourly runs before T did (apply_hour,
    one transaction each), and keep the result: usage_hourly's history rows and usage_revisions
    (every organization's month already revised). Each steady measurement starts from them."""
    from billing_cli.db.usage_rollup import apply_hour

    started = time.perf_counter()
    reset(conn)
    for back in range(args.history_hours, 0, -1):
        hour = HOUR_START - back * timedelta(hours=1)
        with engine.begin() as c:
            apply_hour(c, hour, hour + timedelta(hours=1))
    conn.execute("DROP TABLE IF EXISTS bench_steady_hourly, bench_steady_revisions, bench_steady_aggregated")
    conn.execute("CREATE TABLE bench_steady_hourly AS SELECT * FROM usage_hourly")
    conn.execute("CREATE TABLE bench_steady_revisions AS SELECT * FROM usage_revisions")
    # aggregated_hours: a year of hourly runs, each hour rolled up once, PREVIOUS_RUN_DELAY after
    # its end, on the arrival timeline (the last one, of the hour before the measured one, at
    # T - 1 h + 5 s); the history hours with what their roll-up really recorded (event count,
    # latest arrival). The lookback hours are rolled up and unchanged.
    conn.execute("""
        CREATE TABLE bench_steady_aggregated AS
        SELECT h AS hour_start, h + interval '1 hour' + %(shift)s + %(delay)s AS aggregated_at,
               coalesce(a.event_count, 0) AS event_count, a.last_received_at
        FROM generate_series(%(measured)s - %(runs)s * interval '1 hour', %(measured)s - interval '1 hour',
                             interval '1 hour') AS h
        LEFT JOIN aggregated_hours a ON a.hour_start = h
    """, {"measured": HOUR_START, "shift": loaded.arrival_shift, "delay": PREVIOUS_RUN_DELAY,
          "runs": PREVIOUS_RUNS})
    steady.history_rows = conn.execute("SELECT count(*) FROM bench_steady_hourly").fetchone()[0]
    steady.setup_seconds = time.perf_counter() - started


def steady_restore(conn: psycopg.Connection) -> None:
    """Back to the rolled-up history after the fresh (a)/(b) runs truncated it."""
    conn.execute("TRUNCATE usage_hourly, aggregated_hours, usage_revisions")
    conn.execute("INSERT INTO usage_hourly SELECT * FROM bench_steady_hourly")
    conn.execute("VACUUM (ANALYZE) usage_hourly")


def steady_reset(conn: psycopg.Connection) -> None:
    """The state of the scheduled run at T: the history rolled up (usage_hourly, usage_revisions as
    the history's roll-ups left them), the measured hour not; aggregated_hours: a year of runs, the
    last at T - 1 h + 5 s (bench_steady_aggregated), its late-events scan recorded then; no pending
    edits."""
    conn.execute("DELETE FROM usage_hourly WHERE hour_start >= %s AND hour_start < %s", (HOUR_START, HOUR_END))
    conn.execute("TRUNCATE usage_revisions, aggregated_hours, usage_event_changes")
    conn.execute("INSERT INTO usage_revisions SELECT * FROM bench_steady_revisions")
    conn.execute("INSERT INTO aggregated_hours (hour_start, aggregated_at, event_count, last_received_at) "
                 "SELECT hour_start, aggregated_at, event_count, last_received_at FROM bench_steady_aggregated")
    # The last run's late-events scan (0018), where the old check counted from: its latest roll-up.
    conn.execute("TRUNCATE late_usage_scan")
    conn.execute("INSERT INTO late_usage_scan (id, scanned_at) SELECT true, max(aggregated_at) FROM bench_steady_aggregated")
    conn.execute("VACUUM (ANALYZE) usage_hourly, usage_revisions, aggregated_hours")


def steady_command() -> list[str]:
    """`billing aggregate-hourly --plain` as cron starts it, with only its clock pinned."""
    # -P: not the current directory first on sys.path (it may hold another billing_cli), like the
    # `billing` console script, which imports the installed package or PYTHONPATH's.
    return [sys.executable, "-P", "-c", STEADY_LAUNCHER, PINNED_NOW.isoformat(), "aggregate-hourly", "--plain"]


def baseline_env(env: dict[str, str], code: str) -> dict[str, str]:
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (code, env.get("PYTHONPATH")) if p)}


def run_scheduled(env: dict[str, str]) -> str:
    return common.run_checked(steady_command(), env=env).stdout


def check_scheduled_output(stdout: str, label: str, args: argparse.Namespace) -> tuple[str, list[str]]:
    """The run's own account: its window is the measured hour alone, its lookback is the default,
    every hour it rolled up succeeded, the measured hour with all its events. Returns
    its start line and the hours it rolled up before the measured one (late hours: the target is none)."""
    lines = stdout.splitlines()
    start = [line for line in lines if line.startswith("start ")]
    hours = [line for line in lines if line.startswith("hour ")]
    want_hour = f"hour hour={HOUR_ARG}:00Z status=ok "
    problems = []
    if len(start) != 1 or f"window_start={HOUR_ARG}:00Z" not in start[0] or " hours=1 " not in start[0]:
        problems.append("its window is not the measured hour alone")
    elif f"AGGREGATE_LOOKBACK_HOURS={LOOKBACK_HOURS}" not in start[0]:
        problems.append(f"its lookback is not the default AGGREGATE_LOOKBACK_HOURS={LOOKBACK_HOURS}")
    measured = [line for line in hours if line.startswith(want_hour)]
    if len(measured) != 1 or f" events={args.events} " not in measured[0]:
        problems.append(f"it did not roll up {HOUR_ARG}:00Z with its {args.events} events")
    if any(" status=ok " not in line for line in hours):
        problems.append("an hour failed")
    late = re.search(r" late_hours=(\S+)", start[0]).group(1).split(",") if start and "late_hours=" in start[0] else []
    # the window's hour is reported first, then the late hours the check found beside its roll-up
    if [line.split()[1].removeprefix("hour=") for line in hours if line not in measured] != late:
        problems.append(f"the hours rolled up are not its late hours {late}")
    if problems:
        raise BenchError(f"{label}: " + "; ".join(problems) + "\n" + stdout[-3000:])
    return start[0], late


def check_steady_state(conn: psycopg.Connection, label: str, loaded: Loaded, args: argparse.Namespace) -> list[datetime]:
    """After a steady run: the measured hour equals the reference, and was recorded in
    aggregated_hours with all its events; the history's roll-up is unchanged. Returns the other
    hours that the run rolled up (recorded again in aggregated_hours: apply_hour always records its
    hour), which the target wants to be none."""
    verify(conn, label, measured_hour=True)
    last_run = HOUR_START + loaded.arrival_shift + PREVIOUS_RUN_DELAY  # bench_steady_aggregated's latest
    again = [r[0] for r in conn.execute("SELECT hour_start FROM aggregated_hours WHERE aggregated_at > %s "
                                        "ORDER BY 1", (last_run,))]
    if HOUR_START not in again:
        raise BenchError(f"{label}: {HOUR_ARG} was not rolled up")
    recorded = conn.execute("SELECT event_count FROM aggregated_hours WHERE hour_start = %s",
                            (HOUR_START,)).fetchone()[0]
    if recorded != args.events:
        raise BenchError(f"{label}: aggregated_hours records {recorded} events for the hour, expected {args.events}")
    history = conn.execute("SELECT count(*), sum(event_count), sum(quantity) FROM usage_hourly "
                           "WHERE hour_start < %s", (HOUR_START,)).fetchone()
    kept = conn.execute("SELECT count(*), sum(event_count), sum(quantity) FROM bench_steady_hourly").fetchone()
    if history != kept:
        raise BenchError(f"{label}: the history's roll-up changed: {history} vs {kept}")
    return [h.astimezone(UTC) for h in again if h != HOUR_START]


def run_in_process(engine) -> tuple[float, float, list[datetime]]:
    """(e'): what the scheduled run does on its engine, without the process: find_late_hours for
    the window with the default lookback, then the roll-up (jobs/aggregate.aggregate_hours)."""
    from billing_cli.jobs.aggregate import aggregate_hours, find_late_hours
    from billing_cli.periods import HourRange

    window = HourRange(HOUR_START, HOUR_END)
    started = time.perf_counter()
    late = find_late_hours(engine.begin, window, lookback=LOOKBACK_HOURS)
    checked = time.perf_counter()
    result = aggregate_hours(engine.begin, window, late_hours=late)
    ended = time.perf_counter()
    if [h.hour for h in result.hours] != [*late, HOUR_START] or not result.ok:
        raise BenchError(f"(e') rolled up {[h.hour for h in result.hours]} after finding late hours {late} "
                         f"({[h.error for h in result.failed_hours]})")
    return ended - started, checked - started, late


def run_bare_in_process(engine) -> None:
    """(b'): APPLY_SQL alone on the same engine, one transaction with its SET LOCAL, like (b)."""
    from sqlalchemy import text

    with engine.begin() as c:
        c.execute(text("SET LOCAL work_mem = '256MB'"))
        c.execute(text(APPLY_SQL), {"start": HOUR_START, "end": HOUR_END}).fetchall()


def measure_steady_once(conn: psycopg.Connection, engine, url: str, script: Path, env: dict[str, str],
                        args: argparse.Namespace, loaded: Loaded, steady: Steady, i: int) -> None:
    """One run of each steady measurement, from the same state, the order rotated per round."""
    order = ["e", "b2", "e'", "b'"] + (["e0"] if args.baseline_code else [])
    order = order[i % len(order):] + order[:i % len(order)]
    for name in order:
        steady_reset(conn)
        late: list = []
        if name == "e":
            started = time.perf_counter()
            stdout = run_scheduled(env)
            steady.process.append(time.perf_counter() - started)
            steady.start_line, late = check_scheduled_output(stdout, f"(e) run {i + 1}", args)
            steady.process_rollup.append(rollup_seconds(stdout))
            seconds = steady.process[-1]
        elif name == "e0":
            started = time.perf_counter()
            stdout = run_scheduled(baseline_env(env, args.baseline_code))
            steady.baseline.append(time.perf_counter() - started)
            _, late = check_scheduled_output(stdout, f"(e0) run {i + 1}", args)
            steady.baseline_rollup.append(rollup_seconds(stdout))
            seconds = steady.baseline[-1]
        elif name == "b2":
            steady.psql.append(seconds := timed(lambda: run_psql(url, script)))
        elif name == "e'":
            seconds, check, late = run_in_process(engine)
            steady.in_process.append(seconds)
            steady.check.append(check)
        else:
            steady.bare.append(seconds := timed(lambda: run_bare_in_process(engine)))
        again = check_steady_state(conn, f"({name}) run {i + 1}", loaded, args)
        if [f"{h:%Y-%m-%dT%H}:00Z" for h in again] != [h if isinstance(h, str) else f"{h.astimezone(UTC):%Y-%m-%dT%H}:00Z"
                                                        for h in late]:
            raise BenchError(f"({name}) run {i + 1}: aggregated_hours shows {again} rolled up again, "
                             f"the run said {late}")
        if name == "e":
            steady.again_process.append(again)
        elif name == "e0":
            steady.again_baseline.append(again)
        elif name == "e'":
            steady.again_in_process.append(again)
        print(f"  ({name}) run {i + 1}: {seconds:.3f} s"
              + (f", rolled up again: {', '.join(f'{h:%Y-%m-%dT%H}:00Z' for h in again)}" if again else ""),
              flush=True)


# --- orchestration ---------------------------------------------------------------------------

@dataclass
class Naive:
    variant: str
    times: list[float]
    sample: list[str] | None  # None: every organization
    total_orgs: int

    @property
    def factor(self) -> float:
        return 1.0 if self.sample is None else self.total_orgs / len(self.sample)

    @property
    def median(self) -> float:
        return statistics.median(self.times) * self.factor


def measure_naive(conn: psycopg.Connection, url: str, args: argparse.Namespace, variant: str) -> Naive:
    orgs = org_ids(args.organizations)
    sample_size = args.naive_sample
    if sample_size is None:
        probe = orgs[::max(1, len(orgs) // NAIVE_PROBE)][:NAIVE_PROBE]
        estimate = timed(lambda: run_naive(url, probe, variant, commit=False)) * len(orgs) / len(probe)
        print(f"({variant}) probe: {len(probe)} organizations -> ~{estimate:.0f} s estimated for all "
              f"{len(orgs):,}", flush=True)
        sample_size = 0 if estimate <= NAIVE_FULL_BUDGET else 500
        runs = args.repeat if sample_size or estimate * args.repeat <= NAIVE_REPEAT_BUDGET else 1
    else:
        runs = args.repeat
    sample = None
    if sample_size and sample_size < len(orgs):
        sample = orgs[::len(orgs) // sample_size][:sample_size]
    times = []
    for i in range(runs):
        reset(conn)
        times.append(timed(lambda: run_naive(url, sample, variant)))
        verify(conn, f"({variant}) naive run {i + 1}", sample)
        print(f"  ({variant}) run {i + 1}: {times[-1]:.3f} s", flush=True)
    return Naive(variant, times, sample, len(orgs))


def measure_job_and_floor(conn: psycopg.Connection, url: str, args: argparse.Namespace, script: Path,
                          loaded: Loaded) -> tuple[list[float], list[float], LateCheck, Steady, list[tuple]]:
    from billing_cli.db.engine import make_engine

    billing, env = common.billing_executable(), billing_env(url)
    # Warm-up (untimed): the first aggregation, kept as the reference every timed run must equal.
    reset(conn)
    run_billing(billing, env)
    totals = save_reference(conn, loaded.truth, args.events)
    job: list[float] = []
    floor: list[float] = []
    late = LateCheck()
    steady = Steady()
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as warm:  # connected before the timing, like the job's pool
            warm.exec_driver_sql("SELECT 1")
        print(f"  rolling up the {args.history_hours} history hours for the steady state of (e) ...", flush=True)
        steady_setup(conn, engine, args, loaded, steady)
        # Warm-up of (e) (untimed): its first run also makes the pinned month's next partition,
        # which the runs before T would have made.
        steady_reset(conn)
        check_scheduled_output(run_scheduled(env), "(e) warm-up", args)
        check_steady_state(conn, "(e) warm-up", loaded, args)
        if args.baseline_code:
            steady_reset(conn)
            check_scheduled_output(run_scheduled(baseline_env(env, args.baseline_code)), "(e0) warm-up", args)
            check_steady_state(conn, "(e0) warm-up", loaded, args)
        print(f"  steady state: {steady.history_rows:,} usage_hourly rows of history, set up in "
              f"{steady.setup_seconds:.0f} s", flush=True)
        for i in range(args.repeat):
            order = [("a", job), ("b", floor)] if i % 2 == 0 else [("b", floor), ("a", job)]
            for name, times in order:
                reset(conn)
                if name == "a":
                    started = time.perf_counter()
                    stdout = run_billing(billing, env)
                    times.append(time.perf_counter() - started)
                    steady.job_rollup.append(rollup_seconds(stdout))
                else:
                    times.append(timed(lambda: run_psql(url, script)))
                verify(conn, f"({name}) run {i + 1}")
                print(f"  ({name}) run {i + 1}: {times[-1]:.3f} s", flush=True)
            late_check_state(conn, args, loaded)
            late.times.append(time_late_check(engine))
            print(f"  (d) run {i + 1}: {late.times[-1]:.3f} s", flush=True)
            steady_restore(conn)
            measure_steady_once(conn, engine, url, script, env, args, loaded, steady, i)
        late_check_state(conn, args, loaded)  # the steady runs left their own aggregated_hours
        late_check_extras(engine, late)
    finally:
        engine.dispose()
    return job, floor, late, steady, totals


def runs(times: Sequence[float], factor: float = 1.0) -> str:
    return " ".join(f"{t * factor:.3f}" for t in times)


def report(args: argparse.Namespace, machine: dict[str, str], job: list[float], floor: list[float],
           naives: list[Naive], totals: list[tuple], loaded: Loaded, late: LateCheck, steady: Steady) -> bool:
    a, b = statistics.median(job), statistics.median(floor)
    d = statistics.median(late.times)
    a_over_b = a / b
    now_hour = HOUR_END + loaded.arrival_shift
    ok = a_over_b <= 1.3
    history = ("no history" if not loaded.history_events else
               f"history: {loaded.history_events:,} events in the {args.history_hours} hours before it "
               f"({args.history_rate:,}/hour), {args.organizations:,} organizations x {args.metrics} metrics "
               f"likewise")
    lines = [
        "",
        f"aggregate-hourly benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M}Z",
        f"machine: nproc={machine['nproc']}, CPU {machine['cpu']}, {machine['memory']} RAM, "
        f"{machine['postgres']}, Python {machine['python']}, Linux {machine['kernel']}",
        f"code: {common.code_info()}; load average: {machine['load_start']} at the start, {common.loadavg()} at the end",
        f"data: {args.events:,} events in {HOUR_ARG}:00Z, {args.organizations:,} active organizations, "
        f"{args.metrics} metrics",
        f"      {history}",
        f"      usage_events: {args.events + loaded.history_events:,} rows, {loaded.table_size} with indexes; "
        f"load {loaded.history_seconds + loaded.hour_seconds:.0f} s + VACUUM ANALYZE "
        f"{loaded.vacuum_seconds:.0f} s",
        f"repeat={args.repeat}, median; (a), (b) and (c) aggregate the measured hour only",
        "",
        f"{'':45} {'median s':>9}   runs (s)",
        f"{'(a) billing aggregate-hourly (process)':45} {a:9.3f}   {runs(job)}",
        f"{'(b) psql -f APPLY_SQL (floor)':45} {b:9.3f}   {runs(floor)}",
    ]
    for naive in naives:
        label = f"({naive.variant}) {NAIVE_VARIANTS[naive.variant][0]}"
        lines.append(f"{label:45} {naive.median:9.3f}   {runs(naive.times, naive.factor)}")
    lines.append(f"{'(d) late-hours check (late_hours, in-process)':45} {d:9.3f}   {runs(late.times)}")
    e, b2 = statistics.median(steady.process), statistics.median(steady.psql)
    e1, b1 = statistics.median(steady.in_process), statistics.median(steady.bare)
    e1_check = statistics.median(steady.check)
    label_e1, label_b1 = "(e') find_late_hours + aggregate_hours", "(b') APPLY_SQL in-process, steady state"
    lines += [
        "  steady state: the history hours (lookback included) rolled up, the measured hour not:",
        f"{'(e) billing aggregate-hourly, scheduled':45} {e:9.3f}   {runs(steady.process)}",
        *([f"{'(e0) the same, --baseline-code':45} {statistics.median(steady.baseline):9.3f}   "
           f"{runs(steady.baseline)}"] if steady.baseline else []),
        f"{'(b2) psql -f APPLY_SQL, steady state':45} {b2:9.3f}   {runs(steady.psql)}",
        f"{label_e1:45} {e1:9.3f}   {runs(steady.in_process)}",
        f"{'     of which find_late_hours':45} {e1_check:9.3f}   {runs(steady.check)}",
        f"{label_b1:45} {b1:9.3f}   {runs(steady.bare)}",
    ]
    for naive in naives:
        lines.append(f"    ({naive.variant}): " + (
            "all organizations" if naive.sample is None else
            f"EXTRAPOLATED: timed on {len(naive.sample):,} of {naive.total_orgs:,} organizations "
            f"x {naive.factor:g}"))
    lines += [
        "",
        f"a - b (job overhead over the bare statement): {a - b:.3f} s",
        f"a / b  = {a_over_b:6.2f}   target <= 1.30   {'PASS' if ok else 'FAIL'}",
    ]
    for naive in naives:
        ratio = naive.median / a
        ok_c = ratio >= 10
        ok = ok and ok_c
        lines.append(f"{naive.variant} / a = {ratio:6.1f}   target >= 10     {'PASS' if ok_c else 'FAIL'}")
    ok_e = e / b <= STEADY_TARGET
    ok = ok and ok_e
    again = sorted({h for run in steady.again_process + steady.again_in_process for h in run})
    reread = ("no lookback or other hour rolled up again by any run of (e) or (e')" if not again else
              "ROLLED UP AGAIN (found late, although unchanged): "
              + "; ".join(f"{label} runs: " + " | ".join(",".join(f"{h:%H}:00Z" for h in run) or "-" for run in r)
                          for label, r in (("(e)", steady.again_process), ("(e')", steady.again_in_process))))
    again0 = sorted({h for run in steady.again_baseline for h in run})
    lines += [
        "",
        f"(e) the scheduled run (`billing aggregate-hourly --plain`, no --hour, default lookback) at "
        f"{PINNED_NOW:%Y-%m-%dT%H:%M:%S}Z (clock pinned),",
        f"    steady state: {steady.history_rows:,} usage_hourly rows of the {args.history_hours} history hours "
        "rolled up (usage_revisions as they left it); aggregated_hours: a year of runs, each hour rolled up",
        f"    {PREVIOUS_RUN_DELAY.seconds} s after its end (after its last arrival), with the counts its roll-up "
        f"recorded; the last run at T - 1 h + {PREVIOUS_RUN_DELAY.seconds} s.",
        f"    Every run rolled up {HOUR_ARG}:00Z equal to the reference, the history unchanged. {reread}.",
        f"    Start line of the last (e): {steady.start_line}",
        f"e / b   = {e / b:6.2f}   target <= {STEADY_TARGET:.2f}   {'PASS' if ok_e else 'FAIL'}",
        *([f"e0 / b  = {statistics.median(steady.baseline) / b:6.2f}   (the baseline code {args.baseline_code}; "
           f"e / e0 = {e / statistics.median(steady.baseline):.2f}; its runs rolled up again: "
           + (" | ".join(",".join(f"{h:%H}:00Z" for h in run) or "-" for run in steady.again_baseline)
              if again0 else "nothing") + ")"] if steady.baseline else []),
        f"e / a   = {e / a:6.2f}",
        f"e' / b' = {e1 / b1:6.2f}   (in-process: the lookback check and the job around the statement)",
        f"e / b2  = {e / b2:6.2f}   (process vs psql, both in the steady state)",
        f"b2 / b  = {b2 / b:6.2f}   (the bare statement, steady state vs fresh)",
        f"e - e'  = {e - e1:.3f} s (the process: interpreter, imports, configuration, connecting, run records)",
        f"find_late_hours in (e'): {e1_check:.3f} s = {e1_check / b1:.3f} x (b')",
        "inside the processes, by their summaries' seconds (the roll-up of their hours) and the rest "
        "(start-up, late-hours check, partition upkeep, run records), medians:",
        *(f"    {name}: roll-up {statistics.median(inner):.3f} s ({runs(inner)}), rest "
          f"{statistics.median([t - r for t, r in zip(total, inner)]):.3f} s "
          f"({runs([t - r for t, r in zip(total, inner)])})"
          for name, total, inner in (("(a) ", job, steady.job_rollup), ("(e) ", steady.process, steady.process_rollup),
                                     ("(e0)", steady.baseline, steady.baseline_rollup)) if inner),
    ]
    expensive = d / b > LATE_CHECK_EXPENSIVE
    lines += [
        "",
        f"(d) late-hours check: {d:.3f} s = {d / b:.3f} x (b)   "
        + (f"EXPENSIVE: more than {LATE_CHECK_EXPENSIVE:.0%} of the bare one-hour statement (plan below)"
           if expensive else f"(under {LATE_CHECK_EXPENSIVE:.0%} of (b))"),
        f"    the scheduled run at T = {now_hour:%Y-%m-%dT%H:%M}Z for the hour {HOUR_ARG}: late_hours(conn, "
        f"{LATE_BEFORE:%Y-%m-%dT%H}:00Z), its window with the default lookback starting 2 h before the hour;",
        f"    aggregated_hours: {PREVIOUS_RUNS:,} hourly runs, the last at T - 1 h; received_at: the measured hour's "
        "events in [T - 1 h, T), each earlier hour's an hour earlier;",
        f"    found no late hour (every run); with one late event added for {late.late_event_hour:%Y-%m-%dT%H}:17Z "
        "(received now, rolled back): found "
        + ", ".join(f"{h:%Y-%m-%dT%H}:00Z" for h in late.found_after_late_event),
        "    plan of (d), EXPLAIN (ANALYZE, BUFFERS), once after the timed runs:",
        *(f"      {line}" for line in late.plan),
    ]
    lines += [
        "",
        "usage_hourly per metric (identical for every run of (a), (b), (c); equal to the generated events):",
        f"  {'metric':18} {'rows':>8} {'events':>10} {'quantity':>14}",
        *(f"  {m:18} {rows:8,} {ev:10,} {q:14,}" for m, rows, ev, q in totals),
    ]
    print("\n".join(lines), flush=True)
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    url = scratch_url(args.database_url, args.scratch_database)
    print(f"scratch database {make_url(url).render_as_string(hide_password=True)}", flush=True)
    recreate_database(args.database_url, args.scratch_database)
    try:
        common.run_checked([common.billing_executable(), "db", "upgrade", "--plain"], env=billing_env(url))
        with psycopg.connect(url, autocommit=True) as conn:  # transactions only where needed
            machine = {**common.machine_info(conn), "load_start": common.loadavg()}
            print(f"loading {args.history_hours * args.history_rate:,} history events "
                  f"({args.history_hours} hours x {args.history_rate:,}) and {args.events:,} events "
                  f"in the measured hour ...", flush=True)
            loaded = load_data(conn, args)
            print(f"loaded in {loaded.history_seconds + loaded.hour_seconds:.0f} s, VACUUM ANALYZE "
                  f"{loaded.vacuum_seconds:.0f} s; usage_events {loaded.table_size}", flush=True)
            with tempfile.TemporaryDirectory(prefix="bench-aggregate-") as tmp:
                script = psql_script(Path(tmp) / "apply.sql")
                print("timing (a), (b), (d) and the steady state (e), (b2), (e'), (b') ...", flush=True)
                job, floor, late, steady, totals = measure_job_and_floor(conn, url, args, script, loaded)
            naives = []
            for variant in NAIVE_VARIANTS:
                print(f"timing ({variant}) ...", flush=True)
                naives.append(measure_naive(conn, url, args, variant))
        met = report(args, machine, job, floor, naives, totals, loaded, late, steady)
    except BenchError as exc:
        print(f"\nERROR: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep_database:
            recreate_database(args.database_url, args.scratch_database, drop_only=True)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
