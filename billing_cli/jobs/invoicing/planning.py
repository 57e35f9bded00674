"""Planning: what to do for each organization, decided from what is stored and what was rated.

Pure: no database, no clock, no outside service. The same plan drives a real run (acting.py)
and a dry run (previewing.py), so a preview shows exactly what a real run would do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import StrEnum

from ...addresses import CountryError
from ...anchors import BillingPeriod, FeeShare, fee_share
from ...composition import (ComposedInvoice, Fees, PeriodDelta, PeriodRecord, compose, credit_balances,
                            period_delta)
from ...db.billing_history import OrgHistory
from ...db.invoice_store import StoredInvoice
from ...db.usage_store import OrganizationRow
from ...delivery.invoice_email import BadAddress, check_address, check_header_value
from ...money import ZERO, CurrencyError, Precision, exact_sum, format_money
from ...outcomes import Step
from ...periods import Month
from ...pricing import PricePlan, RatingError
from ...taxes import TaxError, TaxSetup, taxes_for


class Action(StrEnum):
    ISSUE = "issue"  # no live invoice: issue one, then its PDF and deliveries
    REGENERATE = "regenerate"  # --regenerate: void the live invoice, issue a new one
    VOID = "void"  # --regenerate, and now there is nothing to bill: void the live invoice
    COMPLETE = "complete"  # issued earlier: carry out the steps still missing
    SKIP = "skip"  # issued earlier, every step done
    NOTHING_TO_BILL = "nothing_to_bill"  # no usage, no fee, no adjustment
    REFUSE = "refuse"  # the organization's data cannot be invoiced: nothing is issued


@dataclass(frozen=True)
class PlanRules:
    """What the plan depends on besides each organization's data: the same for the whole run."""

    month: Month
    regenerate: bool = False
    deliveries: tuple[Step, ...] = ()  # the delivery steps that are on
    keep_pdf_files: bool = False  # PDFs are also written to an output folder
    late_usage_months: int = 3  # how many earlier months an invoice adjusts for late usage
    precision: Precision = Precision.ISO  # what amounts are rounded to (STRIPE: what Stripe can charge)
    taxes: TaxSetup | None = None  # INVOICE_TAXES on: the seller's country and every rate version
    einvoice: bool = False  # INVOICE_EINVOICE on: an EN 16931 invoice names the buyer's country


@dataclass(frozen=True)
class OrgPlan:
    organization: OrganizationRow
    action: Action
    invoice: ComposedInvoice | None = None  # ISSUE, REGENERATE: every line that will be invoiced
    existing: StoredInvoice | None = None  # the live invoice of the month, if there is one
    steps: tuple[Step, ...] = ()  # ISSUE, REGENERATE, COMPLETE: the PDF and deliveries to carry out
    problem: str | None = None  # REFUSE: what is wrong and what to fix
    warnings: tuple[str, ...] = ()
    late: PeriodDelta | None = None  # COMPLETE, SKIP: usage that changed after the month was invoiced
    reversals: tuple[str, ...] = ()  # void invoices whose Stripe invoice is voided/credited first (numbers)
    credit_notes: tuple[int, ...] = ()  # credit notes (ids) with a step still missing: completed by this run
    history: OrgHistory = field(default_factory=OrgHistory)  # what the plan was made from
    period: BillingPeriod | None = None  # the organization's period of the month

    @property
    def final(self) -> bool:
        """The organization is no longer active: this is its final invoice (or a late one)."""
        return not self.organization.active

    @property
    def revisions(self) -> dict[Month, int]:
        """The usage revision of each period the invoice accounts for (its own month's is the
        one read with the month's usage)."""
        return {**self.history.revisions, self.organization_month: self.organization.usage_revision}

    @property
    def organization_month(self) -> Month:
        assert self.invoice is not None
        return self.invoice.period


def plan_organization(org: OrganizationRow, usage: Mapping[str, Decimal], plans: Mapping[str, PricePlan],
                      existing: StoredInvoice | None, rules: PlanRules, *, history: OrgHistory = OrgHistory(),
                      pdf_file_missing: bool = False, pending_reversals: tuple[str, ...] = (),
                      credit_notes: tuple[int, ...] = (), earlier_plans: Mapping[Month, PricePlan] = {}) -> OrgPlan:
    """Decide one organization's action for its period of `rules.month` (its usage is that
    period's). `pdf_file_missing`: its stored invoice's PDF is not in the
    output folder (only meaningful with `rules.keep_pdf_files`). `pending_reversals`: its void
    invoices whose Stripe invoice is still to be voided or credited. `credit_notes`: its credit
    notes with a step still missing, completed whatever the action. `earlier_plans`: the organization's
    plan as defined when each earlier period started, for the periods no live invoice billed (an
    invoice's own plan snapshot rates the periods it billed)."""
    plan = _plan(org, usage, plans, existing, rules, history, pdf_file_missing, pending_reversals, earlier_plans)
    return replace(plan, period=org.billing_period(rules.month), credit_notes=credit_notes)


def plan_void_steps(org: OrganizationRow, rules: PlanRules, *, pending_reversals: tuple[str, ...] = (),
                    credit_notes: tuple[int, ...] = ()) -> OrgPlan:
    """An organization the month does not invoice (a customer who left, or one whose period has
    not ended) that still has void invoices whose Stripe invoice is to be reversed
    (`pending_reversals`), or credit notes with a step missing: those steps alone, nothing billed."""
    if pending_reversals and Step.STRIPE not in rules.deliveries:
        return OrgPlan(org, Action.NOTHING_TO_BILL, credit_notes=credit_notes,
                       warnings=(_stays_open(pending_reversals),))
    return OrgPlan(org, Action.NOTHING_TO_BILL, reversals=pending_reversals, credit_notes=credit_notes)


def _stays_open(reversals: tuple[str, ...]) -> str:
    return f"the Stripe invoice of void {', '.join(reversals)} stays open until a run with Stripe on voids it"


def _plan(org: OrganizationRow, usage: Mapping[str, Decimal], plans: Mapping[str, PricePlan],
          existing: StoredInvoice | None, rules: PlanRules, history: OrgHistory, pdf_file_missing: bool,
          pending_reversals: tuple[str, ...], earlier_plans: Mapping[Month, PricePlan]) -> OrgPlan:
    month = rules.month
    warnings = _too_old(history, rules)
    # Void invoices whose Stripe invoice goes first: those left pending, and the one this plan voids.
    voided_now: tuple[str, ...] = ()
    if existing is not None and existing.stripe_invoice_id is not None and rules.regenerate:
        voided_now = (existing.number,)
    pending, reversals = pending_reversals, pending_reversals + voided_now
    if reversals and Step.STRIPE not in rules.deliveries:
        warnings += (_stays_open(reversals),)
        pending = reversals = ()
    if existing is not None and not rules.regenerate:
        steps = _missing_steps(existing, rules, pdf_file_missing)
        late = _late_usage(org, usage, plans, history, month, rules.precision)
        now_in = plans.get(org.price_plan_id or "")
        billed_in = history.own.plan if history.own is not None else None
        if late is not None and now_in is not None and billed_in is not None and billed_in.currency != now_in.currency:
            # Never on the next invoice: that one is in another currency (see _plan's `foreign`).
            warnings += (f"usage of {month} changed after it was billed in {billed_in.currency}; the organization is "
                         f"now billed in {now_in.currency}, and an amount is never converted: not billed; `billing "
                         f"reconcile --month {month}` shows the difference (settle it by hand)",)
            late = None
        return OrgPlan(org, Action.COMPLETE if steps or reversals else Action.SKIP, existing=existing, steps=steps,
                       warnings=warnings, late=late, reversals=reversals, history=history)
    problem = _data_problem(org, plans)
    if problem is not None:
        return OrgPlan(org, Action.REFUSE, existing=existing, problem=problem, reversals=pending,
                       history=history)
    plan = plans[org.price_plan_id]  # type: ignore[index]  # checked by _data_problem
    replaced = existing.id if existing is not None else None
    window = month.minus(rules.late_usage_months)
    # Each earlier period is rated again with the plan it was billed with, else the plan as defined
    # when it started (never this period's version: a plan change waits for the next boundary).
    earlier = [(record.without(replaced), record.plan or earlier_plans.get(period) or plan)
               for period, record in history.changed.items() if window <= period < month]
    # A period billed in another currency (the organization changed currency since) is never
    # adjusted on this invoice: an amount is never converted. It is reported, not billed; the rest
    # of the invoice is (refusing it would leave the organization unbilled for good).
    foreign = [(record.period, record_plan.currency) for record, record_plan in earlier
               if record_plan.currency != plan.currency]
    earlier = [(record, record_plan) for record, record_plan in earlier if record_plan.currency == plan.currency]
    warnings += tuple(f"usage of {period} changed after it was billed in {currency}; this invoice is in "
                      f"{plan.currency}, and an amount is never converted: not billed; `billing reconcile --month "
                      f"{period}` shows the difference (settle it by hand)" for period, currency in foreign)
    own = history.own
    bounds = {period: record.bounds for period, record in history.changed.items() if record.bounds is not None}
    bounds[month] = org.billing_period(month)
    credits = credit_balances(history.credits, without=replaced)
    credit = credits.pop(plan.currency, ZERO)

    def fees(period: Month) -> Fees:
        now = fees_apply(org, bounds.get(period) or BillingPeriod.calendar(period))
        record = history.changed.get(period)
        return record.fees_as_billed(now) if record is not None else now

    try:
        invoice = compose(month, usage, plan, fees=fees,
                          own=own.without(replaced) if own is not None else None, earlier=earlier,
                          credit_balance=credit, precision=rules.precision,
                          bounds=org.period)
    except (RatingError, CurrencyError) as exc:
        return OrgPlan(org, Action.REFUSE, existing=existing, problem=str(exc), reversals=pending,
                       history=history)
    except ArithmeticError:  # decimal's exact context: a total beyond 60 digits is never rounded
        return OrgPlan(org, Action.REFUSE, existing=existing, reversals=pending, history=history,
                       problem="its amounts are too large to add up exactly (more than 60 digits): check the usage "
                               "quantities and the plan's prices")
    stranded = {cur: amount for cur, amount in credits.items() if amount != 0}
    if stranded:
        warnings += (f"its credit of {', '.join(format_money(amount, cur) for cur, amount in stranded.items())} from "
                     f"earlier invoices is not applied: this invoice is in {plan.currency}, and credit is never "
                     "converted (refund it, or settle it by hand)",)
    carried = exact_sum(line.amount for line in invoice.lines if line.kind == "credit_carried")
    if carried and not org.active:
        warnings += (f"its credit of {format_money(carried, invoice.currency)} is carried to a next invoice, but the "
                     "organization is no longer active: no later invoice may use it (refund it, or settle it by hand)",)
    if invoice.is_empty:
        return OrgPlan(org, Action.VOID if existing is not None else Action.NOTHING_TO_BILL, existing=existing,
                       warnings=warnings, reversals=reversals, history=history)
    if rules.taxes is not None:  # the rates in force on the first day of the invoiced period (UTC)
        try:
            invoice = replace(invoice, taxes=taxes_for(invoice.subtotal, invoice.currency, org.billing, rules.taxes,
                                                       invoice.bounds.start.date(), precision=rules.precision))
        except TaxError as exc:
            return OrgPlan(org, Action.REFUSE, existing=existing, problem=str(exc), reversals=pending,
                           history=history)
    if rules.einvoice and not (org.billing.country or "").strip():  # before a number is taken
        return OrgPlan(org, Action.REFUSE, existing=existing, reversals=pending, history=history,
                       problem="no billing country, and e-invoices are on (INVOICE_EINVOICE; EN 16931 requires the "
                               "buyer's country): set organizations.billing_country")
    return OrgPlan(org, Action.REGENERATE if existing is not None else Action.ISSUE, invoice=invoice,
                   existing=existing, steps=(Step.PDF, *rules.deliveries), warnings=warnings, reversals=reversals,
                   history=history)


def fees_apply(org: OrganizationRow, period: BillingPeriod) -> FeeShare | None:
    """The share of the base fee and the minimum commitment due for `period`: the days of it in
    which the organization existed and was active (an organization deactivated during the period
    pays fees up to that day on its final invoice; after that, only usage); None when none is due.
    An inactive organization whose status change time is unknown pays no fees."""
    return fee_share(period, created_at=org.created_at, active=org.active, status_changed_at=org.status_changed_at)


def _late_usage(org: OrganizationRow, usage: Mapping[str, Decimal], plans: Mapping[str, PricePlan],
                history: OrgHistory, month: Month, precision: Precision) -> PeriodDelta | None:
    """For an invoiced month: what its usage now adds to (or takes from) what was billed for it
    (late, deleted or corrected events), billed on the next invoice. None when nothing changed."""
    record = history.own if org.usage_revision > history.own_billed_revision else None
    plan = (record.plan if record is not None else None) or plans.get(org.price_plan_id or "")
    if record is None or plan is None:
        return None
    try:
        bounds = record.bounds or org.billing_period(month)
        delta = period_delta(PeriodRecord(month, usage, record.billed, record.billed_usage, bounds=bounds), plan,
                             fees=record.fees_as_billed(fees_apply(org, bounds)),
                             label=f"Adjustment for {bounds.label}", precision=precision)
    except (RatingError, CurrencyError):
        return None  # reported when the next invoice is planned
    return None if delta.is_empty else delta


def _too_old(history: OrgHistory, rules: PlanRules) -> tuple[str, ...]:
    return tuple(f"usage of {period} changed after it was billed, more than LATE_USAGE_MONTHS="
                 f"{rules.late_usage_months} months before {rules.month}: not billed; `billing reconcile --month "
                 f"{period}` shows the difference" for period in history.too_old)


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
    if org.period_problem is not None:
        return org.period_problem
    try:  # the bill-to data is copied onto the invoice and into e-mail headers: it must be clean
        check_address("organization e-mail", org.email)
    except BadAddress as exc:
        return f"{exc}: fix organizations.email"
    try:
        check_header_value("organization name", org.name)
    except BadAddress as exc:
        return f"{exc}: fix organizations.name"
    try:  # the id goes into S3 keys, Stripe metadata and the e-mail's Message-ID
        check_header_value("organization id", org.id)
    except BadAddress as exc:
        return f"{exc}: fix organizations.id"
    try:  # printed on the invoice: a country that is not a code would print wrong, or nothing
        org.billing.postal_lines()
    except CountryError as exc:
        return f"{exc}: fix organizations.billing_country"
    if not org.price_plan_id:
        return "no price plan: set organizations.price_plan_id to a plan id"
    plan = plans.get(org.price_plan_id)
    if plan is None:
        return f"price plan {org.price_plan_id!r} does not exist: add it with `billing plans apply`"
    if org.currency != plan.currency:
        return (f"organization currency {org.currency or '(none)'} does not match plan {plan.id!r} "
                f"currency {plan.currency}")
    return None
