"""The `billing` command line and its jobs: each command parses its flags into a request, calls one
function, renders the result and exits with its code. Heavy modules are imported inside the
commands (fast `--help`). The operator's other commands are in cli_admin.py."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Annotated

import typer

from . import cli_admin
from .cli_common import (CONTEXT_SETTINGS, BillingGroup, CliState, DryRunOption, JsonOption, LogFormatOption,
                         OrgOption, PlainOption, VersionOption, command, end_run, exit_with, failures_to_exit_codes,
                         organization_ids)
from .errors import ExitCode, exit_codes_summary

app = typer.Typer(
    name="billing", help="Usage billing jobs, one job per run, scheduled by cron or Kubernetes.",
    epilog="\b\n" + textwrap.fill(f"Exit codes: {exit_codes_summary()}. `billing exit-codes` says what each means "
                                  "and whether to retry.", 78, break_on_hyphens=False),  # \b: printed as wrapped here
    no_args_is_help=True, add_completion=True, rich_markup_mode=None, cls=BillingGroup,
    context_settings=CONTEXT_SETTINGS,
    pretty_exceptions_show_locals=False,  # a traceback must never print a secret held in a local
)


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
    hour: Annotated[str | None, typer.Option(
        metavar="YYYY-MM-DDTHH", help="One UTC hour, YYYY-MM-DDTHH. Default: the previous full hour.")] = None,
    from_: Annotated[str | None, typer.Option(
        "--from", metavar="YYYY-MM-DDTHH", help="First hour of a backfill range (inclusive).")] = None,
    to: Annotated[str | None, typer.Option(
        "--to", metavar="YYYY-MM-DDTHH", help="Last hour of a backfill range (inclusive).")] = None,
    lookback: Annotated[int | None, typer.Option(
        metavar="N", help="Also re-aggregate this many hours before the window, for late events. "
             "Default: AGGREGATE_LOOKBACK_HOURS.")] = None,
    dry_run: DryRunOption = None, as_json: JsonOption = False, plain: PlainOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Roll the previous hour's usage events into hourly totals (every organization's, and orphan
    usage), with the hours before it (--lookback) and older hours whose events changed since.

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
        metavar="YYYY-MM",
        help="Month to invoice, YYYY-MM. Default: PROCESS_MONTH, else the previous month (UTC).")] = None,
    dry_run: DryRunOption = None,
    org: OrgOption = None,
    regenerate: Annotated[bool, typer.Option(
        help="Void the existing invoice of each --org and issue a new one (needs --org).")] = False,
    output_dir: Annotated[Path | None, typer.Option(
        metavar="DIR", help="Also write the PDFs here (<dir>/<YYYY-MM>/<number>.pdf); previews in a dry run. "
             "Default: INVOICE_OUTPUT_DIR.")] = None,
    force: Annotated[bool, typer.Option(help="Allow the current (unfinished) or a future month.")] = False,
    concurrency: Annotated[int | None, typer.Option(
        min=1, max=256, metavar="N", help="Organizations processed in parallel. Default: INVOICE_CONCURRENCY.")] = None,
    batch_size: Annotated[int | None, typer.Option(
        min=1, max=100000, metavar="N", help="Organizations read at a time. Default: INVOICE_BATCH_SIZE.")] = None,
    shard_index: Annotated[int | None, typer.Option(
        min=0, metavar="N",
        help="This process's shard (0-based). Default: JOB_COMPLETION_INDEX (Indexed Jobs).")] = None,
    shard_count: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="How many shards split the organizations. Default: SHARD_COUNT (1).")] = None,
    as_json: JsonOption = False, plain: PlainOption = None, log_format: LogFormatOption = None,
) -> None:
    """Invoice every organization for a month (active ones, and final invoices of churned ones): rate
    usage, adjust earlier months' late usage, issue one invoice each, render the PDF, and deliver it
    (S3, Stripe, e-mail: each when turned on).

    Safe to rerun: organizations already invoiced are skipped ("already invoiced") and only
    missing steps are completed. Exit 6 when some organizations failed; rerun to finish them.
    A dry run prints the plan: what a real run would do for each organization (--json: as data).

    Example: billing invoice-monthly --month 2024-01 --dry-run --json | jq .errors
    """
    from .report.invoicing import InvoicingScreen, invoice_run_summary
    from .runs.invoicing import InvoiceRequest, run_invoice_monthly

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    with failures_to_exit_codes(cmd.output):
        request = InvoiceRequest(month=month, dry_run=dry_run, organizations=organization_ids(org),
                                 regenerate=regenerate, output_dir=output_dir, force=force, concurrency=concurrency,
                                 batch_size=batch_size, shard_index=shard_index, shard_count=shard_count,
                                 keep_plan=cmd.as_json)
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


@app.command("reconcile")
def reconcile(
    ctx: typer.Context,
    month: Annotated[str | None, typer.Option(
        metavar="YYYY-MM", help="Month to check, YYYY-MM. Default: the previous month.")] = None,
    org: OrgOption = None,
    as_json: JsonOption = False, plain: PlainOption = None, log_format: LogFormatOption = None,
) -> None:
    """Prove a month is billed exactly once: events = roll-ups = billed quantities, invoice lines =
    totals, and Stripe, S3 and e-mail (when on) hold what the invoices say. Read-only.

    Exit 0 when everything agrees, 11 when something differs, 12 when a service cannot be asked.

    Example: billing reconcile --month 2024-01 --json | jq .differences
    """
    from .report.reconcile import ReconcileScreen, reconcile_summary
    from .runs.reconcile import ReconcileRequest, run_reconcile

    cmd = command(ctx, plain=plain, log_format=log_format, as_json=as_json, json_output=True)
    with failures_to_exit_codes(cmd.output):
        request = ReconcileRequest(month=month, organizations=organization_ids(org))
        end_run(cmd, run_reconcile(request, ReconcileScreen(cmd.output)), reconcile_summary)


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


# The operator's commands (history, health, schedules, configuration, schema, plans), after the jobs.
app.registered_commands += cli_admin.commands.registered_commands
app.add_typer(cli_admin.db_app, name="db")
app.add_typer(cli_admin.plans_app, name="plans")
app.add_typer(cli_admin.taxes_app, name="taxes")
app.add_typer(cli_admin.invoices_app, name="invoices")
app.add_typer(cli_admin.usage_app, name="usage")


def main() -> None:
    # "billing" also under `python -m billing_cli`: in usage lines and in the completion script's variable.
    app(prog_name="billing")
