"""invoice-monthly on screen and in the logs: the header, one line per organization, the summary.

The sentences are built here, from the outcomes' data (statuses, steps, numbers, amounts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import DELIVERY_FLAGS
from ..money import format_money, format_quantity
from ..outcomes import Component, OrgStatus, Step
from ..periods import iso_utc
from .output import Output

if TYPE_CHECKING:
    from ..jobs.invoicing import InvoiceRunResult, OrgOutcome
    from ..runs.invoicing import InvoicingStart

_MARKS = {OrgStatus.INVOICED: "✅", OrgStatus.ALREADY_INVOICED: "⏭ ", OrgStatus.NOTHING_TO_BILL: "➖",
          OrgStatus.FAILED: "❌"}
_STEP_NAMES = {Step.STRIPE_REVERSED: "replaced Stripe invoice voided", Step.PDF: "PDF rendered",
               Step.S3: "uploaded to S3", Step.STRIPE: "Stripe invoice sent", Step.EMAIL: "e-mailed",
               Step.CREDIT_NOTE: "credit note of the void invoice delivered"}
PDF_NOT_KEPT = "PDF not kept (S3 off and no INVOICE_OUTPUT_DIR; a rerun with it set writes the file)"


def _step_name(o: OrgOutcome, step: Step) -> str:
    """What a step did, in words. The PDF is "stored" only where it really is: its file, or S3."""
    if step == Step.PDF:
        if o.pdf_path:
            return f"PDF stored in {o.pdf_path}"
        return _STEP_NAMES[step] if Step.S3 in o.steps else PDF_NOT_KEPT
    return _STEP_NAMES[step]


class InvoicingScreen:
    """What the run layer tells about an invoicing run, rendered as it happens: the header, then
    per-organization lines as outcomes arrive, under a Rich progress bar on a terminal."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self.dry_run = False
        self._progress = None
        self._task = None
        self.notice, self.warning, self.set_context = output.notice, output.warning, output.set_context

    def invoicing_started(self, start: InvoicingStart) -> None:
        self.dry_run = start.dry_run
        invoice_header(self.output, start)

    def organizations_found(self, result: InvoiceRunResult) -> None:
        out = self.output
        if result.aggregated_hours:
            out.notice(f"aggregated {result.aggregated_hours} hour(s) of {result.month} whose events changed "
                       "since the hourly run, before rating")
        if result.stale_hours_previewed:
            out.notice(f"{result.stale_hours_previewed} hour(s) of {result.month} are not aggregated yet: the "
                       "preview reads them from the raw events (a real run aggregates them first)")
        if out.plain:
            out.record("found", organizations=result.organizations_found)
            return
        out.line(f"Found {result.organizations_found:,} active organizations to invoice")
        if out.out.is_terminal and result.organizations_found > 1:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            # the console prints without markup, so the description's style is a column style, not
            # "[progress.description]" markup (which would be printed literally)
            self._progress = Progress(TextColumn("{task.description}", style="progress.description", markup=False),
                                      BarColumn(),
                                      MofNCompleteColumn(), TimeRemainingColumn(), console=out.out, transient=True)
            self._progress.start()
            self._task = self._progress.add_task("invoicing", total=result.organizations_found)

    def organization_done(self, o: OrgOutcome) -> None:
        out = self.output
        if out.plain:
            out.record("organization", **organization_fields(o))
            return
        line = organization_line(o, self.dry_run)
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
            self._progress.advance(self._task)
        else:
            out.line(line)

    def invoicing_ended(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def organization_fields(o: OrgOutcome) -> dict[str, object]:
    """One organization as a machine-readable record."""
    fields: dict[str, object] = {"id": o.organization_id, "status": o.status.value}
    if o.period is not None and not o.period.is_calendar_month:  # an anchored period: which days
        fields.update(period_start=iso_utc(o.period.start), period_end=iso_utc(o.period.end))
    if o.number:
        fields.update(number=o.number, total=o.total, currency=o.currency)
        if o.tax is not None:  # taxes on: the tax included in the total
            fields["tax"] = o.tax
    if o.pdf_bytes:
        fields["pdf_bytes"] = o.pdf_bytes
    if Step.PDF in o.steps:
        fields["pdf"] = o.pdf_path or ("s3" if Step.S3 in o.steps else "not kept")
    if o.final:
        fields["final"] = True
    if o.voided_number:
        fields["voids"] = o.voided_number
        if o.voided_total is not None:
            fields["voided_total"] = o.voided_total
    if o.steps:
        fields["done"] = ",".join(step.value for step in o.steps)
    if o.pending:
        fields["pending"] = ",".join(step.value for step in o.pending)
    if o.adjusted:
        fields["adjusts"] = ",".join(str(d.period) for d in o.adjusted)
    if o.late is not None:
        fields["late_usage"] = late_usage_sentence(o)
    for component, message in o.errors:
        fields[f"error_{component.value}"] = message
    if o.warnings:
        fields["warning"] = "; ".join(o.warnings)
    return fields


def organization_line(o: OrgOutcome, dry_run: bool) -> str:
    """One organization as a sentence."""
    who = f"{o.organization_id} ({o.name})" if o.name else o.organization_id
    mark = _MARKS[OrgStatus.FAILED] if o.errors else _MARKS[o.status]
    amount = f"{format_money(o.total, o.currency)}" if o.total is not None and o.currency else ""
    pdf = f", PDF {o.pdf_bytes / 1024:.1f} kB" if o.pdf_bytes else ""
    delivered = [_step_name(o, s) for s in o.steps if s in _STEP_NAMES]
    if o.status == OrgStatus.INVOICED:
        kind = "final invoice" if o.final else "invoice"
        verb = f"would get its {kind}" if dry_run else f"{kind} generated:"
        replacing = f" ({replacement_sentence(o, dry_run)})" if o.voided_number else ""
        steps = f"; {', '.join(delivered)}" if delivered else ""
        text = f"{mark} {who}: {verb} {o.number}{replacing}, {amount}{pdf}{steps}"
    elif o.status == OrgStatus.ALREADY_INVOICED:
        pending = [_STEP_NAMES[s] for s in o.pending if s in _STEP_NAMES]
        extra = f"; completed now: {', '.join(delivered)}" if delivered else \
            f"; would complete: {', '.join(pending)}" if pending and dry_run else ""
        text = f"{mark} {who}: already invoiced ({o.number}, {amount}){extra}"
    elif o.status == OrgStatus.NOTHING_TO_BILL:
        was = f" ({format_money(o.voided_total, o.currency)})" if o.voided_total is not None and o.currency else ""
        voided = f"; {o.voided_number}{was} {'would be ' if dry_run else ''}voided" if o.voided_number else ""
        pending = [_STEP_NAMES[s] for s in o.pending if s in _STEP_NAMES]
        extra = f"; {', '.join(delivered)}" if delivered else \
            f"; would complete: {', '.join(pending)}" if pending and dry_run else ""
        text = f"{mark} {who}: nothing to bill{voided}{extra}"
    else:
        text = f"{mark} {who}"
    if o.period is not None and not o.period.is_calendar_month:
        text += f"\n   ↳ period {o.period.label}"
    if o.adjusted:
        text += "\n   ↳ adjusts " + ", ".join(f"{d.period} ({format_money(d.amount, o.currency or '')})"
                                         for d in o.adjusted) + " for usage that changed after it was billed"
    if o.late is not None:
        text += f"\n   ⚠️  {late_usage_sentence(o)}"
    for component, message in o.errors:
        text += f"\n   ❌ {component.value}: {message}"
    for warning in o.warnings:
        text += f"\n   ⚠️  {warning}"
    return text


def replacement_sentence(o: OrgOutcome, dry_run: bool) -> str:
    """`replaces INV-2024-01-000003, voided: 12.00 USD -> 14.50 USD (+2.50 USD)`."""
    verb = "would replace" if dry_run else "replaces"
    voided = "would be voided" if dry_run else "voided"
    if o.voided_total is None or o.total is None or not o.currency:
        return f"{verb} {o.voided_number}, {voided}"
    change = o.total - o.voided_total
    sign = "+" if change > 0 else "-" if change < 0 else "±"
    return (f"{verb} {o.voided_number}, {voided}: {format_money(o.voided_total, o.currency)} -> "
            f"{format_money(o.total, o.currency)} ({sign}{format_money(abs(change), o.currency)})")


def late_usage_sentence(o: OrgOutcome) -> str:
    """`late usage since INV-…: +900 api_calls, +9.00 USD: billed on the next invoice`."""
    assert o.late is not None
    usage = ", ".join(f"{'+' if q > 0 else '-'}{format_quantity(abs(q))} {metric}" for metric, q in o.late.usage.items())
    amount = o.late.amount
    money = f"{'+' if amount >= 0 else '-'}{format_money(abs(amount), o.currency or '')}"
    return f"late usage since {o.number}: {usage or 'fees'}, {money}: billed on the next invoice"


def invoice_header(output: Output, start: InvoicingStart) -> None:
    disabled = start.disabled
    deliveries = ", ".join(f"{step} {'skipped (' + flag + ' is off)' if step in disabled else 'on'}"
                           for step, flag in DELIVERY_FLAGS.items())
    if start.dry_run:
        deliveries = "none (dry run: nothing is uploaded, created or sent)"
    if output.plain:
        output.record("start", job=start.job, month=str(start.month), dry_run=start.dry_run,
                      database=start.database,
                      **({} if start.dry_run else {step: "off" if step in disabled else "on" for step in DELIVERY_FLAGS}),
                      **({"shard": start.shard} if start.shard else {}))
        return
    output.banner(f"🧾 billing {start.job}", [("month", start.month), ("dry run", "yes" if start.dry_run else "no"),
                                             ("deliveries", deliveries), ("database", start.database),
                                             *((("shard", start.shard),) if start.shard else ())])


def invoice_summary(output: Output, result: InvoiceRunResult) -> None:
    errors = {c.value: result.errors_by_component.get(c, 0) for c in Component}
    revenue = {cur: result.revenue[cur] for cur in sorted(result.revenue)}
    statuses = result.statuses
    if output.plain:
        output.record("summary", job=result.job, month=result.month, found=result.organizations_found,
                      processed=result.processed, invoiced=statuses[OrgStatus.INVOICED],
                      already_invoiced=statuses[OrgStatus.ALREADY_INVOICED],
                      nothing_to_bill=statuses[OrgStatus.NOTHING_TO_BILL], failed=len(result.failed),
                      **{f"errors_{c}": n for c, n in errors.items()},
                      **{f"revenue_{cur}": amount for cur, amount in revenue.items()},
                      **{f"tax_{cur}": result.tax[cur] for cur in sorted(result.tax)},
                      not_due=result.not_due, dry_run=result.dry_run, seconds=round(result.seconds, 3),
                      outcome=result.summary().outcome.value,
                      **({"what_to_do": what_to_do(result)} if not result.ok else {}))
        return
    rows: list[tuple[str, object]] = [
        ("Month", str(result.month)),
        ("Organizations processed", result.processed),
        ("Invoices generated" + (" (would be)" if result.dry_run else ""), statuses[OrgStatus.INVOICED]),
        ("Already invoiced", statuses[OrgStatus.ALREADY_INVOICED]),
        ("Nothing to bill", statuses[OrgStatus.NOTHING_TO_BILL]),
        ("Failed organizations", len(result.failed)),
    ]
    if result.not_due:  # an anchored period that has not ended: why an organization was not invoiced
        rows.append(("Not due yet (period not ended)", result.not_due))
    rows += [(f"Revenue ({cur})", format_money(amount, cur)) for cur, amount in revenue.items()] or \
        [("Revenue", "none")]
    rows += [(f"Of which tax ({cur})", format_money(result.tax[cur], cur)) for cur in sorted(result.tax)]
    rows += [("Processing time", f"{result.seconds:.2f} s"), ("Dry run", "yes" if result.dry_run else "no")]
    output.table("Summary", [("", "key"), ("", "value")], rows, kind="summary")
    output.table("Errors by component", [("Component", "component"), ("Errors", "errors")],
                 list(errors.items()), kind="errors")
    mark = "✅" if result.ok else "❌"
    verb = "would be invoiced" if result.dry_run else "invoiced"
    output.line(f"{mark} {result.month}: {statuses[OrgStatus.INVOICED]} {verb}, {len(result.failed)} failed"
                + (f"; {what_to_do(result)}" if not result.ok else ""))


def what_to_do(result: InvoiceRunResult) -> str:
    """What fixes the failed organizations: bad data is fixed where it lives (a rerun alone fails
    again the same way); a delivery or a busy organization is finished by a rerun, once what its
    line names is fixed when it names something (an invoice Stripe cannot take, a bucket refused)."""
    data = sum(1 for o in result.failed if any(c == Component.DATA for c, _ in o.errors))
    other = len(result.failed) - data
    parts = []
    if data:
        parts.append(f"{data} failed on their data: fix what each line above names (the plan, the "
                     "organization's row or its usage), then rerun the same command")
    if other:
        parts.append(f"{other} failed delivering or were busy: rerun the same command to finish them (first fix "
                     "what a line above names, if it names something to fix: a rerun alone cures only an outage)")
    return "; ".join(parts)


def invoice_run_summary(output: Output, result: InvoiceRunResult) -> None:
    """The end of an invoicing run: the summary, and what an interruption left to do."""
    invoice_summary(output, result)
    if result.interrupted:
        output.warning(f"interrupted: {result.processed} organizations processed, {result.unfinished} left in "
                       "flight; rerun the same command to complete the month")


class DemoScreen(InvoicingScreen):
    """`billing demo`: its banner and seeded organizations, then the invoicing lines."""

    def demo_started(self, database: str) -> None:
        self.output.banner("billing demo", [("database", database)])

    def demo_seeded(self, result) -> None:
        from .aggregation import aggregation_summary
        from .tables import demo_summary

        demo_summary(self.output, result)
        assert result.aggregation is not None
        aggregation_summary(self.output, result.aggregation)
