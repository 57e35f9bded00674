"""Tables of the operator's commands: configuration, demo, plans, schedules, run history, health."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..money import format_money
from .output import Output, emit, number

if TYPE_CHECKING:
    from ..config import Problem, RawConfig
    from ..jobs.demo import DemoResult


# -- config ------------------------------------------------------------------------------------------

def config_table(output: Output, raw: RawConfig, problems: Sequence[Problem] = ()) -> None:
    """Every variable, its (masked) value and source; a row a problem is about is marked with its number."""
    from ..config import VARIABLES, mask

    marks: dict[str, list[str]] = {}
    for number_, problem in enumerate(problems, start=1):
        for name in problem.names:
            marks.setdefault(name, []).append(str(number_))
    rows = []
    for var in VARIABLES:
        value, source = raw.values[var.name]
        shown = "(not set)" if value is None else _printable(mask(var.name, value))
        mark = ",".join(marks.get(var.name, ()))
        if output.plain:
            rows.append((var.name, shown, source, mark or "-"))
        else:
            rows.append((var.name, shown, source, f"✗ {mark.replace(',', ', ')}" if mark else ""))
    output.table(f"Configuration (.env: {raw.env_file})",
                 [("Variable", "name"), ("Value", "value"), ("Source", "source"), ("Problem", "problem")], rows,
                 kind="setting")


def config_verdict(output: Output, problems: Sequence[Problem]) -> None:
    """`configuration is valid`, or every problem, numbered as the table marks them, and one error line."""
    if not problems:
        output.line("✅ configuration is valid" if not output.plain else "config status=valid")
        return
    if output.plain:
        for number_, problem in enumerate(problems, start=1):
            output.record("config-problem", number=number_, variables=",".join(problem.names), message=problem.message)
    else:
        output.line("")
        output.line("Problems:")
        for number_, problem in enumerate(problems, start=1):
            output.line(f"  {number_}. {problem.message}")
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    output.error(f"configuration is invalid: {count}, numbered above and marked in the table")


def _printable(value: str) -> str:
    """A value as text: bytes that are not UTF-8 (a problem of their own) shown escaped, as \\udce9,
    never written out raw."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def config_json(raw: RawConfig, problems: Sequence[Problem]) -> dict:
    """`billing config --json`: every setting (secrets masked as in the table; null when unset),
    where it comes from, and the problems found (none: valid)."""
    from ..config import VARIABLES, mask

    settings = []
    for var in VARIABLES:
        value, source = raw.values[var.name]
        settings.append({"name": var.name, "value": None if value is None else _printable(mask(var.name, value)),
                         "source": source})
    return {"env_file": str(raw.env_file), "settings": settings, "valid": not problems,
            "problems": [{"number": n, "message": p.message, "variables": list(p.names)}
                         for n, p in enumerate(problems, start=1)]}




# -- demo --------------------------------------------------------------------------------------------

def demo_summary(output: Output, result: DemoResult) -> None:
    output.table("Demo organizations",
                 [("Organization", "id"), ("Name", "name"), ("Status", "status"), ("Events", "events")],
                 [(o.id, o.name, o.status, o.events) for o in result.organizations],
                 kind="demo-organization")


# -- plans -------------------------------------------------------------------------------------------

def plans_table(output: Output, plans: list) -> None:
    from ..money import format_unit_price

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
                                   f"{format_unit_price(t.unit_price, plan.currency)}"
                                   + (f" +{t.flat_fee}" if t.flat_fee else "") for t in price.tiers)
            elif price.model == "package":
                detail = f"{format_unit_price(price.unit_price, plan.currency)} per {number(price.package_size)}"
            else:
                detail = f"{format_unit_price(price.unit_price, plan.currency)} per unit"
            # The table leaves the plan's cells blank under its first row; a record names its plan.
            plan_cells = (plan.id, plan.name, plan.currency) if output.plain else ("", "", "")
            rows.append((*plan_cells, "", price.metric, price.model,
                         detail + (f" ({number(price.included)} included)" if price.included else "")))
    output.table("Price plans", [("Plan", "plan"), ("Name", "name"), ("Currency", "currency"), ("Fees", "fees"),
                                 ("Metric", "metric"), ("Model", "model"), ("Price", "price")], rows, kind="plan")


def plans_json(plans: list) -> list[dict]:
    """`billing plans list --json`: one document per plan with its prices, amounts exact strings."""
    def text(value) -> str | None:
        return None if value is None else f"{value:f}"

    return [{"id": plan.id, "name": plan.name, "currency": plan.currency, "base_fee": text(plan.base_fee),
             "minimum_commitment": text(plan.minimum_commitment), "free_metrics": list(plan.free_metrics),
             "prices": [{"metric": price.metric, "description": price.description, "model": str(price.model),
                         "unit_price": text(price.unit_price), "package_size": text(price.package_size),
                         "included": text(price.included),
                         "tiers": [{"up_to": text(tier.up_to), "unit_price": text(tier.unit_price),
                                    "flat_fee": text(tier.flat_fee)} for tier in price.tiers]}
                        for price in plan.prices]}
            for plan in plans]


# -- tax rates ---------------------------------------------------------------------------------------

def taxes_json(rates: list) -> list[dict]:
    """`billing taxes list --json`: every rate version, percentages exact strings."""
    return [{"country": r.country, "region": r.region, "jurisdiction": r.jurisdiction, "name": r.name,
             "percentage": f"{r.percentage:f}", "effective_from": r.effective_from.isoformat(), "mention": r.mention}
            for r in rates]


def taxes_table(output: Output, rates: list) -> None:
    from ..taxes import format_percentage

    rows = [(r.jurisdiction, r.name, format_percentage(r.percentage), r.effective_from.isoformat(), r.mention or "")
            for r in rates]
    output.table("Tax rates", [("Jurisdiction", "jurisdiction"), ("Name", "name"), ("Rate", "percentage"),
                               ("In force from", "effective_from"), ("Mention", "mention")], rows, kind="tax_rate")


def taxes_applied_json(applied) -> dict:
    return {"dry_run": applied.dry_run, "created": applied.created, "updated": applied.updated,
            "unchanged": applied.unchanged, "kept": applied.kept}


def taxes_applied(output: Output, applied) -> None:
    verb = "would be " if applied.dry_run else ""
    for label, names in (("created", applied.created), ("updated", applied.updated),
                         ("unchanged", applied.unchanged), ("kept", applied.kept)):
        for name in names:
            if output.plain:
                output.record("tax_rate", rate=name, result=label, dry_run=applied.dry_run)
            elif label == "kept":
                output.line(f"• rate {name}: not in the file, kept (issued invoices may use it)")
            else:
                output.line(f"{'✅' if label != 'unchanged' else '•'} rate {name}: {verb}{label}")


# -- schedule ----------------------------------------------------------------------------------------

def schedule_output(output: Output, schedules: list, output_format: str, *, now, count: int) -> None:
    """`billing schedule`: a table, crontab lines, or the CronJob `schedule` values."""
    if output_format == "crontab":
        from .crontab import crontab_text

        emit(crontab_text(schedules), sys.stdout, end="")
        return
    if output_format == "k8s":
        for s in schedules:
            emit(f'{s.job}: "{s.five_field}"', sys.stdout)
        return
    rows = [(s.job, s.six_field, s.five_field, s.describe(),
             ("," if output.plain else "\n").join(f"{m:%Y-%m-%dT%H:%MZ}" for m in s.next_runs(now, count)))
            for s in schedules]
    output.table("Schedules (UTC)", [("Job", "job"), ("Configured", "six_field"),
                                     ("Five fields", "five_field"), ("Meaning", "description"),
                                     (f"Next {count} runs", "next")], rows, kind="schedule")


# -- exit codes --------------------------------------------------------------------------------------

def exit_codes_report(output: Output, codes, *, as_json: bool) -> None:
    if as_json:
        output.document([doc.as_dict() for doc in codes])
        return
    output.table("Exit codes", [("Code", "code"), ("Name", "name"), ("Meaning", "meaning"), ("Retry?", "retry")],
                 [(doc.code, doc.name or "-", doc.meaning, doc.retry) for doc in codes], kind="exit-code")


def schedule_json(schedules: list, *, now, count: int) -> list[dict]:
    """`billing schedule --json`: each job's expressions, their meaning and the next run times."""
    from ..periods import iso_utc

    return [{"job": str(s.job), "configured": s.configured, "six_field": s.six_field, "five_field": s.five_field,
             "description": s.describe(), "next_runs": [iso_utc(m) for m in s.next_runs(now, count)]}
            for s in schedules]


# -- runs and status ---------------------------------------------------------------------------------

def run_json(run: dict | None) -> dict | None:
    """One job_runs row as machine-readable output: times ISO 8601 UTC, the period as {label,
    start, end}, the duration a number, counts integers, revenue exact decimal strings."""
    from ..periods import iso_utc, period_label_json

    if run is None:
        return None
    duration = run["duration_seconds"]
    return {"id": int(run["id"]), "job": run["job"], "period": period_label_json(run["period"]),
            "shard": run["shard"], "dry_run": bool(run["dry_run"]), "targeted": bool(run.get("targeted")),
            "status": run["status"], "started_at": iso_utc(run["started_at"]),
            "finished_at": iso_utc(run["finished_at"]) if run["finished_at"] is not None else None,
            "duration_seconds": float(duration) if duration is not None else None,
            "counts": {k: int(v) for k, v in (run["counts"] or {}).items()},
            "errors": {k: int(v) for k, v in (run["errors"] or {}).items()},
            "revenue": {k: str(v) for k, v in (run["revenue"] or {}).items()},
            "failed": run["failed"] or [], "message": run["message"], "host": run["host"],
            "version": run["version"]}


def runs_report(output: Output, history: list[dict], *, as_json: bool) -> None:
    if as_json:
        output.document([run_json(run) for run in history])
        return
    rows = []
    for run in history:
        counts = run["counts"] or {}
        done = ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "-"
        rows.append((run["id"], run["job"], run["period"], run["shard"] or "-",
                     run["status"] + (" (dry run)" if run["dry_run"] else "") + (" (--org)" if run.get("targeted") else ""),
                     f"{run['started_at']:%Y-%m-%dT%H:%MZ}",
                     f"{run['duration_seconds']:.1f}s" if run["duration_seconds"] is not None else "-",
                     done, run["message"] or failures_in_brief(run["failed"] or [])))
    output.table("Recent runs", [("Run", "id"), ("Job", "job"), ("Period", "period"), ("Shard", "shard"),
                                 ("Status", "status"), ("Started", "started"), ("Duration", "duration"),
                                 ("Counts", "counts"), ("Message", "message")], rows, kind="run")


def failures_in_brief(failed: list[dict]) -> str:
    """A finished run's failed organizations (or hours), for a runs table with no message:
    `2 failed: org-a (data), org-b (s3)`."""
    if not failed:
        return ""
    shown = [f"{f['organization_id']} ({', '.join(sorted({e[0] for e in f['errors']}))})"
             if f["organization_id"] != "-" else f"hour {f['errors'][0][1].split()[0]}" for f in failed[:3]]
    more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
    return f"{len(failed)} failed: {', '.join(shown)}{more}"


def status_report(output: Output, statuses: list, now, *, as_json: bool) -> None:
    if as_json:
        output.document([{**s.as_dict(now), "last_run": run_json(s.last_run), "last_success": run_json(s.last_success)}
                    for s in statuses])
        return
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


# -- db, plans apply, demo ---------------------------------------------------------------------------

def schema_upgraded(output: Output, state) -> None:
    from .partitions import default_partition_warning, partitions_created

    if state.partitions is not None:
        partitions_created(output, state.partitions)
        if state.partitions.stray.events:
            output.warning(default_partition_warning(state.partitions.stray))
    if output.plain:
        output.record("db-upgrade", database=state.database, before=state.before or "none", after=state.after)
    elif state.before == state.after:
        output.line(f"✅ {state.database}: schema already at {state.after}")
    else:
        output.line(f"✅ {state.database}: schema upgraded from {state.before or 'empty'} to {state.after}")


def schema_revision_line(output: Output, state) -> None:
    current, head = state.current, state.head
    if output.plain:
        output.record("db-current", database=state.database, current=current or "none", head=head,
                      up_to_date=current == head)
    else:
        verdict = "up to date" if current == head else "behind: run `billing db upgrade`"
        output.line(f"{state.database}: revision {current or 'none'} (this program: {head}) — {verdict}")


def schema_revision_json(state) -> dict:
    """`billing db current --json`."""
    return {"database": state.database, "current": state.current, "head": state.head,
            "up_to_date": state.up_to_date}


def plans_applied(output: Output, applied) -> None:
    verb = "would be " if applied.dry_run else ""
    for label, ids in (("created", applied.created), ("updated", applied.updated), ("unchanged", applied.unchanged)):
        for plan_id in ids:
            if output.plain:
                output.record("plan", id=plan_id, result=label, dry_run=applied.dry_run)
            else:
                output.line(f"{'✅' if label != 'unchanged' else '•'} plan {plan_id}: {verb}{label}")


def demo_next_steps(output: Output, month, output_dir) -> None:
    """Where the demo's PDFs are and what to try next: on a terminal as text, piped as records."""
    pdfs = output_dir / str(month)
    deliveries = ("Deliveries are off in the demo: to upload, bill and e-mail, set INVOICE_ENABLE_S3, "
                  "INVOICE_ENABLE_STRIPE and INVOICE_ENABLE_EMAIL with their settings (billing config "
                  "--example) and run billing invoice-monthly.")
    commands = ["billing plans list", f"billing invoice-monthly --month {month} --dry-run",
                f"billing invoice-monthly --month {month} --org demo-acme --regenerate",
                f"billing aggregate-hourly --hour {month}-15T10 --dry-run"]
    if output.plain:
        output.record("pdfs", directory=str(pdfs))
        output.record("hint", message=deliveries)
        for command in commands:
            output.record("next", command=command)
        return
    output.line("")
    output.line(f"Invoice PDFs: {pdfs}")
    output.line(deliveries)
    output.line("Try next:")
    for command in commands:
        output.line(f"  {command}")
