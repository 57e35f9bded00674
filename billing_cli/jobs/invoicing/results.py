"""What an invoicing run did: one outcome per organization, and the run's counts and totals."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ...money import exact_sum
from ...outcomes import Component, Job, OrgStatus, Step, run_outcome
from ...anchors import BillingPeriod
from ...periods import Month, iso_utc
from ...summary import RunSummary
from ...composition import PeriodDelta
from .planning import Action, OrgPlan


@dataclass
class OrgOutcome:
    """What happened to one organization in this run (in a dry run: what would happen)."""

    organization_id: str
    name: str = ""
    status: OrgStatus = OrgStatus.FAILED
    action: Action | None = None  # the plan's action for this organization
    number: str | None = None
    currency: str | None = None
    total: Decimal | None = None  # tax included
    tax: Decimal | None = None  # the invoice's tax (0 with taxes off), issued in this run
    pdf_bytes: int | None = None
    pdf_path: str | None = None  # where the PDF file was written, if it was
    steps: list[Step] = field(default_factory=list)  # carried out in this run, in order
    voided_number: str | None = None  # the invoice a regeneration voided
    voided_total: Decimal | None = None  # and its total (same currency as the replacement)
    final: bool = False  # the organization is no longer active: its final (or a late) invoice
    adjusted: tuple[PeriodDelta, ...] = ()  # earlier periods this invoice adjusts for late usage
    late: PeriodDelta | None = None  # an invoiced month's usage that changed since: on the next invoice
    pending: tuple[Step, ...] = ()  # a dry run: the steps a real run would carry out
    period: BillingPeriod | None = None  # the organization's period billed
    errors: list[tuple[Component, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def fail(self, component: Component, message: str) -> OrgOutcome:
        self.errors.append((component, message))
        if self.status != OrgStatus.ALREADY_INVOICED:
            self.status = OrgStatus.FAILED
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"organization_id": self.organization_id, "action": self.action, "status": self.status,
                "period": {"label": self.period.label, "start": iso_utc(self.period.start),
                           "end": iso_utc(self.period.end)} if self.period is not None else None,
                "number": self.number, "currency": self.currency,
                "total": str(self.total) if self.total is not None else None,
                "tax": str(self.tax) if self.tax is not None else None,
                "voids": self.voided_number,
                "voided_total": str(self.voided_total) if self.voided_total is not None else None, "done": list(self.steps), "pending": list(self.pending),
                "final": self.final,
                "adjustments": [{"period": str(d.period), "amount": str(d.amount),
                                 "usage": {m: str(q) for m, q in d.usage.items()}} for d in self.adjusted],
                "late_usage": {"amount": str(self.late.amount), "usage": {m: str(q) for m, q in self.late.usage.items()}}
                if self.late else None,
                "errors": [list(e) for e in self.errors], "warnings": self.warnings}


@dataclass
class InvoiceRunResult:
    """Counts and totals only (organizations are streamed, never all kept in memory), plus the
    failed organizations' outcomes for the report, and a dry run's plan when it was asked for."""

    month: Month
    dry_run: bool
    job: str = Job.INVOICE_MONTHLY
    organizations_found: int = 0
    aggregated_hours: int = 0
    stale_hours_previewed: int = 0
    statuses: Counter[OrgStatus] = field(default_factory=Counter)
    errors_by_component: Counter[Component] = field(default_factory=Counter)
    revenue: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))  # tax included
    tax: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))  # of the revenue
    failed: list[OrgOutcome] = field(default_factory=list)
    plan: list[OrgOutcome] | None = None  # every outcome, kept only when asked for (--dry-run --json)
    seconds: float = 0.0
    interrupted: bool = False
    unfinished: int = 0  # organizations still in flight when the grace period ended
    not_due: int = 0  # organizations whose period of the month has not ended yet: left for a later run

    @property
    def processed(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> bool:
        return not self.failed

    def add(self, outcome: OrgOutcome) -> None:
        self.statuses[outcome.status] += 1
        for component, _ in outcome.errors:
            self.errors_by_component[component] += 1
        if outcome.errors:
            self.failed.append(outcome)
        # Issued by this run (a dry run: would be), even when a later step failed: the invoice exists,
        # its number taken and its total owed; the rerun that completes it counts it as already invoiced.
        issued = outcome.status == OrgStatus.INVOICED or Step.ISSUED in outcome.steps
        if issued and outcome.total is not None and outcome.currency:
            self.revenue[outcome.currency] = exact_sum((self.revenue[outcome.currency], outcome.total))
            if outcome.tax is not None:
                self.tax[outcome.currency] = exact_sum((self.tax[outcome.currency], outcome.tax))
        if self.plan is not None:
            self.plan.append(outcome)

    def absorb(self, other: InvoiceRunResult) -> None:
        """Add another pass of the same run (a catch-up of an earlier month) to this result."""
        self.organizations_found += other.organizations_found
        self.aggregated_hours += other.aggregated_hours
        self.stale_hours_previewed += other.stale_hours_previewed
        self.statuses.update(other.statuses)
        self.errors_by_component.update(other.errors_by_component)
        for currency, amount in other.revenue.items():
            self.revenue[currency] = exact_sum((self.revenue[currency], amount))
        for currency, amount in other.tax.items():
            self.tax[currency] = exact_sum((self.tax[currency], amount))
        self.failed += other.failed
        if self.plan is not None and other.plan is not None:
            self.plan += other.plan
        self.seconds += other.seconds
        self.interrupted = self.interrupted or other.interrupted
        self.unfinished += other.unfinished
        self.not_due += other.not_due

    def summary(self) -> RunSummary:
        return RunSummary(
            job=self.job, period=self.month, outcome=run_outcome(ok=self.ok, interrupted=self.interrupted),
            dry_run=self.dry_run, seconds=self.seconds,
            counts={"found": self.organizations_found, "processed": self.processed,
                    "invoiced": self.statuses[OrgStatus.INVOICED],
                    "already_invoiced": self.statuses[OrgStatus.ALREADY_INVOICED],
                    "nothing_to_bill": self.statuses[OrgStatus.NOTHING_TO_BILL], "failed": len(self.failed),
                    "not_due": self.not_due},
            errors={c.value: self.errors_by_component.get(c, 0) for c in Component},
            revenue={cur: str(self.revenue[cur]) for cur in sorted(self.revenue)},
            tax={cur: str(self.tax[cur]) for cur in sorted(self.tax)},
            failed=[{"organization_id": o.organization_id, "errors": [list(e) for e in o.errors]}
                    for o in self.failed],
        )

    def json_extra(self) -> dict[str, Any]:
        """What --json prints beside the summary: a dry run's plan, when it was kept."""
        if self.plan is None:
            return {}
        return {"plan": [o.as_dict() for o in sorted(self.plan, key=lambda o: o.organization_id)]}


def expected_outcome(plan: OrgPlan) -> OrgOutcome:
    """The outcome a plan leads to if all goes well (a failure while carrying it out changes it)."""
    org, existing = plan.organization, plan.existing
    outcome = OrgOutcome(org.id, org.name, status=_STATUS[plan.action], action=plan.action,
                         warnings=list(plan.warnings), final=plan.final, late=plan.late, period=plan.period,
                         adjusted=plan.invoice.adjusted if plan.invoice is not None else ())
    if plan.action in (Action.COMPLETE, Action.SKIP) and existing is not None:
        outcome.number, outcome.currency, outcome.total = existing.number, existing.currency, existing.total
        outcome.pdf_bytes = existing.pdf_bytes
    elif plan.action in (Action.REGENERATE, Action.VOID) and existing is not None:
        outcome.voided_number, outcome.voided_total = existing.number, existing.total
    if plan.action == Action.REFUSE:
        outcome.fail(Component.DATA, plan.problem or "cannot be invoiced")
    return outcome


_STATUS = {Action.ISSUE: OrgStatus.INVOICED, Action.REGENERATE: OrgStatus.INVOICED,
           Action.VOID: OrgStatus.NOTHING_TO_BILL, Action.COMPLETE: OrgStatus.ALREADY_INVOICED,
           Action.SKIP: OrgStatus.ALREADY_INVOICED, Action.NOTHING_TO_BILL: OrgStatus.NOTHING_TO_BILL,
           Action.REFUSE: OrgStatus.FAILED}
