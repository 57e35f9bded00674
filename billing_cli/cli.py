"""The `billing` command line: parse flags, load settings, open the database, call one job, render.

Heavy modules (SQLAlchemy, boto3, stripe, fpdf2) are imported inside the commands, so that
`billing --help` stays fast for cron.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from . import __version__
from .errors import BillingError, ExitCode, UsageError

app = typer.Typer(
    name="billing",
    help="Usage billing jobs, one job per run, scheduled by cron or Kubernetes. "
         "Exit codes are listed in README.md.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # a traceback must never print a secret held in a local
    rich_markup_mode=None,
)
db_app = typer.Typer(help="Database schema: migrations and revision.", no_args_is_help=True)
app.add_typer(db_app, name="db")
plans_app = typer.Typer(help="Price plans, managed as code in a TOML file.", no_args_is_help=True)
app.add_typer(plans_app, name="plans")

PlainOption = Annotated[
    bool | None,
    typer.Option("--plain/--rich", help="Plain key=value lines, or Rich tables. Default: Rich on a terminal."),
]
DryRunOption = Annotated[
    bool | None,
    typer.Option("--dry-run/--no-dry-run", help="Compute and report everything, write nothing. Default: DRY_RUN."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"billing {__version__}")
        raise typer.Exit()


_ROOT_OPTIONS: dict[str, str | None] = {}  # options given before the command (one command per process)


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
    log_format: Annotated[str | None, typer.Option(
        "--log-format", help="auto, rich, plain or json. Default: LOG_FORMAT (auto: Rich on a terminal, "
                             "JSON lines otherwise).")] = None,
) -> None:
    """Usage billing: hourly usage roll-ups and monthly invoices."""
    if log_format is not None and log_format not in ("auto", "rich", "plain", "json"):
        raise typer.BadParameter("use auto, rich, plain or json", param_hint="--log-format")
    _ROOT_OPTIONS["log_format"] = log_format


@contextmanager
def failures_to_exit_codes(output) -> Iterator[None]:
    """The one place where expected failures become a message and an exit code."""
    try:
        yield
    except BillingError as exc:
        output.error(str(exc))
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        output.error("interrupted")
        raise typer.Exit(130) from None


@contextmanager
def _stop_on_signals(output) -> Iterator:
    """SIGTERM (Kubernetes) or Ctrl-C: set an event the job checks to stop taking new work and
    finish what is in flight. A second Ctrl-C stops at once."""
    import signal
    import threading

    stop = threading.Event()

    def handler(signum, _frame) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        output.warning(f"{signal.Signals(signum).name} received: finishing the work in flight, then stopping")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _output(plain: bool | None, *, to_stderr: bool = False):
    """The output of a command: --plain/--rich, else --log-format, else LOG_FORMAT and LOG_LEVEL
    (environment or .env; a bad value is reported by the configuration check right after)."""
    from .config import read_raw_config
    from .report import Output

    raw = read_raw_config()
    chosen = _ROOT_OPTIONS.pop("log_format", None)
    log_format = "plain" if plain is True else "rich" if plain is False else chosen or raw.value("LOG_FORMAT") or "auto"
    if log_format not in ("auto", "rich", "plain", "json"):
        log_format = "auto"
    level = (raw.value("LOG_LEVEL") or "info").lower()
    return Output(log_format=log_format, level=level, to_stderr=to_stderr)


def _exit(code: ExitCode) -> NoReturn:
    raise typer.Exit(int(code))


@app.command("aggregate-hourly")
def aggregate_hourly(
    hour: Annotated[str | None, typer.Option(help="One UTC hour, YYYY-MM-DDTHH. Default: the previous full hour.")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="First hour of a backfill range (inclusive).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last hour of a backfill range (inclusive).")] = None,
    lookback: Annotated[int | None, typer.Option(
        help="Also re-aggregate this many hours before the window, for late events. "
             "Default: AGGREGATE_LOOKBACK_HOURS (2).")] = None,
    dry_run: DryRunOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON document on stdout; "
                                                           "logs go to stderr.")] = False,
    plain: PlainOption = None,
) -> None:
    """Roll the previous hour's usage events of every active organization into hourly totals.

    Safe to run again: totals are recomputed from the events, never added twice.

    Example: billing aggregate-hourly --hour 2024-01-31T13 --dry-run
    """
    from .config import load_settings
    from .db.connect import open_database
    from .jobs.aggregate import aggregate_hours
    from .jobs.runner import job_run
    from .periods import aggregation_window, utc_now
    from .delivery.completion import notify, push_metrics
    from .report import aggregation_header, aggregation_hour, aggregation_summary
    from .report import print_json
    from .summary import aggregation_summary as run_summary
    from .summary import failed_run_summary

    output = _output(plain, to_stderr=as_json)
    with failures_to_exit_codes(output):
        settings = load_settings()
        dry = settings.dry_run if dry_run is None else dry_run
        window = aggregation_window(
            now=utc_now(), hour=hour, from_=from_, to=to,
            lookback=settings.aggregate_lookback_hours if lookback is None else lookback)
        try:
            with open_database(settings, notice=output.notice) as db, _stop_on_signals(output) as stop, \
                    job_run(db.engine, job="aggregate-hourly", scope="aggregate-hourly", period=str(window),
                            dry_run=dry, parameters={"window": str(window)}) as record:
                output.context = {"job": "aggregate-hourly", "run_id": record.id}
                aggregation_header(output, window, dry, db.where)
                result = aggregate_hours(db.transactions, window, dry_run=dry, stop=stop,
                                         on_hour=lambda h: aggregation_hour(output, h, dry))
                record.finish(run_summary(result))
        except BillingError as exc:
            failed = failed_run_summary("aggregate-hourly", str(window), str(exc), dry, 0.0)
            push_metrics(settings, output, failed)
            if settings.notify_on_aggregate_errors:
                notify(settings, output, failed)
            raise
        aggregation_summary(output, result)
        if as_json:
            print_json(run_summary(result).as_dict())
        push_metrics(settings, output, run_summary(result))
        if not result.ok and settings.notify_on_aggregate_errors:
            notify(settings, output, run_summary(result))
        _exit(ExitCode.INTERRUPTED if result.interrupted else ExitCode.OK if result.ok else ExitCode.PARTIAL)


@app.command("invoice-monthly")
def invoice_monthly(
    month: Annotated[str | None, typer.Option(
        help="Month to invoice, YYYY-MM. Default: PROCESS_MONTH, else the previous month (UTC).")] = None,
    dry_run: DryRunOption = None,
    org: Annotated[list[str] | None, typer.Option(
        "--org", help="Only this organization id (repeatable).")] = None,
    regenerate: Annotated[bool, typer.Option(
        help="Void the existing invoice of each --org and issue a new one (needs --org).")] = False,
    output_dir: Annotated[Path | None, typer.Option(
        help="Also write the PDFs here (<dir>/<YYYY-MM>/<number>.pdf); previews in a dry run. "
             "Default: INVOICE_OUTPUT_DIR.")] = None,
    force: Annotated[bool, typer.Option(help="Allow the current (unfinished) or a future month.")] = False,
    concurrency: Annotated[int | None, typer.Option(
        min=1, max=256, help="Organizations processed in parallel. Default: INVOICE_CONCURRENCY (16).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        min=1, max=100000, help="Organizations read at a time. Default: INVOICE_BATCH_SIZE (500).")] = None,
    shard_index: Annotated[int | None, typer.Option(
        min=0, help="This process's shard (0-based). Default: JOB_COMPLETION_INDEX (Indexed Jobs).")] = None,
    shard_count: Annotated[int | None, typer.Option(
        min=1, help="How many shards split the organizations. Default: SHARD_COUNT (1).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON document on stdout; "
                                                           "logs go to stderr.")] = False,
    plain: PlainOption = None,
) -> None:
    """Invoice every active organization for a month: rate usage, issue one invoice each, render the
    PDF, and deliver it (S3, Stripe, e-mail: each when turned on).

    Safe to rerun: organizations already invoiced are skipped ("already invoiced") and only
    missing steps are completed. Exit 6 when some organizations failed; rerun to finish them.

    Example: billing invoice-monthly --month 2024-01 --dry-run --json | jq .errors
    """
    output = _output(plain, to_stderr=as_json)
    with failures_to_exit_codes(output):
        if regenerate and not org:
            raise UsageError("--regenerate needs --org: regeneration is done one organization at a time, "
                             "never for a whole month by accident")
        from .config import load_settings

        settings = load_settings()
        _exit(_run_invoicing("invoice-monthly", settings, output, month=month, dry_run=dry_run,
                             org=tuple(org or ()), regenerate=regenerate, output_dir=output_dir, force=force,
                             concurrency=concurrency, shard_index=shard_index, shard_count=shard_count,
                             batch_size=batch_size, as_json=as_json))


def _run_invoicing(job: str, settings, output, *, month: str | None = None, dry_run: bool | None = None,
                   org: tuple[str, ...] = (), regenerate: bool = False, output_dir: Path | None = None,
                   force: bool = False, concurrency: int | None = None, shard_index: int | None = None,
                   shard_count: int | None = None, batch_size: int | None = None,
                   as_json: bool = False) -> ExitCode:
    """invoice-monthly and legacy-run: the same invoicing, reported and notified the same way."""
    import time
    from dataclasses import replace

    from .db.connect import open_database
    from .db.usage_store import Shard
    from .delivery.completion import notify, push_metrics
    from .delivery.factory import deliveries_from_settings
    from .invoices import Seller
    from .jobs.invoice import InvoiceOptions, invoice_month
    from .jobs.runner import job_run
    from .periods import invoicing_month, utc_now
    from .report import InvoiceProgress, invoice_header, invoice_summary, print_json
    from .summary import failed_run_summary, invoice_run_summary

    now = utc_now()
    chosen = invoicing_month(month, settings.process_month, now=now, force=force)
    dry = settings.dry_run if dry_run is None else dry_run
    shard = Shard(settings.shard_index if shard_index is None else shard_index,
                  settings.shard_count if shard_count is None else shard_count)
    if shard.index >= shard.count:
        raise UsageError(f"--shard-index {shard.index} is not below --shard-count {shard.count}")
    concurrency = concurrency or settings.concurrency
    options = InvoiceOptions(
        month=chosen, issue_date=now.date(), dry_run=dry, organizations=org, regenerate=regenerate,
        output_dir=output_dir or settings.invoice_output_dir, payment_terms_days=settings.payment_terms_days,
        seller=Seller(settings.seller_name, settings.seller_address, settings.seller_tax_id),
        deliveries=deliveries_from_settings(settings, dry_run=dry, concurrency=concurrency),
        concurrency=concurrency, shard=shard,
        batch_size=batch_size or settings.batch_size, render_processes=settings.render_processes)
    started = time.perf_counter()
    sharded = str(shard) if shard.count > 1 else None
    try:
        with open_database(settings, notice=output.notice, pool_size=options.concurrency + 3) as db, \
                _stop_on_signals(output) as stop, \
                job_run(db.engine, job=job, scope=f"invoice:{chosen}:{shard}", period=str(chosen), dry_run=dry,
                        shard=sharded, parameters={"month": str(chosen), "organizations": list(org),
                                                   "regenerate": regenerate, "shard": sharded}) as record:
            options = replace(options, stop=stop)
            output.context = {"job": job, "run_id": record.id}
            invoice_header(output, chosen, dry, db.where, options.deliveries.disabled(), job=job, shard=sharded)
            progress = InvoiceProgress(output, dry)
            try:
                result = invoice_month(db.transactions, options, on_start=progress.start,
                                       on_outcome=progress.outcome)
            finally:
                progress.stop()
                options.deliveries.close()
            summary = invoice_run_summary(result, job)
            record.finish(summary)
    except BillingError as exc:  # the run stopped: say so to whoever waits for the notification
        failed = failed_run_summary(job, str(chosen), str(exc), dry, time.perf_counter() - started)
        if as_json:
            print_json(failed.as_dict())
        push_metrics(settings, output, failed, sharded)
        notify(settings, output, failed)
        raise
    invoice_summary(output, result, job)
    if as_json:
        print_json(summary.as_dict())
    push_metrics(settings, output, summary, sharded)
    notify(settings, output, summary)
    if result.interrupted:
        output.warning(f"interrupted: {result.processed} organizations processed, {result.unfinished} left in "
                       "flight; rerun the same command to complete the month")
        return ExitCode.INTERRUPTED
    return ExitCode.OK if result.ok else ExitCode.PARTIAL


@app.command("legacy-run")
def legacy_run(
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON document on stdout; "
                                                           "logs go to stderr.")] = False,
    plain: PlainOption = None,
) -> None:
    """The older all-in-one billing job, configured only by the environment: RUN_SCHEDULE,
    PROCESS_MONTH (default: the previous month), DRY_RUN, NOTIFY_ON_COMPLETION, NOTIFY_EMAIL.

    Completes the month's hourly aggregates, invoices and delivers exactly as invoice-monthly does,
    then notifies. Warns when started at a time RUN_SCHEDULE would not fire.

    Example: DRY_RUN=true PROCESS_MONTH=2024-01 billing legacy-run
    """
    from .config import load_settings
    from .periods import utc_now
    from .schedules import parse_schedule

    output = _output(plain, to_stderr=as_json)
    with failures_to_exit_codes(output):
        settings = load_settings()  # an invalid RUN_SCHEDULE is a configuration error, before any work
        schedule = parse_schedule("RUN_SCHEDULE", settings.run_schedule)
        now = utc_now()
        if not schedule.fires_at(now):
            output.warning(f"started at {now:%Y-%m-%d %H:%M}Z, a minute RUN_SCHEDULE '{settings.run_schedule}' "
                           f"({schedule.describe()}) does not fire: the CronJob or crontab schedule may have drifted "
                           "from the configuration (compare with `billing schedule --format k8s`)")
        _exit(_run_invoicing("legacy-run", settings, output, as_json=as_json))


JsonOption = Annotated[bool, typer.Option("--json", help="One JSON document on stdout, for scripts.")]


@app.command("runs")
def runs(
    job: Annotated[str | None, typer.Option(help="Only this job (aggregate-hourly, invoice-monthly, legacy-run).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many runs, newest first.")] = 20,
    as_json: JsonOption = False,
    plain: PlainOption = None,
) -> None:
    """List recent runs: job, period, shard, status, duration, counts, errors; dry runs marked.

    Example: billing runs --job invoice-monthly --json
    """
    from .config import load_settings
    from .db.connect import open_database
    from .jobs.status import JOBS, recent_runs
    from .report import print_json, runs_table

    output = _output(plain)
    with failures_to_exit_codes(output):
        if job is not None and job not in JOBS:
            raise UsageError(f"--job {job!r}: use one of {', '.join(JOBS)}")
        settings = load_settings()
        with open_database(settings, notice=output.notice) as db, db.engine.connect() as conn:
            history = recent_runs(conn, job=job, limit=limit)
        if as_json:
            print_json(history)
        else:
            runs_table(output, history)


@app.command("status")
def status(
    check: Annotated[bool, typer.Option("--check", help="Exit 10 when a job is late, failed or stuck.")] = False,
    as_json: JsonOption = False,
    plain: PlainOption = None,
) -> None:
    """Health of each job: last run, last success and its age, last outcome, failed organizations.

    Example: billing status --check
    """
    from datetime import timedelta

    from .config import load_settings
    from .db.connect import open_database
    from .jobs.status import Thresholds, job_statuses
    from .periods import utc_now
    from .report import print_json, status_table

    output = _output(plain)
    with failures_to_exit_codes(output):
        settings = load_settings()
        thresholds = Thresholds(timedelta(hours=settings.status_aggregate_max_age_hours),
                                settings.status_invoice_deadline_day,
                                timedelta(hours=settings.status_stuck_after_hours))
        now = utc_now()
        with open_database(settings, notice=output.notice) as db, db.engine.connect() as conn:
            statuses = job_statuses(conn, now, thresholds)
        if as_json:
            print_json([s.as_dict(now) for s in statuses])
        else:
            status_table(output, statuses, now)
        if check and any(s.problems for s in statuses):
            _exit(ExitCode.UNHEALTHY)


@app.command("schedule")
def schedule(
    output_format: Annotated[str, typer.Option("--format", help="table, crontab or k8s.")] = "table",
    count: Annotated[int, typer.Option(min=1, max=100, help="How many next run times to show.")] = 3,
    plain: PlainOption = None,
) -> None:
    """Show each job's schedule: as configured (six fields, seconds first), the five-field form cron
    and Kubernetes need, what it means, and the next run times (UTC).

    Example: billing schedule --format k8s
    """
    from .config import load_settings
    from .periods import utc_now
    from .report import schedule_output
    from .schedules import parse_schedule

    output = _output(plain)
    with failures_to_exit_codes(output):
        if output_format not in ("table", "crontab", "k8s"):
            raise UsageError(f"--format {output_format!r}: use table, crontab or k8s")
        settings = load_settings()
        schedules = [parse_schedule("aggregate-hourly", settings.aggregate_schedule),
                     parse_schedule("invoice-monthly", settings.invoice_schedule),
                     parse_schedule("legacy-run", settings.run_schedule)]
        schedule_output(output, schedules, output_format, now=utc_now(), count=count)


@app.command("config")
def config(
    plain: PlainOption = None,
    example: Annotated[bool, typer.Option("--example", help="Print a documented .env template instead.")] = False,
) -> None:
    """Show the effective configuration, where each value comes from, secrets masked; then validate it.

    Example: billing config
    """
    from .config import env_example, read_raw_config, validate
    from .report import config_table

    if example:
        typer.echo(env_example(), nl=False)
        return
    output = _output(plain)
    with failures_to_exit_codes(output):
        raw = read_raw_config()
        config_table(output, raw)
        validate(raw)
        output.line("✅ configuration is valid" if not output.plain else "config status=valid")


@db_app.command("upgrade")
def db_upgrade(plain: PlainOption = None) -> None:
    """Apply the database migrations (safe to run again; concurrent runs wait for each other).

    Example: DATABASE_URL=postgresql://billing@db/billing billing db upgrade
    """
    from .config import load_settings
    from .db.connect import open_database
    from .db.migrate import upgrade

    output = _output(plain)
    with failures_to_exit_codes(output):
        settings = load_settings()
        with open_database(settings, notice=output.notice, require_schema=False) as db:
            before, after = upgrade(db.engine)
        if output.plain:
            output.record("db-upgrade", database=db.where, before=before or "none", after=after)
        elif before == after:
            output.line(f"✅ {db.where}: schema already at {after}")
        else:
            output.line(f"✅ {db.where}: schema upgraded from {before or 'empty'} to {after}")


@db_app.command("current")
def db_current(plain: PlainOption = None) -> None:
    """Show the database's schema revision and whether it is up to date (exit 5 when behind).

    Example: billing db current
    """
    from .config import load_settings
    from .db.connect import open_database
    from .db.migrate import HEAD, current_revision

    output = _output(plain)
    with failures_to_exit_codes(output):
        settings = load_settings()
        with open_database(settings, notice=output.notice, require_schema=False) as db:
            with db.engine.connect() as conn:
                current = current_revision(conn)
        state = "up to date" if current == HEAD else "behind: run `billing db upgrade`"
        if output.plain:
            output.record("db-current", database=db.where, current=current or "none", head=HEAD,
                          up_to_date=str(current == HEAD).lower())
        else:
            output.line(f"{db.where}: revision {current or 'none'} (this program: {HEAD}) — {state}")
        _exit(ExitCode.OK if current == HEAD else ExitCode.SCHEMA_OUTDATED)


@plans_app.command("apply")
def plans_apply(
    file: Annotated[Path, typer.Argument(help="The plans TOML file (format: docs/plans.md).")],
    dry_run: DryRunOption = None,
    plain: PlainOption = None,
) -> None:
    """Create or update the price plans of a TOML file: all of them, or none if any is invalid.

    Example: billing plans apply plans.toml
    """
    from .config import load_settings
    from .db.connect import open_database
    from .db.plan_store import save_plans
    from .plan_file import load_plan_file

    output = _output(plain)
    with failures_to_exit_codes(output):
        plans = load_plan_file(file)
        settings = load_settings()
        dry = settings.dry_run if dry_run is None else dry_run
        with open_database(settings, notice=output.notice) as db:
            with db.engine.connect() as conn, conn.begin() as transaction:
                saved = save_plans(conn, plans)
                if dry:
                    transaction.rollback()
        verb = "would be " if dry else ""
        for label, ids in (("created", saved.created), ("updated", saved.updated), ("unchanged", saved.unchanged)):
            for plan_id in ids:
                if output.plain:
                    output.record("plan", id=plan_id, result=label, dry_run=str(dry).lower())
                else:
                    output.line(f"{'✅' if label != 'unchanged' else '•'} plan {plan_id}: {verb}{label}")


@plans_app.command("list")
def plans_list(plain: PlainOption = None) -> None:
    """Show the price plans and their prices.

    Example: billing plans list
    """
    from .config import load_settings
    from .db.connect import open_database
    from .db.plan_store import load_plans
    from .report import plans_table

    output = _output(plain)
    with failures_to_exit_codes(output):
        settings = load_settings()
        with open_database(settings, notice=output.notice) as db, db.engine.connect() as conn:
            plans = load_plans(conn)
        plans_table(output, list(plans.values()))


@app.command("demo")
def demo(plain: PlainOption = None) -> None:
    """Sample plans, organizations and a month of usage, aggregated and invoiced (PDFs in
    BILLING_HOME/invoices): the whole story in one command.

    Refuses to touch a database holding organizations it did not create.

    Example: billing demo
    """
    from .config import load_settings
    from .db.connect import open_database
    from .invoices import Seller
    from .jobs.demo import run_demo
    from .jobs.invoice import InvoiceOptions, invoice_month
    from .periods import utc_now
    from .report import InvoiceProgress, aggregation_summary, demo_summary, invoice_summary

    output = _output(plain)
    with failures_to_exit_codes(output):
        settings = load_settings()
        output_dir = (settings.invoice_output_dir or settings.billing_home / "invoices").resolve()
        with open_database(settings, notice=output.notice) as db:
            output.banner("billing demo", [("database", db.where)])
            result = run_demo(db.transactions)
            demo_summary(output, result)
            assert result.aggregation is not None
            aggregation_summary(output, result.aggregation)
            options = InvoiceOptions(
                month=result.month, issue_date=utc_now().date(), output_dir=output_dir,
                payment_terms_days=settings.payment_terms_days,
                seller=Seller(settings.seller_name, settings.seller_address, settings.seller_tax_id))
            progress = InvoiceProgress(output, dry_run=False)
            try:
                invoiced = invoice_month(db.transactions, options, on_start=progress.start,
                                         on_outcome=progress.outcome)
            finally:
                progress.stop()
        invoice_summary(output, invoiced)
        if not output.plain:
            output.line("")
            output.line(f"Invoice PDFs: {output_dir / str(result.month)}")
            output.line("Deliveries are off in the demo: to upload, bill and e-mail, set INVOICE_ENABLE_S3, "
                        "INVOICE_ENABLE_STRIPE and INVOICE_ENABLE_EMAIL with their settings (billing config "
                        "--example) and run billing invoice-monthly.")
            output.line("Try next:")
            output.line("  billing plans list")
            output.line(f"  billing invoice-monthly --month {result.month} --dry-run")
            output.line(f"  billing invoice-monthly --month {result.month} --org demo-acme --regenerate")
            output.line(f"  billing aggregate-hourly --hour {result.month}-15T10 --dry-run")
        _exit(ExitCode.OK if result.aggregation.ok and invoiced.ok else ExitCode.PARTIAL)


def main() -> None:
    app()
