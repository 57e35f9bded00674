"""The operator's commands around the jobs: run history, health, schedules, configuration, the
database schema, price plans and tax rates. Each translates flags, calls one function, renders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli_common import (CONTEXT_SETTINGS, CommandGroup, DryRunOption, JsonOption, LogFormatOption, PlainOption,
                         ScheduleFormat, command, end_run, exit_with, failures_to_exit_codes)
from .errors import ExitCode
from .outcomes import Job

commands = typer.Typer()  # merged into the main app (cli.py)
db_app = typer.Typer(help="Database schema: migrations and revision.", no_args_is_help=True, cls=CommandGroup,
                     context_settings=CONTEXT_SETTINGS)
usage_app = typer.Typer(help="Raw usage events: retention of usage_events' monthly partitions.", no_args_is_help=True,
                        cls=CommandGroup, context_settings=CONTEXT_SETTINGS)
plans_app = typer.Typer(help="Price plans, managed as code in a TOML file.", no_args_is_help=True, cls=CommandGroup,
                        context_settings=CONTEXT_SETTINGS)
taxes_app = typer.Typer(help="Tax rates, versioned, managed as code in a TOML file.", no_args_is_help=True,
                        cls=CommandGroup, context_settings=CONTEXT_SETTINGS)
invoices_app = typer.Typer(help="Issued invoices: void one (a credit note is issued when it was sent).",
                           no_args_is_help=True, cls=CommandGroup, context_settings=CONTEXT_SETTINGS)


@commands.command("runs")
def runs(
    ctx: typer.Context,
    job: Annotated[Job | None, typer.Option(
        metavar="JOB",
        help="Only this job: aggregate-hourly, invoice-monthly, legacy-run, reconcile, invoices-void or usage-prune.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, metavar="N", help="How many runs, newest first.")] = 20,
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


@commands.command("status")
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


@commands.command("schedule")
def schedule(
    ctx: typer.Context,
    output_format: Annotated[ScheduleFormat, typer.Option(
        "--format", metavar="table|crontab|k8s",
        help="A table, a whole crontab (as crontab.example), or the CronJobs' schedules.")] = ScheduleFormat.TABLE,
    count: Annotated[int, typer.Option(min=1, max=100, metavar="N", help="How many next run times to show.")] = 3,
    as_json: JsonOption = False, plain: PlainOption = None, log_format: LogFormatOption = None,
) -> None:
    """Show each job's schedule: as configured (six fields, seconds first), the five-field form cron
    and Kubernetes need, what it means, and the next run times (UTC).

    Example: billing schedule --format k8s
    """
    from .errors import UsageError
    from .periods import utc_now
    from .report.tables import schedule_json, schedule_output
    from .runs.admin import configured_schedules

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    with failures_to_exit_codes(cmd.output):
        if cmd.as_json and output_format != ScheduleFormat.TABLE:
            raise UsageError(f"--json and --format {output_format}: choose one")
        if cmd.as_json:
            cmd.output.document(schedule_json(configured_schedules(), now=utc_now(), count=count))
        else:
            schedule_output(cmd.output, configured_schedules(), output_format, now=utc_now(), count=count)


@commands.command("config")
def config(
    ctx: typer.Context, plain: PlainOption = None, log_format: LogFormatOption = None,
    example: Annotated[bool, typer.Option("--example", help="Print a documented .env template instead.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Show the effective configuration, where each value comes from, secrets masked; then validate it.

    Every problem is listed and its variables are marked in the table (exit 3 when there is one).

    Example: billing config
    """
    from .config import config_problems, env_example, read_raw_config
    from .report.tables import config_table, config_verdict

    if example:
        typer.echo(env_example(), nl=False)
        return
    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    if cmd.as_json:
        config_as_json(cmd)
        return
    with failures_to_exit_codes(cmd.output):
        raw = read_raw_config()
        problems = config_problems(raw)
        config_table(cmd.output, raw, problems)
        config_verdict(cmd.output, problems)
        exit_with(ExitCode.CONFIG if problems else ExitCode.OK)


@commands.command("exit-codes")
def exit_codes(ctx: typer.Context, as_json: JsonOption = False, plain: PlainOption = None,
               log_format: LogFormatOption = None) -> None:
    """What each exit code means and whether running the command again can help.

    The same table as README.md's; cron wrappers and alerts can read it with --json.

    Example: billing exit-codes --json | jq '.[] | select(.retry == "yes") | .code'
    """
    from .errors import EXIT_CODES
    from .report.tables import exit_codes_report

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    exit_codes_report(cmd.output, EXIT_CODES, as_json=cmd.as_json)


def config_as_json(cmd) -> None:
    """`billing config --json`: the settings (secrets masked) and the problems as one document;
    exit 3 when there are problems, the first also on stderr."""
    from .config import config_problems, read_raw_config
    from .report.tables import config_json

    with failures_to_exit_codes(cmd.output):
        raw = read_raw_config()
        problems = config_problems(raw)
        cmd.output.document(config_json(raw, problems))
        if problems:
            cmd.output.error(f"configuration is invalid: {len(problems)} problem(s), listed in the document")
            exit_with(ExitCode.CONFIG)


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
def db_current(ctx: typer.Context, as_json: JsonOption = False, plain: PlainOption = None,
               log_format: LogFormatOption = None) -> None:
    """Show the database's schema revision and whether it is up to date (exit 5 when behind).

    Example: billing db current
    """
    from .report.tables import schema_revision_json, schema_revision_line
    from .runs.admin import schema_revision

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    with failures_to_exit_codes(cmd.output):
        state = schema_revision(cmd.output.notice)
        if cmd.as_json:
            cmd.output.document(schema_revision_json(state))
        else:
            schema_revision_line(cmd.output, state)
        exit_with(ExitCode.OK if state.up_to_date else ExitCode.SCHEMA_OUTDATED)


@usage_app.command("prune")
def usage_prune(
    ctx: typer.Context,
    before: Annotated[str, typer.Option(
        metavar="YYYY-MM", help="Drop the raw events of every month strictly before this one.")],
    force: Annotated[bool, typer.Option(
        help="Also drop months that are not invoiced and reconciled (their roll-ups still stay).")] = False,
    dry_run: DryRunOption = None, as_json: JsonOption = False, plain: PlainOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Drop usage_events' monthly partitions before a month: whole partitions, no DELETE. The hourly
    roll-ups (usage_hourly) stay, so invoices and reconcile of those months still add up.

    Refuses (exit 8, nothing dropped) while one of those months is not invoiced and reconciled with
    nothing changed since, unless --force. Recorded in `billing runs` as usage-prune.

    Example: billing usage prune --before 2025-01 --dry-run
    """
    from .report.partitions import PruneScreen, prune_summary
    from .runs.partitions import PruneRequest, run_usage_prune

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    with failures_to_exit_codes(cmd.output):
        request = PruneRequest(before=before, dry_run=dry_run, force=force)
        end_run(cmd, run_usage_prune(request, PruneScreen(cmd.output)), prune_summary)


@plans_app.command("apply")
def plans_apply(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The plans TOML file (format: docs/plans.md).")],
    effective: Annotated[str | None, typer.Option(
        metavar="YYYY-MM-DD[THH]",
        help="Billing periods starting from this UTC day (or hour) use the new definitions. Default: now, so "
             "each organization's period under way keeps the old one (the change takes effect at its next "
             "period boundary).")] = None,
    dry_run: DryRunOption = None, plain: PlainOption = None, log_format: LogFormatOption = None,
) -> None:
    """Create or update the price plans of a TOML file: all of them, or none if any is invalid.
    Every definition is kept with the time it is in force from: a billing period is rated with
    its plan as defined when the period started.

    Example: billing plans apply plans.toml --effective 2024-03-01
    """
    from .periods import parse_moment
    from .report.tables import plans_applied
    from .runs.admin import apply_plans

    cmd = command(ctx, plain=plain, log_format=log_format)
    with failures_to_exit_codes(cmd.output):
        since = parse_moment(effective, option="--effective") if effective is not None else None
        plans_applied(cmd.output, apply_plans(file, dry_run, cmd.output.notice, effective=since))


@plans_app.command("list")
def plans_list(ctx: typer.Context, as_json: JsonOption = False, plain: PlainOption = None,
               log_format: LogFormatOption = None) -> None:
    """Show the price plans and their prices.

    Example: billing plans list
    """
    from .report.tables import plans_json, plans_table
    from .runs.admin import list_plans

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    with failures_to_exit_codes(cmd.output):
        plans = list_plans(cmd.output.notice)
        if cmd.as_json:
            cmd.output.document(plans_json(plans))
        else:
            plans_table(cmd.output, plans)


@taxes_app.command("apply")
def taxes_apply(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The taxes TOML file (format: docs/taxes.md).")],
    dry_run: DryRunOption = None, as_json: JsonOption = False, plain: PlainOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Create or update the tax rate versions of a TOML file: all of them, or none if any is invalid.

    Example: billing taxes apply taxes.toml
    """
    from .report.tables import taxes_applied, taxes_applied_json
    from .runs.admin import apply_taxes

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    with failures_to_exit_codes(cmd.output):
        applied = apply_taxes(file, dry_run, cmd.output.notice)
        if cmd.as_json:
            cmd.output.document(taxes_applied_json(applied))
        else:
            taxes_applied(cmd.output, applied)


@taxes_app.command("list")
def taxes_list(ctx: typer.Context, as_json: JsonOption = False, plain: PlainOption = None,
               log_format: LogFormatOption = None) -> None:
    """Show every version of every tax rate, with the date it is in force from.

    Example: billing taxes list
    """
    from .report.tables import taxes_json, taxes_table
    from .runs.admin import list_taxes

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    with failures_to_exit_codes(cmd.output):
        rates = list_taxes(cmd.output.notice)
        if cmd.as_json:
            cmd.output.document(taxes_json(rates))
        else:
            taxes_table(cmd.output, rates)


class InvoiceNumber(str):
    """An invoice number as typed (`INV-2024-01-000042`), checked when the request is built; the
    class names the argument's type in `--help`."""


@invoices_app.command("void")
def invoices_void(
    ctx: typer.Context,
    number: Annotated[InvoiceNumber, typer.Argument(metavar="NUMBER", parser=InvoiceNumber,
                                                    help="The invoice number, e.g. INV-2024-01-000042.")],
    reason: Annotated[str, typer.Option("--reason", metavar="WHY",
                                        help="Why it is voided: printed on the credit note and kept on the invoice.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (required outside a "
                                                           "terminal).")] = False,
    as_json: JsonOption = False, plain: PlainOption = None, log_format: LogFormatOption = None,
) -> None:
    """Void one issued invoice. If the customer was sent it (e-mailed, or sent in Stripe), a credit
    note (CN-YYYY-MM-NNNNNN) is issued and delivered like an invoice: PDF, S3, Stripe (the Stripe
    invoice is voided while open, credited in full once paid) and e-mail. An invoice never sent is
    simply voided. Refuses (exit 8) a number never issued, an invoice already void, or any void
    while DRY_RUN is set (a void has no dry run).

    Example: billing invoices void INV-2024-01-000042 --reason "Billed to the wrong account" --yes
    """
    import sys

    from .errors import UsageError
    from .report.voiding import void_question, void_report
    from .runs.voiding import VoidRequest, run_void_invoice

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    with failures_to_exit_codes(cmd.output):
        terminal = sys.stdin.isatty() and sys.stderr.isatty()
        if not yes and not terminal:
            raise UsageError(f"voiding {number} needs --yes outside a terminal (nothing was done)")

        def confirm(plan) -> bool:
            return yes or typer.confirm(void_question(plan), default=False, err=True)

        end_run(cmd, run_void_invoice(VoidRequest(str(number), reason), cmd.output, confirm), void_report)
