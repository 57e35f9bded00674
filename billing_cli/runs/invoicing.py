"""invoice-monthly and legacy-run: a request resolved against the configuration, run in the lifecycle."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol

from ..config import Settings, load_settings
from ..db.engine import Database
from ..db.usage_store import Shard
from ..errors import ConfigError, UsageError
from ..jobs.invoicing import InvoiceOptions, InvoiceRunResult, OrgOutcome, invoice_due
from ..delivery.ports import Deliveries
from ..outcomes import DELIVERY_STEPS, Job, Step
from ..periods import Month, invoicing_month, utc_now
from ..schedules import parse_schedule
from .lifecycle import Finished, LockGuard, RunSpec, RunView, run_job
from .wiring import deliveries_from_settings, seller_from_settings, taxes_from_settings

# Database connections kept for the worker threads, whatever INVOICE_CONCURRENCY is. A worker holds
# one only for a short transaction, never across a call to S3, Stripe or SMTP, so a few serve many
# workers; the pool opens more for a burst (SQLAlchemy's overflow) and closes them after. The 3 more:
# the run's lock session (held for the whole run), the month's usage stream, one spare. So raising
# the concurrency for Stripe's rate does not multiply the connections of every shard.
WORKER_CONNECTIONS = 8


@dataclass(frozen=True)
class InvoiceRequest:
    """invoice-monthly's flags as given; None means "from the configuration"."""

    month: str | None = None
    dry_run: bool | None = None
    organizations: tuple[str, ...] = ()
    regenerate: bool = False
    output_dir: Path | None = None
    force: bool = False
    concurrency: int | None = None
    batch_size: int | None = None
    shard_index: int | None = None
    shard_count: int | None = None
    keep_plan: bool = False  # keep every organization's planned outcome (for a dry run's --json)

    def check(self) -> None:
        """Flag combinations that are wrong whatever the configuration says."""
        if self.regenerate and not self.organizations:
            raise UsageError("--regenerate needs --org: regeneration is done one organization at a time, "
                             "never for a whole month by accident")


@dataclass(frozen=True)
class InvoicingStart:
    """What a starting run is about to do, for its header."""

    job: str
    month: Month
    dry_run: bool
    database: str
    disabled: list[Step]
    shard: str | None


class InvoicingView(RunView, Protocol):
    def invoicing_started(self, start: InvoicingStart) -> None: ...
    def organizations_found(self, result: InvoiceRunResult) -> None: ...
    def organization_done(self, outcome: OrgOutcome) -> None: ...
    def invoicing_ended(self) -> None: ...


def run_invoice_monthly(request: InvoiceRequest, view: InvoicingView) -> Finished[InvoiceRunResult]:
    request.check()
    return _run(Job.INVOICE_MONTHLY, request, load_settings(), view)


def run_legacy(view: InvoicingView, *, keep_plan: bool = False) -> Finished[InvoiceRunResult]:
    """The older all-in-one job: configured by the environment alone (RUN_SCHEDULE, PROCESS_MONTH,
    DRY_RUN); the same invoicing as invoice-monthly. Warns when started at a minute its schedule
    would not fire: the CronJob or crontab has drifted from the configuration."""
    settings = load_settings()  # an invalid RUN_SCHEDULE is a configuration error, before any work
    schedule = parse_schedule("RUN_SCHEDULE", settings.run_schedule)
    now = utc_now()
    if not schedule.fires_at(now):
        view.warning(f"started at {now:%Y-%m-%d %H:%M}Z, a minute RUN_SCHEDULE '{settings.run_schedule}' "
                     f"({schedule.describe()}) does not fire: the CronJob or crontab schedule may have drifted "
                     "from the configuration (compare with `billing schedule --format k8s`)")
    return _run(Job.LEGACY_RUN, InvoiceRequest(keep_plan=keep_plan), settings, view, now=now)


def resolve(job: Job, request: InvoiceRequest, settings: Settings, now: datetime) -> InvoiceOptions:
    """The run's options: each flag, else its setting, checked."""
    month = invoicing_month(request.month, settings.process_month, now=now, force=request.force)
    shard = Shard(settings.shard_index if request.shard_index is None else request.shard_index,
                  settings.shard_count if request.shard_count is None else request.shard_count)
    if shard.index >= shard.count:
        raise UsageError(f"--shard-index {shard.index} is not below --shard-count {shard.count}")
    # An --org of another shard would be passed over: nothing done, and a run that says it succeeded.
    elsewhere = [org for org in request.organizations if not shard.owns(org)]
    if elsewhere:
        theirs = sorted({str(Shard.of(org, shard.count)) for org in elsewhere})
        raise UsageError(f"--org {', '.join(elsewhere)}: in shard {', '.join(theirs)}, not this run's shard {shard} "
                         "(SHARD_COUNT, JOB_COMPLETION_INDEX): pass --shard-index 0 --shard-count 1 "
                         "(nothing was done)")
    dry_run = settings.dry_run if request.dry_run is None else request.dry_run
    seller = seller_from_settings(settings)
    output_dir = request.output_dir or settings.invoice_output_dir
    if output_dir is not None and (problem := unwritable_folder(output_dir)):
        if request.output_dir is not None:
            raise UsageError(f"--output-dir {str(output_dir)!r}: {problem}: give a folder this user can write "
                             "(nothing was done)")
        raise ConfigError(f"INVOICE_OUTPUT_DIR={str(output_dir)!r}: {problem}: set it to a folder this user can "
                          "write, or unset it (nothing was done)")
    return InvoiceOptions(
        month=month, issue_date=now.date(), job=job, dry_run=dry_run, organizations=request.organizations,
        regenerate=request.regenerate, output_dir=output_dir,
        payment_terms_days=settings.payment_terms_days,
        seller=seller,
        concurrency=request.concurrency or settings.concurrency, shard=shard,
        batch_size=request.batch_size or settings.batch_size, render_processes=settings.render_processes,
        delivery_steps=tuple(Step(step) for step in settings.enabled_deliveries),
        late_usage_months=settings.late_usage_months,
        # Invoices charged through Stripe are kept in amounts Stripe can charge exactly, e-invoices in
        # amounts EN 16931 can state (hundredths at most; Stripe's units are never finer): money.py.
        precision=seller.precision,
        taxes=taxes_from_settings(settings),
        keep_plan=request.keep_plan and dry_run,
        # Only periods that have ended are billed (anchored periods end after their month); --force
        # bills them as they stand.
        due_by=None if request.force else now)


def unwritable_folder(folder: Path) -> str | None:
    """Why the PDFs cannot be written under `folder` (made when missing), or None. Checked before the
    run: each organization would otherwise be invoiced and then fail its PDF, the same way on every rerun."""
    import os

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folders up to here are made by the run
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} cannot be written (permissions, or a read-only file system)"
    return None


def catch_up_months(job: Job, request: InvoiceRequest, settings: Settings, options: InvoiceOptions) -> tuple[Month, ...]:
    """The daily run (no --month, no PROCESS_MONTH) also bills the periods of the earlier months
    that ended and have no invoice yet, as far back as late usage is billed (LATE_USAGE_MONTHS, at
    least one month): days or weeks the run was missed, or an invoice voided by hand. Each such
    month costs one check of who has no invoice of it; only those are read and planned."""
    if request.month is not None or settings.process_month is not None or request.regenerate:
        return ()
    back = max(1, settings.late_usage_months)
    return tuple(options.month.minus(k) for k in range(back, 0, -1))


def _run(job: Job, request: InvoiceRequest, settings: Settings, view: InvoicingView, *,
         now: datetime | None = None) -> Finished[InvoiceRunResult]:
    options = resolve(job, request, settings, now or utc_now())
    catch_up = catch_up_months(job, request, settings, options)
    sharded = str(options.shard) if options.shard.count > 1 else None
    spec = RunSpec(job=job, period=options.month, lock_scope=f"invoice:{options.month}:{options.shard}",
                   dry_run=options.dry_run, shard=sharded, pool_size=min(options.concurrency, WORKER_CONNECTIONS) + 3,
                   targeted=bool(options.organizations),
                   parameters={"month": str(options.month), "organizations": list(options.organizations),
                               "regenerate": options.regenerate, "shard": sharded})

    def invoice(db: Database, stop: threading.Event, guard: LockGuard) -> InvoiceRunResult:
        # A preview is handed no adapter at all: it cannot reach a service, even by mistake.
        deliveries = Deliveries() if options.dry_run else deliveries_from_settings(
            settings, concurrency=options.concurrency, stopping=stop)
        view.invoicing_started(InvoicingStart(job, options.month, options.dry_run, db.where,
                                              [s for s in Step if s in DELIVERY_STEPS and s not in options.delivery_steps],
                                              sharded))
        try:
            return invoice_due(db.transactions, replace(options, stop=stop, deliveries=deliveries, locks=guard),
                               catch_up=catch_up, on_start=view.organizations_found,
                               on_outcome=view.organization_done)
        finally:
            view.invoicing_ended()
            deliveries.close()

    return run_job(spec, settings, view, invoice)
