"""invoice-monthly: rate every active organization's month into one invoice, exactly once, and
render its PDF. Delivery steps (S3, Stripe, e-mail) hang off the same per-invoice state.

Per organization: plan -> rate (pure) -> issue (one short transaction: number + invoice + lines)
-> PDF (rendered from what was stored, recorded as soon as it exists). A rerun skips what is done.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from ..db import invoice_store, plan_store, usage_store
from ..db.engine import Transactions
from ..db.invoice_store import StoredInvoice
from ..db.usage_store import OrganizationRow, Shard
from ..delivery.invoice_email import BadAddress, check_address, check_header_value
from ..delivery.pdf import PdfError, RenderPool, render_invoice
from ..errors import BillingError
from ..invoices import InvoiceDocument, Seller, due_date, invoice_number
from ..periods import HOUR, Month, format_hour
from ..pricing import PricePlan, RatedInvoice, RatingError, rate
from .aggregate import aggregate_one_hour
from .deliver import Deliveries, deliver, pending

COMPONENTS = ("data", "pdf", "s3", "stripe", "email")


@dataclass(frozen=True)
class InvoiceOptions:
    month: Month
    issue_date: date
    seller: Seller
    dry_run: bool = False
    organizations: tuple[str, ...] = ()
    regenerate: bool = False
    output_dir: Path | None = None
    payment_terms_days: int = 30
    batch_size: int = 500
    deliveries: Deliveries = field(default_factory=Deliveries)
    concurrency: int = 1
    shard: Shard = field(default_factory=Shard)
    stop: threading.Event | None = None  # set on SIGTERM/SIGINT: finish what is in flight, take nothing new
    grace_seconds: float = 20.0
    render_processes: int = 1  # PDF rendering in this many processes for large runs (1: in the threads)
    renderer: Callable[[InvoiceDocument, Seller], bytes] = render_invoice

# Below this many organizations, starting render processes costs more than it saves.
RENDER_POOL_THRESHOLD = 200


@dataclass
class OrgOutcome:
    """What happened to one organization in this run."""

    organization_id: str
    name: str = ""
    status: str = "failed"  # invoiced | already_invoiced | nothing_to_bill | failed
    number: str | None = None
    currency: str | None = None
    total: Decimal | None = None
    pdf_bytes: int | None = None
    done: list[str] = field(default_factory=list)  # steps performed in this run
    errors: list[tuple[str, str]] = field(default_factory=list)  # (component, message)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def fail(self, component: str, message: str) -> OrgOutcome:
        self.errors.append((component, message))
        self.status = "failed" if self.status != "already_invoiced" else self.status
        return self


@dataclass
class InvoiceRunResult:
    """Counts and totals only (organizations are streamed, never all kept in memory), plus the
    failed organizations' outcomes for the report."""

    month: Month
    dry_run: bool
    organizations_found: int = 0
    aggregated_hours: int = 0
    stale_hours_previewed: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors_by_component: Counter[str] = field(default_factory=Counter)
    revenue: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    failed: list[OrgOutcome] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    unfinished: int = 0  # organizations still in flight when the grace period ended

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
        if outcome.status == "invoiced" and outcome.total is not None and outcome.currency:
            self.revenue[outcome.currency] += outcome.total


class _Numbering:
    """A dry run's preview of the numbers a real run would take (nothing is consumed)."""

    def __init__(self, transactions: Transactions, month: Month) -> None:
        with transactions() as conn:
            self.next = invoice_store.next_number_preview(conn, month)
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            self.next += 1
            return self.next - 1


def invoice_month(
    transactions: Transactions,
    options: InvoiceOptions,
    *,
    on_start: Callable[[InvoiceRunResult], None] | None = None,
    on_outcome: Callable[[OrgOutcome], None] | None = None,
) -> InvoiceRunResult:
    started = time.perf_counter()
    month = options.month
    result = InvoiceRunResult(month=month, dry_run=options.dry_run)
    only = list(options.organizations) or None

    live_hours = _complete_aggregates(transactions, options, result)
    with transactions() as conn:
        result.organizations_found = usage_store.count_active(conn, only, options.shard)
    if on_start:
        on_start(result)

    render_pool = None
    if options.render_processes > 1 and result.organizations_found >= RENDER_POOL_THRESHOLD:
        render_pool = RenderPool(options.render_processes)
        options = replace(options, renderer=render_pool)
    try:
        return _invoice_organizations(transactions, options, result, only, live_hours, started, on_outcome)
    finally:
        if render_pool is not None:
            render_pool.close()


def _invoice_organizations(transactions: Transactions, options: InvoiceOptions, result: InvoiceRunResult,
                           only: list[str] | None, live_hours: list, started: float,
                           on_outcome: Callable[[OrgOutcome], None] | None) -> InvoiceRunResult:
    month = options.month
    numbering = _Numbering(transactions, month) if options.dry_run else None
    seen: set[str] = set()
    # Organizations are I/O-bound (database, S3, Stripe, SMTP): a bounded pool of worker threads,
    # each organization in its own transactions. Outcomes are collected on this thread.
    pool = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="invoice")

    def collect(future) -> None:
        outcome = future.result()
        result.add(outcome)
        if on_outcome:
            on_outcome(outcome)

    try:
        with transactions() as stream:
            for batch in usage_store.organizations_with_usage(stream, month, batch_size=options.batch_size,
                                                              only=only, shard=options.shard, live_hours=live_hours):
                if _stopping(options):
                    break
                ids = [org.id for org, _ in batch]
                if only:  # only to report --org ids that are not active; never grows with the fleet
                    seen.update(ids)
                with transactions() as conn:
                    existing = invoice_store.live_invoices(conn, month, ids)
                    plans = plan_store.load_plans(conn, sorted({o.price_plan_id for o, _ in batch if o.price_plan_id}))
                pending = {pool.submit(_invoice_one, transactions, options, org, usage, plans, existing.get(org.id),
                                       numbering) for org, usage in batch}
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in done:
                        collect(future)
                    if _stopping(options) and pending:
                        # SIGTERM: take no new organization; let those in flight finish, within the grace.
                        for future in pending:
                            future.cancel()
                        in_flight = {f for f in pending if not f.cancelled()}
                        finished, unfinished = wait(in_flight, timeout=options.grace_seconds)
                        for future in finished:
                            collect(future)
                        result.unfinished = len(unfinished)
                        pending = set()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if _stopping(options):
        result.interrupted = True
        result.seconds = time.perf_counter() - started
        return result
    for missing in sorted(o for o in set(options.organizations) - seen if options.shard.owns(o)):
        outcome = OrgOutcome(missing).fail("data", "no active organization with this id")
        result.add(outcome)
        if on_outcome:
            on_outcome(outcome)
    result.seconds = time.perf_counter() - started
    return result


def _stopping(options: InvoiceOptions) -> bool:
    return options.stop is not None and options.stop.is_set()


def _complete_aggregates(transactions: Transactions, options: InvoiceOptions,
                         result: InvoiceRunResult) -> list:
    """Make sure every hour of the month is aggregated since its last event arrived. A real run
    aggregates the missing hours (the hourly job's own code); a dry run reads them from the raw
    events instead, writing nothing. Returns the hours to read live."""
    with transactions() as conn:
        stale = usage_store.stale_hours(conn, options.month)
    if options.dry_run:
        result.stale_hours_previewed = len(stale)
        return stale
    for hour in stale:
        outcome = aggregate_one_hour(transactions, hour, hour + HOUR, dry_run=False)
        if outcome.error:  # rating on incomplete usage would under-bill: stop before any invoice
            raise BillingError(f"aggregating {format_hour(hour)} failed, so no invoice was issued: {outcome.error}",
                               hint=f"Fix it and rerun; `billing aggregate-hourly --hour {hour:%Y-%m-%dT%H}` "
                                    "shows the error alone.")
        result.aggregated_hours += 1
    return []


def _invoice_one(transactions: Transactions, options: InvoiceOptions, org: OrganizationRow,
                 usage: dict[str, Decimal], plans: dict[str, PricePlan], existing: StoredInvoice | None,
                 numbering: _Numbering | None) -> OrgOutcome:
    outcome = OrgOutcome(org.id, org.name)
    try:
        if existing is not None and not options.regenerate:
            outcome.status, outcome.number = "already_invoiced", existing.number
            outcome.currency, outcome.total, outcome.pdf_bytes = existing.currency, existing.total, existing.pdf_bytes
            if not options.dry_run:
                _complete_steps(transactions, options, existing, outcome)
            return outcome

        rated = _rate(org, usage, plans, options.month, outcome)
        if rated is None:
            return outcome
        if rated.is_empty:
            outcome.status = "nothing_to_bill"
            if existing is not None and options.regenerate and not options.dry_run:
                with transactions() as conn:
                    conn.execute(text("UPDATE invoices SET status = 'void', voided_at = now(), "
                                      "void_reason = 'regenerated: nothing to bill' WHERE id = :id"),
                                 {"id": existing.id})
                outcome.done.append(f"voided {existing.number}")
            return outcome

        issue = options.issue_date
        due = due_date(issue, options.payment_terms_days)
        if options.dry_run:
            assert numbering is not None
            document = InvoiceDocument(invoice_number(options.month, numbering.take()), org.id, org.name, org.email,
                                       options.month, issue, due, rated.currency, rated.lines, rated.total,
                                       preview=True)
            outcome.status, outcome.number = "invoiced", document.number
            outcome.currency, outcome.total = rated.currency, rated.total
            _render(document, options, outcome, write=options.output_dir is not None)
            return outcome

        try:
            with transactions() as conn:
                stored = invoice_store.issue_invoice(
                    conn, organization_id=org.id, bill_to_name=org.name, bill_to_email=org.email, rated=rated,
                    month=options.month, issue_date=issue, due_date=due, replaces=existing)
        except IntegrityError as exc:
            if "uq_invoices_one_live_per_org_month" not in str(exc.orig):
                raise
            # Another run issued this organization's invoice between our read and our insert: the
            # unique index kept it to one. Report it as already invoiced; a rerun finishes its steps.
            outcome.status = "already_invoiced"
            outcome.warnings.append("invoiced concurrently by another run")
            return outcome
        outcome.status, outcome.number = "invoiced", stored.number
        outcome.currency, outcome.total = stored.currency, stored.total
        outcome.done.append("issued" if existing is None else f"issued, replacing voided {existing.number}")
        # Just issued: the document and its (empty) delivery state are known without reading them back.
        document = InvoiceDocument(stored.number, org.id, org.name, org.email, options.month, issue, due,
                                   rated.currency, rated.lines, rated.total)
        state = invoice_store.DeliveryState(stored.id, stored.number, org.id, rated.currency, rated.total,
                                            datetime.now(UTC), None, None, org.stripe_customer_id, None, None, None)
        _complete_steps(transactions, options, stored, outcome, known=(document, state))
    except OperationalError:
        raise  # the database is gone: stop the run (exit 4); a rerun resumes where this one stopped
    except Exception as exc:  # one organization's bug must not stop the others; it is reported
        outcome.fail("data", f"unexpected error: {type(exc).__name__}: {exc}")
    return outcome


def _rate(org: OrganizationRow, usage: dict[str, Decimal], plans: dict[str, PricePlan], month: Month,
          outcome: OrgOutcome) -> RatedInvoice | None:
    try:  # the bill-to data is copied onto the invoice and into e-mail headers: it must be clean
        check_address("organization e-mail", org.email)
        check_header_value("organization name", org.name)
    except BadAddress as exc:
        outcome.fail("data", f"{exc}: fix organizations.{'email' if 'e-mail' in str(exc) else 'name'}")
        return None
    if not org.price_plan_id:
        outcome.fail("data", "no price plan: set organizations.price_plan_id to a plan id")
        return None
    plan = plans.get(org.price_plan_id)
    if plan is None:
        outcome.fail("data", f"price plan {org.price_plan_id!r} does not exist: add it with `billing plans apply`")
        return None
    if org.currency != plan.currency:
        outcome.fail("data", f"organization currency {org.currency or '(none)'} does not match plan "
                             f"{plan.id!r} currency {plan.currency}")
        return None
    try:
        rated = rate(usage, plan, month)
    except RatingError as exc:
        outcome.fail("data", str(exc))
        return None
    if rated.unpriced_metrics:
        outcome.warnings.append(f"usage not priced by plan {plan.id!r}: {', '.join(rated.unpriced_metrics)}")
    return rated


def _complete_steps(transactions: Transactions, options: InvoiceOptions, stored: StoredInvoice,
                    outcome: OrgOutcome,
                    known: tuple[InvoiceDocument, invoice_store.DeliveryState] | None = None) -> None:
    """Run every step of an issued invoice that is on and has not succeeded yet: the PDF, then
    its deliveries. Everything is derived from the stored invoice (the same values a rerun reads
    back), so a rerun produces the same PDF bytes and the same Stripe lines as the first attempt."""
    if known is None and stored.pdf_sha256 is not None and options.output_dir is None \
            and len(options.deliveries.disabled()) == 3:
        return  # PDF done and no delivery on: nothing to look up
    if known is None:
        with transactions() as conn:
            state = invoice_store.delivery_state(conn, stored.id)
    else:
        state = known[1]
    pdf_missing = state.pdf_sha256 is None or (options.output_dir is not None
                                               and not _pdf_path(options, stored).exists())
    steps = pending(state, options.deliveries)
    if not pdf_missing and not steps:
        return
    if known is None:
        with transactions() as conn:
            document = invoice_store.load_document(conn, stored.id)
    else:
        document = known[0]
    pdf = _render(document, options, outcome, write=options.output_dir is not None)
    if pdf is None:
        return
    sha256 = hashlib.sha256(pdf).hexdigest()
    if pdf_missing:
        with transactions() as conn:
            invoice_store.record_pdf(conn, stored.id, sha256=sha256, size=len(pdf),
                                     path=str(_pdf_path(options, stored)) if options.output_dir else None)
        outcome.done.append("pdf")
    elif sha256 != state.pdf_sha256:
        outcome.warnings.append("the PDF rendered now differs from the first rendering (a newer renderer?)")
    if steps:
        deliver(transactions, state, document, pdf, options.deliveries, options.seller, outcome)


def _render(document: InvoiceDocument, options: InvoiceOptions, outcome: OrgOutcome, *, write: bool) -> bytes | None:
    try:
        pdf = options.renderer(document, options.seller)
    except PdfError as exc:
        outcome.fail("pdf", f"PDF rendering failed: {exc}")
        return None
    outcome.pdf_bytes = len(pdf)
    if write:
        target = _pdf_file(options, document.period, document.number)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".pdf.partial")
            partial.write_bytes(pdf)
            partial.replace(target)  # atomic: a crash never leaves half a PDF under the real name
        except OSError as exc:
            outcome.fail("pdf", f"cannot write {target}: {exc.strerror}")
            return None
    return pdf


def _pdf_path(options: InvoiceOptions, stored: StoredInvoice) -> Path:
    return _pdf_file(options, options.month, stored.number)


def _pdf_file(options: InvoiceOptions, month: Month, number: str) -> Path:
    assert options.output_dir is not None
    return options.output_dir / str(month) / f"{number}.pdf"
