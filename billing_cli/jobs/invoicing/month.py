"""invoice-monthly: every organization's month planned, then carried out (or previewed), exactly once.

Organizations stream in batches from one ordered pass over the month's usage. For each batch:
load the stored invoices and plans, plan every organization (pure), then hand the plans to a
bounded pool of worker threads that carry them out (Acting) or preview them (Previewing). Which
of the two is chosen once, here; neither knows about the other.
"""

from __future__ import annotations

import queue
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from ...anchors import BillingPeriod
from ...db import billing_history, invoice_store, period_store, plan_store, tax_store, usage_store
from ...db.engine import Transactions
from ...db.usage_store import OrganizationRow
from ...delivery.pdf import RenderPool
from ...errors import UsageError
from ...periods import Month
from ...taxes import TaxSetup
from ..credit_notes import undelivered_credit_notes
from .acting import Acting
from .options import InvoiceOptions
from .planning import Action, OrgPlan, PlanRules, plan_organization, plan_void_steps
from .previewing import Previewing
from .results import InvoiceRunResult, OrgOutcome

# Below this many organizations, starting render processes costs more than it saves.
RENDER_POOL_THRESHOLD = 200


class PlanHandler(Protocol):
    """What a run does with each plan: carry it out (Acting) or show it (Previewing)."""

    def prepare(self, stale_hours: list[datetime], result: InvoiceRunResult) -> list[datetime]: ...
    def handle(self, plan: OrgPlan) -> OrgOutcome: ...


def invoice_month(
    transactions: Transactions,
    options: InvoiceOptions,
    *,
    on_start: Callable[[InvoiceRunResult], None] | None = None,
    on_outcome: Callable[[OrgOutcome], None] | None = None,
) -> InvoiceRunResult:
    started = time.perf_counter()
    result = _new_result(options)
    only = list(options.organizations) or None
    if only:  # a typo must not look like a month with failures (exit 6, retried): nothing is done
        with transactions() as conn:  # checked first: a catch-up pass too, before any invoice is issued
            unknown = usage_store.unknown_organizations(conn, only)
        if unknown:
            raise UsageError(f"--org {', '.join(unknown)}: no organization with this id; check the id "
                             f"(nothing was done)")
    if options.uninvoiced_only:  # a catch-up pass: only what has no invoice yet, read for those alone
        with transactions() as conn:
            # The anchored periods too: a period reaching into the next month may hold all its usage there.
            anchored = period_store.anchored_periods(conn, options.month, only=only, shard=options.shard)
            only = usage_store.uninvoiced(conn, options.month, late_months=options.late_usage_months, only=only,
                                          shard=options.shard, periods=anchored.periods)
        if not only:
            return result
    with transactions() as conn:
        periods = period_store.anchored_periods(conn, options.month, only=only, shard=options.shard)
        # A period that has not ended is not billed yet (a later daily run bills it): with --force, it is.
        not_due = periods.not_due(options.due_by) if options.due_by is not None else []
        waiting = set(not_due)
        due_ends = [p.end for org, p in periods.periods.items() if org not in waiting]
        stale = usage_store.stale_hours(conn, options.month, edited_since=options.month.minus(options.late_usage_months),
                                        until=max(due_ends, default=None))
        result.organizations_found = usage_store.count_to_invoice(conn, options.month, only=only, shard=options.shard,
                                                                  late_months=options.late_usage_months,
                                                                  excluded=not_due, periods=periods.periods,
                                                                  uninvoiced_only=options.uninvoiced_only)
        result.not_due = len(not_due)
    render_pool = None
    if options.render_processes > 1 and result.organizations_found >= RENDER_POOL_THRESHOLD:
        render_pool = RenderPool(options.render_processes)
        options = replace(options, renderer=render_pool)
    try:
        handler: PlanHandler = Previewing(transactions, options) if options.dry_run else Acting(transactions, options)
        live_hours = handler.prepare(stale, result)
        if on_start:
            on_start(result)
        _run(transactions, options, handler, result, only, live_hours, on_outcome, periods, not_due)
    finally:
        if render_pool is not None:
            render_pool.close()
    result.seconds = time.perf_counter() - started
    return result


def invoice_due(
    transactions: Transactions,
    options: InvoiceOptions,
    *,
    catch_up: tuple[Month, ...] = (),
    on_start: Callable[[InvoiceRunResult], None] | None = None,
    on_outcome: Callable[[OrgOutcome], None] | None = None,
) -> InvoiceRunResult:
    """The daily run: first, in `catch_up` (earlier months, oldest first), the periods that ended and
    have no live invoice yet (runs missed for days or weeks, or an invoice voided by hand); then the periods of `options.month` that have ended. Earlier periods go first so
    that each gets its own invoice, rated with its own plan, before a later invoice would bill it as
    an adjustment. One result for the whole run."""
    earlier: list[InvoiceRunResult] = []
    for month in sorted(catch_up):
        if options.stopping:
            break
        earlier.append(invoice_month(transactions, replace(options, month=month, uninvoiced_only=True),
                                     on_outcome=on_outcome))
        if earlier[-1].interrupted:
            break
    if earlier and (earlier[-1].interrupted or options.stopping):  # stopped before the month itself
        result = _new_result(options)
        result.interrupted = True
    else:
        result = invoice_month(transactions, options, on_start=on_start, on_outcome=on_outcome)
    for other in earlier:
        result.absorb(other)
    return result


def _new_result(options: InvoiceOptions) -> InvoiceRunResult:
    return InvoiceRunResult(month=options.month, dry_run=options.dry_run, job=options.job,
                            plan=[] if options.keep_plan else None)


def _run(transactions: Transactions, options: InvoiceOptions, handler: PlanHandler, result: InvoiceRunResult,
         only: list[str] | None, live_hours: list[datetime],
         on_outcome: Callable[[OrgOutcome], None] | None, periods: period_store.MonthPeriods,
         not_due: list[str]) -> None:
    rules = PlanRules(options.month, options.regenerate, options.delivery_steps,
                      keep_pdf_files=options.output_dir is not None, late_usage_months=options.late_usage_months,
                      precision=options.precision, taxes=_tax_setup(transactions, options),
                      einvoice=options.seller.einvoice is not None)

    def collect(outcome: OrgOutcome) -> None:
        result.add(outcome)
        if on_outcome:
            on_outcome(outcome)

    # Organizations are I/O-bound (database, S3, Stripe, SMTP): a bounded pool of worker threads,
    # each organization in its own transactions. Outcomes are collected on this thread.
    pool = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="invoice",
                              initializer=_leave_stop_signals_to_the_main_thread)
    outcomes = _Outcomes(pool)
    at_once = False
    try:
        with transactions() as stream:
            for batch in usage_store.organizations_with_usage(
                    stream, options.month, batch_size=options.batch_size, late_months=options.late_usage_months,
                    only=only, shard=options.shard, live_hours=live_hours, periods=periods.periods,
                    problems=periods.problems, excluded=not_due, uninvoiced_only=options.uninvoiced_only):
                if options.stopping:
                    break
                # Planned while the batch before is carried out, and queued behind it: the workers
                # do not run dry at each batch's end while the main thread plans the next one.
                plans = _plan_batch(transactions, options, rules, batch)
                outcomes.submit(handler.handle, plans)
                # Then wait for the batch before (at most two batches are held at a time).
                result.unfinished = outcomes.collect(options, collect, leave=len(plans))
                if result.unfinished or options.stopping:
                    break
            if not result.unfinished:
                result.unfinished = outcomes.collect(options, collect, leave=0)
        if not (result.unfinished or options.stopping or options.uninvoiced_only):
            # Then those it does not invoice whose void invoices still wait for Stripe or for their
            # credit note (a customer who left): every run of any month completes them. Read once
            # the month's organizations are done, so no plan is read while one is carried out.
            with transactions() as conn:
                waiting = usage_store.organizations_with_void_steps(
                    conn, options.month, late_months=options.late_usage_months, only=only, shard=options.shard,
                    excluded=not_due, periods=periods.periods)
            for start in range(0, len(waiting), options.batch_size):
                plans = _plan_void_steps(transactions, options, rules, waiting[start:start + options.batch_size])
                outcomes.submit(handler.handle, plans)
                result.unfinished = outcomes.collect(options, collect, leave=0)
                if result.unfinished or options.stopping:
                    break
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, whatever is in flight
        at_once = True
        raise
    finally:
        # Otherwise never return (and release the run's lock) while a worker may still be issuing
        # or delivering.
        pool.shutdown(wait=not at_once, cancel_futures=True)
    if options.stopping:
        result.interrupted = True


def _tax_setup(transactions: Transactions, options: InvoiceOptions) -> TaxSetup | None:
    """With taxes on: the seller's details and every version of every rate, read once for the run."""
    if options.taxes is None:
        return None
    with transactions() as conn:
        return replace(options.taxes, rates=tuple(tax_store.load_rates(conn)))


def _leave_stop_signals_to_the_main_thread() -> None:
    """Worker threads block SIGINT and SIGTERM: the main thread handles them, and a PDF worker
    process started from this thread is born with them blocked (until it ignores them), so a
    Ctrl-C in its first instants cannot kill it either."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def _plan_batch(transactions: Transactions, options: InvoiceOptions, rules: PlanRules,
                batch: list[tuple[OrganizationRow, dict[str, Decimal]]]) -> list[OrgPlan]:
    """Read what is stored for the batch (live invoices, what was billed before, price plans), then
    plan each organization."""
    ids = [org.id for org, _ in batch]
    with transactions() as conn:
        existing = invoice_store.live_invoices(conn, options.month, ids)
        histories = billing_history.load_histories(conn, options.month, ids, late_months=options.late_usage_months,
                                                   anchors={o.id: o.anchor for o, _ in batch if o.anchor is not None},
                                                   replacing=[i.id for i in existing.values()] if rules.regenerate else ())
        versions = plan_store.load_plan_versions(conn, sorted({o.price_plan_id for o, _ in batch if o.price_plan_id}))
        reversals = invoice_store.pending_reversals(conn, ids)
    credit_notes = undelivered_credit_notes(transactions, ids, options.delivery_steps)
    plans = []
    for org, usage in batch:
        stored = existing.get(org.id)
        missing_file = (stored is not None and options.output_dir is not None
                        and not options.pdf_file(options.month, stored.number).exists())
        # Its plan as defined when its period started: a plan change waits for the next boundary.
        in_force = versions.at(org.price_plan_id, org.billing_period(options.month).start) if org.price_plan_id else None
        price_plans = {org.price_plan_id: in_force} if org.price_plan_id and in_force is not None else {}
        earlier_plans = {
            period: versions.at(org.price_plan_id, (record.bounds or BillingPeriod.calendar(period)).start)
            for period, record in histories[org.id].changed.items()} if org.price_plan_id else {}
        try:
            plans.append(plan_organization(org, usage, price_plans, stored, rules, history=histories[org.id],
                                           pdf_file_missing=missing_file,
                                           pending_reversals=tuple(r.number for r in reversals.get(org.id, ())),
                                           credit_notes=credit_notes.get(org.id, ()),
                                           earlier_plans={p: v for p, v in earlier_plans.items() if v is not None}))
        except Exception as exc:  # a bug in planning one organization must not stop the others
            plans.append(OrgPlan(org, Action.REFUSE, existing=stored,
                                 problem=f"unexpected error: {type(exc).__name__}: {exc}"))
    return plans


def _plan_void_steps(transactions: Transactions, options: InvoiceOptions, rules: PlanRules,
                     organizations: list[OrganizationRow]) -> list[OrgPlan]:
    """Plan the void invoices' missing steps (Stripe reversals, credit notes) of organizations the
    month does not invoice; those with nothing to do with the deliveries that are on are left out."""
    ids = [org.id for org in organizations]
    with transactions() as conn:
        reversals = invoice_store.pending_reversals(conn, ids)
    credit_notes = undelivered_credit_notes(transactions, ids, options.delivery_steps)
    plans = [plan_void_steps(org, rules, pending_reversals=tuple(r.number for r in reversals.get(org.id, ())),
                             credit_notes=credit_notes.get(org.id, ())) for org in organizations]
    return [plan for plan in plans if plan.reversals or plan.credit_notes or plan.warnings]


class _Outcomes:
    """The plans handed to the pool, and their outcomes as they complete (in the order they
    complete: each future puts itself in a queue, so waiting costs nothing per future in flight)."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._pending: set[Future] = set()
        self._done: queue.SimpleQueue[Future] = queue.SimpleQueue()

    def submit(self, handle: Callable[[OrgPlan], OrgOutcome], plans: list[OrgPlan]) -> None:
        for plan in plans:
            future = self._pool.submit(handle, plan)
            self._pending.add(future)
            future.add_done_callback(self._done.put)

    def collect(self, options: InvoiceOptions, collect: Callable[[OrgOutcome], None], *, leave: int) -> int:
        """Collect outcomes until at most `leave` plans are left to finish. On SIGTERM/SIGINT take
        no new organization and let those in flight finish within the grace period; returns how
        many were still unfinished then."""
        while len(self._pending) > leave:
            try:
                future = self._done.get(timeout=0.2)
            except queue.Empty:
                future = None
            if future is not None and future in self._pending:
                self._pending.discard(future)
                collect(future.result())
            if options.stopping and self._pending:
                for future in self._pending:
                    future.cancel()
                in_flight = {f for f in self._pending if not f.cancelled()}
                self._pending = set()
                finished, unfinished = wait(in_flight, timeout=options.grace_seconds)
                for future in finished:
                    collect(future.result())
                return len(unfinished)
        return 0
