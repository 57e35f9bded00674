"""Benchmark of `billing invoice-monthly` with all three deliveries on (S3, Stripe, e-mail).

The peers run in this process, on threads, each adding the same latency to every request it
answers (--latency-ms, default 20):

  S3      moto's ThreadedMotoServer (tests/peers/s3_server.py); its WSGI app is wrapped here so
          that each HTTP request sleeps first (one PUT per invoice; presigned links are local);
  Stripe  tests/peers/stripe_server.py's FakeStripeServer(latency=...), enforcing
          --peer-rate-limit requests per second (default 400) with 429 answers; the job limits
          itself with STRIPE_REQUESTS_PER_SECOND=--stripe-rps (default 350). The peer's admission
          times are recorded here: mean rate and the busiest 1-second window it saw;
  SMTP    tests/peers/mail_server.py's MailServer (aiosmtpd, AUTH), subclassed here so that each
          message sleeps in DATA (one SMTP conversation per invoice).

Data, loaded once into a template database: two price plans (USD, EUR; three metrics each, no
base fee: three invoice lines, so about ten Stripe requests per organization), N active
organizations (default 1,000) with addresses org-NNNN@example.com, and usage_hourly for January
2024 (one row per organization, metric and day at 12:00 UTC; no usage_events, so no hour is stale
and the job re-aggregates nothing).

Every measurement starts from a fresh state: the scratch database re-created from the template,
a new S3 bucket, Stripe reset(), the mailbox emptied. It times, as a whole process (wall time,
and its CPU from os.wait4):

    billing invoice-monthly --month 2024-01 --plain [--concurrency C]

for each C of --concurrency-list (default 1,8,16). The entry equal to the CLI's own default
(INVOICE_CONCURRENCY, 8) runs without the flag. Concurrency 1 runs once; the others --repeat
times (default 3, median). Before that, an untimed warm-up at concurrency 1 on 50 organizations
estimates the concurrency-1 run: if it would take more than ~6 minutes, concurrency 1 is timed
on --baseline-sample organizations (the others set inactive) and extrapolated linearly (the output
says so); --baseline-sample 0 always runs all of them.

After every run: exit code 0; N invoices issued, each with stripe_status 'sent', s3_uploaded_at,
emailed_at and a PDF hash; the peers hold exactly N S3 objects (the invoices' keys), N Stripe
invoices (open, sent once, one customer each) and N e-mails (one per organization address); the
Stripe peer answered no 429. Otherwise the script stops with an error.

Every concurrency above 1 is also run with known customers: the database and the peer restored
with the customers a new-customer run created (organizations.stripe_customer_id, stripe_customers,
and the peer's customer objects), so the job needs no customer call. Per concurrency and kind of
customer, the report prints the Stripe calls per invoice counted by the peer (by endpoint), and the
rate the peer admitted (admitted requests / (last - first of them)) as a percentage of the peer's
limit and of the client's STRIPE_REQUESTS_PER_SECOND, with the 429 count.

Targets (--check): the default concurrency is >= 8x faster than concurrency 1 (only when 1 is in
--concurrency-list; without it, e.g. `--concurrency-list 16`, the baseline and the speed-up are
skipped and the report says so); Stripe stays under the peer's limit (busiest 1-second window) with
zero 429 answers; Stripe calls per invoice <= 3 for a known customer, <= 4 for a new one; the
admitted Stripe rate >= 90% of the limit (the lower of the two) over the run, new and known
customers alike, at some measured concurrency above 1. The speed-up of every measured concurrency is
printed, so that the one reaching 8x shows. To measure the rate against Stripe's live limit:
`--peer-rate-limit 100 --stripe-rps 100 --concurrency-list 16`.

    /tmp/venv/bin/python bench/deliver.py [--organizations N] [--latency-ms L]
                                          [--concurrency-list 1,8,16] [--repeat R]
                                          [--peer-rate-limit P] [--stripe-rps S]
                                          [--baseline-sample K] [--check]

The scratch databases (billing_bench_deliver, and billing_bench_deliver_template holding the
loaded data) are created on the server named by --database-url (default: BENCH_DATABASE_URL,
else postgresql://root@127.0.0.1:5432/test) and dropped at the end.
Exit status: 0, or 1 with --check when a target is missed; 2 on any error or mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import copy
import hashlib
import logging
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the peers live in tests/peers

import common  # bench/common.py: machine info, scratch databases

from billing_cli.config import Settings
from billing_cli.delivery.payments import RateLimiter

MONTH_ARG = "2024-01"
MONTH_START = datetime(2024, 1, 1, tzinfo=UTC)
DAYS = 31
SCRATCH_DB = "billing_bench_deliver"
TEMPLATE_DB = "billing_bench_deliver_template"
DEFAULT_ADMIN_URL = "postgresql://root@127.0.0.1:5432/test"
DEFAULT_CONCURRENCY = Settings.__dataclass_fields__["concurrency"].default  # the CLI's own default (8)
STRIPE_KEY = "sk_test_BENCHdeliver0001"
SMTP_FROM = "Billing <billing@example.cloud>"
S3_REGION = "eu-west-1"
PROBE_ORGS = 50             # the untimed warm-up at concurrency 1, also the estimate of the full run
BASELINE_FULL_BUDGET = 360.0  # seconds: above this (estimated), concurrency 1 is sampled
BASELINE_SAMPLE = 200
SPEEDUP_TARGET = 8.0

PLANS_TOML = """\
# bench/deliver.py: three metrics, three invoice lines per organization.

[[plan]]
id = "bench-usd"
name = "Bench USD"
currency = "USD"

  [[plan.price]]
  metric = "api_calls"
  description = "API calls"
  model = "per_unit"
  unit_price = 0.0004

  [[plan.price]]
  metric = "storage_gb"
  description = "Storage (GB-months, per started 10)"
  model = "package"
  unit_price = 2.50
  package_size = 10

  [[plan.price]]
  metric = "compute_hours"
  description = "Compute hours"
  model = "volume"
  tiers = [
    { up_to = 1000, unit_price = 0.05 },
    { unit_price = 0.04 },
  ]

[[plan]]
id = "bench-eur"
name = "Bench EUR"
currency = "EUR"

  [[plan.price]]
  metric = "api_calls"
  description = "API-Aufrufe"
  model = "per_unit"
  unit_price = 0.0005

  [[plan.price]]
  metric = "storage_gb"
  description = "Speicher (GB)"
  model = "per_unit"
  unit_price = 0.02

  [[plan.price]]
  metric = "compute_hours"
  description = "Rechenstunden"
  model = "per_unit"
  unit_price = 0.045
"""
METRICS = ("api_calls", "storage_gb", "compute_hours")


BenchError = common.BenchError


# --- arguments and machine -------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organizations", type=int, default=1_000, help="active organizations (default 1,000)")
    parser.add_argument("--latency-ms", type=float, default=20.0,
                        help="latency each peer adds to every request it answers (default 20 ms)")
    parser.add_argument("--concurrency-list", default=f"1,{DEFAULT_CONCURRENCY},16", metavar="C,C,...",
                        help=f"concurrencies to time (default 1,{DEFAULT_CONCURRENCY},16); with 1 in the list, "
                             f"the CLI default ({DEFAULT_CONCURRENCY}) is added and the speed-up over 1 measured; "
                             "without 1 (e.g. 16), only those concurrencies are run, for the Stripe calls and "
                             "rate, and the concurrency-1 baseline and speed-up are skipped")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each concurrency above 1; the median is reported (default 3). "
                             "Concurrency 1 runs once")
    parser.add_argument("--peer-rate-limit", type=int, default=400, metavar="P",
                        help="requests per second the Stripe peer accepts before answering 429 (default 400)")
    parser.add_argument("--stripe-rps", type=int, default=350, metavar="S",
                        help="the job's STRIPE_REQUESTS_PER_SECOND, its client-side limit (default 350)")
    parser.add_argument("--baseline-sample", type=int, default=None, metavar="K",
                        help="time concurrency 1 on K organizations and extrapolate; 0 = always all. "
                             f"Default: all if estimated under ~{BASELINE_FULL_BUDGET / 60:.0f} minutes, "
                             f"else {BASELINE_SAMPLE}")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_ADMIN_URL),
                        help="admin URL of the server where the scratch databases are created "
                             "(default: BENCH_DATABASE_URL, else %(default)s)")
    parser.add_argument("--seed", type=int, default=20240131, help="random seed of the synthetic usage")
    parser.add_argument("--keep-database", action="store_true",
                        help="do not drop the scratch databases (the last run's state stays)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    try:
        levels = {int(part) for part in args.concurrency_list.split(",") if part.strip()}
    except ValueError:
        parser.error("--concurrency-list must be comma-separated integers")
    if not levels or any(not 1 <= c <= 256 for c in levels):
        parser.error("every concurrency must be between 1 and 256")
    # With 1 in the list (as by default): the speed-up measurement, 1 and the CLI default always
    # included. Without it: only the concurrencies given, for their Stripe figures; no baseline.
    args.baseline = 1 in levels
    args.levels = sorted(levels | {1, DEFAULT_CONCURRENCY}) if args.baseline else sorted(levels)
    if args.organizations < 1 or args.repeat < 1 or args.latency_ms < 0:
        parser.error("--organizations and --repeat must be positive, --latency-ms not negative")
    if not 1 <= args.stripe_rps <= 10_000 or args.peer_rate_limit < 1:
        parser.error("--stripe-rps must be between 1 and 10,000 and --peer-rate-limit positive")
    if args.baseline_sample is not None and not 0 <= args.baseline_sample <= args.organizations:
        parser.error("--baseline-sample must be between 0 and --organizations")
    return args


def slow_moto(latency: float) -> None:
    """Make every S3Server started from now on sleep `latency` s before answering each request:
    ThreadedMotoServer builds its WSGI app from this module-level name, so it is wrapped here."""
    from moto.moto_server import threaded_moto_server

    original = threaded_moto_server.DomainDispatcherApplication

    def application(create_backend_app):
        app = original(create_backend_app)

        def delayed(environ, start_response):
            if latency > 0:
                time.sleep(latency)
            return app(environ, start_response)

        return delayed

    threaded_moto_server.DomainDispatcherApplication = application


def make_peers(args: argparse.Namespace):
    from tests.peers.mail_server import MailServer
    from tests.peers.s3_server import S3Server
    from tests.peers.stripe_server import FakeStripeServer

    latency = args.latency_ms / 1000

    class TimedStripe(FakeStripeServer):
        """The fake, plus the time of every request reaching its rate limiter (under its lock):
        `arrived_at` every one, `admitted_at` those it let through (not answered 429)."""

        def __init__(self, **kwargs) -> None:
            self.arrived_at: list[float] = []
            self.admitted_at: list[float] = []
            super().__init__(**kwargs)

        def _admit(self) -> None:
            now = time.monotonic()
            self.arrived_at.append(now)
            super()._admit()  # raises the 429
            self.admitted_at.append(now)

        def reset(self, customers: dict | None = None) -> None:
            """A fresh account; with `customers` (id -> customer, as `customers` gave them), an
            account that already holds those customers, as Stripe does for known organizations."""
            with self._lock:
                super().reset()
                self.arrived_at, self.admitted_at = [], []
                account = self._account
                for customer_id, customer in (customers or {}).items():
                    account.customers[customer_id] = copy.deepcopy(customer)
                    account._order[customer_id] = len(account._order)
                    number = int(customer_id.rsplit("_", 1)[1])
                    account._counters["cus"] = max(account._counters.get("cus", 0), number)

    from dataclasses import dataclass as _dataclass

    @_dataclass
    class SlowMailServer(MailServer):
        latency: float = 0.0

        async def handle_DATA(self, server, session, envelope) -> str:
            if self.latency > 0:
                await asyncio.sleep(self.latency)  # concurrent sessions wait side by side
            return await super().handle_DATA(server, session, envelope)

    # Quiet peers: werkzeug logs every request, aiosmtpd warns about AUTH without TLS (on purpose).
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="aiosmtpd")
    slow_moto(latency)
    s3 = S3Server().start()
    stripe_peer = TimedStripe(latency=latency, rate_limit_per_second=args.peer_rate_limit,
                              api_keys=[STRIPE_KEY]).start()
    mail = SlowMailServer(latency=latency).start()
    return s3, stripe_peer, mail


# --- scratch databases and data --------------------------------------------------------------

def db_url(admin_url: str, name: str) -> str:
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_databases(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in (SCRATCH_DB, TEMPLATE_DB):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def base_env(url: str) -> dict[str, str]:
    """The environment of the `billing` processes: this database, nothing inherited that could
    change the deliveries or the concurrency, no `.env` or DRY_RUN surprise."""
    prefixes = ("INVOICE_", "STRIPE_", "DELIVERY_", "NOTIFY_", "AWS_", "SHARD_", "PUSHGATEWAY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.pop("JOB_COMPLETION_INDEX", None)
    env.update(DATABASE_URL=url, DRY_RUN="false", BILLING_ENV_FILE=os.devnull)
    return env


def org_ids(count: int) -> list[str]:
    width = max(4, len(str(count)))
    return [f"org-{i:0{width}d}" for i in range(1, count + 1)]


def load_template(args: argparse.Namespace, workdir: Path) -> tuple[int, float]:
    """The template database: schema, plans, organizations, a month of usage. (rows, seconds)"""
    started = time.perf_counter()
    url = db_url(args.database_url, TEMPLATE_DB)
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    billing, env = common.billing_executable(), base_env(url)
    common.run_checked([billing, "db", "upgrade", "--plain"], env)
    plans = workdir / "plans.toml"
    plans.write_text(PLANS_TOML)
    common.run_checked([billing, "plans", "apply", str(plans), "--plain"], env)
    rng = random.Random(args.seed)
    orgs = org_ids(args.organizations)
    rows = 0
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction(), conn.cursor() as cur:
            # created_at: they existed before the billed month, so its base fee is due.
            with cur.copy("COPY organizations (id, name, email, status, currency, price_plan_id, created_at) "
                          "FROM STDIN") as copy:
                for i, org in enumerate(orgs):
                    currency, plan = ("EUR", "bench-eur") if i % 3 == 2 else ("USD", "bench-usd")
                    copy.write_row((org, f"Organization {org[4:]}", f"{org}@example.com", "active",
                                    currency, plan, "2023-01-01T00:00:00Z"))
            with cur.copy("COPY usage_hourly (organization_id, metric, hour_start, quantity, event_count) "
                          "FROM STDIN") as copy:
                for org in orgs:
                    for metric in METRICS:
                        for day in range(DAYS):
                            hour = MONTH_START + timedelta(days=day, hours=12)
                            cents = rng.randrange(100, 1_000_000)
                            copy.write(f"{org}\t{metric}\t{hour:%Y-%m-%d %H}:00:00+00\t"
                                       f"{cents // 100}.{cents % 100:02d}\t1\n")
                            rows += 1
        conn.execute("VACUUM (ANALYZE)")
    return rows, time.perf_counter() - started


def fresh_database(args: argparse.Namespace, active: Sequence[str] | None) -> str:
    """billing_bench_deliver, cloned from the template; only `active` organizations active if given."""
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(SCRATCH_DB),
                                                                      sql.Identifier(TEMPLATE_DB)))
    url = db_url(args.database_url, SCRATCH_DB)
    if active is not None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE organizations SET status = 'inactive' WHERE NOT (id = ANY(%s))", [list(active)])
            conn.execute("VACUUM (ANALYZE) organizations")
    return url


@dataclass
class KnownCustomers:
    """The Stripe customers a finished run left: our stored ids (organizations.stripe_customer_id and
    stripe_customers, as the job records them) and the peer's customer objects. A known-customer run
    starts from the template with these put back on both sides, so the job finds every organization's
    customer stored, unchanged, and present at Stripe: no customer call is needed."""

    rows: list[tuple[str, str, str, str]]  # organization, customer id, name, e-mail
    peer: dict


def capture_customers(url: str, stripe_peer) -> KnownCustomers:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT organization_id, customer_id, name, email FROM stripe_customers "
                            "ORDER BY organization_id").fetchall()
    return KnownCustomers([tuple(r) for r in rows], stripe_peer.customers)


def restore_customers(url: str, known: KnownCustomers) -> None:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction(), conn.cursor() as cur:
        cur.executemany("UPDATE organizations SET stripe_customer_id = %s WHERE id = %s",
                        [(customer, org) for org, customer, _, _ in known.rows])
        with cur.copy("COPY stripe_customers (organization_id, customer_id, name, email) FROM STDIN") as copy_in:
            for row in known.rows:
                copy_in.write_row(row)


def endpoint(method: str, path: str) -> str:
    """`POST /v1/invoices/{id}/send`: a request's endpoint, its object ids replaced."""
    return f"{method} {re.sub(r'/(in|cus|ii|cn)_[A-Za-z0-9]+', '/{id}', path)}"


# --- one measured run ------------------------------------------------------------------------

@dataclass
class Run:
    concurrency: int
    organizations: int
    seconds: float          # the billing process, wall time
    cpu: float              # the billing process, user + system CPU seconds
    peers_cpu: float        # this process (the peers' threads) during the run
    stripe_requests: int
    stripe_first_last: float  # seconds between the first and the last Stripe request the peer saw
    stripe_peak_window: int   # most Stripe requests in any 1-second window, as the peer saw them
    rejected_429: int
    s3_objects: int
    emails: int
    summary: str
    known: bool = False       # the customers existed already (stored ids, and at Stripe)
    endpoints: Counter = None  # type: ignore[assignment]  # requests per endpoint, as the peer recorded them
    stripe_admitted: int = 0  # requests the peer's limiter let through (not 429)
    admitted_first_last: float = 0.0  # seconds between the first and the last of those

    @property
    def customers(self) -> str:
        return "known" if self.known else "new"

    @property
    def calls_per_invoice(self) -> float:
        return self.stripe_requests / self.organizations

    @property
    def customer_calls_per_invoice(self) -> float:
        return sum(n for e, n in self.endpoints.items() if "/v1/customers" in e) / self.organizations

    @property
    def stripe_rps_admitted(self) -> float:
        """The rate the peer admitted over the run: admitted requests / (last - first)."""
        return self.stripe_admitted / self.admitted_first_last if self.admitted_first_last > 0 else 0.0

    @property
    def orgs_per_second(self) -> float:
        return self.organizations / self.seconds

    @property
    def stripe_rps_process(self) -> float:
        return self.stripe_requests / self.seconds

    @property
    def stripe_rps_peer(self) -> float:
        return self.stripe_requests / self.stripe_first_last if self.stripe_first_last > 0 else 0.0


def peak_window(times: Sequence[float], width: float = 1.0) -> int:
    """The most timestamps in any half-open window (t - width, t]."""
    ordered = sorted(times)
    best = 0
    for i, t in enumerate(ordered):
        best = max(best, i + 1 - bisect.bisect_right(ordered, t - width))
    return best


def billing_cmd(concurrency: int) -> list[str]:
    cmd = [common.billing_executable(), "invoice-monthly", "--month", MONTH_ARG, "--plain"]
    if concurrency != DEFAULT_CONCURRENCY:  # the default runs as configured out of the box
        cmd += ["--concurrency", str(concurrency)]
    return cmd


def job_env(args: argparse.Namespace, url: str, bucket: str, peers) -> dict[str, str]:
    """The job's environment: all three deliveries on, pointed at the peers."""
    s3, stripe_peer, mail = peers
    env = base_env(url)
    env.update({
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true",
        "INVOICE_ENABLE_S3": "true", "INVOICE_S3_BUCKET": bucket, "INVOICE_S3_REGION": S3_REGION,
        "INVOICE_S3_ENDPOINT_URL": s3.url,
        "INVOICE_ENABLE_STRIPE": "true", "STRIPE_API_KEY": STRIPE_KEY, "STRIPE_API_BASE": stripe_peer.base_url,
        "STRIPE_REQUESTS_PER_SECOND": str(args.stripe_rps),
        "INVOICE_ENABLE_EMAIL": "true", "INVOICE_SMTP_HOST": "127.0.0.1", "INVOICE_SMTP_PORT": str(mail.port),
        "INVOICE_SMTP_SECURITY": "none", "INVOICE_SMTP_USERNAME": mail.username,
        "INVOICE_SMTP_PASSWORD": mail.password, "INVOICE_SMTP_FROM": SMTP_FROM,
        # A seller of its own: with a delivery on, the job refuses the placeholder one (exit 3).
        "INVOICE_SELLER_NAME": "Bench Metering GmbH", "INVOICE_SELLER_ADDRESS": "Benchstrasse 1|10115 Berlin|Germany",
    })
    return env


def job_settings(args: argparse.Namespace, peers) -> str:
    """The settings that shape the job's throughput, as the job loads them from that environment."""
    from billing_cli.config import load_settings

    settings = load_settings(job_env(args, db_url(args.database_url, SCRATCH_DB), "bench", peers))
    names = {"concurrency": "INVOICE_CONCURRENCY", "batch_size": "INVOICE_BATCH_SIZE",
             "render_processes": "PDF_RENDER_PROCESSES", "delivery_max_attempts": "DELIVERY_MAX_ATTEMPTS",
             "stripe_requests_per_second": "STRIPE_REQUESTS_PER_SECOND"}
    return ", ".join(f"{env}={getattr(settings, attr)}" for attr, env in names.items() if hasattr(settings, attr))


def code_state() -> str:
    """HEAD, and a fingerprint of uncommitted changes under billing_cli/ (the code the job runs)."""
    def git(*argv: str) -> str:
        proc = subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    diff = git("diff", "HEAD", "--", "billing_cli")
    if not diff:
        return head
    files = git("diff", "HEAD", "--name-only", "--", "billing_cli").split()
    return f"{head} + uncommitted changes to {', '.join(files)} (diff {hashlib.sha1(diff.encode()).hexdigest()[:8]})"


def measure(args: argparse.Namespace, peers, concurrency: int, active: Sequence[str] | None,
            label: str, workdir: Path, number: int, known: KnownCustomers | None = None) -> Run:
    """One run from a fresh state; with `known`, the customers exist already (ours and Stripe's)."""
    s3, stripe_peer, mail = peers
    expected = list(active) if active is not None else org_ids(args.organizations)
    url = fresh_database(args, active)
    if known is not None:
        restore_customers(url, known)
    bucket = f"bench-deliver-{os.getpid()}-{number}"
    s3.client().create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": S3_REGION})
    stripe_peer.reset(customers=known.peer if known is not None else None)
    mail.received.clear()
    mail.failures.clear()
    env = job_env(args, url, bucket, peers)
    cmd = billing_cmd(concurrency)
    out_path, err_path = workdir / f"run{number}.out", workdir / f"run{number}.err"
    own_before = resource.getrusage(resource.RUSAGE_SELF)
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    proc.returncode = os.waitstatus_to_exitcode(status)
    output = out_path.read_text(errors="replace")
    if proc.returncode != 0:
        tail = output[-3000:] + err_path.read_text(errors="replace")[-2000:]
        raise BenchError(f"{label}: {' '.join(cmd)} exited {proc.returncode}\n{tail}")
    summary = next((line for line in output.splitlines() if line.startswith("summary ")), "")

    stamps, admitted = list(stripe_peer.arrived_at), list(stripe_peer.admitted_at)
    requests = stripe_peer.requests
    run = Run(
        concurrency=concurrency, organizations=len(expected), seconds=seconds,
        cpu=usage.ru_utime + usage.ru_stime,
        peers_cpu=(own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime),
        stripe_requests=len(requests),
        stripe_first_last=(max(stamps) - min(stamps)) if len(stamps) > 1 else 0.0,
        stripe_peak_window=peak_window(stamps), rejected_429=stripe_peer.rejected_429,
        s3_objects=0, emails=len(mail.received), summary=summary, known=known is not None,
        endpoints=Counter(endpoint(r.method, r.path) for r in requests), stripe_admitted=len(admitted),
        admitted_first_last=(max(admitted) - min(admitted)) if len(admitted) > 1 else 0.0)
    verify(url, peers, bucket, expected, run, label)
    return run


def verify(url: str, peers, bucket: str, expected: Sequence[str], run: Run, label: str) -> None:
    s3, stripe_peer, mail = peers
    n = len(expected)
    problems: list[str] = []
    with psycopg.connect(url) as conn:
        counts = conn.execute("""
            SELECT count(*), count(*) FILTER (WHERE status = 'issued'),
                   count(*) FILTER (WHERE status = 'issued' AND stripe_status = 'sent'),
                   count(s3_uploaded_at), count(emailed_at), count(pdf_sha256)
            FROM invoices""").fetchone()
        rows = conn.execute("SELECT organization_id, s3_key, stripe_invoice_id FROM invoices "
                            "WHERE status = 'issued'").fetchall()
    names = ("invoices", "issued", "stripe_status 'sent'", "s3_uploaded_at set", "emailed_at set", "pdf_sha256 set")
    for name, count in zip(names, counts, strict=True):
        if count != n:
            problems.append(f"{name}: {count}, expected {n}")
    if sorted(r[0] for r in rows) != sorted(expected):
        problems.append("the issued invoices are not exactly one per expected organization")

    keys: list[str] = []
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    run.s3_objects = len(keys)
    if sorted(keys) != sorted(r[1] for r in rows):
        problems.append(f"S3 holds {len(keys)} objects, not the {n} invoices' keys")

    invoices, sent = stripe_peer.invoices, stripe_peer.sent_invoices
    statuses = Counter(inv["status"] for inv in invoices.values())
    if len(invoices) != n or statuses != Counter({"open": n}):
        problems.append(f"Stripe holds {len(invoices)} invoices {dict(statuses)}, expected {n} open")
    if set(invoices) != {r[2] for r in rows}:
        problems.append("the Stripe invoices are not the ones recorded on our invoices")
    if len(sent) != n or any(len(times) != 1 for times in sent.values()):
        problems.append(f"Stripe sent {len(sent)} invoices ({sum(map(len, sent.values()))} sends), expected {n} once")
    if len(stripe_peer.customers) != n:
        problems.append(f"Stripe holds {len(stripe_peer.customers)} customers, expected {n}")
    created = sum(1 for r in stripe_peer.requests
                  if (r.method, r.path, r.status, r.replayed) == ("POST", "/v1/customers", 200, False))
    if created != (0 if run.known else n):
        problems.append(f"{created} Stripe customers created, expected {0 if run.known else n} "
                        f"({'known' if run.known else 'new'} customers)")
    if run.rejected_429:
        problems.append(f"the Stripe peer answered 429 {run.rejected_429} times")
    failed = [r for r in stripe_peer.requests if r.status != 200]
    if failed:
        problems.append(f"{len(failed)} Stripe requests were not answered 200: "
                        f"{Counter(r.status for r in failed)}")

    recipients = sorted(rcpt for item in mail.received for rcpt in item.recipients)
    if recipients != sorted(f"{org}@example.com" for org in expected):
        problems.append(f"{len(mail.received)} e-mails to {len(set(recipients))} addresses, "
                        f"expected one to each of the {n} organizations")
    if problems:
        raise BenchError(f"{label}: " + "; ".join(problems))


# --- orchestration and report ----------------------------------------------------------------

@dataclass
class Baseline:
    run: Run
    total_orgs: int

    @property
    def sampled(self) -> bool:
        return self.run.organizations < self.total_orgs

    @property
    def factor(self) -> float:
        return self.total_orgs / self.run.organizations

    @property
    def seconds(self) -> float:
        """The concurrency-1 time for every organization (extrapolated linearly when sampled)."""
        return self.run.seconds * self.factor


def evenly_spaced(orgs: Sequence[str], count: int) -> list[str]:
    step = len(orgs) / count
    return [orgs[int(i * step)] for i in range(count)]


def describe(run: Run, label: str) -> str:
    return (f"  {label}, {run.customers} customers: {run.seconds:7.2f} s, {run.orgs_per_second:6.2f} orgs/s, "
            f"Stripe {run.stripe_requests:,} requests ({run.calls_per_invoice:.2f}/invoice), "
            f"{run.stripe_rps_process:5.1f} req/s, admitted {run.stripe_rps_admitted:5.1f} req/s over "
            f"{run.admitted_first_last:.1f} s, peak 1-s window {run.stripe_peak_window}, "
            f"429s {run.rejected_429}; billing CPU {run.cpu:.1f} s, peers CPU {run.peers_cpu:.1f} s; "
            f"load {common.loadavg()}")


def report(args: argparse.Namespace, machine: dict[str, str], loaded: tuple[int, float], start_load: str,
           baseline: Baseline | None, runs: dict[int, list[Run]], known_runs: dict[int, list[Run]], settings: str,
           code: tuple[str, str]) -> bool:
    n = args.organizations
    new_runs = [r for rs in runs.values() for r in rs if r.organizations == n]
    all_runs = [r for rs in (*runs.values(), *known_runs.values()) for r in rs]
    per_org = statistics.median(r.calls_per_invoice for r in new_runs or all_runs)
    ceiling = args.stripe_rps / RateLimiter.WINDOW / per_org
    limit = min(args.stripe_rps, args.peer_rate_limit)
    lines = [
        "",
        f"invoice-monthly deliveries benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M}Z",
        f"machine: nproc={machine['nproc']}, CPU {machine['cpu']}, {machine['memory']} RAM, "
        f"{machine['postgres']}, Python {machine['python']}, Linux {machine['kernel']}",
        f"load average: {start_load} at the start, {common.loadavg()} at the end",
        f"code: {code[0]}" + ("" if code[0] == code[1] else f"\n  WARNING: the code changed during the benchmark; "
                                                         f"at the end: {code[1]}"),
        f"job settings: {settings}",
        f"data: {n:,} active organizations (USD 2/3, EUR 1/3), 3 metrics, usage_hourly {loaded[0]:,} rows "
        f"(January 2024, daily), 3 invoice lines each; loaded in {loaded[1]:.0f} s",
        f"peers (threads of this process): S3 moto, Stripe fake, SMTP aiosmtpd; each adds "
        f"{args.latency_ms:g} ms per request",
        f"Stripe: peer limit {args.peer_rate_limit} req/s (429 above), client STRIPE_REQUESTS_PER_SECOND="
        f"{args.stripe_rps} (at most that many calls in flight or answered within the last {RateLimiter.WINDOW:g} s, "
        f"so at most ~{args.stripe_rps:g}/(1 + a call's duration) per second); {per_org:.1f} requests per "
        f"organization (new customers), so the client-side limit caps the job below ~{ceiling:.0f} orgs/s",
        f"command: billing invoice-monthly --month {MONTH_ARG} --plain [--concurrency C]; "
        f"C={DEFAULT_CONCURRENCY} is the default (no flag)",
        "runs: " + ("concurrency 1 once (new customers), " if baseline is not None else "")
        + f"each of {', '.join(str(c) for c in args.levels if c != 1)} repeat={args.repeat} times with new customers "
          "(none stored, none at Stripe) and as many with known customers (ids stored, customers at Stripe); "
          "medians; whole process, wall time",
        "",
    ]
    ok_speed = True
    if baseline is None:
        lines += ["speed-up: SKIPPED (--concurrency-list without 1: concurrency 1 not measured, only the Stripe "
                  "calls and rate below)", ""]
    else:
        lines += [
            f"{'concurrency':>11} {'seconds':>8} {'orgs/s':>7} {'Stripe req/s':>12} {'peer req/s':>10} "
            f"{'peak 1s':>7} {'429s':>5} {'speed-up':>8} {'CPU billing':>11} {'CPU peers':>9}   runs (s)",
        ]
        medians: dict[int, float] = {}
        for c in sorted(runs):
            rs = runs[c]
            if c == 1:
                seconds = baseline.seconds
                run_text = f"{baseline.run.seconds:.2f}" + (f" x {baseline.factor:g}" if baseline.sampled else "")
            else:
                seconds = statistics.median(r.seconds for r in rs)
                run_text = " ".join(f"{r.seconds:.2f}" for r in rs)
            medians[c] = seconds
            mid = rs[0] if c == 1 else min(rs, key=lambda r: abs(r.seconds - seconds))
            label = f"{c}{' (def.)' if c == DEFAULT_CONCURRENCY else ''}{'*' if c == 1 and baseline.sampled else ''}"
            lines.append(
                f"{label:>11} {seconds:8.2f} {n / seconds:7.2f} {mid.stripe_rps_process:12.1f} "
                f"{mid.stripe_rps_peer:10.1f} {max(r.stripe_peak_window for r in rs):7d} "
                f"{sum(r.rejected_429 for r in rs):5d} {medians[1] / seconds:7.2f}x "
                f"{statistics.median(r.cpu for r in rs):10.1f}s {statistics.median(r.peers_cpu for r in rs):8.1f}s"
                f"   {run_text}")
        if baseline.sampled:
            lines.append(f"    * EXTRAPOLATED: concurrency 1 timed on {baseline.run.organizations:,} of {n:,} "
                         f"organizations (evenly spaced) x {baseline.factor:g}; its Stripe, peak and CPU columns "
                         f"are that sample's")
        lines += [
            "    new customers only. Stripe req/s = the peer's requests / the process's wall time; peer req/s = "
            "requests / (last - first request); peak 1s = most requests the peer saw in any 1-second window (max "
            "over runs); 429s = sum over runs;",
            "    CPU billing = the job's user + system CPU (with any render processes it reaped); CPU peers = this "
            "process's, i.e. the three peers' (medians)",
            "",
        ]
        speedup = medians[1] / medians[DEFAULT_CONCURRENCY]
        ok_speed = speedup >= SPEEDUP_TARGET
        reaching = [c for c in sorted(runs) if medians[1] / medians[c] >= SPEEDUP_TARGET]
        base = baseline.run
        per_org_ms = base.seconds / base.organizations * 1000
        floor_ms = (base.calls_per_invoice + 2) * args.latency_ms
        cpu_ms = base.cpu / base.organizations * 1000
        default_run = sorted(runs[DEFAULT_CONCURRENCY], key=lambda r: r.seconds)[len(runs[DEFAULT_CONCURRENCY]) // 2]
        default_cpu_ms = default_run.cpu / default_run.organizations * 1000
        stripe_cap = args.stripe_rps / RateLimiter.WINDOW / default_run.calls_per_invoice
        lines += [
            f"concurrency 1: {per_org_ms:.0f} ms per organization, of which {floor_ms:.0f} ms is peer latency "
            f"({base.calls_per_invoice:.1f} Stripe + 1 S3 + 1 SMTP requests x {args.latency_ms:g} ms)"
            f" and {cpu_ms:.0f} ms is the job's CPU (start-up and PDF rendering processes included)",
            f"ceilings at concurrency {DEFAULT_CONCURRENCY}: the client-side Stripe limit ({args.stripe_rps} per "
            f"{RateLimiter.WINDOW:g} s plus each call's duration) allows below ~{stripe_cap:.0f} orgs/s (~{stripe_cap * per_org_ms / 1000:.1f}x "
            f"concurrency 1); the job's CPU was {default_cpu_ms:.0f} ms per organization, most of it on one core "
            "(its threads share the GIL; PDF rendering runs in separate processes)",
            "",
            f"speed-up, default ({DEFAULT_CONCURRENCY}) over 1: {speedup:5.2f}x   target >= {SPEEDUP_TARGET:g}x   "
            f"{'PASS' if ok_speed else 'FAIL'}",
            "concurrency reaching >= 8x: " + (", ".join(map(str, reaching)) if reaching else "none measured"),
            "",
        ]

    # Stripe: calls per invoice (new and known customers) and the rate the peer admitted.
    lines += [
        "Stripe calls per invoice (counted by the peer) and the rate it admitted, per concurrency and customers "
        "(medians over runs):",
        f"{'concurrency':>11} {'customers':>9} {'calls/inv':>9} {'customer':>8} {'invoice':>7} {'admitted/s':>10} "
        f"{'% peer limit':>12} {'% client limit':>14} {'peak 1s':>7} {'429s':>5}   admitted/s per run",
    ]
    rate_ok: dict[int, bool] = {}
    for c in args.levels:
        for kind, table in (("new", runs), ("known", known_runs)):
            rs = [r for r in table.get(c, []) if r.organizations == n]
            if not rs:
                continue
            rate = statistics.median(r.stripe_rps_admitted for r in rs)
            calls = statistics.median(r.calls_per_invoice for r in rs)
            customer = statistics.median(r.customer_calls_per_invoice for r in rs)
            lines.append(
                f"{c:>11} {kind:>9} {calls:9.2f} {customer:8.2f} {calls - customer:7.2f} {rate:10.1f} "
                f"{rate / args.peer_rate_limit:12.1%} {rate / args.stripe_rps:14.1%} "
                f"{max(r.stripe_peak_window for r in rs):7d} {sum(r.rejected_429 for r in rs):5d}   "
                + " ".join(f"{r.stripe_rps_admitted:.1f}" for r in rs))
            per_endpoint = Counter()
            for r in rs:
                per_endpoint.update(r.endpoints)
            total = sum(r.organizations for r in rs)
            lines.append(f"{'':>21} per invoice: " + ", ".join(
                f"{e} {count / total:.2f}" for e, count in sorted(per_endpoint.items())))
            if c != 1:
                rate_ok[c] = rate_ok.get(c, True) and rate >= 0.9 * limit and all(r.rejected_429 == 0 for r in rs)
    lines += [
        "    calls/inv = the peer's requests / invoices (customer = /v1/customers requests, invoice = the rest); "
        "admitted/s = requests the peer's limiter let through / (last - first of them); peak 1s = most requests "
        "arriving in any 1-second window (max over runs); 429s = sum over runs",
        "",
    ]
    peak = max(r.stripe_peak_window for r in all_runs)
    rejected = sum(r.rejected_429 for r in all_runs)
    ok_limit = peak <= args.peer_rate_limit and rejected == 0
    full = [r for r in all_runs if r.organizations == n]
    known_max = max((r.calls_per_invoice for r in full if r.known), default=None)
    new_max = max((r.calls_per_invoice for r in full if not r.known), default=None)
    ok_calls = (known_max is None or known_max <= 3) and (new_max is None or new_max <= 4)
    ok_rate = any(rate_ok.values())
    lines += [
        f"Stripe under the peer's limit: peak 1-s window {peak} <= {args.peer_rate_limit}, 429s {rejected}   "
        f"{'PASS' if ok_limit else 'FAIL'}",
        "Stripe calls per invoice <= 3 for a known customer, <= 4 for a new one (max over runs): known "
        + (f"{known_max:.2f}" if known_max is not None else "not measured") + ", new "
        + (f"{new_max:.2f}" if new_max is not None else "not measured") + f"   {'PASS' if ok_calls else 'FAIL'}",
        f"Stripe rate >= 90% of the limit ({limit} req/s: {0.9 * limit:.0f}) sustained, zero 429s, new and known "
        "customers: " + (", ".join(f"concurrency {c} {'PASS' if ok else 'FAIL'}" for c, ok in sorted(rate_ok.items()))
                         or "no concurrency above 1 measured") + f"   {'PASS' if ok_rate else 'FAIL'}",
        f"every run verified: exit 0, one invoice per organization ({n:,}"
        f"{f'; the sampled run {baseline.run.organizations:,}' if baseline is not None and baseline.sampled else ''}"
        "), issued, with stripe_status 'sent', s3_uploaded_at, emailed_at; the peers hold exactly that many S3 "
        "objects, Stripe invoices (open, sent once), customers (created in the run only for new customers) and "
        "e-mails",
    ]
    print("\n".join(lines), flush=True)
    return ok_speed and ok_limit and ok_calls and ok_rate


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_load = common.loadavg()
    print(f"scratch databases {SCRATCH_DB}, {TEMPLATE_DB} on "
          f"{make_url(args.database_url).set(database='').render_as_string(hide_password=True)}", flush=True)
    drop_databases(args.database_url)
    peers = None
    try:
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            machine = common.machine_info(conn)
        with tempfile.TemporaryDirectory(prefix="bench-deliver-") as tmp:
            workdir = Path(tmp)
            print(f"loading {args.organizations:,} organizations ...", flush=True)
            loaded = load_template(args, workdir)
            print(f"loaded {loaded[0]:,} usage_hourly rows in {loaded[1]:.1f} s; starting the peers "
                  f"({args.latency_ms:g} ms per request)", flush=True)
            peers = make_peers(args)
            code_start, settings = code_state(), job_settings(args, peers)
            print(f"code: {code_start}; job settings: {settings}", flush=True)
            orgs = org_ids(args.organizations)
            number = 0
            runs: dict[int, list[Run]] = {c: [] for c in args.levels}
            known_runs: dict[int, list[Run]] = {c: [] for c in args.levels if c != 1}
            baseline: Baseline | None = None
            known: KnownCustomers | None = None

            if not args.baseline:
                print("concurrency 1 not in --concurrency-list: no baseline, speed-up skipped", flush=True)
            else:
                probe_orgs = evenly_spaced(orgs, min(PROBE_ORGS, len(orgs)))
                number += 1
                probe = measure(args, peers, 1, probe_orgs, "warm-up", workdir, number)
                estimate = probe.seconds * len(orgs) / len(probe_orgs)
                print(describe(probe, f"warm-up, concurrency 1, {len(probe_orgs)} orgs (untimed)"), flush=True)
                sample_size = args.baseline_sample
                if sample_size is None:
                    sample_size = 0 if estimate <= BASELINE_FULL_BUDGET else min(BASELINE_SAMPLE, len(orgs))
                    print(f"  -> concurrency 1 on all {len(orgs):,} estimated at ~{estimate:.0f} s: "
                          f"{'all organizations' if not sample_size else f'sampling {sample_size}'}", flush=True)
                active = evenly_spaced(orgs, sample_size) if 0 < sample_size < len(orgs) else None

                number += 1
                print(f"timing concurrency 1 on {len(active) if active else len(orgs):,} organizations ...",
                      flush=True)
                base = measure(args, peers, 1, active, "concurrency 1", workdir, number)
                runs[1].append(base)
                print(describe(base, "concurrency 1"), flush=True)
                baseline = Baseline(base, len(orgs))
            for i in range(args.repeat):
                for c in args.levels:
                    if c == 1:
                        continue
                    number += 1
                    run = measure(args, peers, c, None, f"concurrency {c}, run {i + 1}", workdir, number)
                    runs[c].append(run)
                    print(describe(run, f"concurrency {c}, run {i + 1}"), flush=True)
                    if known is None:  # the customers this run created, for the known-customer runs
                        known = capture_customers(db_url(args.database_url, SCRATCH_DB), peers[1])
                    number += 1
                    run = measure(args, peers, c, None, f"concurrency {c}, run {i + 1}, known customers", workdir,
                                  number, known=known)
                    known_runs[c].append(run)
                    print(describe(run, f"concurrency {c}, run {i + 1}"), flush=True)
        met = report(args, machine, loaded, start_load, baseline, runs, known_runs, settings,
                     (code_start, code_state()))
    except BenchError as exc:
        print(f"\nERROR: {exc}", file=sys.stderr)
        return 2
    finally:
        if peers is not None:
            for peer in peers:
                with contextlib.suppress(Exception):  # best effort at exit
                    peer.stop()
        if not args.keep_database:
            drop_databases(args.database_url)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
