"""The `billing` commands: each parses its flags into a request, calls one function, renders the
result and exits with its code. Heavy modules are imported inside the commands (fast `--help`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli_common import (CliState, DryRunOption, JsonOption, LogFormatOption, PlainOption, ScheduleFormat,
                         VersionOption, command, end_run, exit_with, failures_to_exit_codes)
from .errors import ExitCode
from .outcomes import Job

app = typer.Typer(
    name="billing", help="Usage billing jobs, one job per run, scheduled by cron or Kubernetes. "
                         "Exit codes are listed in README.md.",
    no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    pretty_exceptions_show_locals=False,  # a traceback must never print a secret held in a local
)
db_app = typer.Typer(help="Database schema: migrations and revision.", no_args_is_help=True)
app.add_typer(db_app, name="db")
plans_app = typer.Typer(help="Price plans, managed as code in a TOML file.", no_args_is_help=True)
app.add_typer(plans_app, name="plans")


@app.callback()
def root(
    ctx: typer.Context,
    version: VersionOption = False,
    log_format: LogFormatOption = None,
    as_json: JsonOption = False,
) -> None:
    """Usage billing: hourly usage roll-ups and monthly invoices."""
    ctx.obj = CliState(log_format=log_format, as_json=as_json)


@app.command("aggregate-hourly")
def aggregate_hourly(
    ctx: typer.Context,
    hour: Annotated[str | None, typer.Option(help="One UTC hour, YYYY-MM-DDTHH. Default: the previous full hour.")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="First hour of a backfill range (inclusive).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last hour of a backfill range (inclusive).")] = None,
    lookback: Annotated[int | None, typer.Option(
        help="Also re-aggregate this many hours before the window, for late events. "
             "Default: AGGREGATE_LOOKBACK_HOURS.")] = None,
    dry_run: DryRunOption = None, as_json: JsonOption = False, plain: PlainOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Roll the previous hour's usage events of every active organization into hourly totals.

    Safe to run again: totals are recomputed from the events, never added twice.

    Example: billing aggregate-hourly --hour 2024-01-31T13 --dry-run
    """
    from .report.aggregation import AggregationScreen, aggregation_summary
    from .runs.aggregation import AggregateRequest, run_aggregate_hourly

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    with failures_to_exit_codes(cmd.output):
        request = AggregateRequest(hour=hour, from_=from_, to=to, lookback=lookback, dry_run=dry_run)
        end_run(cmd, run_aggregate_hourly(request, AggregationScreen(cmd.output)), aggregation_summary)


@app.command("invoice-monthly")
def invoice_monthly(
    ctx: typer.Context,
    month: Annotated[str | None, typer.Option(
        help="Month to invoice, YYYY-MM. Default: PROCESS_MONTH, else the previous month (UTC).")] = None,
    dry_run: DryRunOption = None,
    org: Annotated[list[str] | None, typer.Option("--org", help="Only this organization id (repeatable).")] = None,
    regenerate: Annotated[bool, typer.Option(
        help="Void the existing invoice of each --org and issue a new one (needs --org).")] = False,
    output_dir: Annotated[Path | None, typer.Option(
        help="Also write the PDFs here (<dir>/<YYYY-MM>/<number>.pdf); previews in a dry run. "
             "Default: INVOICE_OUTPUT_DIR.")] = None,
    force: Annotated[bool, typer.Option(help="Allow the current (unfinished) or a future month.")] = False,
    concurrency: Annotated[int | None, typer.Option(
        min=1, max=256, help="Organizations processed in parallel. Default: INVOICE_CONCURRENCY.")] = None,
    batch_size: Annotated[int | None, typer.Option(
        min=1, max=100000, help="Organizations read at a time. Default: INVOICE_BATCH_SIZE.")] = None,
    shard_index: Annotated[int | None, typer.Option(
        min=0, help="This process's shard (0-based). Default: JOB_COMPLETION_INDEX (Indexed Jobs).")] = None,
    shard_count: Annotated[int | None, typer.Option(
        min=1, help="How many shards split the organizations. Default: SHARD_COUNT (1).")] = None,
    as_json: JsonOption = False, plain: PlainOption = None, log_format: LogFormatOption = None,
) -> None:
    """Invoice every active organization for a month: rate usage, issue one invoice each, render the
    PDF, and deliver it (S3, Stripe, e-mail: each when turned on).

    Safe to rerun: organizations already invoiced are skipped ("already invoiced") and only
    missing steps are completed. Exit 6 when some organizations failed; rerun to finish them.
    A dry run prints the plan: what a real run would do for each organization (--json: as data).

    Example: billing invoice-monthly --month 2024-01 --dry-run --json | jq .errors
    """
    from .report.invoicing import InvoicingScreen, invoice_run_summary
    from .runs.invoicing import InvoiceRequest, run_invoice_monthly

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    with failures_to_exit_codes(cmd.output):
        request = InvoiceRequest(month=month, dry_run=dry_run, organizations=tuple(org or ()), regenerate=regenerate,
                                 output_dir=output_dir, force=force, concurrency=concurrency, batch_size=batch_size,
                                 shard_index=shard_index, shard_count=shard_count, keep_plan=cmd.as_json)
        end_run(cmd, run_invoice_monthly(request, InvoicingScreen(cmd.output)), invoice_run_summary)


@app.command("legacy-run")
def legacy_run(ctx: typer.Context, as_json: JsonOption = False, plain: PlainOption = None,
               log_format: LogFormatOption = None) -> None:
    """The older all-in-one billing job, configured only by the environment: RUN_SCHEDULE,
    PROCESS_MONTH (default: the previous month), DRY_RUN, NOTIFY_ON_COMPLETION, NOTIFY_EMAIL.

    Completes the month's hourly aggregates, invoices and delivers exactly as invoice-monthly does,
    then notifies. Warns when started at a time RUN_SCHEDULE would not fire.

    Example: DRY_RUN=true PROCESS_MONTH=2024-01 billing legacy-run
    """
    from .report.invoicing import InvoicingScreen, invoice_run_summary
    from .runs.invoicing import run_legacy

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    with failures_to_exit_codes(cmd.output):
        end_run(cmd, run_legacy(InvoicingScreen(cmd.output), keep_plan=cmd.as_json), invoice_run_summary)


@app.command("runs")
def runs(
    ctx: typer.Context,
    job: Annotated[Job | None, typer.Option(help="Only this job.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many runs, newest first.")] = 20,
    as_json: JsonOption = False, plain: PlainOption = None, log_format: LogFormatOption = None,
) -> None:
    """List recent runs: job, period, shard, status, duration, counts, errors; dry runs marked.

    Example: billing runs --job invoice-monthly --json
    """
    from .report.tables import runs_report
    from .runs.admin import run_history

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    with failures_to_exit_codes(cmd.output):
        runs_report(cmd.output, run_history(job, limit, cmd.output.notice), as_json=cmd.as_json)


@app.command("status")
def status(
    ctx: typer.Context,
    check: Annotated[bool, typer.Option("--check", help="Exit 10 when a job is late, failed or stuck.")] = False,
    as_json: JsonOption = False, plain: PlainOption = None, log_format: LogFormatOption = None,
) -> None:
    """Health of each job: last run, last success and its age, last outcome, failed organizations.

    Example: billing status --check
    """
    from .periods import utc_now
    from .report.tables import status_report
    from .runs.admin import job_health

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    with failures_to_exit_codes(cmd.output):
        now = utc_now()
        statuses = job_health(now, cmd.output.notice)
        status_report(cmd.output, statuses, now, as_json=cmd.as_json)
        if check and any(s.problems for s in statuses):
            exit_with(ExitCode.UNHEALTHY)


@app.command("schedule")
def schedule(
    ctx: typer.Context,
    output_format: Annotated[ScheduleFormat, typer.Option("--format", help="table, crontab or k8s.")] = ScheduleFormat.TABLE,
    count: Annotated[int, typer.Option(min=1, max=100, help="How many next run times to show.")] = 3,
    plain: PlainOption = None, log_format: LogFormatOption = None,
) -> None:
    """Show each job's schedule: as configured (six fields, seconds first), the five-field form cron
    and Kubernetes need, what it means, and the next run times (UTC).

    Example: billing schedule --format k8s
    """
    from .periods import utc_now
    from .report.tables import schedule_output
    from .runs.admin import configured_schedules

    cmd = command(ctx, plain=plain, log_format=log_format)
    with failures_to_exit_codes(cmd.output):
        schedule_output(cmd.output, configured_schedules(), output_format, now=utc_now(), count=count)


@app.command("config")
def config(
    ctx: typer.Context, plain: PlainOption = None, log_format: LogFormatOption = None,
    example: Annotated[bool, typer.Option("--example", help="Print a documented .env template instead.")] = False,
) -> None:
    """Show the effective configuration, where each value comes from, secrets masked; then validate it.

    Example: billing config
    """
    from .config import env_example, read_raw_config, validate
    from .report.tables import config_table, config_valid

    if example:
        typer.echo(env_example(), nl=False)
        return
    cmd = command(ctx, plain=plain, log_format=log_format)
    with failures_to_exit_codes(cmd.output):
        raw = read_raw_config()
        config_table(cmd.output, raw)
        validate(raw)
        config_valid(cmd.output)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, plain: PlainOption = None, log_format: LogFormatOption = None) -> None:
    """Apply the database migrations (safe to run again; concurrent runs wait for each other).

    Example: DATABASE_URL=postgresql://billing@db/billing billing db upgrade
    """
    from .report.tables import schema_upgraded
    from .runs.admin import upgrade_schema

    cmd = command(ctx, plain=plain, log_format=log_format)
    with failures_to_exit_codes(cmd.output):
        schema_upgraded(cmd.output, upgrade_schema(cmd.output.notice))


@db_app.command("current")
def db_current(ctx: typer.Context, plain: PlainOption = None, log_format: LogFormatOption = None) -> None:
    """Show the database's schema revision and whether it is up to date (exit 5 when behind).

    Example: billing db current
    """
    from .report.tables import schema_revision_line
    from .runs.admin import schema_revision

    cmd = command(ctx, plain=plain, log_format=log_format)
    with failures_to_exit_codes(cmd.output):
        state = schema_revision(cmd.output.notice)
        schema_revision_line(cmd.output, state)
        exit_with(ExitCode.OK if state.up_to_date else ExitCode.SCHEMA_OUTDATED)


@plans_app.command("apply")
def plans_apply(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The plans TOML file (format: docs/plans.md).")],
    dry_run: DryRunOption = None, plain: PlainOption = None, log_format: LogFormatOption = None,
) -> None:
    """Create or update the price plans of a TOML file: all of them, or none if any is invalid.

    Example: billing plans apply plans.toml
    """
    from .report.tables import plans_applied
    from .runs.admin import apply_plans

    cmd = command(ctx, plain=plain, log_format=log_format)
    with failures_to_exit_codes(cmd.output):
        plans_applied(cmd.output, apply_plans(file, dry_run, cmd.output.notice))


@plans_app.command("list")
def plans_list(ctx: typer.Context, plain: PlainOption = None, log_format: LogFormatOption = None) -> None:
    """Show the price plans and their prices.

    Example: billing plans list
    """
    from .report.tables import plans_table
    from .runs.admin import list_plans

    cmd = command(ctx, plain=plain, log_format=log_format)
    with failures_to_exit_codes(cmd.output):
        plans_table(cmd.output, list_plans(cmd.output.notice))


@app.command("demo")
def demo(ctx: typer.Context, plain: PlainOption = None, log_format: LogFormatOption = None) -> None:
    """Sample plans, organizations and a month of usage, aggregated and invoiced (PDFs in
    BILLING_HOME/invoices): the whole story in one command.

    Refuses to touch a database holding organizations it did not create.

    Example: billing demo
    """
    from .report.invoicing import DemoScreen, invoice_summary
    from .report.tables import demo_next_steps
    from .runs.demo import run_whole_demo

    cmd = command(ctx, plain=plain, log_format=log_format)
    with failures_to_exit_codes(cmd.output):
        run = run_whole_demo(DemoScreen(cmd.output))
        invoice_summary(cmd.output, run.invoiced)
        demo_next_steps(cmd.output, run.seeded.month, run.output_dir)
        exit_with(ExitCode.OK if run.ok else ExitCode.PARTIAL)


def main() -> None:
    app()
