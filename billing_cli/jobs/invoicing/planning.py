"""Planning: what to do for each organization, decided from what is stored and what was rated.

Pure: no database, no clock, no outside service. The same plan drives a real run (acting.py)
and a dry run (previewing.py), so a preview shows exactly what a real run would do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from ...db.invoice_store import StoredInvoice
from ...db.usage_store import OrganizationRow
from ...delivery.invoice_email import BadAddress, check_address, check_header_value
from ...outcomes import Step
from ...periods import Month
from ...pricing import PricePlan, RatedInvoice, RatingError, rate


class Action(StrEnum):
    ISSUE = "issue"  # no live invoice: issue one, then its PDF and deliveries
    REGENERATE = "regenerate"  # --regenerate: void the live invoice, issue a new one
    VOID = "void"  # --regenerate, and now there is nothing to bill: void the live invoice
    COMPLETE = "complete"  # issued earlier: carry out the steps still missing
    SKIP = "skip"  # issued earlier, every step done
    NOTHING_TO_BILL = "nothing_to_bill"  # no usage and no fee
    REFUSE = "refuse"  # the organization's data cannot be invoiced: nothing is issued


@dataclass(frozen=True)
class PlanRules:
    """What the plan depends on besides each organization's data: the same for the whole run."""

    month: Month
    regenerate: bool = False
    deliveries: tuple[Step, ...] = ()  # the delivery steps that are on
    keep_pdf_files: bool = False  # PDFs are also written to an output folder


@dataclass(frozen=True)
class OrgPlan:
    organization: OrganizationRow
    action: Action
    rated: RatedInvoice | None = None  # ISSUE, REGENERATE: what will be invoiced
    existing: StoredInvoice | None = None  # the live invoice, if there is one
    steps: tuple[Step, ...] = ()  # ISSUE, REGENERATE, COMPLETE: the PDF and deliveries to carry out
    problem: str | None = None  # REFUSE: what is wrong and what to fix
    warnings: tuple[str, ...] = ()


def plan_organization(org: OrganizationRow, usage: Mapping[str, Decimal], plans: Mapping[str, PricePlan],
                      existing: StoredInvoice | None, rules: PlanRules, *, pdf_file_missing: bool = False) -> OrgPlan:
    """Decide one organization's action. `pdf_file_missing`: its stored invoice's PDF is not in the
    output folder (only meaningful with `rules.keep_pdf_files`)."""
    if existing is not None and not rules.regenerate:
        steps = _missing_steps(existing, rules, pdf_file_missing)
        return OrgPlan(org, Action.COMPLETE if steps else Action.SKIP, existing=existing, steps=steps)
    problem = _data_problem(org, plans)
    if problem is not None:
        return OrgPlan(org, Action.REFUSE, existing=existing, problem=problem)
    plan = plans[org.price_plan_id]  # type: ignore[index]  # checked by _data_problem
    try:
        rated = rate(usage, plan, rules.month)
    except RatingError as exc:
        return OrgPlan(org, Action.REFUSE, existing=existing, problem=str(exc))
    warnings = (f"usage not priced by plan {plan.id!r}: {', '.join(rated.unpriced_metrics)}",) \
        if rated.unpriced_metrics else ()
    if rated.is_empty:
        return OrgPlan(org, Action.VOID if existing is not None else Action.NOTHING_TO_BILL, existing=existing,
                       warnings=warnings)
    return OrgPlan(org, Action.REGENERATE if existing is not None else Action.ISSUE, rated=rated,
                   existing=existing, steps=(Step.PDF, *rules.deliveries), warnings=warnings)


def pending_deliveries(invoice: StoredInvoice, enabled: tuple[Step, ...]) -> tuple[Step, ...]:
    """The delivery steps that are on and have not succeeded yet for this invoice."""
    done = {Step.S3: invoice.s3_key is not None, Step.STRIPE: invoice.stripe_status == "sent",
            Step.EMAIL: invoice.emailed_at is not None}
    return tuple(step for step in enabled if not done[step])


def _missing_steps(invoice: StoredInvoice, rules: PlanRules, pdf_file_missing: bool) -> tuple[Step, ...]:
    pdf_missing = invoice.pdf_sha256 is None or (rules.keep_pdf_files and pdf_file_missing)
    return ((Step.PDF,) if pdf_missing else ()) + pending_deliveries(invoice, rules.deliveries)


def _data_problem(org: OrganizationRow, plans: Mapping[str, PricePlan]) -> str | None:
    """Why this organization cannot be invoiced as it is, naming what to fix; None if it can."""
    try:  # the bill-to data is copied onto the invoice and into e-mail headers: it must be clean
        check_address("organization e-mail", org.email)
    except BadAddress as exc:
        return f"{exc}: fix organizations.email"
    try:
        check_header_value("organization name", org.name)
    except BadAddress as exc:
        return f"{exc}: fix organizations.name"
    if not org.price_plan_id:
        return "no price plan: set organizations.price_plan_id to a plan id"
    plan = plans.get(org.price_plan_id)
    if plan is None:
        return f"price plan {org.price_plan_id!r} does not exist: add it with `billing plans apply`"
    if org.currency != plan.currency:
        return (f"organization currency {org.currency or '(none)'} does not match plan {plan.id!r} "
                f"currency {plan.currency}")
    return None
