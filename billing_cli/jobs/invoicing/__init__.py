"""invoice-monthly's job: plan each organization's invoice, then carry the plans out (or preview them)."""

from .month import invoice_due, invoice_month
from .options import InvoiceOptions
from .planning import Action, OrgPlan, PlanRules, plan_organization
from .results import InvoiceRunResult, OrgOutcome

__all__ = ["Action", "InvoiceOptions", "InvoiceRunResult", "OrgOutcome", "OrgPlan", "PlanRules",
           "invoice_due", "invoice_month", "plan_organization"]
