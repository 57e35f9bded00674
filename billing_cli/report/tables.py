"""Tables of the operator's commands: configuration, demo, plans, schedules, run history, health."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..money import format_money
from .output import Output, number, print_json

if TYPE_CHECKING:
    from ..config import RawConfig
    from ..jobs.demo import DemoResult


# -- config ------------------------------------------------------------------------------------------

def config_table(output: Output, raw: RawConfig) -> None:
    from ..config import VARIABLES, mask

    rows = []
    for var in VARIABLES:
        value, source = raw.values[var.name]
        shown = "(not set)" if value is None else mask(var.name, value)
        rows.append((var.name, shown, source))
    output.table(f"Configuration (.env: {raw.env_file})",
                 [("Variable", "name"), ("Value", "value"), ("Source", "source")], rows, kind="setting")


def config_valid(output: Output) -> None:
    output.line("✅ configuration is valid" if not output.plain else "config status=valid")


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

def runs_report(output: Output, history: list[dict], *, as_json: bool) -> None:
    if as_json:
        print_json(history)
        return
    rows = []
    for run in history:
        counts = run["counts"] or {}
        done = ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "-"
        rows.append((run["id"], run["job"], run["period"], run["shard"] or "-",
                     run["status"] + (" (dry run)" if run["dry_run"] else "") + (" (--org)" if run.get("targeted") else ""),
                     f"{run['started_at']:%Y-%m-%d %H:%M:%S}Z",
                     f"{run['duration_seconds']:.1f} s" if run["duration_seconds"] is not None else "-",
                     done, run["message"] or ""))
    output.table("Recent runs", [("Run", "id"), ("Job", "job"), ("Period", "period"), ("Shard", "shard"),
                                 ("Status", "status"), ("Started", "started"), ("Duration", "duration"),
                                 ("Counts", "counts"), ("Message", "message")], rows, kind="run")


def status_report(output: Output, statuses: list, now, *, as_json: bool) -> None:
    if as_json:
        print_json([s.as_dict(now) for s in statuses])
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
                      up_to_date=str(current == head).lower())
    else:
        verdict = "up to date" if current == head else "behind: run `billing db upgrade`"
        output.line(f"{state.database}: revision {current or 'none'} (this program: {head}) — {verdict}")


def plans_applied(output: Output, applied) -> None:
    verb = "would be " if applied.dry_run else ""
    for label, ids in (("created", applied.created), ("updated", applied.updated), ("unchanged", applied.unchanged)):
        for plan_id in ids:
            if output.plain:
                output.record("plan", id=plan_id, result=label, dry_run=str(applied.dry_run).lower())
            else:
                output.line(f"{'✅' if label != 'unchanged' else '•'} plan {plan_id}: {verb}{label}")


def demo_next_steps(output: Output, month, output_dir) -> None:
    if output.plain:
        return
    output.line("")
    output.line(f"Invoice PDFs: {output_dir / str(month)}")
    output.line("Deliveries are off in the demo: to upload, bill and e-mail, set INVOICE_ENABLE_S3, "
                "INVOICE_ENABLE_STRIPE and INVOICE_ENABLE_EMAIL with their settings (billing config "
                "--example) and run billing invoice-monthly.")
    output.line("Try next:")
    output.line("  billing plans list")
    output.line(f"  billing invoice-monthly --month {month} --dry-run")
    output.line(f"  billing invoice-monthly --month {month} --org demo-acme --regenerate")
    output.line(f"  billing aggregate-hourly --hour {month}-15T10 --dry-run")
