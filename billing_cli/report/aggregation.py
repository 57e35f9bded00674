"""aggregate-hourly on screen and in the logs: the window, one line per hour, the summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..periods import format_hour
from .output import Output, number
from .partitions import default_partition_warning, partitions_created

if TYPE_CHECKING:
    from ..jobs.aggregate import AggregationResult, HourResult
    from ..jobs.partitions import PartitionUpkeep
    from ..periods import HourRange


class AggregationScreen:
    """What the run layer tells about an aggregation run, rendered as it happens."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self.dry_run = False
        self.notice, self.warning, self.set_context = output.notice, output.warning, output.set_context

    def aggregation_started(self, window: HourRange, why: str, late_hours: list, dry_run: bool,
                            database: str) -> None:
        self.dry_run = dry_run
        aggregation_header(self.output, window, why, late_hours, dry_run, database)

    def hour_done(self, hour: HourResult) -> None:
        aggregation_hour(self.output, hour, self.dry_run)

    def partitions_kept(self, upkeep: PartitionUpkeep) -> None:
        partitions_created(self.output, upkeep)


def aggregation_header(output: Output, window: HourRange, why: str, late_hours: list, dry_run: bool,
                       where: str) -> None:
    late = ",".join(format_hour(h) for h in late_hours)
    if output.plain:
        output.record("start", job="aggregate-hourly", window_start=format_hour(window.start),
                      window_end=format_hour(window.end), hours=len(window), why=why,
                      **({"late_hours": late} if late_hours else {}),
                      dry_run=dry_run, database=where)
        return
    output.banner("🕐 billing aggregate-hourly", [
        ("window", f"{window}: {why}"),
        *((("late hours", f"{len(late_hours)} older hour(s) whose events changed since: {late}"),)
          if late_hours else ()),
        ("dry run", "yes" if dry_run else "no"), ("database", where)])


def aggregation_hour(output: Output, hour: HourResult, dry_run: bool) -> None:
    verb = "would write" if dry_run else "wrote"
    if output.plain:
        output.record("hour", hour=format_hour(hour.hour), status="ok" if hour.ok else "error",
                      organizations=hour.organizations, events=hour.events, inserted=hour.inserted,
                      updated=hour.updated, deleted=hour.deleted, orphan_events=hour.orphan_events,
                      seconds=round(hour.seconds, 3), **({"error": hour.error} if hour.error else {}))
        return
    if hour.ok:
        changed = hour.inserted + hour.updated
        orphans = f", {number(hour.orphan_events)} of them orphan (no organizations row)" \
            if hour.orphan_events else ""
        output.line(f"✅ {format_hour(hour.hour)}  {number(hour.organizations)} organizations, "
                    f"{number(hour.events)} events → {verb} {number(changed)} rows, "
                    f"removed {number(hour.deleted)} stale{orphans}  ({hour.seconds:.2f} s)")
    else:
        output.line(f"❌ {format_hour(hour.hour)}  {hour.error}")


def aggregation_summary(output: Output, result: AggregationResult) -> None:
    output.table(
        "Usage by metric",
        [("Metric", "metric"), ("Organizations", "organizations"),
         ("Events", "events"), ("Quantity", "quantity")],
        [(m.metric, m.organizations, m.events, m.quantity)
         for m in result.totals_by_metric()],
        kind="metric",
    )
    fields = {
        "hours": len(result.hours),
        "failed_hours": len(result.failed_hours),
        "organizations": result.organizations,
        "events": result.events,
        "rows_written": sum(h.inserted + h.updated for h in result.hours),
        "rows_removed": sum(h.deleted for h in result.hours),
        "orphan_events": result.orphan_events,
        "default_partition_events": result.default_partition.events,
        "dry_run": result.dry_run,
        "seconds": round(result.seconds, 3),
        "outcome": result.summary().outcome.value,
    }
    if result.orphan_events:
        output.warning(orphan_warning(result))
    if result.default_partition.events:
        output.warning(default_partition_warning(result.default_partition))
    if output.plain:
        output.record("summary", job="aggregate-hourly", **fields)
        return
    mark = "✅" if result.ok else "❌"
    output.line(f"{mark} {fields['hours']} hours aggregated, {fields['failed_hours']} failed; "
                f"{number(result.events)} events from {number(fields['organizations'])} organizations"
                f"; {number(fields['rows_written'])} rows "
                f"{'would be ' if result.dry_run else ''}written, {number(fields['rows_removed'])} removed; "
                f"{number(fields['orphan_events'])} orphan events; {fields['seconds']} s"
                f"{'  (dry run: nothing written)' if result.dry_run else ''}")




def orphan_warning(result: AggregationResult) -> str:
    ids = result.orphan_ids
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    return (f"{number(result.orphan_events)} events of {len(ids)} organization id(s) with no organizations row "
            f"(orphan usage: {shown}): rolled up, and billed once the organization exists; check the producer "
            "or create the organizations")
