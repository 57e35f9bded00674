"""Benchmark of migration 0011_partition_usage_events: converting an existing usage_events table
into monthly partitions.

Creates a scratch database at revision 0010_credit_notes (one table), inserts N synthetic events (default
2,000,000) spread evenly over the M months before the current one (default 3), then times the
whole `billing db upgrade --plain` process, which converts the table while holding its lock
(producers' inserts wait that long). Checks afterwards that every event is there with its id (count
and sum of ids), each in its month's partition, and prints the events converted per second: the
figure docs/operations.md uses to size the upgrade's pause.

    .venv/bin/python bench/convert.py [--events N] [--months M] [--keep-database]

Scratch database billing_bench_convert on the server named by --database-url (default:
BENCH_DATABASE_URL, else postgresql://root@127.0.0.1:5432/test). Exit status 0, or 2 on an error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import BenchError  # noqa: E402

NAME = "billing_bench_convert"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--months", type=int, default=3)
    parser.add_argument("--keep-database", action="store_true")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL",
                                                                  "postgresql://root@127.0.0.1:5432/test"))
    args = parser.parse_args(argv)
    admin = args.database_url.replace("postgresql+psycopg://", "postgresql://")
    from billing_cli.db.engine import make_engine
    from billing_cli.db.migrate import upgrade

    common.recreate_database(admin, NAME)
    url = common.scratch_url(admin, NAME)
    try:
        with psycopg.connect(admin) as conn:
            machine = common.machine_info(conn)
        print("bench/convert.py: migration 0011_partition_usage_events on an existing usage_events table")
        print(f"machine: {machine['cpu']}, {machine['nproc']} cores, {machine['memory']}; {machine['postgres']}; "
              f"load average {common.loadavg()}")
        print(f"code: {common.code_info()}")
        engine = make_engine(url)
        upgrade(engine, "0010_credit_notes")  # the revision before the partitioning
        engine.dispose()
        now = datetime.now(UTC)
        index = now.year * 12 + now.month - 1 - args.months
        first = datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
        span = datetime(now.year, now.month, 1, tzinfo=UTC) - first
        with psycopg.connect(url, autocommit=True) as conn:
            started = time.perf_counter()
            conn.execute("""
                INSERT INTO usage_events (organization_id, metric, quantity, occurred_at, idempotency_key, received_at)
                SELECT 'org-' || lpad((1 + (n * 7919) %% 1000)::text, 6, '0'), 'api_calls', 1 + n %% 100,
                       %(first)s + n * (%(span)s / %(events)s), 'key-' || n,
                       %(first)s + n * (%(span)s / %(events)s) + interval '1 second'
                FROM generate_series(CAST(0 AS bigint), CAST(%(events)s AS bigint) - 1) AS n
            """, {"first": first, "span": span, "events": args.events})
            conn.execute("VACUUM (ANALYZE) usage_events")
            loaded = time.perf_counter() - started
            before = conn.execute("SELECT count(*), sum(id) FROM usage_events").fetchone()
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('usage_events'))").fetchone()[0]
        print(f"data: {args.events:,} events over {args.months} months from {first:%Y-%m}, each with an "
              f"idempotency key; usage_events {size}; loaded in {loaded:.0f} s")

        env = {**os.environ, "DATABASE_URL": url, "BILLING_ENV_FILE": "/dev/null", "LOG_FORMAT": "plain"}
        measured = common.run_measured([common.billing_executable(), "db", "upgrade", "--plain"], env=env)

        with psycopg.connect(url) as conn:
            after = conn.execute("SELECT count(*), sum(id) FROM usage_events").fetchone()
            misplaced = conn.execute(
                "SELECT count(*) FROM usage_events WHERE tableoid::regclass::text <> "
                "'usage_events_' || to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY_MM')").fetchone()[0]
            partitions = conn.execute("SELECT count(*) FROM pg_inherits "
                                      "WHERE inhparent = 'usage_events'::regclass").fetchone()[0]
        if after != before or misplaced:
            raise BenchError(f"after the upgrade: (count, sum of ids) {after} against {before} before; "
                             f"{misplaced} events outside their month's partition")
        print(f"billing db upgrade (whole process): {measured.seconds:.1f} s, {measured.rss_mib:.0f} MiB peak RSS; "
              f"{args.events / measured.seconds:,.0f} events converted a second; {partitions} partitions "
              f"(with the default one); every event kept with its id, each in its month's partition")
        return 0
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep_database:
            common.recreate_database(admin, NAME, drop_only=True)


if __name__ == "__main__":
    sys.exit(main())
