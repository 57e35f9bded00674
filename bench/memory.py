"""Benchmark of invoice-monthly's memory: peak RSS at 1,000 vs 100,000 organizations (dry run).

invoice-monthly streams the active organizations in batches (--batch-size, INVOICE_BATCH_SIZE,
default 500) from one server-side cursor, so its memory should not grow with the number of
organizations. This script shows it.

Into one scratch database (billing_bench_memory): `billing db upgrade`; bench/invoice.py's six plans
(every price model; USD, EUR, JPY, GBP) applied with `billing plans apply`; N organizations (default
100,000; bench/invoice.py's generator: 10% with Unicode names, so both PDF font paths are taken),
active, each on a plan and in its currency, COPY; sparse usage so that the data stays small: 3
metrics per organization in ONE hour of January 2024 (300,000 usage_hourly rows), COPY; VACUUM
ANALYZE.

Then, as whole processes, `billing invoice-monthly --month 2024-01 --dry-run --plain`, with only
DATABASE_URL, BILLING_ENV_FILE=/dev/null, LOG_FORMAT=plain and PDF_RENDER_PROCESSES=1 set among the
billing variables (the rest at their defaults: INVOICE_CONCURRENCY 16 threads, batch size 500):

  (a) over about S organizations (default 1,000): shard 1 of round(N / S) (an inactive organization
      with usage in the month gets its final invoice, so making the others inactive would not
      leave S to invoice);
  (b) with all N active;
  (c) with all N active and `--batch-size 5000` (the batch size's effect on RSS).

PDF_RENDER_PROCESSES=1 renders the PDFs in the job's own threads instead of worker processes, so
all the work and all the memory are in the one measured process. That process is forked by a
small launcher process (a few MiB; see LAUNCHER: on Linux ru_maxrss carries over exec the memory the
process had before, so a child of this script would report at least this script's own peak RSS,
~200 MiB after generating the data) and reaped there with os.wait4(pid): ru_maxrss is its own peak
resident set (the kernel's high-water mark) and ru_utime + ru_stime its CPU time. Its stdout (a line per organization, ~12 MB at 100,000) goes
into a pipe that this script reads and discards, keeping only the `summary` line: the job's
output is not accumulated anywhere, and found/processed/invoiced are checked from that line (equal
to the number of active organizations, none failed), as is the dry run's revenue per currency
(equal to an independent re-rating, bench/invoice.py's, of the generated usage).

Target (--check): peak RSS (b) / (a) <= 1.25.

    /tmp/venv/bin/python bench/memory.py [--organizations N] [--small S] [--big-batch B]
                                         [--keep-database] [--check]

The scratch database is created on the server named by --database-url (default:
BENCH_DATABASE_URL, else postgresql://root@127.0.0.1:5432/test) and dropped at the end unless
--keep-database. Exit status: 0; 1 with --check when the target is missed; 2 on any error or
mismatch.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # bench/common.py: machine info, scratch databases
import invoice as bench  # bench/invoice.py: generator, re-rating, machine info, helpers

SCRATCH_DB = "billing_bench_memory"
USAGE_HOUR = "2024-01-15 12:00:00+00"  # the one hour of usage each organization has
METRICS = bench.METRICS[:3]
TARGET_RSS_RATIO = 1.25


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organizations", type=int, default=100_000, help="organizations (default 100,000)")
    parser.add_argument("--small", type=int, default=1_000, help="active organizations of run (a) (default 1,000)")
    parser.add_argument("--big-batch", type=int, default=5_000, help="--batch-size of run (c) (default 5,000)")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", bench.DEFAULT_ADMIN_URL),
                        help="admin URL of the server where the scratch database is created "
                             "(default: BENCH_DATABASE_URL, else %(default)s)")
    parser.add_argument("--seed", type=int, default=20240131, help="random seed of the synthetic data")
    parser.add_argument("--database-name", default=os.environ.get("BENCH_MEMORY_DATABASE", SCRATCH_DB),
                        help="name of the scratch database, so that parallel runs do not collide "
                             "(default: BENCH_MEMORY_DATABASE, else %(default)s)")
    parser.add_argument("--keep-database", action="store_true", help="do not drop the scratch database")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if RSS (b) / (a) > {TARGET_RSS_RATIO}")
    args = parser.parse_args(argv)
    if not 1 <= args.small <= args.organizations:
        parser.error("--small must be between 1 and --organizations")
    if not 1 <= args.big_batch <= 100_000:
        parser.error("--big-batch must be between 1 and 100,000")
    return args


def scratch_url(admin_url: str, name: str = SCRATCH_DB) -> str:
    return common.scratch_url(admin_url, name)


def recreate_database(admin_url: str, name: str = SCRATCH_DB, *, drop_only: bool = False) -> None:
    common.recreate_database(admin_url, name, drop_only=drop_only)


def job_env(url: str) -> dict[str, str]:
    env = bench.billing_env(url)  # DATABASE_URL, BILLING_ENV_FILE=/dev/null, no other billing variable
    env.update(LOG_FORMAT="plain", PDF_RENDER_PROCESSES="1")
    return env


# --- data ----------------------------------------------------------------------------------------

@dataclass
class Data:
    orgs: list[bench.Org]
    expected: dict[str, tuple[str, Decimal]]  # organization -> (currency, independently rated total)
    usage_rows: int
    seconds: float
    sizes: str


def load(conn: psycopg.Connection, url: str, args: argparse.Namespace, workdir: Path) -> Data:
    started = time.perf_counter()
    rng = random.Random(args.seed)
    orgs = bench.make_orgs(args.organizations, rng)

    plans_file = workdir / "plans.toml"
    plans_file.write_text(bench.plans_toml(METRICS), encoding="utf-8")
    common.run_checked([common.billing_executable(), "plans", "apply", str(plans_file), "--plain"], env=job_env(url))

    # created_at: they existed before the billed month, so its base fee is due.
    copy_orgs = ("COPY organizations (id, name, email, status, currency, price_plan_id, created_at) "
                 "FROM STDIN")
    with conn.transaction(), conn.cursor() as cur, cur.copy(copy_orgs) as copy:
        copy.write("".join(f"{o.id}\t{o.name}\tbilling+{o.id}@example.com\tactive\t"
                           f"{bench.PLANS[o.plan].currency}\t{bench.PLANS[o.plan].id}\t2023-01-01T00:00:00Z\n"
                           for o in orgs))

    # One hour per organization, a month's worth of quantity in it (hundredths, exact).
    prices = [bench.plan_prices(p, METRICS) for p in range(len(bench.PLANS))]
    expected: dict[str, tuple[str, Decimal]] = {}
    lines = []
    for o in orgs:
        usage = {}
        for m in METRICS:
            top = m.hourly_max * bench.HOURS
            hundredths = rng.randint(0, top) * 100 if m.whole_units else rng.randint(0, top * 100)
            usage[m.name] = Decimal(hundredths).scaleb(-2)
            lines.append(f"{o.id}\t{m.name}\t{hundredths // 100}.{hundredths % 100:02d}\t{1 + hundredths % 97}\t"
                         f"{USAGE_HOUR}\n")
        expected[o.id] = (bench.PLANS[o.plan].currency, bench.expected_total(o.plan, prices[o.plan], usage))
    copy_usage = "COPY usage_hourly (organization_id, metric, quantity, event_count, hour_start) FROM STDIN"
    with conn.transaction(), conn.cursor() as cur, cur.copy(copy_usage) as copy:
        copy.write("".join(lines))
    for table in ("organizations", "usage_hourly", "price_plans", "plan_prices", "plan_price_tiers"):
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))

    rows = conn.execute("SELECT count(*) FROM usage_hourly").fetchone()[0]
    if rows != len(orgs) * len(METRICS):
        raise common.BenchError(f"usage_hourly has {rows:,} rows, expected {len(orgs) * len(METRICS):,}")
    sizes = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('organizations')), "
                         "pg_size_pretty(pg_total_relation_size('usage_hourly'))").fetchone()
    return Data(orgs, expected, rows, time.perf_counter() - started,
                f"organizations {sizes[0]}, usage_hourly {sizes[1]} (with indexes)")


# --- the measured process ------------------------------------------------------------------------

# A small process that starts the job and reports its rusage. ru_maxrss is the high-water mark of
# the process, and Linux carries it across exec from the memory the process had before: a child
# started directly by this script (fork or vfork, then exec) reports at least this script's own
# peak RSS, here ~200 MiB after generating 100,000 organizations, whatever the job uses. The job
# is therefore forked from this launcher, whose memory is a few MiB.
LAUNCHER = """
import os, sys, time
result, cmd = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(cmd[0], cmd)
_, status, ru = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(result, "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {seconds} {ru.ru_maxrss} {ru.ru_utime + ru.ru_stime}")
"""


def run_dry(url: str, workdir: Path, extra: Sequence[str] = ()) -> bench.Run:
    """One dry run, forked by LAUNCHER: wall time; peak RSS and CPU of that one process from
    os.wait4. Its stdout is read here and discarded, except the summary line."""
    cmd = [common.billing_executable(), "invoice-monthly", "--month", bench.MONTH_ARG, "--dry-run", "--plain",
           *extra]
    result = workdir / "rusage.txt"
    result.unlink(missing_ok=True)
    summary: dict[str, str] = {}
    tail: list[str] = []
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(result), *cmd], env=job_env(url),
                                stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        for raw in proc.stdout:
            if raw.startswith(b"summary "):
                summary = dict(p.split("=", 1) for p in raw.decode().split()[1:] if "=" in p)
            elif raw.startswith((b"error", b"warning")) or b" error_" in raw:
                tail = (tail + [raw.decode(errors="replace").rstrip()])[-5:]
        proc.stdout.close()
        if proc.wait() != 0 or not result.exists():
            err.seek(0)
            raise common.BenchError(f"the launcher of {' '.join(cmd)} exited {proc.returncode}\n"
                                   + err.read().decode(errors="replace")[-2000:])
        code, seconds, maxrss_kib, cpu = result.read_text().split()
        if int(code) != 0:
            err.seek(0)
            raise common.BenchError(f"{' '.join(cmd)} exited {code}\n" + "\n".join(tail) + "\n"
                                   + err.read().decode(errors="replace")[-2000:])
    return bench.Run(float(seconds), int(maxrss_kib) / 1024, float(cpu), summary)


def checked(label: str, run: bench.Run, data: Data, ids: Sequence[str]) -> bench.Run:
    bench.check_summary(label, run, count=len(ids), status="invoiced", dry_run=True,
                        want_revenue=bench.revenue(data.expected, ids))
    if run.summary.get("processed") != str(len(ids)):
        raise common.BenchError(f"{label}: processed={run.summary.get('processed')}, expected {len(ids)}")
    return run


# --- main ----------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    url = scratch_url(args.database_url, args.database_name)
    n, s = args.organizations, args.small
    load_start = bench.loadavg()
    print(f"scratch database {make_url(url).render_as_string(hide_password=True)}", flush=True)
    recreate_database(args.database_url, args.database_name)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
            common.run_checked([common.billing_executable(), "db", "upgrade", "--plain"], env=job_env(url))
            with psycopg.connect(url, autocommit=True) as conn:
                machine = bench.machine_info(conn)
                print(f"loading {n:,} organizations, {n * len(METRICS):,} usage_hourly rows ...", flush=True)
                data = load(conn, url, args, Path(tmp))
                print(f"loaded in {data.seconds:.0f} s: {data.sizes}", flush=True)
                runs: dict[str, bench.Run] = {}
                # The small run is one shard, as in bench/invoice.py: an inactive organization with
                # usage in the month gets its final invoice, so making the others inactive would not
                # leave S to invoice.
                shards = max(1, round(n / s))
                small_ids = [o.id for o in data.orgs if bench._shard_owns(o.id, shards)]
                all_ids = [o.id for o in data.orgs]
                s = len(small_ids)
                steps = (("a", small_ids, ("--shard-index", "0", "--shard-count", str(shards)),
                          f"(a) {s:,} organizations (shard 1/{shards}), --batch-size default (500)"),
                         ("b", all_ids, (), f"(b) {n:,} active, --batch-size default (500)"),
                         ("c", all_ids, ("--batch-size", str(args.big_batch)),
                          f"(c) {n:,} active, --batch-size {args.big_batch:,}"))
                for key, ids, extra, label in steps:
                    print(f"{label} ...", flush=True)
                    runs[key] = checked(label, run_dry(url, Path(tmp), extra), data, ids)
                    r = runs[key]
                    print(f"  {r.seconds:.1f} s, peak RSS {r.rss_mib:.1f} MiB, CPU {r.cpu_seconds:.1f} s, "
                          f"{len(ids) / r.seconds:.0f} invoices/s", flush=True)
    except common.BenchError as exc:
        print(f"\nERROR: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep_database:
            recreate_database(args.database_url, args.database_name, drop_only=True)

    a, b, c = runs["a"], runs["b"], runs["c"]
    ratio = b.rss_mib / a.rss_mib
    ok = ratio <= TARGET_RSS_RATIO
    row = "{:44} {:>8} {:>7} {:>9} {:>6}   {}"
    lines = [
        "",
        f"invoice-monthly memory benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M}Z",
        f"machine: nproc={machine['nproc']}, CPU {machine['cpu']}, {machine['memory']} RAM, {machine['postgres']} "
        f"({machine['pg_settings']}), Python {machine['python']}, fpdf2 {machine['fpdf']}, Linux {machine['kernel']}",
        f"code: {machine['commit']}; load average: {load_start} at the start, {bench.loadavg()} at the end",
        f"data: {n:,} organizations ({sum(1 for o in data.orgs[:n] if 'Ł' in o.name):,} with Unicode names), "
        f"{len(bench.PLANS)} plans, {len(METRICS)} metrics in one hour each ({USAGE_HOUR[:13]}h): "
        f"{data.usage_rows:,} usage_hourly rows; {data.sizes}",
        "runs: billing invoice-monthly --month 2024-01 --dry-run --plain, once each, whole process; "
        "PDF_RENDER_PROCESSES=1 (rendering in the job's threads: one process holds all the work), "
        "INVOICE_CONCURRENCY default (16); peak RSS and CPU from os.wait4 in a small launcher process",
        "",
        row.format("", "wall s", "inv/s", "RSS MiB", "CPU", "summary"),
    ]
    for key, active, label in (("a", s, f"(a) {s:,} (one shard), batch 500"), ("b", n, f"(b) {n:,} active, batch 500"),
                               ("c", n, f"(c) {n:,} active, batch {args.big_batch:,}")):
        r = runs[key]
        lines.append(row.format(label, f"{r.seconds:.1f}", f"{active / r.seconds:.0f}", f"{r.rss_mib:.1f}",
                                f"{100 * r.cpu_seconds / r.seconds:.0f}%",
                                f"found={r.summary['found']} processed={r.summary['processed']} "
                                f"invoiced={r.summary['invoiced']} failed={r.summary['failed']} "
                                f"seconds={r.summary.get('seconds')}"))
    lines += [
        "",
        "summaries verified: found = processed = invoiced = active organizations, failed = 0, revenue per currency "
        "= independent re-rating",
        f"peak RSS: (a) {a.rss_mib:.1f} MiB at {s:,}, (b) {b.rss_mib:.1f} MiB at {n:,}: (b)/(a) = {ratio:.2f}; "
        f"(c) {c.rss_mib:.1f} MiB with --batch-size {args.big_batch:,}: (c)/(a) = {c.rss_mib / a.rss_mib:.2f}, "
        f"(c)-(b) = {c.rss_mib - b.rss_mib:+.1f} MiB",
        f"(this script's own peak RSS, which a process it started directly would report as its floor: "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; hence the launcher)",
        f"target: peak RSS {n:,} / {s:,} <= {TARGET_RSS_RATIO}   {ratio:.2f}   {'PASS' if ok else 'FAIL'}",
    ]
    print("\n".join(lines), flush=True)
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
