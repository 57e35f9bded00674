"""billing invoices void: one invoice voided (and credited, if it was sent), run in the lifecycle."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..config import load_settings
from ..db.engine import Database
from ..errors import Refused, UsageError
from ..invoices import NUMBER_PREFIX
from ..jobs.credit_notes import VoidPlan, VoidResult, void_invoice
from ..outcomes import Job, Step
from ..periods import Month
from .lifecycle import Finished, LockGuard, NotifyWhen, RunSpec, RunView, run_job
from .wiring import deliveries_from_settings, seller_from_settings

_NUMBER = re.compile(rf"{NUMBER_PREFIX}-(\d{{4}}-\d{{2}})-\d{{6}}")


@dataclass(frozen=True)
class VoidRequest:
    number: str
    reason: str

    def month(self) -> Month:
        """The invoice's billing month, read from its number (`INV-2024-01-000042`)."""
        found = _NUMBER.fullmatch(self.number.strip())
        if found is None:
            raise UsageError(f"{self.number!r} is not an invoice number: expected INV-YYYY-MM-NNNNNN "
                             "(e.g. INV-2024-01-000042)")
        return Month.parse(found.group(1))

    def check(self) -> None:
        if not self.reason.strip():
            raise UsageError("--reason is empty: say why the invoice is voided (it is printed on the credit note)")
        self.month()


def run_void_invoice(request: VoidRequest, view: RunView,
                     confirm: Callable[[VoidPlan], bool]) -> Finished[VoidResult]:
    """Void one invoice. The run holds the invoice's organization exactly as invoicing runs hold it
    (LockGuard.hold: the same advisory lock), so it never races a run of any month or shard; a
    second void of the same invoice waits on its own lock (`invoices-void:<number>`).
    A void has no dry run: with DRY_RUN set it is refused before it opens the database."""
    request.check()
    settings = load_settings()
    number, month = request.number.strip(), request.month()
    if settings.dry_run:
        # DRY_RUN promises nothing written and no outside service called; a void writes the
        # invoice and its credit note, and calls Stripe, S3 and e-mail.
        raise Refused(f"DRY_RUN is set: invoice {number} not voided (a void has no dry run)",
                      hint="Nothing was changed; unset DRY_RUN to void it.")
    spec = RunSpec(job=Job.INVOICES_VOID, period=month, lock_scope=f"invoices-void:{number}", dry_run=False,
                   targeted=True, parameters={"number": number, "reason": request.reason},
                   notify=NotifyWhen.ON_PROBLEMS)

    def void(db: Database, stop: threading.Event, guard: LockGuard) -> VoidResult:
        deliveries = deliveries_from_settings(settings, stopping=stop)
        try:
            return void_invoice(db.transactions, number, request.reason.strip(), deliveries=deliveries,
                                seller=seller_from_settings(settings),
                                enabled=tuple(Step(step) for step in settings.enabled_deliveries), locks=guard,
                                confirm=confirm)
        finally:
            deliveries.close()

    return run_job(spec, settings, view, void)
