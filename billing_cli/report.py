"""Rendering of results: Rich banners and tables on a terminal, plain key=value lines elsewhere.

No logic lives here: every number comes from a result object.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from .money import format_money
from .periods import format_hour

if TYPE_CHECKING:
    from rich.console import Console

    from .config import RawConfig
    from .jobs.aggregate import AggregationResult, HourResult
    from .jobs.demo import DemoResult
    from .jobs.invoice import InvoiceRunResult, OrgOutcome
    from .periods import HourRange

BANNER_WIDTH = 64


def number(value: int | Decimal) -> str:
    """Thousands separators; Decimals keep their exact digits (never through float)."""
    if isinstance(value, Decimal):
        return f"{value.normalize():,f}" if value == value.to_integral_value() else f"{value:,f}"
    return f"{value:,}"


def plain_value(value: object) -> str:
    text = str(value).replace("\r", " ").replace("\n", "; ")  # one record, one line
    return f'"{text}"' if (" " in text or text == "") else text


LOG_FORMATS = ("auto", "rich", "plain", "json")
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Output:
    """Where a command writes. Formats: `rich` (banners and tables, for a terminal), `plain`
    (`kind key=value` lines) and `json` (one JSON object a line: time, level, job, run id, event
    and its fields). `auto` is Rich on a terminal and JSON lines otherwise (Kubernetes, CI).
    With `to_stderr` (the jobs' --json), everything goes to stderr and stdout keeps one document."""

    def __init__(self, *, log_format: str = "auto", level: str = "info", to_stderr: bool = False) -> None:
        from rich.console import Console

        self.stream = sys.stderr if to_stderr else sys.stdout
        self.out: Console = Console(highlight=False, soft_wrap=True, stderr=to_stderr)
        self.err: Console = Console(stderr=True, highlight=False, soft_wrap=True)
        if log_format == "auto":
            log_format = "rich" if self.out.is_terminal else "json"
        self.format = log_format
        self.plain = log_format in ("plain", "json")  # line-oriented, no tables
        self.level = _LEVELS.get(level, 20)
        self.context: dict[str, object] = {}  # job, run_id: added to every JSON line

    def _json(self, level: str, event: str, fields: dict[str, object], stream) -> None:
        import json
        from datetime import UTC, datetime

        record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": level,
                  **self.context, "event": event}
        for key, value in fields.items():
            record["organization_id" if (key == "id" and event == "organization") else key] = value
        print(json.dumps(record, default=str, ensure_ascii=False), file=stream, flush=True)

    # -- generic lines -------------------------------------------------------------------------
    def line(self, text: str = "") -> None:
        if self.format == "json":
            if text.strip():
                self._json("info", "message", {"message": text}, self.stream)
        elif self.plain:
            print(text, file=self.stream, flush=True)
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
        print(f"{kind} {parts}".rstrip(), file=self.stream, flush=True)

    def notice(self, text: str) -> None:
        if self.level > _LEVELS["info"]:
            return
        if self.format == "json":
            self._json("info", "notice", {"message": text}, sys.stderr)
        elif self.plain:
            print(f"notice: {text}", file=sys.stderr, flush=True)
        else:
            self.err.print(f"[dim]ℹ {text}[/dim]", highlight=False)

    def warning(self, text: str) -> None:
        if self.format == "json":
            self._json("warning", "warning", {"message": text}, sys.stderr)
        elif self.plain:
            print(f"warning: {text}", file=sys.stderr, flush=True)
        else:
            from rich.markup import escape

            self.err.print(f"⚠️  [yellow]{escape(text)}[/yellow]", markup=True)

    def error(self, text: str) -> None:
        if self.format == "json":
            self._json("error", "error", {"message": text}, sys.stderr)
        elif self.plain:
            print(f"error: {text}", file=sys.stderr, flush=True)
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

        table = Table(title=title, title_justify="left", title_style="bold",
                      show_header=any(header for header, _ in columns))
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
                 kind="demo-organization")


# -- invoice-monthly -------------------------------------------------------------------------------

_MARKS = {"invoiced": "✅", "already_invoiced": "⏭ ", "nothing_to_bill": "➖", "failed": "❌"}
_STEP_NAMES = {"pdf": "PDF stored", "s3": "uploaded to S3", "stripe": "Stripe invoice sent", "email": "e-mailed"}


class InvoiceProgress:
    """Per-organization lines as outcomes arrive, under a Rich progress bar on a terminal."""

    def __init__(self, output: Output, dry_run: bool) -> None:
        self.output = output
        self.dry_run = dry_run
        self._progress = None
        self._task = None

    def start(self, result: InvoiceRunResult) -> None:
        out = self.output
        if result.aggregated_hours:
            out.notice(f"aggregated {result.aggregated_hours} hour(s) of {result.month} whose events changed "
                       "since the hourly run, before rating")
        if result.stale_hours_previewed:
            out.notice(f"{result.stale_hours_previewed} hour(s) of {result.month} are not aggregated yet: the "
                       "preview reads them from the raw events (a real run aggregates them first)")
        if out.plain:
            out.record("found", organizations=result.organizations_found)
            return
        out.line(f"Found {result.organizations_found:,} active organizations to invoice")
        if out.out.is_terminal and result.organizations_found > 1:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._progress = Progress("[progress.description]{task.description}", BarColumn(),
                                      MofNCompleteColumn(), TimeRemainingColumn(), console=out.out, transient=True)
            self._progress.start()
            self._task = self._progress.add_task("invoicing", total=result.organizations_found)

    def outcome(self, o: OrgOutcome) -> None:
        out = self.output
        if out.plain:
            fields: dict[str, object] = {"id": o.organization_id, "status": o.status}
            if o.number:
                fields.update(number=o.number, total=o.total, currency=o.currency)
            if o.pdf_bytes:
                fields["pdf_bytes"] = o.pdf_bytes
            if o.done:
                fields["done"] = ",".join(d.split(",")[0].replace(" ", "_") for d in o.done)
            for component, message in o.errors:
                fields[f"error_{component}"] = message
            for warning in o.warnings:
                fields["warning"] = warning
            out.record("organization", **fields)
            return
        line = self._line(o)
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
            self._progress.advance(self._task)
        else:
            out.line(line)

    def _line(self, o: OrgOutcome) -> str:
        who = f"{o.organization_id} ({o.name})" if o.name else o.organization_id
        mark = _MARKS["failed"] if o.errors else _MARKS.get(o.status, "•")
        amount = f"{format_money(o.total, o.currency)}" if o.total is not None and o.currency else ""
        pdf = f", PDF {o.pdf_bytes / 1024:.1f} kB" if o.pdf_bytes else ""
        delivered = [_STEP_NAMES[d] for d in o.done if d in _STEP_NAMES]
        if o.status == "invoiced":
            verb = "would be invoiced as" if self.dry_run else "invoice generated:"
            steps = f"; {', '.join(delivered)}" if delivered else ""
            text = f"{mark} {who}: {verb} {o.number}, {amount}{pdf}{steps}"
        elif o.status == "already_invoiced":
            extra = f"; completed now: {', '.join(delivered or o.done)}" if o.done else ""
            text = f"{mark} {who}: already invoiced ({o.number}, {amount}){extra}"
        elif o.status == "nothing_to_bill":
            text = f"{mark} {who}: nothing to bill"
        else:
            text = f"{mark} {who}"
        for component, message in o.errors:
            text += f"\n   ❌ {component}: {message}"
        for warning in o.warnings:
            text += f"\n   ⚠️  {warning}"
        return text

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def invoice_header(output: Output, month: object, dry_run: bool, where: str, disabled: list[str],
                   job: str = "invoice-monthly", shard: object = None) -> None:
    from .jobs.deliver import FLAGS

    deliveries = ", ".join(f"{name} {'skipped (' + FLAGS[name] + ' is off)' if name in disabled else 'on'}"
                           for name in FLAGS)
    if dry_run:
        deliveries = "none (dry run: nothing is uploaded, created or sent)"
    if output.plain:
        output.record("start", job=job, month=month, dry_run=str(dry_run).lower(), database=where,
                      **({} if dry_run else {f"{name}": "off" if name in disabled else "on" for name in FLAGS}),
                      **({"shard": shard} if shard else {}))
        return
    output.banner(f"🧾 billing {job}", [("month", month), ("dry run", "yes" if dry_run else "no"),
                                       ("deliveries", deliveries), ("database", where),
                                       *((("shard", shard),) if shard else ())])


def invoice_summary(output: Output, result: InvoiceRunResult, job: str = "invoice-monthly") -> None:
    from .jobs.invoice import COMPONENTS

    errors = {c: result.errors_by_component.get(c, 0) for c in COMPONENTS}
    revenue = {cur: result.revenue[cur] for cur in sorted(result.revenue)}
    if output.plain:
        output.record("summary", job=job, month=result.month, found=result.organizations_found,
                      processed=result.processed, invoiced=result.statuses["invoiced"],
                      already_invoiced=result.statuses["already_invoiced"],
                      nothing_to_bill=result.statuses["nothing_to_bill"], failed=len(result.failed),
                      **{f"errors_{c}": n for c, n in errors.items()},
                      **{f"revenue_{cur}": amount for cur, amount in revenue.items()},
                      dry_run=str(result.dry_run).lower(), seconds=f"{result.seconds:.2f}",
                      outcome="ok" if result.ok else "partial")
        return
    rows: list[tuple[str, object]] = [
        ("Month", str(result.month)),
        ("Organizations processed", result.processed),
        ("Invoices generated" + (" (would be)" if result.dry_run else ""), result.statuses["invoiced"]),
        ("Already invoiced", result.statuses["already_invoiced"]),
        ("Nothing to bill", result.statuses["nothing_to_bill"]),
        ("Failed organizations", len(result.failed)),
    ]
    rows += [(f"Revenue ({cur})", format_money(amount, cur)) for cur, amount in revenue.items()] or \
        [("Revenue", "none")]
    rows += [("Processing time", f"{result.seconds:.2f} s"), ("Dry run", "yes" if result.dry_run else "no")]
    output.table("Summary", [("", "key"), ("", "value")], rows, kind="summary")
    output.table("Errors by component", [("Component", "component"), ("Errors", "errors")],
                 list(errors.items()), kind="errors")
    mark = "✅" if result.ok else "❌"
    output.line(f"{mark} {result.month}: {result.statuses['invoiced']} invoiced, {len(result.failed)} failed"
                + ("; rerun the same command to finish the failed ones" if not result.ok else ""))


# -- plans -------------------------------------------------------------------------------------------

def plans_table(output: Output, plans: list) -> None:
    from .money import format_unit_price

    rows = []
    for plan in plans:
        fees = []
        if plan.base_fee:
            fees.append(f"base {format_money(plan.base_fee, plan.currency)}")
        if plan.minimum_commitment:
            fees.append(f"minimum {format_money(plan.minimum_commitment, plan.currency)}")
        rows.append((plan.id, plan.name, plan.currency, "; ".join(fees) or "-", "", "", ""))
        for price in plan.prices:
            if price.tiers:
                detail = ", ".join(f"{'≤' + number(t.up_to) if t.up_to is not None else 'rest'} @ "
                                   f"{format_unit_price(t.unit_price)}"
                                   + (f" +{t.flat_fee}" if t.flat_fee else "") for t in price.tiers)
            elif price.model == "package":
                detail = f"{format_unit_price(price.unit_price)} per {number(price.package_size)}"
            else:
                detail = f"{format_unit_price(price.unit_price)} per unit"
            rows.append(("", "", "", "", price.metric, price.model,
                         detail + (f" ({number(price.included)} included)" if price.included else "")))
    output.table("Price plans", [("Plan", "plan"), ("Name", "name"), ("Currency", "currency"), ("Fees", "fees"),
                                 ("Metric", "metric"), ("Model", "model"), ("Price", "price")], rows, kind="plan")


# -- schedule ----------------------------------------------------------------------------------------

def schedule_output(output: Output, schedules: list, output_format: str, *, now, count: int) -> None:
    """`billing schedule`: a table, crontab lines, or the CronJob `schedule` values."""
    if output_format == "crontab":
        print("CRON_TZ=UTC")
        for s in schedules:
            print(f"{s.five_field}  billing {s.job}")
        return
    if output_format == "k8s":
        for s in schedules:
            print(f'{s.job}: "{s.five_field}"')
        return
    rows = [(s.job, s.six_field, s.five_field, s.describe(),
             ("," if output.plain else "\n").join(f"{m:%Y-%m-%dT%H:%MZ}" for m in s.next_runs(now, count)))
            for s in schedules]
    output.table("Schedules (UTC)", [("Job", "job"), ("Configured", "six_field"),
                                     ("Five fields", "five_field"), ("Meaning", "description"),
                                     (f"Next {count} runs", "next")], rows, kind="schedule")


# -- runs and status ---------------------------------------------------------------------------------

def print_json(data: object) -> None:
    """One JSON document on stdout (Decimals as exact strings, times as ISO 8601)."""
    import json

    print(json.dumps(data, default=str, indent=2, sort_keys=True))


def runs_table(output: Output, history: list[dict]) -> None:
    rows = []
    for run in history:
        counts = run["counts"] or {}
        done = ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "-"
        rows.append((run["id"], run["job"], run["period"], run["shard"] or "-",
                     run["status"] + (" (dry run)" if run["dry_run"] else ""),
                     f"{run['started_at']:%Y-%m-%d %H:%M:%S}Z",
                     f"{run['duration_seconds']:.1f} s" if run["duration_seconds"] is not None else "-",
                     done, run["message"] or ""))
    output.table("Recent runs", [("Run", "id"), ("Job", "job"), ("Period", "period"), ("Shard", "shard"),
                                 ("Status", "status"), ("Started", "started"), ("Duration", "duration"),
                                 ("Counts", "counts"), ("Message", "message")], rows, kind="run")


def status_table(output: Output, statuses: list, now) -> None:
    rows = []
    for s in statuses:
        last, ok = s.last_run, s.last_success
        age = now - ok["finished_at"] if ok else None
        failed = len((last or {}).get("failed") or [])
        rows.append((s.job, f"{last['status']} ({last['period']})" if last else "never",
                     f"{ok['finished_at']:%Y-%m-%d %H:%M}Z" if ok else "never",
                     f"{int(age.total_seconds() // 3600)} h {int(age.total_seconds() % 3600 // 60)} min" if age else "-",
                     failed, "ok" if not s.problems else "; ".join(s.problems)))
    output.table("Job status", [("Job", "job"), ("Last run", "last_run"), ("Last success", "last_success"),
                                ("Age", "age"), ("Failed orgs (last run)", "failed"), ("Health", "health")],
                 rows, kind="status")
