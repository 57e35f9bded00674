"""Where a command writes: Rich on a terminal, `kind key=value` lines, or JSON lines."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

BANNER_WIDTH = 64


def number(value: int | Decimal) -> str:
    """Thousands separators; Decimals keep their exact digits (never through float)."""
    if isinstance(value, Decimal):
        return f"{value.normalize():,f}" if value == value.to_integral_value() else f"{value:,f}"
    return f"{value:,}"


def one_line(text: str) -> str:
    """Text as one log line, whatever it quotes (an organization id is a producer's input): a line
    break as "; " (a CR as a space), and the breaks some log readers split on shown escaped, so
    that no text can start a line of its own that reads as another record."""
    text = text.replace("\r", " ").replace("\n", "; ")
    for separator in "\x85\u2028\u2029":
        text = text.replace(separator, separator.encode("unicode_escape").decode())
    return text


def plain_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = one_line(str(value))  # one record, one line
    return f'"{text}"' if (" " in text or text == "") else text


def emit(text: str, stream, end: str = "\n") -> None:
    """One line on `stream`; once its reader is gone, nothing."""
    try:
        print(text, file=stream, flush=True, end=end)
    except BrokenPipeError:
        reader_gone(stream)


def reader_gone(stream) -> None:
    """The reader of `stream` went away (`billing … | head -1`): what follows on it is dropped, and
    the run goes on to its end and its exit code. A closed log pipe must never stop a billing run
    halfway (it would fail as a bug, exit 1, and be notified as a failure)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's buffer): nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)  # what is still buffered for the stream, and everything after, goes nowhere
    finally:
        os.close(devnull)


def _console(**options: object) -> Console:
    """A Rich console whose output is dropped once its reader is gone (see reader_gone)."""
    from rich.console import Console

    class PipeSafeConsole(Console):
        def on_broken_pipe(self) -> None:  # Rich's own exits the program (1)
            self.quiet = True
            reader_gone(self.file)

        def print(self, *objects, **kwargs) -> None:  # type: ignore[no-untyped-def, override]
            try:
                super().print(*objects, **kwargs)
            except BrokenPipeError:  # a Rich before 13.4 has no on_broken_pipe
                self.on_broken_pipe()

    return PipeSafeConsole(**options)  # type: ignore[arg-type]


LOG_FORMATS = ("auto", "rich", "plain", "json")  # auto: Rich on a terminal, JSON lines otherwise
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Output:
    """Where a command writes. Formats: `rich` (banners and tables, for a terminal), `plain`
    (`kind key=value` lines) and `json` (one JSON object a line: time, level, job, run id, event
    and its fields). `auto` is Rich on a terminal and JSON lines otherwise (Kubernetes, CI).
    With `to_stderr` (--json), everything goes to stderr and stdout keeps one document: the
    result's (`document`), else, when the command fails first, the error's."""

    def __init__(self, *, log_format: str = "auto", level: str = "info", to_stderr: bool = False) -> None:
        self.json_document = to_stderr  # --json: stdout holds exactly one JSON document
        self.document_printed = False
        self.stream = sys.stderr if to_stderr else sys.stdout
        self.out: Console = _console(highlight=False, soft_wrap=True, stderr=to_stderr)
        self.err: Console = _console(stderr=True, highlight=False, soft_wrap=True)
        if log_format == "auto":
            log_format = "rich" if self.out.is_terminal else "json"
        self.format = log_format
        self.plain = log_format in ("plain", "json")  # line-oriented, no tables
        self.level = _LEVELS.get(level, 20)
        self.context: dict[str, object] = {}  # job, run_id: added to every JSON line

    def document(self, data: object) -> None:
        """The command's one JSON document (--json), on stdout."""
        self.document_printed = True
        print_json(data)

    def set_context(self, **fields: object) -> None:
        self.context = dict(fields)

    def _json(self, level: str, event: str, fields: dict[str, object], stream) -> None:
        import json
        from datetime import UTC, datetime

        from ..periods import iso_utc

        record = {"time": iso_utc(datetime.now(UTC), "milliseconds"), "level": level, **self.context, "event": event}
        for key, value in fields.items():
            record["organization_id" if (key == "id" and event == "organization") else key] = value
        emit(json.dumps(record, default=json_value, ensure_ascii=False), stream)

    # -- generic lines -------------------------------------------------------------------------
    def line(self, text: str = "") -> None:
        if self.format == "json":
            if text.strip():
                self._json("info", "message", {"message": text}, self.stream)
        elif self.plain:
            emit(text, self.stream)
        else:
            self.out.print(text, markup=False)

    def record(self, kind: str, *, level: str = "info", **fields: object) -> None:
        """One machine-readable record: a `kind key=value …` line, or a JSON line."""
        if _LEVELS[level] < self.level and kind not in ("summary", "start"):
            return
        if self.format == "json":
            self._json(level, kind, fields, self.stream)
            return
        parts = " ".join(f"{k}={plain_value(v)}" for k, v in fields.items())
        emit(f"{kind} {parts}".rstrip(), self.stream)

    def notice(self, text: str) -> None:
        if self.level > _LEVELS["info"]:
            return
        if self.format == "json":
            self._json("info", "notice", {"message": text}, sys.stderr)
        elif self.plain:
            emit(f"notice: {one_line(text)}", sys.stderr)
        else:
            from rich.markup import escape

            self.err.print(f"[dim]ℹ {escape(text)}[/dim]", highlight=False)

    def warning(self, text: str) -> None:
        if self.format == "json":
            self._json("warning", "warning", {"message": text}, sys.stderr)
        elif self.plain:
            emit(f"warning: {one_line(text)}", sys.stderr)
        else:
            from rich.markup import escape

            self.err.print(f"⚠️  [yellow]{escape(text)}[/yellow]", markup=True)

    def error(self, text: str) -> None:
        if self.format == "json":
            self._json("error", "error", {"message": text}, sys.stderr)
        elif self.plain:
            emit(f"error: {one_line(text)}", sys.stderr)
        else:
            from rich.markup import escape

            self.err.print(f"❌ [bold red]error:[/bold red] {escape(text)}")

    def banner(self, title: str, fields: Sequence[tuple[str, object]]) -> None:
        if self.plain:
            self.record("start", job=title.split()[-1], **{k.replace(" ", "_"): v for k, v in fields})
            return
        self.out.print("═" * BANNER_WIDTH, style="bold blue")
        self.out.print(f"[bold]{title}[/bold]")
        for key, value in fields:
            self.out.print(f"  {key}: {value}", markup=False)
        self.out.print("═" * BANNER_WIDTH, style="bold blue")

    def table(self, title: str, columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[object]],
              *, kind: str) -> None:
        """A Rich table (numbers right-aligned, with separators), or one `kind key=value …` line
        per row with the raw values. `columns` are (header, key) pairs."""
        rows = list(rows)
        if self.plain:
            keys = [key for _, key in columns]
            for row in rows:
                self.record(kind, **dict(zip(keys, row, strict=True)))
            return
        from rich.table import Table

        cells = [[number(c) if isinstance(c, (int, Decimal)) and not isinstance(c, bool) else str(c) for c in row]
                 for row in rows]
        # A value without spaces (an id, a job, a time, a number) is never cut to "invoi…": its
        # column keeps its width, and columns of sentences wrap at spaces to make room. When even
        # that does not fit the terminal, each row is shown as a block of `Header: value` lines.
        layout = []
        for i, (header, _) in enumerate(columns):
            words = [cell for row in cells for cell in row[i].splitlines() if cell]
            atomic = all(" " not in word for word in words)
            width = max(len(header), min(max((len(word) for word in words), default=0), 32))
            numeric = bool(rows) and all(isinstance(row[i], (int, Decimal)) for row in rows)
            layout.append((header, atomic, width, numeric))
        needed = 1 + sum(3 + (width if atomic else min(width, 12)) for _, atomic, width, _ in layout)
        if needed > self.out.width and any(header for header, _ in columns):
            self._blocks(title, [header for header, _ in columns], cells)
            return
        table = Table(title=title, title_justify="left", title_style="bold",
                      show_header=any(header for header, _ in columns))
        for header, atomic, width, numeric in layout:
            table.add_column(header, justify="right" if numeric else "left", overflow="fold",
                             no_wrap=atomic, min_width=width if atomic else None)
        for row in cells:
            table.add_row(*row)
        self.out.print(table)

    def _blocks(self, title: str, headers: list[str], cells: list[list[str]]) -> None:
        """A table too wide for the terminal: one block of `Header: value` lines per row."""
        from rich.text import Text

        self.out.print(Text(title, style="bold"))
        label = max(len(h) for h in headers) + 1
        for row in cells:
            self.out.print(Text("─" * min(self.out.width, 40), style="dim"))
            for header, value in zip(headers, row, strict=True):
                lines = value.splitlines() or [""]
                self.out.print(Text(f"{header + ':':<{label}} ", style="bold") + Text(lines[0]), soft_wrap=False)
                for more in lines[1:]:
                    self.out.print(" " * (label + 1) + more, markup=False, soft_wrap=False)


def json_value(value: object) -> object:
    """What JSON cannot hold natively: a Decimal as its exact digits (never an exponent, never a
    float), a time as ISO 8601 UTC with Z, anything else (an enum, a path) as its text."""
    from datetime import datetime

    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime):
        from ..periods import iso_utc

        return iso_utc(value)
    return str(value)


def print_json(data: object) -> None:
    """One JSON document on stdout (Decimals as exact strings, times as ISO 8601 UTC)."""
    import json

    emit(json.dumps(data, default=json_value, indent=2, sort_keys=True), sys.stdout)
