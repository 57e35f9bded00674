"""The `billing` command line: parse flags, load settings, open the database, call one job, render.

Heavy modules (SQLAlchemy, boto3, stripe, fpdf2) are imported inside the commands, so that
`billing --help` stays fast for cron.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer

from . import __version__
from .errors import BillingError, ExitCode

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


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Usage billing: hourly usage roll-ups and monthly invoices."""


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


def _output(plain: bool | None):
    from .report import Output

    return Output(plain=plain)


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
    plain: PlainOption = None,
) -> None:
    """Roll the previous hour's usage events of every active organization into hourly totals.

    Safe to run again: totals are recomputed from the events, never added twice.

    Example: billing aggregate-hourly --hour 2024-01-31T13 --dry-run
    """
    from .config import load_settings
    from .db.connect import open_database
    from .jobs.aggregate import aggregate_hours
    from .periods import aggregation_window, utc_now
    from .report import aggregation_header, aggregation_hour, aggregation_summary

    output = _output(plain)
    with failures_to_exit_codes(output):
        settings = load_settings()
        dry = settings.dry_run if dry_run is None else dry_run
        window = aggregation_window(
            now=utc_now(), hour=hour, from_=from_, to=to,
            lookback=settings.aggregate_lookback_hours if lookback is None else lookback)
        with open_database(settings, notice=output.notice) as db:
            aggregation_header(output, window, dry, db.where)
            result = aggregate_hours(db.transactions, window, dry_run=dry,
                                     on_hour=lambda h: aggregation_hour(output, h, dry))
        aggregation_summary(output, result)
        _exit(ExitCode.OK if result.ok else ExitCode.PARTIAL)


@app.command("invoice-monthly")
def invoice_monthly() -> None:
    """Invoice every active organization for the previous month (not implemented yet).

    Example: billing invoice-monthly --month 2024-01 --dry-run
    """
    _output(None).error("invoice-monthly is not implemented yet in this version")
    _exit(ExitCode.USAGE)


@app.command("legacy-run")
def legacy_run() -> None:
    """The older all-in-one billing job configured by RUN_SCHEDULE, PROCESS_MONTH, … (not implemented yet).

    Example: DRY_RUN=true billing legacy-run
    """
    _output(None).error("legacy-run is not implemented yet in this version")
    _exit(ExitCode.USAGE)


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


@app.command("demo")
def demo(plain: PlainOption = None) -> None:
    """Create sample organizations and a month of usage, and aggregate it: the whole story in one command.

    Refuses to touch a database holding organizations it did not create.

    Example: billing demo
    """
    from .config import load_settings
    from .db.connect import open_database
    from .jobs.demo import run_demo
    from .report import aggregation_summary, demo_summary

    output = _output(plain)
    with failures_to_exit_codes(output):
        settings = load_settings()
        with open_database(settings, notice=output.notice) as db:
            output.banner("billing demo", [("database", db.where)])
            result = run_demo(db.transactions)
        demo_summary(output, result)
        assert result.aggregation is not None
        aggregation_summary(output, result.aggregation)
        if not output.plain:
            output.line("")
            output.line("Try next:")
            output.line(f"  billing aggregate-hourly --hour {result.month}-15T10 --dry-run")
            output.line(f"  billing aggregate-hourly --from {result.month}-31T00 --to {result.month}-31T23")
            output.line("  billing config")
        _exit(ExitCode.OK if result.aggregation.ok else ExitCode.PARTIAL)


def main() -> None:
    app()
