"""Benchmark of usage_events' monthly partitions: the hourly roll-up's time against the table's
history, and dropping a month against deleting it.

Two scratch databases side by side in one run: P at the head schema (usage_events partitioned by
month) and, unless --no-unpartitioned, U at revision 0008 (one table, as before). Both receive the
same synthetic events at the same hourly rate R (default 5,000 events an hour, 1,000 active
organizations, 3 metrics; server-side INSERT ... SELECT, one statement a month, events arriving one
second after they occur). The measured hour is 12:00Z on the 15th of the month before the current
one. Phase 1 loads 1 month of history (the 720 hours that end with the measured hour), phase 2
adds 5 older months (6 months in all). After each phase, VACUUM ANALYZE, then, on each database,
--repeat times (median reported):

  (a) the hour's roll-up as aggregate-hourly runs it, in its own transaction: usage_rollup.apply_hour
      on P; on U its statement (usage_rollup.APPLY_SQL) alone, U lacking the table of pruned months
      that apply_hour checks first. usage_hourly, aggregated_hours, usage_revisions and
      usage_event_changes are emptied before each run, so each is the same first roll-up;
  (b) on P, the scheduled run's check for late hours: usage_rollup.late_hours (events received
      since the last roll-up, by the BRIN index on received_at of every partition);

and prints (a) and (b) at 6 months over 1 month, of the medians and of the fastest runs (the
machine is shared: the fastest run is the least disturbed): the target is that (a) does not grow with the
history (ratio close to 1). Every roll-up's per-metric totals (usage_hourly) must equal the
events' own sums.

Then, at 6 months: (c) dropping the oldest month on P (`billing usage prune --before <month after
it> --force`, the real command) against (d) `DELETE` of the same month on U (the statement trigger
of 0004 records the hours deleted, as it would in production).

    .venv/bin/python bench/partitions.py [--rate R] [--organizations N] [--repeat K] [--no-unpartitioned]
                                         [--keep-databases]

Scratch databases billing_bench_partitions_p / _u on the server named by --database-url (default:
BENCH_DATABASE_URL, else postgresql://root@127.0.0.1:5432/test), dropped at the end unless
--keep-databases. Disk: about 200 bytes an event and index entries, so 6 months at 5,000 events an
hour take about 4.5 GB per database (check `df -h /`). Exit status 0, or 2 on an error or mismatch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import BenchError  # noqa: E402

METRICS = ("api_calls", "storage_gb", "gpu_seconds")
HOUR = timedelta(hours=1)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=5_000, help="events an hour (default 5,000)")
    parser.add_argument("--organizations", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--no-unpartitioned", action="store_true", help="skip database U (one table)")
    parser.add_argument("--keep-databases", action="store_true")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL",
                                                                  "postgresql://root@127.0.0.1:5432/test"))
    return parser.parse_args(argv)


def month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def months_back(moment: datetime, count: int) -> datetime:
    index = moment.year * 12 + moment.month - 1 - count
    return moment.replace(year=index // 12, month=index % 12 + 1)


class Database:
    """One scratch database: its psycopg connection for loading, a SQLAlchemy engine for the jobs."""

    def __init__(self, label: str, admin_url: str, revision: str, args: argparse.Namespace) -> None:
        from billing_cli.db.engine import make_engine
        from billing_cli.db.migrate import upgrade

        self.label, self.name = label, f"billing_bench_partitions_{label.lower()}"
        common.recreate_database(admin_url, self.name)
        self.url = common.scratch_url(admin_url, self.name)
        self.engine = make_engine(self.url)
        upgrade(self.engine, revision)
        self.partitioned = revision == "head"
        self.conn = psycopg.connect(self.url, autocommit=True)
        self.conn.execute("INSERT INTO organizations (id, name, email) SELECT 'org-' || lpad(n::text, 6, '0'), "
                          "'Organization ' || n, 'billing+' || n || '@example.com' "
                          "FROM generate_series(1, %s) AS n", (args.organizations,))

    @contextmanager
    def transaction(self):
        with self.engine.begin() as conn:
            yield conn

    def load(self, first: datetime, end: datetime, rate: int, organizations: int) -> None:
        """Events at `rate` an hour, evenly spaced, from `first` to `end`, one statement a month."""
        start = first
        while start < end:
            stop = min(months_back(month_start(start), -1), end)
            if self.partitioned:
                self.conn.execute("SELECT billing_usage_events_partition(CAST(%s AS date))", (start.date(),))
            hours = int((stop - start) / HOUR)
            # Event n of the range: at n * (3600 / rate) s; its organization and metric from a hash
            # of n (every organization and metric every hour), quantity 1..100.
            self.conn.execute("""
                INSERT INTO usage_events (organization_id, metric, quantity, occurred_at, received_at)
                SELECT 'org-' || lpad((1 + (n * 7919) %% %(orgs)s)::text, 6, '0'),
                       (ARRAY['api_calls', 'storage_gb', 'gpu_seconds'])[1 + (n %% 3)],
                       1 + (n * 31) %% 100,
                       %(start)s + n * (interval '1 hour' / %(rate)s),
                       %(start)s + n * (interval '1 hour' / %(rate)s) + interval '1 second'
                FROM generate_series(CAST(0 AS bigint), CAST(%(count)s AS bigint) - 1) AS n
            """, {"orgs": organizations, "rate": rate, "start": start, "count": hours * rate})
            start = stop

    def vacuum(self) -> None:
        self.conn.execute("VACUUM (ANALYZE) usage_events")
        if self.partitioned:  # VACUUM of a partitioned table covers its partitions; ANALYZE too
            self.conn.execute("ANALYZE usage_events")

    def size(self) -> str:
        if not self.partitioned:
            return self.conn.execute("SELECT pg_size_pretty(pg_total_relation_size('usage_events'))").fetchone()[0]
        return self.conn.execute("SELECT pg_size_pretty(sum(pg_total_relation_size(relid))) "
                                 "FROM pg_partition_tree('usage_events')").fetchone()[0]

    def events(self) -> int:
        return self.conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]

    def reset_rollups(self) -> None:
        self.conn.execute("TRUNCATE usage_hourly, aggregated_hours, usage_revisions, usage_event_changes")

    def close(self, admin_url: str, keep: bool) -> None:
        self.conn.close()
        self.engine.dispose()
        if not keep:
            common.recreate_database(admin_url, self.name, drop_only=True)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(db: Database, hour: datetime, repeat: int) -> tuple[list[float], list[float]]:
    """(a) the hour's roll-up, (b) the late-hours check (P only: U, at 0008, lacks the table of
    pruned months that the check reads now): `repeat` times each."""
    from sqlalchemy import text

    from billing_cli.db.usage_rollup import APPLY_SQL, apply_hour, late_hours

    rollups, checks = [], []
    expected = [tuple(r) for r in db.conn.execute(
        "SELECT metric, count(*), sum(quantity) FROM usage_events WHERE occurred_at >= %s AND occurred_at < %s "
        "GROUP BY 1 ORDER BY 1", (hour, hour + HOUR)).fetchall()]
    for _ in range(repeat):
        db.reset_rollups()

        def roll_up() -> None:
            with db.transaction() as conn:
                if db.partitioned:
                    apply_hour(conn, hour, hour + HOUR)
                else:  # the same statement, without the check for a pruned month (no such table at 0008)
                    conn.execute(text("SET LOCAL work_mem = '256MB'"))
                    conn.execute(text(APPLY_SQL), {"start": hour, "end": hour + HOUR}).all()

        rollups.append(timed(roll_up))
        got = [tuple(r) for r in db.conn.execute(
            "SELECT metric, sum(event_count), sum(quantity) FROM usage_hourly GROUP BY 1 ORDER BY 1").fetchall()]
        if got != expected:
            raise BenchError(f"{db.label}: roll-up totals {got} differ from the events' {expected}")
        if not db.partitioned:
            continue

        def check() -> None:
            with db.transaction() as conn:
                found = late_hours(conn, hour - 2 * HOUR)
            if found:
                raise BenchError(f"{db.label}: the late-hours check found {found}, expected none")

        checks.append(timed(check))
    return rollups, checks


def ms(values: Sequence[float]) -> str:
    return (f"median {statistics.median(values) * 1000:7.1f} ms, min {min(values) * 1000:7.1f} ms "
            f"(runs: {', '.join(f'{v * 1000:.1f}' for v in values)})")


def ratio(six: Sequence[float], one: Sequence[float]) -> str:
    return (f"median {statistics.median(six) / statistics.median(one):.2f}, "
            f"min {min(six) / min(one):.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    admin = args.database_url.replace("postgresql+psycopg://", "postgresql://")
    now = datetime.now(UTC)
    previous = months_back(month_start(now), 1)
    hour = previous.replace(day=15, hour=12)
    end = hour + HOUR
    one_month_back, six_months_back = end - 720 * HOUR, end - 4320 * HOUR

    with psycopg.connect(admin) as conn:
        machine = common.machine_info(conn)
    print("bench/partitions.py: the hourly roll-up against the history of usage_events")
    print(f"machine: {machine['cpu']}, {machine['nproc']} cores, {machine['memory']}; {machine['postgres']}; "
          f"Python {machine['python']}; load average {common.loadavg()}")
    print(f"code: {common.code_info()}")
    print(f"rate: {args.rate:,} events an hour, {args.organizations:,} organizations, {len(METRICS)} metrics; "
          f"measured hour {hour:%Y-%m-%dT%H}:00Z; repeat {args.repeat}")

    databases = [Database("P", admin, "head", args)]
    if not args.no_unpartitioned:
        databases.append(Database("U", admin, "0008_customer_billing_details", args))
    results: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    try:
        for phase, first, last in (("1 month", one_month_back, end), ("6 months", six_months_back, one_month_back)):
            for db in databases:
                seconds = timed(lambda db=db: db.load(first, last, args.rate, args.organizations))
                vacuum = timed(db.vacuum)
                print(f"  {db.label} {phase}: loaded {int((last - first) / HOUR) * args.rate:,} events in "
                      f"{seconds:.0f} s (vacuum {vacuum:.0f} s); usage_events now {db.events():,} events, "
                      f"{db.size()}", flush=True)
            for db in databases:
                results[(db.label, phase)] = measure(db, hour, args.repeat)

        print()
        print("(a) the hour's roll-up (usage_rollup.apply_hour on P; its statement APPLY_SQL on U)")
        for db in databases:
            one, six = results[(db.label, "1 month")][0], results[(db.label, "6 months")][0]
            kind = "partitioned by month" if db.partitioned else "one table (0008)"
            print(f"  {db.label} {kind:<21} 1 month: {ms(one)}")
            print(f"  {db.label} {kind:<21} 6 months: {ms(six)}")
            print(f"  {db.label} ratio 6 months / 1 month: {ratio(six, one)}")
        print("(b) the scheduled run's late-hours check (usage_rollup.late_hours)")
        for db in databases[:1]:
            one, six = results[(db.label, "1 month")][1], results[(db.label, "6 months")][1]
            print(f"  {db.label} 1 month: {ms(one)}")
            print(f"  {db.label} 6 months: {ms(six)}")
            print(f"  {db.label} ratio 6 months / 1 month: {ratio(six, one)}")

        oldest = month_start(six_months_back)
        if oldest < six_months_back:
            oldest = months_back(oldest, -1)  # a whole month
        after = months_back(oldest, -1)
        before_label = f"{after:%Y-%m}"
        print(f"(c)/(d) removing the events before {after:%Y-%m} (the oldest whole month, {oldest:%Y-%m}, and the "
              "part of the month before it that the history reaches) at 6 months of history")
        p = databases[0]
        month_events = p.conn.execute("SELECT count(*) FROM usage_events WHERE occurred_at < %s",
                                      (after,)).fetchone()[0]
        # Every month before it (the partial oldest one too) is pruned: --before is exclusive.
        env = {**os.environ, "DATABASE_URL": p.url, "BILLING_ENV_FILE": "/dev/null", "LOG_FORMAT": "plain"}
        started = time.perf_counter()
        proc = subprocess.run([common.billing_executable(), "usage", "prune", "--before", before_label, "--force",
                               "--plain"], env=env, capture_output=True, text=True, check=False)
        prune_seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise BenchError(f"billing usage prune exited {proc.returncode}\n{proc.stdout}{proc.stderr}")
        left = p.conn.execute("SELECT count(*) FROM usage_events WHERE occurred_at < %s", (after,)).fetchone()[0]
        if left:
            raise BenchError(f"P: {left} events before {before_label} left after the prune")
        print(f"  P billing usage prune --before {before_label} --force (whole process, {month_events:,} events "
              f"before {before_label}): {prune_seconds:.2f} s")
        if len(databases) > 1:
            u = databases[1]
            delete = timed(lambda: u.conn.execute("DELETE FROM usage_events WHERE occurred_at < %s", (after,)))
            print(f"  U DELETE FROM usage_events WHERE occurred_at < '{before_label}-01' (same events, the trigger "
                  f"recording the hours): {delete:.2f} s; ratio DELETE / prune {delete / prune_seconds:.1f}")
            print(f"  U afterwards: {u.size()} on disk (a DELETE frees nothing until VACUUM, and the table's "
                  f"files never shrink without VACUUM FULL); P: {p.size()}")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        for db in databases:
            db.close(admin, args.keep_databases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
