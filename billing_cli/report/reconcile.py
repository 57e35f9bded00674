"""billing reconcile on screen and in the logs: what is checked, each difference, the verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .output import Output

if TYPE_CHECKING:
    from ..jobs.reconcile import Difference, ReconcileResult
    from ..periods import Month


class ReconcileScreen:
    def __init__(self, output: Output) -> None:
        self.output = output
        self.notice, self.warning, self.set_context = output.notice, output.warning, output.set_context

    def reconcile_started(self, month: Month, checks: list[str], database: str) -> None:
        if self.output.plain:
            self.output.record("start", job="reconcile", month=month, checks=",".join(checks), database=database)
            return
        self.output.banner("🔍 billing reconcile", [("month", month), ("checks", ", ".join(checks)),
                                                    ("database", database)])

    def difference_found(self, difference: Difference) -> None:
        if self.output.plain:
            fields = difference.as_dict()
            self.output.record("difference", level="warning", type=fields.pop("kind"), **fields)


def reconcile_summary(output: Output, result: ReconcileResult) -> None:
    total = sum(result.by_kind.values())
    if output.plain:
        output.record("summary", job="reconcile", month=result.month, invoices=result.checked["invoices"],
                      differences=total, **{f"differences_{k.value}": n for k, n in sorted(result.by_kind.items())},
                      seconds=round(result.seconds, 3), outcome=result.summary().outcome.value)
        return
    if result.differences:
        output.table("Differences", [("Kind", "kind"), ("Organization", "organization_id"), ("Subject", "subject"),
                                     ("Ours", "ours"), ("Found", "found"), ("What to do", "what_to_do")],
                     [(d.kind.value, d.organization_id, d.subject, d.ours, d.found, d.what_to_do)
                      for d in result.differences], kind="difference")
    if total > len(result.differences):
        output.line(f"(showing {len(result.differences)} of {total:,} differences; --json lists the same)")
    if result.interrupted:  # the invoices not reached are unchecked: never "agree"
        output.line(f"⏹ {result.month}: interrupted after {result.checked['invoices']:,} invoices, {total:,} "
                    "differences so far: the month is not proven; rerun billing reconcile")
    elif result.ok:
        output.line(f"✅ {result.month}: events, roll-ups, {result.checked['invoices']:,} invoices and the services "
                    "agree")
    else:
        kinds = ", ".join(f"{n:,} {k.value}" for k, n in sorted(result.by_kind.items()))
        output.line(f"❌ {result.month}: {total:,} differences ({kinds})")
