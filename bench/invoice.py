"""Benchmark of `billing invoice-monthly` on a whole month of hourly usage.

Loads, into a scratch database: price plans of every model (per_unit, graduated, volume, package;
with included units, tier flat fees, base fees and minimum commitments; USD, EUR, JPY and GBP)
applied with `billing plans apply`; N active organizations (default 10,000) spread over the plans
in the plan's currency, 10% of them with Unicode names (Polish, Greek, Cyrillic) so that the
Unicode PDF path is taken; and usage_hourly for every hour of January 2024 (744 hours) x N x M
metrics (22.3 million rows by default), exact decimals, client-side COPY with the primary key and
the hour index dropped during the load and built afterwards, then VACUUM ANALYZE. The rows are in
hour order, and within an hour the (organization, metric) pairs are in a fixed random order, as
aggregate-hourly's hash aggregation writes them (`--layout sorted` puts them in id order instead).
There are no usage_events, so no hour is stale and the job re-aggregates nothing.

It then times, as whole processes (wall time; peak RSS and CPU from the kernel, see below):

  (1) floor: the bare SQL that sums the month per (organization, metric), through
      `psql -X -q -o /dev/null` (30,000 rows, discarded);
  (2) `billing invoice-monthly --month 2024-01 --dry-run --plain` with N organizations (rating and
      PDF rendering, nothing written); (1) and (2) alternate, `--repeat` times each;
  (3) `billing invoice-monthly --month 2024-01 --plain`, the real run (default configuration:
      no S3, Stripe or e-mail, no PDF files), `--real-repeat` times (the invoices are truncated
      between runs), then verified: exactly N issued invoices numbered INV-2024-01-000001..N without
      gaps, each with a pdf_sha256, every total equal to an independent re-rating (written here,
      not billing_cli.pricing) of the generator's own sums; a few PDFs re-rendered from the stored
      invoices must hash to the recorded sha256. Then (3b) a rerun, which must report
      already_invoiced=N;
  (4) the same dry run over about `--small` organizations: shard 1 of round(N / S) (an inactive
      organization with usage in the month gets its final invoice, so making the others inactive
      no longer leaves S to invoice): peak RSS at about S vs N organizations;
  (5) in-process: `billing_cli.delivery.pdf.render_invoice` on documents rated by
      `billing_cli.pricing.rate`, median ms per invoice with a Latin-1 and with a Unicode
      bill-to name, and the mix at the 10% Unicode share.

Peak RSS: each measured process is started with subprocess.Popen and reaped with os.wait4(pid),
which returns that one child's rusage: ru_maxrss is its own peak resident set (the kernel's
high-water mark, so nothing is missed between samples), and ru_utime + ru_stime its CPU time.
`billing` is a Python process with no children, so this is the job's peak RSS. (getrusage
(RUSAGE_CHILDREN) is a maximum over every child reaped so far and cannot be split per run.)

Targets (--check): the real run >= 300 invoices/s, and >= 0.85 x the dry run's rate; PDF
rendering <= 15 ms per invoice for the Unicode invoice (the slow case, so every invoice) and for
the 10% mix; peak RSS at N organizations <= 1.25 x the peak RSS at S organizations (i.e. it does
not grow with the number of organizations).

    /tmp/venv/bin/python bench/invoice.py [--organizations N] [--small S] [--metrics M]
                                          [--repeat R] [--real-repeat R] [--check]

The scratch database (billing_bench_invoice, or --database-name) is created on the server named by --database-url
(default: BENCH_DATABASE_URL, else postgresql://root@127.0.0.1:5432/test) and dropped at the end.
Exit status: 0, or 1 with --check when a target is missed; 2 on any error or mismatch.
"""

from __future__ import annotations

import argparse
import decimal
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import common  # bench/common.py: machine info, scratch databases
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

MONTH_ARG = "2024-01"
MONTH_START = datetime(2024, 1, 1, tzinfo=UTC)
MONTH_END = datetime(2024, 2, 1, tzinfo=UTC)
PERIOD_START = date(2024, 1, 1)
HOURS = int((MONTH_END - MONTH_START) / timedelta(hours=1))  # 744
SCRATCH_DB = "billing_bench_invoice"
DEFAULT_ADMIN_URL = "postgresql://root@127.0.0.1:5432/test"
UNICODE_SHARE = 10  # one organization in 10 has a Unicode name
PDF_RENDERS = 200

FLOOR_SQL = ("SELECT organization_id, metric, sum(quantity) FROM usage_hourly "
             "WHERE hour_start >= '2024-01-01' AND hour_start < '2024-02-01' GROUP BY 1, 2")

TARGET_INVOICES_PER_S = 300.0
TARGET_REAL_TO_DRY = 0.85  # the real run's rate over the dry run's: what issuing costs
TARGET_PDF_MS = 15.0
TARGET_RSS_RATIO = 1.25


BenchError = common.BenchError


# --- metrics, plans and organizations ------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    hourly_max: int       # medium organizations: hourly quantity uniform in 0..hourly_max (units)
    whole_units: bool     # integer quantities (else hundredths: '12.34')
    unit_price: Decimal   # USD per unit; the other currencies scale it
    package_size: int
    tier_small: int       # tier bounds (inclusive), around a medium organization's month
    tier_large: int


METRICS = (
    Metric("api_calls", "API calls", 1500, True, Decimal("0.0004"), 1000, 100_000, 1_000_000),
    Metric("storage_gb", "Storage (GB)", 20, False, Decimal("0.10"), 100, 1_000, 10_000),
    Metric("compute_hours", "Compute (hours)", 4, False, Decimal("0.05"), 10, 200, 2_000),
    Metric("egress_gb", "Egress (GB)", 10, False, Decimal("0.08"), 50, 500, 5_000),
    Metric("seat_hours", "Seats (seat-hours)", 3, True, Decimal("0.01"), 24, 150, 1_500),
)
MODELS = ("per_unit", "graduated", "volume", "package")

# Organization sizes: the hourly range is scaled by num/den; weights in percent.
SIZES = (("tiny", 1, 50, 15), ("small", 1, 5, 35), ("medium", 1, 1, 35), ("large", 4, 1, 15))


@dataclass(frozen=True)
class PlanSpec:
    id: str
    name: str
    currency: str
    scale: Decimal          # price multiplier from USD
    minor: int              # decimals of the currency
    base_fee: Decimal
    minimum: Decimal
    included: bool          # per_unit and graduated prices include some free units


PLANS = (
    PlanSpec("bench-starter", "Starter", "USD", Decimal(1), 2, Decimal("29.00"), Decimal(0), True),
    PlanSpec("bench-growth", "Growth", "USD", Decimal(1), 2, Decimal(0), Decimal("250.00"), False),
    PlanSpec("bench-scale", "Scale", "USD", Decimal("0.8"), 2, Decimal("99.00"), Decimal("500.00"), True),
    PlanSpec("bench-europe", "Europe", "EUR", Decimal("0.9"), 2, Decimal("19.00"), Decimal("25.00"), False),
    PlanSpec("bench-tokyo", "Tokyo", "JPY", Decimal(150), 0, Decimal(3000), Decimal(20000), True),
    PlanSpec("bench-london", "London", "GBP", Decimal("0.8"), 2, Decimal(0), Decimal(0), False),
)


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None
    unit_price: Decimal
    flat_fee: Decimal


@dataclass(frozen=True)
class Price:
    metric: str
    description: str
    model: str
    unit_price: Decimal | None
    package_size: Decimal | None
    tiers: tuple[Tier, ...]
    included: Decimal


def _exact(value: Decimal) -> Decimal:
    return value.normalize() if value != value.to_integral_value() else value.quantize(Decimal(1))


def plan_prices(plan_index: int, metrics: Sequence[Metric]) -> tuple[Price, ...]:
    """Plan p prices metric j with model (p + j) mod 4: every plan has several models, and every
    model appears in every plan position and currency."""
    plan = PLANS[plan_index]
    fee = lambda usd: _exact((Decimal(usd) * plan.scale).quantize(Decimal(1).scaleb(-plan.minor)))
    prices = []
    for j, m in enumerate(metrics):
        model = MODELS[(plan_index + j) % len(MODELS)]
        unit = _exact(m.unit_price * plan.scale)
        included = Decimal(m.tier_small // 2) if plan.included and model in ("per_unit", "graduated") else Decimal(0)
        unit_price = package_size = None
        tiers: tuple[Tier, ...] = ()
        if model == "per_unit":
            unit_price = unit
        elif model == "package":
            package_size = Decimal(m.package_size)
            unit_price = _exact(unit * m.package_size)
        elif model == "volume":
            tiers = (Tier(Decimal(m.tier_small), unit, Decimal(0)),
                     Tier(Decimal(m.tier_large), _exact(unit * Decimal("0.8")), fee(5)),
                     Tier(None, _exact(unit * Decimal("0.6")), fee(20)))
        else:
            tiers = (Tier(Decimal(m.tier_small), _exact(unit * Decimal("1.25")), Decimal(0)),
                     Tier(Decimal(m.tier_large), unit, fee(10)),
                     Tier(None, _exact(unit * Decimal("0.7")), Decimal(0)))
        prices.append(Price(m.name, m.description, model, unit_price, package_size, tiers, included))
    return tuple(prices)


def plans_toml(metrics: Sequence[Metric]) -> str:
    out = ["# bench/invoice.py: one plan per currency mix, every price model.", ""]
    for p, plan in enumerate(PLANS):
        out += ["[[plan]]", f'id = "{plan.id}"', f'name = "{plan.name}"', f'currency = "{plan.currency}"']
        if plan.base_fee:
            out.append(f"base_fee = {plan.base_fee:f}")
        if plan.minimum:
            out.append(f"minimum_commitment = {plan.minimum:f}")
        for price in plan_prices(p, metrics):
            out += ["", "  [[plan.price]]", f'  metric = "{price.metric}"',
                    f'  description = "{price.description}"', f'  model = "{price.model}"']
            if price.unit_price is not None:
                out.append(f"  unit_price = {price.unit_price:f}")
            if price.package_size is not None:
                out.append(f"  package_size = {price.package_size:f}")
            if price.included:
                out.append(f"  included = {price.included:f}")
            if price.tiers:
                out.append("  tiers = [")
                for t in price.tiers:
                    parts = ([f"up_to = {t.up_to:f}"] if t.up_to is not None else []) + \
                            [f"unit_price = {t.unit_price:f}"] + ([f"flat_fee = {t.flat_fee:f}"] if t.flat_fee else [])
                    out.append("    { " + ", ".join(parts) + " },")
                out.append("  ]")
        out.append("")
    return "\n".join(out)


@dataclass(frozen=True)
class Org:
    id: str
    name: str
    plan: int
    size: int


def make_orgs(count: int, rng: random.Random) -> list[Org]:
    weights = [w for *_, w in SIZES]
    orgs = []
    for i in range(1, count + 1):
        if i % UNICODE_SHARE == 7:
            name = f"Łódź Café ΑΒΓ Кафе {i:06d}"
        elif i % 3 == 0:
            name = f"Müller & Söhne GmbH {i:06d}"  # Latin-1: still the core fonts
        else:
            name = f"Organization {i:06d} Ltd"
        orgs.append(Org(f"org-{i:06d}", name, rng.randrange(len(PLANS)),
                        rng.choices(range(len(SIZES)), weights)[0]))
    return orgs


# --- independent rating (the spec's rules, written here, not billing_cli.pricing) ---------------

def expected_total(plan_index: int, prices: Sequence[Price], usage: dict[str, Decimal]) -> Decimal:
    plan = PLANS[plan_index]
    quantum = Decimal(1).scaleb(-plan.minor)
    rnd = lambda x: x.quantize(quantum, rounding=ROUND_HALF_UP)
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        amounts: list[Decimal] = []
        if plan.base_fee > 0:
            amounts.append(rnd(plan.base_fee))
        for price in prices:
            qty = usage.get(price.metric, Decimal(0))
            if qty <= 0:
                continue
            billable = max(qty - price.included, Decimal(0))
            if price.model == "per_unit":
                amounts.append(rnd(billable * price.unit_price))
            elif price.model == "package":
                whole, rest = divmod(billable, price.package_size)  # every started package is due
                amounts.append(rnd((whole + (1 if rest else 0)) * price.unit_price))
            elif price.model == "volume":
                lower = Decimal(0)
                for tier in price.tiers:
                    if tier.up_to is None or billable <= tier.up_to:
                        break
                    lower = tier.up_to
                amounts.append(rnd(billable * tier.unit_price))
                if tier.flat_fee > 0 and billable > 0:
                    amounts.append(rnd(tier.flat_fee))
            else:  # graduated: each tier's share at its price, plus its flat fee
                lower = Decimal(0)
                for tier in price.tiers:
                    top = billable if tier.up_to is None else min(billable, tier.up_to)
                    if top - lower <= 0:
                        break
                    amounts.append(rnd((top - lower) * tier.unit_price) + rnd(tier.flat_fee))
                    if tier.up_to is None or billable <= tier.up_to:
                        break
                    lower = tier.up_to
        running = sum(amounts, Decimal(0))
        if plan.minimum > running:
            amounts.append(rnd(plan.minimum - running))
        return sum(amounts, Decimal(0))


# --- arguments and machine -----------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organizations", type=int, default=10_000, help="active organizations (default 10,000)")
    parser.add_argument("--small", type=int, default=1_000,
                        help="about this many organizations in the RSS comparison's small run (one shard; default 1,000)")
    parser.add_argument("--metrics", type=int, default=3, help=f"metrics, at most {len(METRICS)} (default 3)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of the floor and of each dry run; the median is reported (default 3)")
    parser.add_argument("--real-repeat", type=int, default=1,
                        help="real runs (invoices truncated between them); the median is reported (default 1)")
    parser.add_argument("--layout", choices=("shuffled", "sorted"), default="shuffled",
                        help="order of the (organization, metric) rows within each hour: a fixed random "
                             "order like aggregate-hourly's hash aggregation (default), or id order")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_ADMIN_URL),
                        help="admin URL of the server where the scratch database is created "
                             "(default: BENCH_DATABASE_URL, else %(default)s)")
    parser.add_argument("--seed", type=int, default=20240131, help="random seed of the synthetic data")
    parser.add_argument("--database-name", default=os.environ.get("BENCH_INVOICE_DATABASE", SCRATCH_DB),
                        help="name of the scratch database, so that parallel runs do not collide "
                             "(default: BENCH_INVOICE_DATABASE, else %(default)s)")
    parser.add_argument("--keep-database", action="store_true", help="do not drop the scratch database")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    if not 1 <= args.metrics <= len(METRICS):
        parser.error(f"--metrics must be between 1 and {len(METRICS)}")
    if args.organizations < 1 or args.repeat < 1 or args.real_repeat < 1:
        parser.error("--organizations, --repeat and --real-repeat must be positive")
    if not 1 <= args.small <= args.organizations:
        parser.error("--small must be between 1 and --organizations")
    return args


def machine_info(conn: psycopg.Connection) -> dict[str, str]:
    """The common header plus what matters for invoicing: server settings, the code, fpdf2."""
    settings = dict(conn.execute(
        "SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
        "('shared_buffers', 'work_mem', 'synchronous_commit', 'max_parallel_workers_per_gather')").fetchall())
    import fpdf
    try:
        commit = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always",
                                 "--dirty"], capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "commit": commit or "unknown",
        **common.machine_info(conn),
        "pg_settings": ", ".join(f"{k}={v}" for k, v in sorted(settings.items())),
        "fpdf": fpdf.__version__,
    }


# --- scratch database and processes --------------------------------------------------------------

def scratch_url(admin_url: str, name: str = SCRATCH_DB) -> str:
    return common.scratch_url(admin_url, name)


def recreate_database(admin_url: str, name: str = SCRATCH_DB, *, drop_only: bool = False) -> None:
    common.recreate_database(admin_url, name, drop_only=drop_only)


loadavg = common.loadavg


def billing_env(url: str) -> dict[str, str]:
    """The environment of the `billing` processes: this database, no `.env`, no DRY_RUN, and the
    default configuration otherwise (no S3, Stripe, e-mail or PDF folder from our own environment)."""
    from billing_cli.config import VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in {var.name for var in VARIABLES}}
    env.update(DATABASE_URL=url, DRY_RUN="false", BILLING_ENV_FILE=os.devnull)
    return env


@dataclass
class Run:
    seconds: float
    rss_mib: float
    cpu_seconds: float
    summary: dict[str, str] = field(default_factory=dict)


def run_measured(cmd: Sequence[str], env: dict[str, str] | None, workdir: Path) -> Run:
    """One process, timed; its own peak RSS and CPU from os.wait4 (see the module docstring)."""
    out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = out_path.read_text(errors="replace")[-2000:] + err_path.read_text(errors="replace")[-2000:]
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}\n{tail}")
    summary: dict[str, str] = {}
    for line in out_path.read_text(encoding="utf-8").splitlines():
        if line.startswith("summary "):
            summary = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
    return Run(seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, summary)


# --- data ----------------------------------------------------------------------------------------

@dataclass
class Loaded:
    orgs: list[Org]
    usage: dict[str, dict[str, Decimal]]  # the generator's own month totals per organization
    rows: int
    copy_seconds: float
    index_seconds: float
    vacuum_seconds: float
    table_size: str


POOL = 4099  # a prime > HOURS: each (organization, metric) reads its own window of its pool


def load_data(conn: psycopg.Connection, url: str, args: argparse.Namespace, workdir: Path) -> Loaded:
    rng = random.Random(args.seed)
    metrics = METRICS[:args.metrics]
    orgs = make_orgs(args.organizations, rng)

    # Plans through the CLI, as an operator would.
    plans_file = workdir / "plans.toml"
    plans_file.write_text(plans_toml(metrics), encoding="utf-8")
    common.run_checked([common.billing_executable(), "plans", "apply", str(plans_file), "--plain"], env=billing_env(url))

    # created_at: they existed before the billed month, so its base fee is due.
    copy_orgs = ("COPY organizations (id, name, email, status, currency, price_plan_id, created_at) "
                 "FROM STDIN")
    with conn.transaction(), conn.cursor() as cur, cur.copy(copy_orgs) as copy:
        copy.write("".join(f"{o.id}\t{o.name}\tbilling+{o.id}@example.com\tactive\t"
                           f"{PLANS[o.plan].currency}\t{PLANS[o.plan].id}\t2023-01-01T00:00:00Z\n" for o in orgs))

    # Hourly quantities in hundredths (exact), from one pool per (size, metric). The text of each
    # pool entry is "quantity\tevent_count\t"; the row text is prefix + entry + hour.
    pools_int: dict[tuple[int, int], list[int]] = {}
    pools_txt: dict[tuple[int, int], list[str]] = {}
    for s, (_, num, den, _) in enumerate(SIZES):
        for j, m in enumerate(metrics):
            ints, txts = [], []
            for _ in range(POOL):
                if m.whole_units:
                    hundredths = rng.randint(0, m.hourly_max * num // den) * 100
                else:
                    hundredths = rng.randint(0, m.hourly_max * 100 * num // den)
                ints.append(hundredths)
                txts.append(f"{hundredths // 100}.{hundredths % 100:02d}\t{1 + hundredths % 97}\t")
            pools_int[(s, j)] = ints
            pools_txt[(s, j)] = txts
    combos = []  # (prefix, pool text, offset) per (organization, metric)
    usage: dict[str, dict[str, Decimal]] = {}
    for o in orgs:
        usage[o.id] = {}
        for j, m in enumerate(metrics):
            offset = rng.randrange(POOL)
            ints = pools_int[(o.size, j)]
            window = ints[offset:offset + HOURS] + ints[:max(0, offset + HOURS - POOL)]
            usage[o.id][m.name] = Decimal(sum(window)).scaleb(-2)
            combos.append((f"{o.id}\t{m.name}\t", pools_txt[(o.size, j)], offset))
    if args.layout == "shuffled":
        random.Random(args.seed + 1).shuffle(combos)

    started = time.perf_counter()
    copy_sql = ("COPY usage_hourly (organization_id, metric, quantity, event_count, hour_start) "
                "FROM STDIN (FREEZE)")
    with conn.transaction(), conn.cursor() as cur:
        # Truncated in this transaction: COPY FREEZE writes the rows frozen and all-visible, so
        # no later hint-bit writes or anti-wraparound vacuum perturb the measurements.
        cur.execute("TRUNCATE usage_hourly")
        cur.execute("ALTER TABLE usage_hourly DROP CONSTRAINT pk_usage_hourly")
        cur.execute("DROP INDEX idx_usage_hourly_hour_start")
        with cur.copy(copy_sql) as copy:
            for h in range(HOURS):
                hour = f"{MONTH_START + timedelta(hours=h):%Y-%m-%d %H}:00:00+00\n"
                copy.write("".join([prefix + pool[(offset + h) % POOL] + hour for prefix, pool, offset in combos]))
                if (h + 1) % 124 == 0:
                    print(f"  COPY: {h + 1}/{HOURS} hours, {time.perf_counter() - started:.0f} s", flush=True)
    copy_seconds = time.perf_counter() - started

    started = time.perf_counter()
    conn.execute("SET maintenance_work_mem = '1GB'")
    conn.execute("ALTER TABLE usage_hourly ADD CONSTRAINT pk_usage_hourly "
                 "PRIMARY KEY (organization_id, metric, hour_start)")
    conn.execute("CREATE INDEX idx_usage_hourly_hour_start ON usage_hourly (hour_start)")
    conn.execute("RESET maintenance_work_mem")
    index_seconds = time.perf_counter() - started

    started = time.perf_counter()
    for table in ("organizations", "usage_hourly", "price_plans", "plan_prices", "plan_price_tiers"):
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
    vacuum_seconds = time.perf_counter() - started

    rows = conn.execute("SELECT count(*) FROM usage_hourly").fetchone()[0]
    if rows != len(combos) * HOURS:
        raise BenchError(f"usage_hourly has {rows:,} rows, expected {len(combos) * HOURS:,}")
    size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('usage_hourly'))").fetchone()[0]
    return Loaded(orgs, usage, rows, copy_seconds, index_seconds, vacuum_seconds, size)


def check_sums(conn: psycopg.Connection, loaded: Loaded, sample: int = 50) -> None:
    """The database's month per (organization, metric) equals the generator's, on a sample."""
    ids = [o.id for o in loaded.orgs[::max(1, len(loaded.orgs) // sample)]]
    rows = conn.execute("SELECT organization_id, metric, sum(quantity) FROM usage_hourly "
                        "WHERE organization_id = ANY(%s) AND hour_start >= %s AND hour_start < %s "
                        "GROUP BY 1, 2", (ids, MONTH_START, MONTH_END)).fetchall()
    got = {(o, m): q for o, m, q in rows}
    want = {(o, m): q for o in ids for m, q in loaded.usage[o].items()}
    if got != want:
        bad = sorted(k for k in want if got.get(k) != want[k])[:5]
        raise BenchError(f"usage_hourly month sums differ from the generator's: {bad}")


# --- expectations and verification ---------------------------------------------------------------

def expected_totals(loaded: Loaded, metrics: Sequence[Metric]) -> dict[str, tuple[str, Decimal]]:
    prices = [plan_prices(p, metrics) for p in range(len(PLANS))]
    return {o.id: (PLANS[o.plan].currency, expected_total(o.plan, prices[o.plan], loaded.usage[o.id]))
            for o in loaded.orgs}


def revenue(expected: dict[str, tuple[str, Decimal]], ids: Sequence[str]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = defaultdict(Decimal)
    for org_id in ids:
        currency, total = expected[org_id]
        out[currency] += total
    return dict(out)


def check_summary(label: str, run: Run, *, count: int, status: str, dry_run: bool,
                  want_revenue: dict[str, Decimal] | None) -> None:
    s = run.summary
    if not s:
        raise BenchError(f"{label}: no summary line in the output")
    problems = []
    if s.get("found") != str(count) or s.get(status) != str(count) or s.get("failed") != "0":
        problems.append(f"found={s.get('found')} {status}={s.get(status)} failed={s.get('failed')}, "
                        f"expected {count}, {count}, 0")
    if s.get("dry_run") != str(dry_run).lower():
        problems.append(f"dry_run={s.get('dry_run')}")
    if want_revenue is not None:
        got = {k.removeprefix("revenue_"): Decimal(v) for k, v in s.items() if k.startswith("revenue_")}
        if got != want_revenue:
            problems.append(f"revenue {got} != independent re-rating {want_revenue}")
    if problems:
        raise BenchError(f"{label}: " + "; ".join(problems))


@dataclass
class Verified:
    invoices: int
    lines: int
    revenue: dict[str, Decimal]
    pdf_checked: int
    pdf_kib_avg: float
    topped_up: int


def verify_real(conn: psycopg.Connection, url: str, expected: dict[str, tuple[str, Decimal]], n: int) -> Verified:
    where = "billing_month = %s AND status = 'issued'"
    count, distinct, low, high, with_pdf, pdf_avg = conn.execute(
        f"SELECT count(*), count(DISTINCT number), min(number), max(number), count(pdf_sha256), "
        f"avg(pdf_bytes) FROM invoices WHERE {where}", (PERIOD_START,)).fetchone()
    first, last = f"INV-{MONTH_ARG}-{1:06d}", f"INV-{MONTH_ARG}-{n:06d}"
    outside = conn.execute(
        f"SELECT count(*) FROM invoices WHERE {where} AND number NOT IN "
        f"(SELECT 'INV-{MONTH_ARG}-' || lpad(g::text, 6, '0') FROM generate_series(1, %s) g)",
        (PERIOD_START, n)).fetchone()[0]
    counter = conn.execute("SELECT last_number FROM invoice_number_counters WHERE period_start = %s",
                           (PERIOD_START,)).fetchone()
    if (count, distinct, low, high, outside, with_pdf) != (n, n, first, last, 0, n) or counter != (n,):
        raise BenchError(f"invoices: {count} issued, {distinct} distinct numbers {low}..{high}, {outside} "
                         f"outside 1..{n}, {with_pdf} with a PDF, counter {counter}; expected {n} gapless "
                         f"{first}..{last}, each with a PDF")
    stored = {org: (cur.strip(), total) for org, cur, total in conn.execute(
        f"SELECT organization_id, currency, total FROM invoices WHERE {where}", (PERIOD_START,))}
    wrong = sorted(org for org in expected if stored.get(org) != expected[org])
    if wrong or len(stored) != len(expected):
        examples = ", ".join(f"{o}: stored {stored.get(o)} expected {expected[o]}" for o in wrong[:3])
        raise BenchError(f"{len(wrong)} invoice totals differ from the independent re-rating: {examples}")
    zero = conn.execute(f"SELECT count(*) FROM invoices WHERE {where} AND total <= 0", (PERIOD_START,)).fetchone()[0]
    if zero:
        raise BenchError(f"{zero} invoices have a total of 0 although every organization has usage")
    lines = conn.execute("SELECT count(*) FROM invoice_lines").fetchone()[0]
    topped_up = conn.execute("SELECT count(*) FROM invoice_lines WHERE kind = 'minimum'").fetchone()[0]

    # The recorded sha256 is the PDF of the stored invoice: re-render a few and compare.
    from billing_cli.config import load_settings
    from billing_cli.db import invoice_store
    from billing_cli.db.engine import make_engine
    from billing_cli.delivery.pdf import needs_unicode_font, render_invoice
    from billing_cli.invoices import Seller

    settings = load_settings(billing_env(url))
    seller = Seller(settings.seller_name, settings.seller_address, settings.seller_tax_id)
    picks = conn.execute(
        f"(SELECT id, pdf_sha256 FROM invoices WHERE {where} ORDER BY number LIMIT 2) UNION ALL "
        f"(SELECT id, pdf_sha256 FROM invoices WHERE {where} AND bill_to_name LIKE 'Łódź%%' ORDER BY number "
        f"LIMIT 2) UNION ALL (SELECT id, pdf_sha256 FROM invoices WHERE {where} ORDER BY number DESC LIMIT 1)",
        (PERIOD_START,) * 3).fetchall()
    engine = make_engine(url, pool_size=1)
    unicode_seen = 0
    try:
        with engine.connect() as sa_conn:
            for invoice_id, sha in picks:
                document = invoice_store.load_document(sa_conn, invoice_id)
                unicode_seen += needs_unicode_font(document, seller)
                if hashlib.sha256(render_invoice(document, seller)).hexdigest() != sha:
                    raise BenchError(f"invoice {document.number}: the re-rendered PDF does not match pdf_sha256")
    finally:
        engine.dispose()
    if n >= UNICODE_SHARE and not unicode_seen:
        raise BenchError("no re-rendered invoice took the Unicode font path")
    return Verified(n, lines, revenue(expected, list(expected)), len(picks), float(pdf_avg) / 1024, topped_up)


def truncate_invoices(conn: psycopg.Connection) -> None:
    conn.execute("TRUNCATE invoice_lines, invoice_usage, invoice_periods, invoice_taxes, credit_note_lines, "
                 "credit_notes, invoices, invoice_number_counters, credit_note_number_counters "
                 "RESTART IDENTITY")


def _shard_owns(organization_id: str, count: int) -> bool:
    """Whether shard 1/count invoices the organization (usage_store.Shard's stable md5 partition)."""
    return int(hashlib.md5(organization_id.encode()).hexdigest()[:8], 16) % count == 0


# --- PDF rendering in-process --------------------------------------------------------------------

@dataclass
class PdfTimes:
    latin_ms: float
    unicode_ms: float
    latin_kib: float
    unicode_kib: float
    lines_avg: float

    def mix_ms(self) -> float:
        return ((UNICODE_SHARE - 1) * self.latin_ms + self.unicode_ms) / UNICODE_SHARE


def measure_pdf(loaded: Loaded, url: str, metrics: Sequence[Metric], count: int) -> PdfTimes:
    """Median render time of `count` documents (rated by billing_cli.pricing from the first
    organizations' usage), each rendered with a Latin-1 and with a Unicode bill-to name."""
    from billing_cli.config import load_settings
    from billing_cli.delivery.pdf import needs_unicode_font, render_invoice
    from billing_cli.invoices import InvoiceDocument, Seller, due_date, invoice_number
    from billing_cli.periods import Month
    from billing_cli.plan_file import parse_plans
    from billing_cli.pricing import rate

    settings = load_settings(billing_env(url))
    seller = Seller(settings.seller_name, settings.seller_address, settings.seller_tax_id)
    plans = {p.id: p for p in parse_plans(plans_toml(metrics))}
    month = Month.parse(MONTH_ARG)
    issue = date(2024, 2, 1)
    docs: list[tuple[InvoiceDocument, InvoiceDocument]] = []
    for n, org in enumerate(loaded.orgs[:count], start=1):
        rated = rate(loaded.usage[org.id], plans[PLANS[org.plan].id], month)
        base = dict(number=invoice_number(month, n), organization_id=org.id, bill_to_email=f"billing+{org.id}@example.com",
                    period=month, issue_date=issue, due_date=due_date(issue, 30), currency=rated.currency,
                    lines=rated.lines, total=rated.total)
        latin = InvoiceDocument(bill_to_name=f"Organization {n:06d} Ltd", **base)
        uni = InvoiceDocument(bill_to_name=f"Łódź Café ΑΒΓ Кафе {n:06d}", **base)
        if needs_unicode_font(latin, seller) or not needs_unicode_font(uni, seller):
            raise BenchError("the Latin-1 / Unicode documents do not take the expected font paths")
        docs.append((latin, uni))
    for latin, uni in docs[:5]:  # warm-up: imports, font coverage cache
        render_invoice(latin, seller)
        render_invoice(uni, seller)
    times: dict[int, list[float]] = {0: [], 1: []}
    sizes: dict[int, list[int]] = {0: [], 1: []}
    for pair in docs:
        for kind in (0, 1):  # interleaved, so that noise hits both alike
            started = time.perf_counter()
            pdf = render_invoice(pair[kind], seller)
            times[kind].append(time.perf_counter() - started)
            sizes[kind].append(len(pdf))
    return PdfTimes(statistics.median(times[0]) * 1000, statistics.median(times[1]) * 1000,
                    statistics.mean(sizes[0]) / 1024, statistics.mean(sizes[1]) / 1024,
                    statistics.mean(len(latin.lines) for latin, _ in docs))


# --- orchestration -------------------------------------------------------------------------------

@dataclass
class Results:
    floor: list[Run] = field(default_factory=list)
    dry: list[Run] = field(default_factory=list)
    small: list[Run] = field(default_factory=list)
    small_count: int = 0  # organizations of the small run (one shard)
    real: list[Run] = field(default_factory=list)
    rerun: Run | None = None
    verified: Verified | None = None
    pdf: PdfTimes | None = None


def median_run(runs: Sequence[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.seconds)
    return ordered[(len(ordered) - 1) // 2] if len(ordered) % 2 else Run(
        statistics.median(r.seconds for r in runs), max(r.rss_mib for r in runs),
        statistics.median(r.cpu_seconds for r in runs))


def measure(conn: psycopg.Connection, url: str, args: argparse.Namespace, loaded: Loaded,
            workdir: Path) -> Results:
    billing, env = common.billing_executable(), billing_env(url)
    metrics = METRICS[:args.metrics]
    n, s = args.organizations, args.small
    expected = expected_totals(loaded, metrics)
    all_ids = [o.id for o in loaded.orgs]
    dry_cmd = [billing, "invoice-monthly", "--month", MONTH_ARG, "--dry-run", "--plain"]
    real_cmd = [billing, "invoice-monthly", "--month", MONTH_ARG, "--plain"]
    floor_cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", os.devnull, "-d", url, "-c", FLOOR_SQL]
    res = Results()

    print("warm-up (untimed): the floor query once", flush=True)
    run_measured(floor_cmd, None, workdir)
    for i in range(args.repeat):
        order = ("floor", "dry") if i % 2 == 0 else ("dry", "floor")
        for name in order:
            if name == "floor":
                res.floor.append(run_measured(floor_cmd, None, workdir))
                r = res.floor[-1]
            else:
                r = run_measured(dry_cmd, env, workdir)
                check_summary(f"dry run {i + 1}", r, count=n, status="invoiced", dry_run=True,
                              want_revenue=revenue(expected, all_ids))
                res.dry.append(r)
            print(f"  {name} run {i + 1}: {r.seconds:.2f} s, peak RSS {r.rss_mib:.0f} MiB, CPU {r.cpu_seconds:.1f} s",
                  flush=True)

    shards = max(1, round(n / s))
    small_ids = [o.id for o in loaded.orgs if _shard_owns(o.id, shards)]
    res.small_count = len(small_ids)
    print(f"dry runs of shard 1/{shards}: {len(small_ids):,} organizations ...", flush=True)
    small_cmd = [*dry_cmd, "--shard-index", "0", "--shard-count", str(shards)]
    for i in range(args.repeat):
        r = run_measured(small_cmd, env, workdir)
        check_summary(f"small dry run {i + 1}", r, count=len(small_ids), status="invoiced", dry_run=True,
                      want_revenue=revenue(expected, small_ids))
        res.small.append(r)
        print(f"  small dry run {i + 1}: {r.seconds:.2f} s, peak RSS {r.rss_mib:.0f} MiB", flush=True)

    for i in range(args.real_repeat):
        print(f"real run {i + 1}/{args.real_repeat} ...", flush=True)
        if i:
            truncate_invoices(conn)
            conn.execute("VACUUM (ANALYZE) invoices, invoice_lines, invoice_usage, invoice_periods")
        r = run_measured(real_cmd, env, workdir)
        check_summary(f"real run {i + 1}", r, count=n, status="invoiced", dry_run=False,
                      want_revenue=revenue(expected, all_ids))
        res.real.append(r)
        print(f"  real run {i + 1}: {r.seconds:.2f} s, peak RSS {r.rss_mib:.0f} MiB, CPU {r.cpu_seconds:.1f} s",
              flush=True)
        res.verified = verify_real(conn, url, expected, n)
    print("rerun (everything already invoiced) ...", flush=True)
    res.rerun = run_measured(real_cmd, env, workdir)
    check_summary("rerun", res.rerun, count=n, status="already_invoiced", dry_run=False, want_revenue={})
    print(f"  rerun: {res.rerun.seconds:.2f} s", flush=True)

    print(f"PDF rendering in-process ({min(PDF_RENDERS, n)} documents x 2) ...", flush=True)
    res.pdf = measure_pdf(loaded, url, metrics, min(PDF_RENDERS, n))
    return res


def runs_text(runs: Sequence[Run]) -> str:
    return " ".join(f"{r.seconds:.2f}" for r in runs)


def report(args: argparse.Namespace, machine: dict[str, str], loaded: Loaded, res: Results,
           started_load: str) -> bool:
    n, s = args.organizations, res.small_count
    floor, dry, small, real = (median_run(res.floor), median_run(res.dry), median_run(res.small),
                               median_run(res.real))
    rss_big = max(r.rss_mib for r in res.dry)
    rss_small = max(r.rss_mib for r in res.small)
    rss_ratio = rss_big / rss_small
    real_rate = n / real.seconds
    pdf = res.pdf
    verified = res.verified
    assert pdf is not None and verified is not None and res.rerun is not None
    unicode_orgs = sum(1 for o in loaded.orgs if not o.name.isascii() and not _latin1(o.name))
    ok_rate = real_rate >= TARGET_INVOICES_PER_S
    real_to_dry = real_rate / (n / dry.seconds)
    ok_ratio = real_to_dry >= TARGET_REAL_TO_DRY
    ok_pdf = max(pdf.unicode_ms, pdf.mix_ms()) <= TARGET_PDF_MS
    ok_rss = rss_ratio <= TARGET_RSS_RATIO
    metrics = ", ".join(m.name for m in METRICS[:args.metrics])
    row = "{:44} {:>8} {:>7} {:>7} {:>8} {:>6}   {}"
    pct = lambda r: f"{100 * r.cpu_seconds / r.seconds:.0f}%"
    lines = [
        "",
        f"invoice-monthly benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M}Z",
        f"machine: nproc={machine['nproc']}, CPU {machine['cpu']}, {machine['memory']} RAM, {machine['postgres']} "
        f"({machine['pg_settings']}), Python {machine['python']}, fpdf2 {machine['fpdf']}, Linux {machine['kernel']}",
        f"code: {machine['commit']}; invoice-monthly defaults (concurrency {_concurrency(args)}; no S3, Stripe, "
        f"e-mail or PDF folder); load average: {started_load} at the start, {loadavg()} at the end",
        f"data: {n:,} active organizations ({unicode_orgs:,} with Unicode names), {len(PLANS)} plans "
        f"({', '.join(sorted({p.currency for p in PLANS}))}; per_unit, graduated, volume, package), "
        f"{args.metrics} metrics ({metrics})",
        f"      usage_hourly: {loaded.rows:,} rows ({HOURS} hours of {MONTH_ARG}), {loaded.table_size} with indexes, "
        f"layout {args.layout}; COPY {loaded.copy_seconds:.0f} s, primary key + index "
        f"{loaded.index_seconds:.0f} s, VACUUM ANALYZE {loaded.vacuum_seconds:.0f} s",
        f"repeat={args.repeat} (floor, dry runs; median), real runs={args.real_repeat}; whole processes, wall time; "
        "RSS and CPU from os.wait4",
        "",
        row.format("", "wall s", "inv/s", "ms/inv", "RSS MiB", "CPU", "runs (s)"),
        row.format("(1) floor: psql, month GROUP BY (bare SQL)", f"{floor.seconds:.2f}", "", "", "", "",
                   runs_text(res.floor)),
        row.format(f"(2) dry run, {n:,} organizations", f"{dry.seconds:.2f}", f"{n / dry.seconds:.0f}",
                   f"{1000 * dry.seconds / n:.2f}", f"{rss_big:.0f}", pct(dry), runs_text(res.dry)),
        row.format(f"(3) real run, {n:,} organizations", f"{real.seconds:.2f}", f"{real_rate:.0f}",
                   f"{1000 * real.seconds / n:.2f}", f"{max(r.rss_mib for r in res.real):.0f}", pct(real),
                   runs_text(res.real)),
        row.format("(3b) rerun: all already invoiced", f"{res.rerun.seconds:.2f}", "", "",
                   f"{res.rerun.rss_mib:.0f}", pct(res.rerun), ""),
        row.format(f"(4) dry run, {s:,} organizations", f"{small.seconds:.2f}", f"{s / small.seconds:.0f}",
                   f"{1000 * small.seconds / s:.2f}", f"{rss_small:.0f}", pct(small), runs_text(res.small)),
        "    (CPU: the billing process's user+sys time / wall time; the rest is waiting for PostgreSQL)",
        "",
        f"real / floor = {real.seconds / floor.seconds:6.2f}    dry / floor = {dry.seconds / floor.seconds:6.2f}    "
        f"rerun / real = {res.rerun.seconds / real.seconds:5.3f}",
        f"job's own timer (summary seconds=): dry {dry.summary.get('seconds', '?')} s, "
        f"real {real.summary.get('seconds', '?')} s",
        f"peak RSS, dry run: {rss_small:.0f} MiB at {s:,} organizations, {rss_big:.0f} MiB at {n:,}: "
        f"ratio {rss_ratio:.2f}",
        "",
        f"PDF rendering in-process (median of {min(PDF_RENDERS, n)} invoices each, {pdf.lines_avg:.1f} lines on average):",
        f"  Latin-1 bill-to (core fonts)        {pdf.latin_ms:6.2f} ms   {pdf.latin_kib:5.1f} KiB",
        f"  Unicode bill-to (DejaVu subset)     {pdf.unicode_ms:6.2f} ms   {pdf.unicode_kib:5.1f} KiB",
        f"  mix at {100 // UNICODE_SHARE}% Unicode                  {pdf.mix_ms():6.2f} ms",
        f"  dry run overall (rating + PDF + SQL) {1000 * dry.seconds / n:5.2f} ms/invoice",
        "",
        f"verified: {verified.invoices:,} issued invoices INV-{MONTH_ARG}-000001..{verified.invoices:06d}, gapless, "
        f"each with a pdf_sha256 (avg {verified.pdf_kib_avg:.1f} KiB); {verified.lines:,} lines "
        f"({verified.topped_up:,} minimum top-ups);",
        "          every total = independent re-rating of the generator's sums; dry-run revenue likewise; "
        f"{verified.pdf_checked} PDFs re-rendered match their sha256;",
        "          revenue " + ", ".join(f"{c} {v:,}" for c, v in sorted(verified.revenue.items())) +
        f"; rerun: already_invoiced={res.rerun.summary.get('already_invoiced')}",
        "",
        f"target: real run >= {TARGET_INVOICES_PER_S:.0f} invoices/s        {real_rate:8.1f}   {_pf(ok_rate)}",
        f"target: real run >= {TARGET_REAL_TO_DRY} x dry run's rate       {real_to_dry:8.2f}   {_pf(ok_ratio)}",
        f"target: PDF <= {TARGET_PDF_MS:.0f} ms/invoice (Unicode, mix)  {pdf.unicode_ms:5.2f}, {pdf.mix_ms():.2f}   "
        f"{_pf(ok_pdf)}",
        f"target: peak RSS {n:,} / {s:,} <= {TARGET_RSS_RATIO}        {rss_ratio:8.2f}   {_pf(ok_rss)}",
    ]
    print("\n".join(lines), flush=True)
    return ok_rate and ok_ratio and ok_pdf and ok_rss


def _concurrency(args: argparse.Namespace) -> str:
    from billing_cli.config import load_settings

    return str(getattr(load_settings(billing_env(scratch_url(args.database_url, args.database_name))), "concurrency", "n/a"))


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
        return True
    except UnicodeEncodeError:
        return False


def _pf(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    url = scratch_url(args.database_url, args.database_name)
    started_load = loadavg()
    print(f"scratch database {make_url(url).render_as_string(hide_password=True)}", flush=True)
    recreate_database(args.database_url, args.database_name)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-invoice-") as tmp:
            workdir = Path(tmp)
            common.run_checked([common.billing_executable(), "db", "upgrade", "--plain"], env=billing_env(url))
            with psycopg.connect(url, autocommit=True) as conn:  # transactions only where needed
                machine = machine_info(conn)
                print(f"loading {args.organizations:,} organizations x {args.metrics} metrics x {HOURS} hours "
                      f"= {args.organizations * args.metrics * HOURS:,} usage_hourly rows ...", flush=True)
                loaded = load_data(conn, url, args, workdir)
                print(f"loaded: COPY {loaded.copy_seconds:.0f} s, primary key + index {loaded.index_seconds:.0f} s, "
                      f"VACUUM ANALYZE {loaded.vacuum_seconds:.0f} s; usage_hourly {loaded.table_size}", flush=True)
                check_sums(conn, loaded)
                res = measure(conn, url, args, loaded, workdir)
        met = report(args, machine, loaded, res, started_load)
    except BenchError as exc:
        print(f"\nERROR: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep_database:
            recreate_database(args.database_url, args.database_name, drop_only=True)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
