"""What every command shares: its common options, the context object that carries them, the
output they choose, and the one place where failures become a message and an exit code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from typer.core import TyperGroup

from .errors import KEYBOARD_INTERRUPT, BillingError, ExitCode, UsageError
from .plain_text import holds_undecodable_bytes

if TYPE_CHECKING:
    from .report.output import Output


class LogFormat(StrEnum):
    AUTO = "auto"  # Rich on a terminal, JSON lines otherwise
    RICH = "rich"
    PLAIN = "plain"
    JSON = "json"


class ScheduleFormat(StrEnum):
    TABLE = "table"
    CRONTAB = "crontab"  # the lines of a crontab
    K8S = "k8s"  # the CronJobs' `schedule` values


# `-h` as well as `--help`, for the app and (inherited by their contexts) every command and group.
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class CommandGroup(TyperGroup):
    """A group whose help lists each command with the whole first sentence of its description
    (Click cuts it to the terminal's width and ends it with "...")."""

    def format_commands(self, ctx, formatter) -> None:  # type: ignore[no-untyped-def]
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"billing {__version__}")
        raise typer.Exit()


VersionOption = Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                             help="Show the version and exit.")]
LogFormatOption = Annotated[LogFormat | None, typer.Option(
    "--log-format", case_sensitive=False, metavar="auto|rich|plain|json",
    help="auto, rich, plain or json. Default: LOG_FORMAT (auto: Rich on a terminal, JSON lines otherwise).")]
JsonOption = Annotated[bool, typer.Option(
    "--json", help="Print the result as one JSON document on stdout; logs go to stderr.")]
PlainOption = Annotated[bool | None, typer.Option(
    "--plain/--rich", help="Plain key=value lines, or Rich tables. Default: Rich on a terminal.")]
DryRunOption = Annotated[bool | None, typer.Option(
    "--dry-run/--no-dry-run", help="Compute and report everything, write nothing. Default: DRY_RUN.")]
OrgOption = Annotated[list[str] | None, typer.Option(
    "--org", metavar="ID", help="Only this organization id; repeat it for several (--org a --org b).")]


def organization_ids(values: list[str] | None) -> tuple[str, ...]:
    """The ids of the repeated --org; a comma is taken for a list given the wrong way (exit 2)."""
    for value in values or ():
        if "," in value:
            raise UsageError(f"--org {value!r} holds a comma: give each organization its own --org "
                             f"({' '.join('--org ' + o.strip() for o in value.split(',') if o.strip())})")
    return tuple(values or ())


def _json_requested(args: list[str]) -> bool:
    """Whether a command line asks for --json (before a `--` that ends the options)."""
    return "--json" in (args[:args.index("--")] if "--" in args else args)


# Click's UsageError (a bad option or value, a missing command): Typer's copy of Click, or Click.
_ClickUsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class BillingGroup(CommandGroup):
    """The root command (its help lists whole descriptions, as CommandGroup): a usage error Click finds while parsing (an unknown option, a bad value,
    a missing command) prints, under --json, the error document on stdout too, like every other
    failure (failures_to_exit_codes); Click still writes its message to stderr and exits 2."""

    def make_context(self, info_name, args, parent=None, **extra):  # type: ignore[no-untyped-def]
        requested = _json_requested(list(args))
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except _ClickUsageError as exc:
            _usage_error_document(exc, requested)
            raise
        ctx.meta["billing.json_requested"] = requested
        return ctx

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except _ClickUsageError as exc:
            _usage_error_document(exc, ctx.meta.get("billing.json_requested", False))
            raise


def _usage_error_document(exc, requested: bool) -> None:
    from .report.output import print_json

    if not requested:
        return
    hint = None
    if exc.ctx is not None and exc.ctx.command.get_help_option(exc.ctx) is not None:
        hint = f"Try '{exc.ctx.command_path} {exc.ctx.help_option_names[0]}' for help."
    # A group given no command shows its help as the "message": the document says what is wrong.
    message = "Missing command." if type(exc).__name__ == "NoArgsIsHelpError" else exc.format_message()
    print_json(error_json(exc.exit_code, message, hint))


@dataclass
class CliState:
    """Options given before the command (`billing --log-format json status`), on `ctx.obj`."""

    log_format: LogFormat | None = None
    as_json: bool = False


def state(ctx: typer.Context) -> CliState:
    return ctx.find_object(CliState) or CliState()


@dataclass(frozen=True)
class Command:
    """One command's output and whether it prints a JSON document."""

    output: Output
    as_json: bool


def command(ctx: typer.Context, *, plain: bool | None = None, log_format: LogFormat | None = None,
            as_json: bool = False, json_output: bool = False) -> Command:
    """The output of a command: --plain/--rich, else --log-format (after or before the command),
    else LOG_FORMAT and LOG_LEVEL (environment or .env; a bad value is reported by the
    configuration check right after). With --json (only for a command with `json_output`), logs go
    to stderr and stdout holds one JSON document."""
    from .config import read_raw_config
    from .report.output import Output

    shared = state(ctx)
    refused = shared.as_json and not json_output
    as_json = (as_json or shared.as_json) and not refused
    raw = read_raw_config()
    chosen = log_format or shared.log_format or raw.value("LOG_FORMAT") or LogFormat.AUTO
    if plain is not None:
        chosen = LogFormat.PLAIN if plain else LogFormat.RICH
    if chosen not in tuple(LogFormat):
        chosen = LogFormat.AUTO
    level = (raw.value("LOG_LEVEL") or "info").lower()
    output = Output(log_format=str(chosen), level=level, to_stderr=as_json or refused)
    if refused:
        names, parent = [], ctx
        while parent.parent is not None:
            names.insert(0, parent.info_name or "")
            parent = parent.parent
        with failures_to_exit_codes(output):
            raise UsageError(f"--json: `billing {' '.join(names)}` has no JSON output; leave --json out")
    with failures_to_exit_codes(output):
        _check_text_arguments(ctx)
    return Command(output, as_json)


def _check_text_arguments(ctx: typer.Context) -> None:
    """Every text argument is UTF-8: other bytes (typed in a Latin-1 terminal, pasted from a file in
    another encoding) reach Python as lone surrogates, which PostgreSQL, JSON and e-mail refuse
    halfway through a run. Paths are left alone: any bytes name a file."""
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, str) and holds_undecodable_bytes(item):
                name = param.opts[0] if param.param_type_name == "option" else (param.metavar or str(param.name))
                raise UsageError(f"{name} {item!r} is not UTF-8 text: type it again in a UTF-8 terminal "
                                 "(LANG=C.UTF-8), or convert it to UTF-8 (nothing was done)")


def error_json(exit_code: int, message: str, hint: str | None = None) -> dict[str, object]:
    """The document a command prints on stdout under --json when it fails before its result
    (schemas/error.schema.json); the same message goes to stderr."""
    return {"error": {"exit_code": exit_code, "name": ExitCode(exit_code).name, "message": message, "hint": hint}}


@contextmanager
def failures_to_exit_codes(output: Output) -> Iterator[None]:
    """The one place where expected failures become a message and an exit code. Under --json the
    failure is also the error document on stdout, unless the command's document is already out
    (a job's summary of a failed run says why itself)."""
    try:
        yield
    except BillingError as exc:
        output.error(str(exc))
        if output.json_document and not output.document_printed:
            output.document(error_json(int(exc.exit_code), exc.message, exc.hint))
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        output.error("interrupted")
        raise typer.Exit(KEYBOARD_INTERRUPT) from None


def exit_with(code: ExitCode) -> NoReturn:
    raise typer.Exit(int(code))


def end_run(cmd: Command, finished, render) -> NoReturn:
    """A job's end, the same for every job: its result rendered, the summary as JSON when asked
    (also when the run failed), then the error or the outcome's exit code."""
    if finished.result is not None:
        render(cmd.output, finished.result)
    if cmd.as_json:
        extra = getattr(finished.result, "json_extra", dict)()
        cmd.output.document({**finished.summary.as_dict(), **extra})
    if finished.error is not None:
        raise finished.error
    exit_with(finished.exit_code)
