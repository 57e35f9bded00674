"""Rendering of results: Rich banners and tables on a terminal, plain key=value lines elsewhere.

No logic lives here: every number comes from a result object.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from .periods import format_hour

if TYPE_CHECKING:
    from rich.console import Console

    from .config import RawConfig
    from .jobs.aggregate import AggregationResult, HourResult
    from .jobs.demo import DemoResult
    from .periods import HourRange

BANNER_WIDTH = 64


def number(value: int | Decimal) -> str:
    """Thousands separators; Decimals keep their exact digits (never through float)."""
    if isinstance(value, Decimal):
        return f"{value.normalize():,f}" if value == value.to_integral_value() else f"{value:,f}"
    return f"{value:,}"


def plain_value(value: object) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or text == "") else text


class Output:
    """Where a command writes: results to stdout, notices and errors to stderr."""

    def __init__(self, *, plain: bool | None = None) -> None:
        from rich.console import Console

        self.out: Console = Console(highlight=False, soft_wrap=True)
        self.err: Console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.plain = (not self.out.is_terminal) if plain is None else plain

    # -- generic lines -------------------------------------------------------------------------
    def line(self, text: str = "") -> None:
        if self.plain:
            print(text, file=sys.stdout, flush=True)
        else:
            self.out.print(text, markup=False)

    def record(self, kind: str, **fields: object) -> None:
        """One machine-readable line: `kind key=value …` (plain mode) or nothing (rich mode)."""
        parts = " ".join(f"{k}={plain_value(v)}" for k, v in fields.items())
        print(f"{kind} {parts}".rstrip(), file=sys.stdout, flush=True)

    def notice(self, text: str) -> None:
        if self.plain:
            print(f"notice: {text}", file=sys.stderr, flush=True)
        else:
            self.err.print(f"[dim]ℹ {text}[/dim]", highlight=False)

    def warning(self, text: str) -> None:
        if self.plain:
            print(f"warning: {text}", file=sys.stderr, flush=True)
        else:
            self.err.print(f"⚠️  [yellow]{text}[/yellow]", markup=True)

    def error(self, text: str) -> None:
        if self.plain:
            print(f"error: {text}", file=sys.stderr, flush=True)
        else:
            from rich.markup import escape

            self.err.print(f"❌ [bold red]error:[/bold red] {escape(text)}")

    def banner(self, title: str, fields: Sequence[tuple[str, object]]) -> None:
        if self.plain:
            self.record(title.replace(" ", "-"), **{k.replace(" ", "_"): v for k, v in fields})
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

        table = Table(title=title, title_justify="left", title_style="bold")
        for i, (header, _) in enumerate(columns):
            numeric = bool(rows) and all(isinstance(row[i], (int, Decimal)) for row in rows)
            table.add_column(header, justify="right" if numeric else "left")
        for row in rows:
            table.add_row(*(number(c) if isinstance(c, (int, Decimal)) and not isinstance(c, bool)
                            else str(c) for c in row))
        self.out.print(table)


# -- aggregate-hourly -------------------------------------------------------------------------------

def aggregation_header(output: Output, window: HourRange, dry_run: bool, where: str) -> None:
    if output.plain:
        output.record("start", job="aggregate-hourly", window_start=format_hour(window.start),
                      window_end=format_hour(window.end), hours=len(window),
                      dry_run=str(dry_run).lower(), database=where)
        return
    output.banner("🕐 billing aggregate-hourly", [
        ("window", str(window)), ("dry run", "yes" if dry_run else "no"), ("database", where)])


def aggregation_hour(output: Output, hour: HourResult, dry_run: bool) -> None:
    verb = "would write" if dry_run else "wrote"
    if output.plain:
        output.record("hour", hour=format_hour(hour.hour), status="ok" if hour.ok else "error",
                      organizations=hour.organizations, events=hour.events, inserted=hour.inserted,
                      updated=hour.updated, deleted=hour.deleted, ignored_events=hour.ignored_events,
                      seconds=f"{hour.seconds:.3f}", **({"error": hour.error} if hour.error else {}))
        return
    if hour.ok:
        changed = hour.inserted + hour.updated
        ignored = f", {number(hour.ignored_events)} events of unknown/inactive organizations ignored" \
            if hour.ignored_events else ""
        output.line(f"✅ {format_hour(hour.hour)}  {number(hour.organizations)} organizations, "
                    f"{number(hour.events)} events → {verb} {number(changed)} rows, "
                    f"removed {number(hour.deleted)} stale{ignored}  ({hour.seconds:.2f} s)")
    else:
        output.line(f"❌ {format_hour(hour.hour)}  {hour.error}")


def aggregation_summary(output: Output, result: AggregationResult) -> None:
    multi = len(result.window) > 1
    output.table(
        "Usage by metric",
        [("Metric", "metric"), ("Organizations (busiest hour)" if multi else "Organizations", "organizations"),
         ("Events", "events"), ("Quantity", "quantity")],
        [(m.metric, m.organizations, m.events, m.quantity)
         for m in result.totals_by_metric()],
        kind="metric",
    )
    fields = {
        "hours": len(result.hours),
        "failed_hours": len(result.failed_hours),
        "organizations": result.busiest_hour_organizations,
        "events": result.events,
        "rows_written": sum(h.inserted + h.updated for h in result.hours),
        "rows_removed": sum(h.deleted for h in result.hours),
        "ignored_events": sum(h.ignored_events for h in result.hours),
        "dry_run": str(result.dry_run).lower(),
        "seconds": f"{result.seconds:.2f}",
        "outcome": "ok" if result.ok else "partial",
    }
    if output.plain:
        output.record("summary", job="aggregate-hourly", **fields)
        return
    mark = "✅" if result.ok else "❌"
    output.line(f"{mark} {fields['hours']} hours aggregated, {fields['failed_hours']} failed; "
                f"{number(result.events)} events from {number(fields['organizations'])} organizations"
                f"{' (busiest hour)' if multi else ''}; {number(fields['rows_written'])} rows "
                f"{'would be ' if result.dry_run else ''}written, {number(fields['rows_removed'])} removed; "
                f"{number(fields['ignored_events'])} events ignored; {fields['seconds']} s"
                f"{'  (dry run: nothing written)' if result.dry_run else ''}")


# -- config ------------------------------------------------------------------------------------------

def config_table(output: Output, raw: RawConfig) -> None:
    from .config import VARIABLES, mask

    rows = []
    for var in VARIABLES:
        value, source = raw.values[var.name]
        shown = "(not set)" if value is None else mask(var.name, value)
        rows.append((var.name, shown, source))
    output.table(f"Configuration (.env: {raw.env_file})",
                 [("Variable", "name"), ("Value", "value"), ("Source", "source")], rows, kind="setting")


# -- demo --------------------------------------------------------------------------------------------

def demo_summary(output: Output, result: DemoResult) -> None:
    output.table("Demo organizations",
                 [("Organization", "id"), ("Name", "name"), ("Status", "status"), ("Events", "events")],
                 [(o.id, o.name, o.status, o.events) for o in result.organizations],
                 kind="organization")
