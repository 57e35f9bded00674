"""Planning is pure: what each organization gets is decided from its data, its plan and what is
stored, with no database, so every decision can be checked directly."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

from billing_cli.db.invoice_store import StoredInvoice
from billing_cli.db.usage_store import OrganizationRow
from billing_cli.jobs.invoicing import Action, PlanRules, plan_organization
from billing_cli.outcomes import Step
from billing_cli.periods import Month
from billing_cli.plan_file import parse_plans
from tests.data import PLANS

JAN = Month(2024, 1)
PLAN = {p.id: p for p in parse_plans(PLANS)}
ORG = OrganizationRow("org-a", "Acme", "billing@acme.example", "USD", "pro")
ALL_DELIVERIES = (Step.S3, Step.STRIPE, Step.EMAIL)


def stored(**done) -> StoredInvoice:
    return StoredInvoice(id=7, organization_id="org-a", number="INV-2024-01-000001", currency="USD",
                         total=D("25.00"), created_at=datetime(2024, 2, 1, tzinfo=UTC), **done)


def test_a_new_invoice_is_issued_with_its_pdf_and_every_delivery_that_is_on() -> None:
    plan = plan_organization(ORG, {"api_calls": D(1500)}, PLAN, None, PlanRules(JAN, deliveries=ALL_DELIVERIES))

    assert plan.action == Action.ISSUE
    assert plan.steps == (Step.PDF, Step.S3, Step.STRIPE, Step.EMAIL)
    assert plan.invoice is not None and plan.invoice.total == D("22.50")  # 10 + 1000 x 0.01 + 500 x 0.005


def test_an_issued_invoice_completes_only_its_missing_steps_or_is_skipped() -> None:
    rules = PlanRules(JAN, deliveries=ALL_DELIVERIES)
    half_done = stored(pdf_sha256="ab" * 32, s3_key="k", stripe_status="open")
    all_done = stored(pdf_sha256="ab" * 32, s3_key="k", stripe_status="sent",
                      emailed_at=datetime(2024, 2, 1, tzinfo=UTC))

    complete = plan_organization(ORG, {"api_calls": D(1500)}, PLAN, half_done, rules)
    skip = plan_organization(ORG, {"api_calls": D(1500)}, PLAN, all_done, rules)

    assert (complete.action, complete.steps) == (Action.COMPLETE, (Step.STRIPE, Step.EMAIL))
    assert (skip.action, skip.steps) == (Action.SKIP, ())
    assert complete.invoice is None  # an issued invoice is never re-rated
    missing_file = plan_organization(ORG, {}, PLAN, all_done, PlanRules(JAN, keep_pdf_files=True),
                                     pdf_file_missing=True)
    assert (missing_file.action, missing_file.steps) == (Action.COMPLETE, (Step.PDF,))


def test_regenerating_voids_and_reissues_or_only_voids_when_nothing_is_left_to_bill() -> None:
    rules = PlanRules(JAN, regenerate=True)
    existing = stored(pdf_sha256="ab" * 32)

    again = plan_organization(ORG, {"api_calls": D(10)}, PLAN, existing, rules)
    nothing = plan_organization(OrganizationRow("org-a", "Acme", "billing@acme.example", "EUR", "euro"),
                                {}, PLAN, existing, rules)

    assert (again.action, again.existing) == (Action.REGENERATE, existing)
    assert again.invoice is not None and again.invoice.total == D("10.10")
    assert (nothing.action, nothing.existing) == (Action.VOID, existing)


def test_data_that_cannot_be_invoiced_is_refused_with_what_to_fix() -> None:
    rules = PlanRules(JAN)
    cases = {
        OrganizationRow("o", "Acme", "not an address", "USD", "pro"): "fix organizations.email",
        OrganizationRow("o", "Acme\r\nBcc: x@y.z", "a@b.example", "USD", "pro"): "fix organizations.name",
        OrganizationRow("o", "Acme", "a@b.example", "USD", None): "set organizations.price_plan_id",
        OrganizationRow("o", "Acme", "a@b.example", "USD", "gold"): "add it with `billing plans apply`",
        OrganizationRow("o", "Acme", "a@b.example", "EUR", "pro"): "does not match plan 'pro' currency USD",
    }
    for org, fix in cases.items():
        plan = plan_organization(org, {"api_calls": D(1)}, PLAN, None, rules)
        assert plan.action == Action.REFUSE and fix in (plan.problem or ""), (org, plan.problem)


def test_no_usage_and_no_fee_is_nothing_to_bill_and_unpriced_usage_is_refused() -> None:
    euro = OrganizationRow("o", "Euro GmbH", "a@b.example", "EUR", "euro")

    idle = plan_organization(euro, {}, PLAN, None, PlanRules(JAN))
    odd = plan_organization(euro, {"api_calls": D(10), "gpu_hours": D(3)}, PLAN, None, PlanRules(JAN))

    assert (idle.action, idle.steps) == (Action.NOTHING_TO_BILL, ())
    assert odd.action == Action.REFUSE
    assert odd.problem == ("usage of gpu_hours in 2024-01 is not priced by plan 'euro' as defined on 2024-01-01: "
                           "price it, or list it in the plan's free_metrics, with `billing plans apply FILE "
                           "--effective 2024-01-01`, then rerun")


def test_usage_of_a_metric_the_plan_lists_as_free_is_invoiced_without_a_line() -> None:
    from dataclasses import replace

    euro = OrganizationRow("o", "Euro GmbH", "a@b.example", "EUR", "euro")
    plans = {"euro": replace(PLAN["euro"], free_metrics=("health_checks",))}

    plan = plan_organization(euro, {"api_calls": D(10), "health_checks": D(99)}, plans, None, PlanRules(JAN))

    assert plan.action == Action.ISSUE and plan.invoice is not None
    assert [line.metric for line in plan.invoice.lines] == ["api_calls"] and plan.invoice.total == D("1.00")
    assert plan.invoice.usage[(JAN, "health_checks")] == D(99)  # accounted for, at no charge


def test_amounts_too_large_to_add_up_exactly_are_refused_never_rounded() -> None:
    """A base fee and a usage line of 60 digits each, whose sum needs 61: the organization is
    refused with a data error; no total is ever rounded."""
    big = "9" + "0" * 57 + ".01"
    plans = {p.id: p for p in parse_plans(f"""
[[plan]]
id = "big"
name = "Big"
currency = "EUR"
base_fee = {big}

  [[plan.price]]
  metric = "api_calls"
  description = "API calls"
  model = "per_unit"
  unit_price = {big}
""")}
    org = OrganizationRow("org-a", "Acme", "billing@acme.example", "EUR", "big")

    plan = plan_organization(org, {"api_calls": D(1)}, plans, None, PlanRules(JAN))

    assert plan.action == Action.REFUSE and plan.invoice is None
    assert plan.problem is not None and "too large to be priced exactly" in plan.problem


def test_the_stripe_invoice_of_a_replaced_invoice_is_planned_for_reversal_only_with_stripe_on() -> None:
    existing = stored(pdf_sha256="ab" * 32, stripe_invoice_id="in_1", stripe_status="sent")
    on = PlanRules(JAN, regenerate=True, deliveries=ALL_DELIVERIES)
    off = PlanRules(JAN, regenerate=True, deliveries=(Step.S3, Step.EMAIL))

    with_stripe = plan_organization(ORG, {"api_calls": D(10)}, PLAN, existing, on)
    without = plan_organization(ORG, {"api_calls": D(10)}, PLAN, existing, off)
    left_over = plan_organization(ORG, {"api_calls": D(10)}, PLAN, stored(pdf_sha256="ab" * 32, s3_key="k",
                                  stripe_status="sent", emailed_at=datetime(2024, 2, 1, tzinfo=UTC)),
                                  PlanRules(JAN, deliveries=ALL_DELIVERIES), pending_reversals=("INV-2023-12-000009",))

    assert with_stripe.reversals == ("INV-2024-01-000001",)
    assert without.reversals == () and "stays open until a run with Stripe on" in without.warnings[0]
    assert (left_over.action, left_over.steps, left_over.reversals) == (Action.COMPLETE, (), ("INV-2023-12-000009",))
