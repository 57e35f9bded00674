"""A run's summary as plain data: for notifications, webhooks and machine-readable output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from .jobs.aggregate import AggregationResult
    from .jobs.invoice import InvoiceRunResult


@dataclass
class RunSummary:
    job: str
    period: str  # the month, or the window of hours
    outcome: str  # succeeded | partial | failed | interrupted
    dry_run: bool
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    revenue: dict[str, str] = field(default_factory=dict)  # currency -> exact decimal text
    failed: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None  # why a failed run stopped

    def as_dict(self) -> dict[str, Any]:
        return {"job": self.job, "period": self.period, "outcome": self.outcome, "dry_run": self.dry_run,
                "seconds": round(self.seconds, 3), "counts": self.counts, "errors": self.errors,
                "revenue": self.revenue, "failed": self.failed, "message": self.message,
                "version": __version__}

    def text(self) -> str:
        """The plain-text body of a notification e-mail."""
        lines = [f"Job:             {self.job}", f"Period:          {self.period}",
                 f"Outcome:         {self.outcome}", f"Dry run:         {'yes' if self.dry_run else 'no'}",
                 f"Processing time: {self.seconds:.1f} s"]
        if self.message:
            lines.append(f"Stopped because: {self.message}")
        lines += [f"{key.replace('_', ' ').capitalize() + ':':<17}{value:,}" for key, value in self.counts.items()]
        lines.append("Errors by component: " + (", ".join(f"{k} {v}" for k, v in self.errors.items()) or "none"))
        lines.append("Revenue: " + (", ".join(f"{amount} {cur}" for cur, amount in self.revenue.items()) or "none"))
        if self.failed:
            lines += ["", "Failed:"]
            for item in self.failed:
                for component, message in item["errors"]:
                    lines.append(f"  {item['organization_id']}: {component}: {message}")
        return "\n".join(lines) + "\n"


def invoice_run_summary(result: InvoiceRunResult, job: str = "invoice-monthly") -> RunSummary:
    from .jobs.invoice import COMPONENTS

    outcome = "interrupted" if result.interrupted else "succeeded" if result.ok else "partial"
    return RunSummary(
        job=job, period=str(result.month), outcome=outcome,
        dry_run=result.dry_run, seconds=result.seconds,
        counts={"found": result.organizations_found, "processed": result.processed,
                "invoiced": result.statuses["invoiced"], "already_invoiced": result.statuses["already_invoiced"],
                "nothing_to_bill": result.statuses["nothing_to_bill"], "failed": len(result.failed)},
        errors={c: result.errors_by_component.get(c, 0) for c in COMPONENTS},
        revenue={cur: str(result.revenue[cur]) for cur in sorted(result.revenue)},
        failed=[{"organization_id": o.organization_id, "errors": [list(e) for e in o.errors]} for o in result.failed],
    )


def aggregation_summary(result: AggregationResult) -> RunSummary:
    outcome = "interrupted" if result.interrupted else "succeeded" if result.ok else "partial"
    return RunSummary(
        job="aggregate-hourly", period=str(result.window), outcome=outcome,
        dry_run=result.dry_run, seconds=result.seconds,
        counts={"hours": len(result.hours), "failed_hours": len(result.failed_hours), "events": result.events},
        failed=[{"organization_id": "-", "errors": [["hour", f"{h.hour:%Y-%m-%dT%H}:00Z {h.error}"]]}
                for h in result.failed_hours],
    )


def failed_run_summary(job: str, period: str, message: str, dry_run: bool, seconds: float) -> RunSummary:
    return RunSummary(job=job, period=period, outcome="failed", dry_run=dry_run, seconds=seconds, message=message)
