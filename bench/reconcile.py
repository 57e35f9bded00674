"""Benchmark of `billing reconcile` on a month of raw usage: against the month's bare GROUP BY.

Into a scratch database (billing_bench_reconcile), all through the program where it has a command:
`billing db upgrade`; bench/invoice.py's six price plans (every model; USD, EUR, JPY, GBP) for 3
metrics, applied with `billing plans apply`; N organizations (default 10,000; bench/invoice.py's
generator, 10% with Unicode names), active, created 2023-01-01 (before the month, so its fees are
due); E raw usage_events in January 2024 (default 8,000,000), client-side COPY FREEZE with the
table's indexes and constraints dropped during the load and rebuilt as they were, then VACUUM
ANALYZE. The events are a realistic month:

  - organizations are unequal: each has an activity weight from a lognormal distribution
    (sigma --skew, default 2.0: the busiest 1% of organizations send about a third of the events,
    the median organization about a seventh of the mean), and each event picks its organization by
    weight and one of the 3 metrics uniformly;
  - the same number of events in every hour (E / 744), at uniformly random instants; the table is
    filled hour by hour, i.e. in arrival order; received_at is occurred_at plus 0.05-3 s;
  - exact decimals: api_calls in whole units (1-200), storage_gb and compute_hours in hundredths;
  - every event has an idempotency key (32 hex digits), as the producers send them.

Then `billing aggregate-hourly --from 2024-01-01T00 --to 2024-01-31T23 --lookback 0` rolls the month
up and `billing invoice-monthly --month 2024-01` invoices it (S3, Stripe and e-mail off: the
default configuration, BILLING_ENV_FILE=/dev/null, DATABASE_URL set); their summaries, and the
per-metric totals of usage_hourly and of the invoices' billed usage, are checked against the
generator's. It then times, on that data, as whole processes, alternating their order, --repeat
times each (median):

  (a) `billing reconcile --month 2024-01 --plain` (Stripe, S3 and e-mail off: events, roll-ups,
      billed quantities, invoice totals, fees owed), which must exit 0 with differences=0 every time;
  (b) the month's bare GROUP BY over the raw events, by psql (`-X -q -A -t -o /dev/null`, PGTZ=UTC):
      SELECT organization_id, metric, sum(quantity) FROM usage_events
      WHERE occurred_at >= '2024-01-01' AND occurred_at < '2024-02-01' GROUP BY 1, 2
  and, to explain (a), not held to a target:
  (c) `billing reconcile --month 2024-01 --org ID --plain` for the invoiced organization with the
      fewest events (every query is limited to it, through an index): the fixed cost of a run
      (interpreter and imports, settings, connection, the job_runs row);
  (d) the same GROUP BY by psql on usage_hourly (hour_start in the month), after
      `SET max_parallel_workers_per_gather = 0`: the roll-up side that reconcile compares the
      events with;
  (e) (b) after `SET max_parallel_workers_per_gather = 0`.
  (d) and (e) are what the two GROUP BYs inside reconcile's query cost without parallel workers.
  reconcile streams its usage query without a server-side cursor (psycopg's streaming), so
  PostgreSQL may run it with parallel workers as it does psql's (b); a cursor's query never is.

All run under GNU time (/usr/bin/time): wall time measured around the process, peak RSS and CPU
from time's wait4 of that one process (see common.run_measured); each round runs them in a
rotated order. Target: a / b <= 2.0.

Correctness: before the timing, reconcile on the clean data must exit 0 and report 0 differences
and every issued invoice checked; after it, one late event is added (an organization's api_calls,
2024-01-20 10:30Z, received now), and reconcile must exit 11 with exactly one difference,
rollup_behind for that organization and metric, with the events' and roll-up's sums; the event is
then removed again (and the hour's usage_event_changes row its deletion made) and reconcile must
exit 0 again. Finally each of reconcile's queries (captured from billing_cli.db.reconcile_store) is
run once under EXPLAIN ANALYZE as reconcile runs it (the usage query with the parallel workers it
gets), to show where (a)'s time goes.

    .venv/bin/python bench/reconcile.py [--organizations N] [--events E] [--skew S] [--repeat R]
                                        [--keep-database | --reuse-database] [--check]

The scratch database is created on the server named by --database-url (default:
BENCH_DATABASE_URL, else postgresql://root@127.0.0.1:5432/test) and dropped at the end unless
--keep-database. Exit status: 0; 1 with --check when the target is missed; 2 on any error or
mismatch.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # bench/common.py: machine info, scratch databases, measured processes
import invoice as bench  # bench/invoice.py: plans, organizations, code version

SCRATCH_DB = "billing_bench_reconcile"
MONTH_ARG = "2024-01"
MONTH_START = datetime(2024, 1, 1, tzinfo=UTC)
MONTH_END = datetime(2024, 2, 1, tzinfo=UTC)
PERIOD_START = date(2024, 1, 1)
HOURS = int((MONTH_END - MONTH_START) / timedelta(hours=1))  # 744
METRICS = bench.METRICS[:3]  # api_calls, storage_gb, compute_hours: what the plans price
# Largest quantity of one event, in hundredths (api_calls: whole units only).
EVENT_MAX_HUNDREDTHS = {"api_calls": 200 * 100, "storage_gb": 500, "compute_hours": 100}
TARGET_RATIO = 2.0
MISMATCH_EXIT = 11

FLOOR_SQL = ("SELECT organization_id, metric, sum(quantity) FROM usage_events "
             "WHERE occurred_at >= '2024-01-01' AND occurred_at < '2024-02-01' GROUP BY 1, 2")
HOURLY_SQL = ("SELECT organization_id, metric, sum(quantity) FROM usage_hourly "
              "WHERE hour_start >= '2024-01-01' AND hour_start < '2024-02-01' GROUP BY 1, 2")
SERIAL = "SET max_parallel_workers_per_gather = 0"  # as for a cursor's query

LATE_EVENT = ("api_calls", Decimal(7), "2024-01-20 10:30:00+00", "bench-late-event")

BenchError = common.BenchError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organizations", type=int, default=10_000, help="organizations (default 10,000)")
    parser.add_argument("--events", type=int, default=8_000_000, help="raw events in January 2024 (default 8,000,000)")
    parser.add_argument("--skew", type=float, default=2.0,
                        help="sigma of the organizations' lognormal activity (default 2.0; 0 = all equal)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of (a) and of (b); the median is reported (default 5)")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", bench.DEFAULT_ADMIN_URL),
                        help="admin URL of the server where the scratch database is created "
                             "(default: BENCH_DATABASE_URL, else %(default)s)")
    parser.add_argument("--seed", type=int, default=20240131, help="random seed of the synthetic data")
    parser.add_argument("--keep-database", action="store_true", help="do not drop the scratch database")
    parser.add_argument("--reuse-database", action="store_true",
                        help="time again on the scratch database a --keep-database run left (loaded, rolled up, "
                             "invoiced and verified then): no load; kept afterwards")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args(argv)
    if args.organizations < 2 or args.events < HOURS or args.repeat < 1 or args.skew < 0:
        parser.error(f"--organizations must be at least 2, --events at least {HOURS}, --repeat positive, "
                     "--skew not negative")
    return args


def job_env(url: str) -> dict[str, str]:
    """bench/invoice.py's environment (no billing variable from ours, no .env, this database), with
    the three deliveries off explicitly."""
    env = bench.billing_env(url)
    env.update(INVOICE_ENABLE_S3="false", INVOICE_ENABLE_STRIPE="false", INVOICE_ENABLE_EMAIL="false")
    return env


# --- data ----------------------------------------------------------------------------------------

@dataclass
class Truth:
    """What the generator wrote, per metric: events and the quantity in hundredths (exact)."""

    events: dict[str, int] = field(default_factory=lambda: {m.name: 0 for m in METRICS})
    hundredths: dict[str, int] = field(default_factory=lambda: {m.name: 0 for m in METRICS})

    def quantities(self) -> dict[str, Decimal]:
        return {m: Decimal(h).scaleb(-2) for m, h in self.hundredths.items() if self.events[m]}


@dataclass
class Loaded:
    orgs: list[bench.Org]
    truth: Truth
    top1_share: float  # share of the events sent by the busiest 1% of organizations
    copy_seconds: float
    index_seconds: float
    vacuum_seconds: float
    events_size: str


def activity_weights(n: int, skew: float, rng: random.Random) -> list[float]:
    return [rng.lognormvariate(0.0, skew) if skew else 1.0 for _ in range(n)]


def write_hour(copy: psycopg.Copy, rng: random.Random, ids: Sequence[str], cumulative: Sequence[float],
               hour_start: datetime, count: int, truth: Truth, per_org: list[int]) -> None:
    """`count` events at uniformly random instants of one hour, as COPY text, in chunks."""
    this_hour = f"{hour_start:%Y-%m-%d %H}:"
    next_hour = f"{hour_start + timedelta(hours=1):%Y-%m-%d %H}:"
    total = cumulative[-1]
    names = [m.name for m in METRICS]
    maxima = [EVENT_MAX_HUNDREDTHS[m] for m in names]
    whole = [m.whole_units for m in METRICS]
    events, hundredths = truth.events, truth.hundredths
    pick, rand, randrange, bits = bisect.bisect, rng.random, rng.randrange, rng.getrandbits
    chunk = 50_000
    for first in range(0, count, chunk):
        lines = []
        for _ in range(min(chunk, count - first)):
            o = pick(cumulative, rand() * total)
            j = randrange(3)
            cents = randrange(1, maxima[j] // 100 + 1) * 100 if whole[j] else randrange(1, maxima[j] + 1)
            micros = randrange(3_600_000_000)
            received = micros + randrange(50_000, 3_000_000)
            s, us = divmod(micros, 1_000_000)
            rs, rus = divmod(received, 1_000_000)
            prefix = this_hour
            if rs >= 3600:
                rs, prefix = rs - 3600, next_hour
            metric = names[j]
            events[metric] += 1
            hundredths[metric] += cents
            per_org[o] += 1
            lines.append(f"{ids[o]}\t{metric}\t{cents // 100}.{cents % 100:02d}\t"
                         f"{this_hour}{s // 60:02d}:{s % 60:02d}.{us:06d}+00\t{bits(128):032x}\t"
                         f"{prefix}{rs // 60:02d}:{rs % 60:02d}.{rus:06d}+00\n")
        copy.write("".join(lines))


def load(conn: psycopg.Connection, url: str, args: argparse.Namespace, workdir: Path) -> Loaded:
    rng = random.Random(args.seed)
    orgs = bench.make_orgs(args.organizations, rng)
    plans_file = workdir / "plans.toml"
    plans_file.write_text(bench.plans_toml(METRICS), encoding="utf-8")
    common.run_checked([common.billing_executable(), "plans", "apply", str(plans_file), "--plain"], env=job_env(url))
    copy_orgs = ("COPY organizations (id, name, email, status, currency, price_plan_id, created_at) "
                 "FROM STDIN")
    with conn.transaction(), conn.cursor() as cur, cur.copy(copy_orgs) as copy:
        copy.write("".join(f"{o.id}\t{o.name}\tbilling+{o.id}@example.com\tactive\t"
                           f"{bench.PLANS[o.plan].currency}\t{bench.PLANS[o.plan].id}\t2023-01-01T00:00:00Z\n"
                           for o in orgs))

    ids = [o.id for o in orgs]
    cumulative = list(itertools.accumulate(activity_weights(len(ids), args.skew, random.Random(args.seed + 1))))
    truth, per_org = Truth(), [0] * len(ids)
    events_rng = random.Random(args.seed + 2)

    # usage_events is partitioned by month: January 2024 gets its partition, as a live table's
    # months have (otherwise the events would land in the default partition).
    conn.execute("SELECT billing_usage_events_partition(%s)", (PERIOD_START,))
    # The table's own indexes and constraints, as the migrations made them: dropped for the load,
    # then rebuilt from these definitions (on the partitioned table: on every partition).
    constraints = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'usage_events'::regclass AND contype IN ('p', 'u') ORDER BY contype").fetchall()
    indexes = conn.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = 'usage_events'::regclass AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid) ORDER BY 1").fetchall()
    started = time.perf_counter()
    # COPY FREEZE cannot target a partitioned table: the month's partition itself, which has no
    # identity of its own (ids come from usage_events' sequence, as inserts through it take them).
    copy_events = ("COPY usage_events_2024_01 (organization_id, metric, quantity, occurred_at, idempotency_key, "
                   "received_at) FROM STDIN (FREEZE)")
    with conn.transaction(), conn.cursor() as cur:
        # Truncated in this transaction, so COPY FREEZE writes the rows frozen and all-visible.
        cur.execute("TRUNCATE usage_events")
        for name, _ in constraints:
            cur.execute(sql.SQL("ALTER TABLE usage_events DROP CONSTRAINT {}").format(sql.Identifier(name)))
        for name, _ in indexes:
            cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        cur.execute("ALTER TABLE usage_events_2024_01 ALTER COLUMN id "
                    "SET DEFAULT nextval(pg_get_serial_sequence('usage_events', 'id'))")
        per_hour, extra = divmod(args.events, HOURS)
        with cur.copy(copy_events) as copy:
            for h in range(HOURS):
                write_hour(copy, events_rng, ids, cumulative, MONTH_START + timedelta(hours=h),
                           per_hour + (1 if h < extra else 0), truth, per_org)
                if (h + 1) % 124 == 0:
                    print(f"  COPY: {h + 1}/{HOURS} hours, {time.perf_counter() - started:.0f} s", flush=True)
        cur.execute("ALTER TABLE usage_events_2024_01 ALTER COLUMN id DROP DEFAULT")
    copy_seconds = time.perf_counter() - started

    started = time.perf_counter()
    conn.execute("SET maintenance_work_mem = '1GB'")
    for name, definition in constraints:
        conn.execute(sql.SQL("ALTER TABLE usage_events ADD CONSTRAINT {} " + definition).format(sql.Identifier(name)))
    for _, definition in indexes:
        conn.execute(definition.replace(" ON ONLY ", " ON "))  # a partitioned index: on every partition too
    conn.execute("RESET maintenance_work_mem")
    index_seconds = time.perf_counter() - started

    started = time.perf_counter()
    for table in ("organizations", "usage_events", "price_plans", "plan_prices", "plan_price_tiers"):
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
    vacuum_seconds = time.perf_counter() - started

    count = conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]
    if count != args.events:
        raise BenchError(f"usage_events has {count:,} rows, expected {args.events:,}")
    busiest = sorted(per_org, reverse=True)[:max(1, len(per_org) // 100)]
    size = conn.execute("SELECT pg_size_pretty(sum(pg_total_relation_size(relid))) "
                        "FROM pg_partition_tree('usage_events')").fetchone()[0]
    return Loaded(orgs, truth, sum(busiest) / args.events, copy_seconds, index_seconds, vacuum_seconds, size)


def per_metric(conn: psycopg.Connection, query: str) -> dict[str, Decimal]:
    return {m: q for m, q in conn.execute(query, (MONTH_START, MONTH_END)).fetchall()}


@dataclass
class Prepared:
    rollup_seconds: float
    invoice_seconds: float
    hourly_rows: int
    hourly_size: str
    pairs: int  # (organization, metric) pairs with events in the month: the GROUP BY's rows
    invoices: int
    invoice_summary: dict[str, str]
    smallest: tuple[str, int]  # the invoiced organization with the fewest events, and their number


def reused(conn: psycopg.Connection) -> tuple[Loaded, Prepared]:
    """What a --keep-database run left, read back from the database (for --reuse-database): the
    figures the report prints; the generator's totals were checked against it when it was loaded,
    and every timed run checks again that events, roll-ups and invoices agree."""
    truth = Truth()
    for metric, events, quantity in conn.execute(
            "SELECT metric, count(*), sum(quantity) FROM usage_events GROUP BY 1").fetchall():
        truth.events[metric], truth.hundredths[metric] = events, int(quantity * 100)
    top1 = conn.execute("""SELECT sum(n) FILTER (WHERE rank <= greatest(1, total / 100)) / sum(n)
                           FROM (SELECT count(*) AS n, row_number() OVER (ORDER BY count(*) DESC) AS rank,
                                        count(*) OVER () AS total FROM usage_events GROUP BY organization_id) o
                        """).fetchone()[0]
    size = conn.execute("SELECT pg_size_pretty(sum(pg_total_relation_size(relid))) "
                        "FROM pg_partition_tree('usage_events')").fetchone()[0]
    loaded = Loaded([], truth, float(top1), 0.0, 0.0, 0.0, size)
    hourly_rows = conn.execute("SELECT count(*) FROM usage_hourly").fetchone()[0]
    hourly_size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('usage_hourly'))").fetchone()[0]
    pairs = conn.execute("SELECT count(*) FROM (SELECT DISTINCT organization_id, metric FROM usage_hourly) p"
                         ).fetchone()[0]
    invoices = conn.execute("SELECT count(*) FROM invoices WHERE billing_month = %s AND status = 'issued'",
                            (PERIOD_START,)).fetchone()[0]
    if not invoices:
        raise BenchError("--reuse-database: the scratch database holds no issued invoice for the month; "
                         "run once with --keep-database first")
    smallest = conn.execute(
        "SELECT h.organization_id, sum(h.event_count) FROM usage_hourly h WHERE EXISTS (SELECT 1 FROM invoices i "
        "WHERE i.organization_id = h.organization_id AND i.billing_month = %s AND i.status = 'issued') "
        "GROUP BY 1 ORDER BY 2, 1 LIMIT 1", (PERIOD_START,)).fetchone()
    return loaded, Prepared(0.0, 0.0, hourly_rows, hourly_size, pairs, invoices, {}, (smallest[0], int(smallest[1])))


def roll_up_and_invoice(conn: psycopg.Connection, url: str, args: argparse.Namespace, loaded: Loaded) -> Prepared:
    billing, env = common.billing_executable(), job_env(url)
    want = loaded.truth.quantities()

    run = common.run_measured([billing, "aggregate-hourly", "--from", "2024-01-01T00", "--to", "2024-01-31T23",
                               "--lookback", "0", "--plain"], env)
    summary = (common.plain_records(run.stdout, "summary") or [{}])[-1]
    if (summary.get("hours"), summary.get("failed_hours"), summary.get("events")) != \
            (str(HOURS), "0", str(args.events)):
        raise BenchError(f"aggregate-hourly: {summary}, expected hours={HOURS} failed_hours=0 events={args.events}")
    rollup_seconds = run.seconds
    got = per_metric(conn, "SELECT metric, sum(quantity) FROM usage_hourly WHERE hour_start >= %s "
                           "AND hour_start < %s GROUP BY 1")
    if got != want:
        raise BenchError(f"usage_hourly per metric {got} != the generated events {want}")
    for table in ("usage_hourly", "aggregated_hours", "usage_revisions"):
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))

    run = common.run_measured([billing, "invoice-monthly", "--month", MONTH_ARG, "--plain"], env)
    invoice_summary = (common.plain_records(run.stdout, "summary") or [{}])[-1]
    if invoice_summary.get("failed") != "0" or invoice_summary.get("invoiced") in (None, "0") \
            or any(v != "0" for k, v in invoice_summary.items() if k.startswith("errors_")):
        raise BenchError(f"invoice-monthly: {invoice_summary}")
    invoice_seconds = run.seconds
    invoices = conn.execute("SELECT count(*) FROM invoices WHERE billing_month = %s AND status = 'issued'",
                            (PERIOD_START,)).fetchone()[0]
    if str(invoices) != invoice_summary["invoiced"]:
        raise BenchError(f"{invoices} issued invoices, the summary says invoiced={invoice_summary['invoiced']}")
    billed = {m: q for m, q in conn.execute(
        "SELECT u.metric, sum(u.quantity) FROM invoice_usage u JOIN invoices i ON i.id = u.invoice_id "
        "WHERE i.status <> 'void' AND u.period_start = %s GROUP BY 1", (PERIOD_START,)).fetchall()}
    if billed != want:
        raise BenchError(f"billed usage per metric {billed} != the generated events {want}")
    for table in ("invoices", "invoice_lines", "invoice_usage", "invoice_periods", "job_runs"):
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))

    hourly_rows = conn.execute("SELECT count(*) FROM usage_hourly").fetchone()[0]
    hourly_size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('usage_hourly'))").fetchone()[0]
    pairs = conn.execute("SELECT count(*) FROM (SELECT DISTINCT organization_id, metric FROM usage_hourly) p"
                         ).fetchone()[0]
    smallest = conn.execute(
        "SELECT h.organization_id, sum(h.event_count) FROM usage_hourly h WHERE EXISTS (SELECT 1 FROM invoices i "
        "WHERE i.organization_id = h.organization_id AND i.billing_month = %s AND i.status = 'issued') "
        "GROUP BY 1 ORDER BY 2, 1 LIMIT 1", (PERIOD_START,)).fetchone()
    return Prepared(rollup_seconds, invoice_seconds, hourly_rows, hourly_size, pairs, invoices, invoice_summary,
                    (smallest[0], int(smallest[1])))


# --- the measured processes ----------------------------------------------------------------------

def reconcile(url: str, *extra: str) -> common.Measured:
    return common.run_measured([common.billing_executable(), "reconcile", "--month", MONTH_ARG, "--plain", *extra],
                               job_env(url), check=False)


def psql(url: str, *statements: str) -> common.Measured:
    commands = [arg for statement in statements or (FLOOR_SQL,) for arg in ("-c", statement)]
    return common.run_measured(["psql", "-X", "-q", "-A", "-t", "-o", os.devnull, "-v", "ON_ERROR_STOP=1",
                                "-d", url, *commands], {**os.environ, "PGTZ": "UTC"})


def reconcile_clean(url: str, invoices: int, label: str, *extra: str) -> common.Measured:
    """A reconcile run that must find everything in order."""
    run = reconcile(url, *extra)
    summary = (common.plain_records(run.stdout, "summary") or [{}])[-1]
    if run.returncode != 0 or summary.get("differences") != "0" or summary.get("outcome") != "succeeded" \
            or summary.get("invoices") != str(invoices):
        raise BenchError(f"{label}: reconcile exited {run.returncode} with {summary} (expected exit 0, "
                         f"differences=0, invoices={invoices})\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    return run


def check_late_event(conn: psycopg.Connection, url: str, invoices: int) -> str:
    """One late event: reconcile must exit 11 naming exactly it; removed again, exit 0."""
    metric, quantity, occurred, key = LATE_EVENT
    org, rolled_up = conn.execute(
        "SELECT organization_id, sum(quantity) FROM usage_hourly WHERE metric = %s AND hour_start >= %s "
        "AND hour_start < %s GROUP BY 1 ORDER BY 1 OFFSET 100 LIMIT 1", (metric, MONTH_START, MONTH_END)).fetchone()
    conn.execute("INSERT INTO usage_events (organization_id, metric, quantity, occurred_at, idempotency_key) "
                 "VALUES (%s, %s, %s, %s, %s)", (org, metric, quantity, occurred, key))
    try:
        run = reconcile(url)
        found = common.plain_records(run.stdout, "difference")
        summary = (common.plain_records(run.stdout, "summary") or [{}])[-1]
        want = {"type": "rollup_behind", "organization_id": org, "subject": metric,
                "ours": f"{rolled_up + quantity} in events", "found": f"{rolled_up} rolled up"}
        got = [{k: d.get(k) for k in want} for d in found]
        if run.returncode != MISMATCH_EXIT or got != [want] or summary.get("differences") != "1" \
                or summary.get("outcome") != "mismatch":
            raise BenchError(f"after one late event: reconcile exited {run.returncode}, differences {got}, "
                             f"summary {summary}; expected exit {MISMATCH_EXIT} and exactly {want}\n"
                             f"{run.stdout[-2000:]}{run.stderr[-2000:]}")
        line = next(line for line in run.stdout.splitlines() if line.startswith("difference "))
    finally:
        conn.execute("DELETE FROM usage_events WHERE organization_id = %s AND idempotency_key = %s", (org, key))
        # The deletion's trigger recorded the hour as edited; the roll-up would clear it.
        conn.execute("DELETE FROM usage_event_changes WHERE hour_start = date_trunc('hour', %s::timestamptz, 'UTC')",
                     (occurred,))
    reconcile_clean(url, invoices, "after removing the late event")
    return line


# --- where the time goes -------------------------------------------------------------------------

def _relations(node: dict) -> set[str]:
    """Tables a plan reads; a partition counts as its table (usage_events_2024_01 -> usage_events)."""
    found = {_PARTITION.sub("", node["Relation Name"])} if "Relation Name" in node else set()
    for child in node.get("Plans", []):
        found |= _relations(child)
    return found


_PARTITION = re.compile(r"_(\d{4}_\d{2}|default)$")


def _branches(node: dict, tables: set[str], out: dict[str, float]) -> None:
    """The time of the largest subtree reading only one of `tables` (first one found, top-down)."""
    rel = _relations(node) & (tables | {"invoices", "organizations", "price_plans", "invoice_lines"})
    only = rel & tables
    if len(rel) == 1 and only and next(iter(only)) not in out:
        out[next(iter(only))] = node.get("Actual Total Time", 0.0) / 1000
        return
    for child in node.get("Plans", []):
        _branches(child, tables, out)


def explain_queries(url: str) -> list[str]:
    """reconcile's queries (captured from reconcile_store, not copied), each under EXPLAIN ANALYZE
    as reconcile runs it: the usage query streamed without a cursor (parallel workers allowed), the
    invoice queries through cursors (serial); and whether the usage query got parallel workers."""
    from sqlalchemy import text

    from billing_cli.db import reconcile_store
    from billing_cli.db.engine import make_engine
    from billing_cli.periods import Month

    month = Month.parse(MONTH_ARG)
    lines = []
    engine = make_engine(url, pool_size=1)
    try:
        for fn in (reconcile_store.usage_differences, reconcile_store.owed_fees_not_invoiced,
                   reconcile_store.live_invoices):
            with engine.begin() as conn:
                if fn is not reconcile_store.usage_differences:
                    conn.execute(text(SERIAL.replace("SET", "SET LOCAL")))
                # As reconcile runs them with Stripe and S3 off: only the invoices that do not add up come back.
                options = {"every": False} if fn is reconcile_store.live_invoices else {}
                statements = []
                for statement, params in common.captured_statements(fn, month, None, **options):
                    if statement.lstrip().upper().startswith("SET "):  # the query's own settings: applied
                        conn.execute(text(statement), params)
                    else:
                        statements.append((statement, params))
                main = max(range(len(statements)), key=lambda n: len(statements[n][0]))  # the longest
                for number, (statement, params) in enumerate(statements):
                    plan = common.explain_analyze(conn, statement, params, fmt="JSON")[0]
                    if number != main:  # what it reads beside: periods, plan versions
                        lines.append(f"  {fn.__name__ + ', other read':32} {plan['Execution Time'] / 1000:7.2f} s")
                        continue
                    seconds = plan["Execution Time"] / 1000
                    jit = plan.get("JIT", {}).get("Timing", {}).get("Total", 0.0) / 1000
                    detail = f" (JIT {jit:.2f} s)" if jit else ""
                    if fn is reconcile_store.usage_differences:
                        parts: dict[str, float] = {}
                        _branches(plan["Plan"], {"usage_events", "usage_hourly", "invoice_usage"}, parts)
                        detail += "; of which " + ", ".join(
                            f"{name} GROUP BY {parts[name]:.2f} s" for name in
                            ("usage_events", "usage_hourly", "invoice_usage") if name in parts)
                        workers = _workers(plan["Plan"])
                        detail += f"; parallel workers launched: {workers}" if workers else "; no parallel worker"
                    lines.append(f"  {fn.__name__:32} {seconds:7.2f} s{detail}")
    finally:
        engine.dispose()
    return lines


def _workers(node: dict) -> int:
    """Parallel workers launched anywhere in a JSON plan."""
    return node.get("Workers Launched", 0) + sum(_workers(child) for child in node.get("Plans", []))


# --- report --------------------------------------------------------------------------------------

def runs(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    return " ".join(fmt.format(v) for v in values)


def report(args: argparse.Namespace, machine: dict[str, str], loads: tuple[str, str], loaded: Loaded,
           prepared: Prepared, times: dict[str, list[common.Measured]], late_line: str, where: list[str]) -> bool:
    med = {k: statistics.median(r.seconds for r in v) for k, v in times.items()}
    a, b, c, d, e = med["a"], med["b"], med["c"], med["d"], med["e"]
    ratio = a / b
    ok = ratio <= TARGET_RATIO
    own = [float((common.plain_records(r.stdout, "summary") or [{}])[-1].get("seconds", "nan")) for r in times["a"]]
    labels = {"a": "(a) billing reconcile --month 2024-01", "b": "(b) psql: the month GROUP BY on usage_events",
              "c": "(c) billing reconcile ... --org ID", "d": "(d) psql, serial: GROUP BY on usage_hourly",
              "e": "(e) psql, serial: (b) without parallel workers"}
    rows = [f"{labels[k]:46} {med[k]:9.3f} {max(r.rss_mib for r in v):8.1f} "
            f"{statistics.median(r.cpu_seconds for r in v):6.2f}   {runs([r.seconds for r in v])}"
            for k, v in times.items()]
    pct = ", ".join(f"{m} {loaded.truth.events[m]:,}" for m in loaded.truth.events)
    lines = [
        "",
        f"reconcile benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M}Z",
        f"machine: nproc={machine['nproc']}, CPU {machine['cpu']}, {machine['memory']} RAM, {machine['postgres']} "
        f"({machine['pg_settings']}), Python {machine['python']}, Linux {machine['kernel']}",
        f"code: {common.code_info()}; load average: {loads[0]} at the start, {loads[1]} at the end",
        f"data: {args.organizations:,} active organizations (created 2023-01-01; 6 plans, 4 currencies), 3 metrics",
        f"      usage_events: {args.events:,} events in {MONTH_ARG} ({args.events // HOURS:,}/hour; {pct}), "
        f"activity lognormal sigma {args.skew:g}: busiest 1% of organizations send {loaded.top1_share:.0%}",
        f"      usage_events {loaded.events_size} with indexes; COPY {loaded.copy_seconds:.0f} s, indexes "
        f"{loaded.index_seconds:.0f} s, VACUUM ANALYZE {loaded.vacuum_seconds:.0f} s",
        f"      usage_hourly: {prepared.hourly_rows:,} rows ({args.events / prepared.hourly_rows:.2f} events per row), "
        f"{prepared.hourly_size} with indexes; (organization, metric) pairs: {prepared.pairs:,}",
        f"      rolled up by aggregate-hourly --from 2024-01-01T00 --to 2024-01-31T23 in {prepared.rollup_seconds:.0f} s; "
        f"invoiced by invoice-monthly in {prepared.invoice_seconds:.0f} s: {prepared.invoices:,} invoices"
        + ("\n      REUSED (--reuse-database): the data a --keep-database run loaded, rolled up, invoiced and "
           "verified; load and set-up times above are not measured here" if args.reuse_database else ""),
        f"runs: whole processes under /usr/bin/time, (a) to (e) in a rotated order each round, "
        f"repeat={args.repeat}, median; Stripe, S3 and e-mail off",
        "",
        f"{'':46} {'median s':>9} {'RSS MiB':>8} {'CPU s':>6}   runs (s)",
        *rows,
        f"    (c): --org {prepared.smallest[0]} ({prepared.smallest[1]:,} event{'s' if prepared.smallest[1] != 1 else ''} in the month)",
        f"    (a)'s own timer (summary seconds=): median {statistics.median(own):.2f} s; RSS = the highest peak "
        "of the runs; CPU = the process's user+sys (the server's work is not in it)",
        f"    a = c + e + d + the rest (joining the sums, invoices, fees owed): {a:.2f} = {c:.2f} + {e:.2f} + "
        f"{d:.2f} + {a - c - e - d:.2f} s",
        f"    a / e = {a / e:.2f} (both without parallel workers; for information, not the target)",
        "",
        "reconcile's queries under EXPLAIN ANALYZE (captured from reconcile_store; once, in-process; the usage",
        "query with the parallel workers it gets, the invoice queries without; server time, inflated by EXPLAIN's",
        "per-row timing):",
        *where,
        "",
        f"verified: every (a) run exit 0, differences=0, invoices={prepared.invoices:,}; every (c) run exit 0, "
        "differences=0, invoices=1;",
        "          usage_hourly and the invoices' billed usage per metric = the generated events",
        "one late event added (api_calls, 2024-01-20 10:30Z): exit 11 with exactly this difference:",
        f"  {late_line}",
        "          removed again: exit 0, differences=0",
        "",
        f"a - b: {a - b:.3f} s",
        f"a / b = {ratio:5.2f}   target <= {TARGET_RATIO:.1f}   {'PASS' if ok else 'FAIL'}",
        f"peak RSS of (a): {max(r.rss_mib for r in times['a']):.1f} MiB",
    ]
    print("\n".join(lines), flush=True)
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    url = common.scratch_url(args.database_url, SCRATCH_DB)
    print(f"scratch database {make_url(url).render_as_string(hide_password=True)}", flush=True)
    load_start = common.loadavg()
    if args.reuse_database:
        args.keep_database = True
    else:
        common.recreate_database(args.database_url, SCRATCH_DB)
    try:
        common.run_checked([common.billing_executable(), "db", "upgrade", "--plain"], env=job_env(url))
        with psycopg.connect(url, autocommit=True) as conn, \
                tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp:
            machine = bench.machine_info(conn)
            if args.reuse_database:
                loaded, prepared = reused(conn)
                print(f"reusing the data a --keep-database run left: {prepared.invoices:,} invoices", flush=True)
            else:
                print(f"loading {args.organizations:,} organizations and {args.events:,} events ...", flush=True)
                loaded = load(conn, url, args, Path(tmp))
                print(f"loaded: COPY {loaded.copy_seconds:.0f} s, indexes {loaded.index_seconds:.0f} s, VACUUM "
                      f"ANALYZE {loaded.vacuum_seconds:.0f} s; usage_events {loaded.events_size}", flush=True)
                print("rolling up and invoicing the month ...", flush=True)
                prepared = roll_up_and_invoice(conn, url, args, loaded)
                print(f"rolled up in {prepared.rollup_seconds:.0f} s ({prepared.hourly_rows:,} usage_hourly rows), "
                      f"invoiced in {prepared.invoice_seconds:.0f} s ({prepared.invoices:,} invoices)", flush=True)

            # Warm-up (untimed), and the clean check: everything agrees.
            reconcile_clean(url, prepared.invoices, "clean data")
            rows = common.run_checked(["psql", "-X", "-q", "-A", "-t", "-d", url, "-c",
                                       f"SELECT count(*) FROM ({FLOOR_SQL}) f"], {**os.environ, "PGTZ": "UTC"})
            if rows.stdout.strip() != str(prepared.pairs):
                raise BenchError(f"the GROUP BY returns {rows.stdout.strip()} rows, expected {prepared.pairs}")
            psql(url)
            psql(url, SERIAL, HOURLY_SQL)

            print("timing (a), (b), (c), (d), (e) ...", flush=True)
            measure = {
                "a": lambda i: reconcile_clean(url, prepared.invoices, f"(a) run {i}"),
                "b": lambda i: psql(url),
                "c": lambda i: reconcile_clean(url, 1, f"(c) run {i}", "--org", prepared.smallest[0]),
                "d": lambda i: psql(url, SERIAL, HOURLY_SQL),
                "e": lambda i: psql(url, SERIAL, FLOOR_SQL),
            }
            times: dict[str, list[common.Measured]] = {name: [] for name in measure}
            for i in range(args.repeat):
                order = list(measure)[i % len(measure):] + list(measure)[:i % len(measure)]
                for name in order:
                    run = measure[name](i + 1)
                    times[name].append(run)
                    print(f"  ({name}) run {i + 1}: {run.seconds:.3f} s, RSS {run.rss_mib:.1f} MiB", flush=True)

            print("checking one late event ...", flush=True)
            late_line = check_late_event(conn, url, prepared.invoices)
            print("EXPLAIN ANALYZE of reconcile's queries ...", flush=True)
            where = explain_queries(url)
        met = report(args, machine, (load_start, common.loadavg()), loaded, prepared, times, late_line, where)
    except BenchError as exc:
        print(f"\nERROR: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep_database:
            common.recreate_database(args.database_url, SCRATCH_DB, drop_only=True)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
