"""billing reconcile: a request resolved against the configuration, run in the lifecycle."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from ..config import load_settings
from ..db.engine import Database
from ..errors import UsageError
from ..jobs.reconcile import Checks, Difference, ReconcileResult, reconcile_month
from ..outcomes import Job
from ..periods import Month, utc_now
from .lifecycle import Finished, NotifyWhen, RunSpec, RunView, run_job
from .wiring import deliveries_from_settings


@dataclass(frozen=True)
class ReconcileRequest:
    month: str | None = None  # default: the previous month
    organizations: tuple[str, ...] = ()


class ReconcileView(RunView, Protocol):
    def reconcile_started(self, month: Month, checks: list[str], database: str) -> None: ...
    def difference_found(self, difference: Difference) -> None: ...


def run_reconcile(request: ReconcileRequest, view: ReconcileView) -> Finished[ReconcileResult]:
    settings = load_settings()
    now = utc_now()
    month = Month.parse(request.month) if request.month else Month.previous(now)
    if month > Month.containing(now):
        raise UsageError(f"month {month} is in the future: nothing to reconcile yet")
    spec = RunSpec(job=Job.RECONCILE, period=month, lock_scope=None, dry_run=False,
                   targeted=bool(request.organizations),
                   parameters={"month": str(month), "organizations": list(request.organizations)},
                   notify=NotifyWhen.ON_PROBLEMS)

    def reconcile(db: Database, stop: threading.Event, _guard: object) -> ReconcileResult:
        adapters = deliveries_from_settings(settings, stopping=stop)  # read calls only
        checks = Checks(adapters.store, adapters.payments, email=settings.email_enabled)
        view.reconcile_started(month, ["events", "roll-ups", "invoices",
                                       *(["Stripe"] if checks.payments else []), *(["S3"] if checks.store else []),
                                       *(["e-mail"] if checks.email else [])], db.where)
        try:
            return reconcile_month(db.transactions, month, checks, only=request.organizations, stop=stop,
                                   on_difference=view.difference_found)
        finally:
            adapters.close()

    return run_job(spec, settings, view, reconcile)
