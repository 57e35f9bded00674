"""usage_events' partitions on screen and in the logs: `billing usage prune` (the months, each
one's fate, the summary) and what `billing db upgrade` made ahead."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .output import Output, number

if TYPE_CHECKING:
    from ..db.partitions import StrayEvents
    from ..jobs.partitions import MonthPrune, PartitionUpkeep, PruneResult
    from ..periods import Month


def size(n_bytes: int) -> str:
    """Disk space for people: 1.5 GB, 640 kB."""
    value = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


class PruneScreen:
    """What the run layer tells about a prune run, rendered as it happens."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self.notice, self.warning, self.set_context = output.notice, output.warning, output.set_context

    def prune_started(self, before: Month, dry_run: bool, force: bool, database: str) -> None:
        if self.output.plain:
            self.output.record("start", job="usage-prune", before=before, dry_run=dry_run, force=force,
                               database=database)
            return
        self.output.banner("🧹 billing usage prune", [
            ("months", f"every monthly partition of usage_events before {before}; the hourly roll-ups stay"),
            ("force", "yes: months not invoiced and reconciled are dropped too" if force else "no"),
            ("dry run", "yes" if dry_run else "no"), ("database", database)])

    def month_done(self, item: MonthPrune, dry_run: bool) -> None:
        status = item.status.value
        if self.output.plain:
            self.output.record("month", level="warning" if status != "pruned" else "info", month=item.month,
                               partition=item.partition.name, status=status, events=item.partition.events,
                               bytes=item.partition.bytes,
                               **({"reasons": "; ".join(item.reasons)} if item.reasons else {}))
            return
        what = f"{item.partition.name}: {number(item.partition.events)} events rolled up, {size(item.partition.bytes)}"
        if status == "pruned":
            forced = f" (forced: {'; '.join(item.reasons)})" if item.reasons else ""
            verb = "would drop" if dry_run else "dropped"
            self.output.line(f"✅ {item.month}  {verb} {what}{forced}")
        elif status == "refused":
            self.output.line(f"⛔ {item.month}  kept {what}: {'; '.join(item.reasons)}")
        else:
            self.output.line(f"❌ {item.month}  {what}: {'; '.join(item.reasons)}")


def prune_summary(output: Output, result: PruneResult) -> None:
    fields = {"before": str(result.before), "months": len(result.months), "pruned": len(result.pruned),
              "failed": len(result.failed), "events": sum(m.partition.events for m in result.pruned),
              "bytes": sum(m.partition.bytes for m in result.pruned), "dry_run": result.dry_run,
              "seconds": round(result.seconds, 3), "outcome": result.summary().outcome.value}
    if output.plain:
        output.record("summary", job="usage-prune", **fields)
        return
    if not result.months:
        output.line(f"✅ no monthly partition before {result.before}: nothing to prune")
        return
    mark = "✅" if not result.failed else "❌"
    verb = "would be dropped" if result.dry_run else "dropped"
    output.line(f"{mark} {fields['pruned']} of {fields['months']} month(s) before {result.before} {verb}: "
                f"{number(fields['events'])} events (as rolled up), {size(fields['bytes'])}; {fields['failed']} failed; "
                f"hourly roll-ups kept; {fields['seconds']} s"
                f"{'  (dry run: nothing dropped)' if result.dry_run else ''}")


def partitions_created(output: Output, upkeep: PartitionUpkeep) -> None:
    """One notice per monthly partition of usage_events made ahead (or that a dry run would make)."""
    for created in upkeep.created:
        if upkeep.dry_run:
            output.notice(f"would create partition {created.name} for {created.month}")
        else:
            moved = f", {number(created.moved_events)} events moved into it from the default partition" \
                if created.moved_events else ""
            output.notice(f"created partition {created.name} for {created.month}{moved}")
    for month, error in upkeep.failed:
        output.warning(f"partition usage_events_{month.year:04d}_{month.month:02d} for {month} not created: {error}; "
                       "the next aggregate-hourly run (or billing db upgrade) retries; its events go to the default "
                       "partition meanwhile, billed all the same")


def default_partition_warning(stray: StrayEvents) -> str:
    open_months = [(m, n) for m, n in stray.by_month.items() if m not in stray.pruned]
    pruned = [(m, n) for m, n in stray.by_month.items() if m in stray.pruned]
    parts = []
    if open_months:
        parts.append(f"(occurred_at in {_months(open_months)}): rolled up and billed all the same; check the "
                     "producer's clock, or for a backfilled month create its partition: "
                     "SELECT billing_usage_events_partition('YYYY-MM-01')")
    if pruned:
        parts.append(f"(occurred_at in pruned months: {_months(pruned)}): NOT rolled up or billed, those months' "
                     "events were pruned (billing usage prune) and their partitions are not made again; find out "
                     "why they arrived, then delete them")
    return (f"{number(stray.events)} usage events are in usage_events' default partition, outside every monthly "
            f"partition {'; and '.join(parts)}")


def _months(months: list[tuple[str, int]]) -> str:
    return ", ".join(f"{month} ({number(count)})" for month, count in months[:5]) + \
        (f" and {len(months) - 5} more months" if len(months) > 5 else "")
