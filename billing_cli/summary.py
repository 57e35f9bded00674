"""A run's summary as plain data: for notifications, webhooks and machine-readable output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .outcomes import RunOutcome
from .periods import Period, period_json


@dataclass
class RunSummary:
    job: str
    period: Period  # the month, or the window of hours
    outcome: RunOutcome
    dry_run: bool
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    revenue: dict[str, str] = field(default_factory=dict)  # currency -> exact decimal text (tax included)
    tax: dict[str, str] = field(default_factory=dict)  # currency -> the tax in that revenue (taxes on)
    failed: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None  # why a failed run stopped

    @classmethod
    def failed_run(cls, job: str, period: Period, message: str, dry_run: bool, seconds: float) -> RunSummary:
        """A run stopped by an error before it finished."""
        return cls(job=job, period=period, outcome=RunOutcome.FAILED, dry_run=dry_run, seconds=seconds,
                   message=message)

    def as_dict(self) -> dict[str, Any]:
        return {"job": self.job, "period": period_json(self.period), "outcome": self.outcome, "dry_run": self.dry_run,
                "seconds": round(self.seconds, 3), "counts": self.counts, "errors": self.errors,
                "revenue": self.revenue, "tax": self.tax, "failed": self.failed, "message": self.message,
                "version": __version__}

    def text(self) -> str:
        """The plain-text body of a notification e-mail."""
        lines = [f"Job:             {self.job}", f"Period:          {self.period}",
                 f"Outcome:         {self.outcome.value}", f"Dry run:         {'yes' if self.dry_run else 'no'}",
                 f"Processing time: {self.seconds:.1f} s"]
        if self.message:
            lines.append(f"Stopped because: {self.message}")
        lines += [f"{key.replace('_', ' ').capitalize() + ':':<17}{value:,}" for key, value in self.counts.items()]
        lines.append("Errors by component: " + (", ".join(f"{k} {v}" for k, v in self.errors.items()) or "none"))
        lines.append("Revenue: " + (", ".join(f"{amount} {cur}" for cur, amount in self.revenue.items()) or "none"))
        if self.tax:
            lines.append("Of which tax: " + ", ".join(f"{amount} {cur}" for cur, amount in self.tax.items()))
        if self.failed:
            lines += ["", "Failed:"]
            for item in self.failed:
                for component, message in item["errors"]:
                    lines.append(f"  {item['organization_id']}: {component}: {message}")
        return "\n".join(lines) + "\n"
