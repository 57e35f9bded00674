"""What runs and organizations can end as, and the steps of an invoice: enums, not strings."""

from __future__ import annotations

from enum import StrEnum

from .errors import ExitCode


class Job(StrEnum):
    AGGREGATE_HOURLY = "aggregate-hourly"
    INVOICE_MONTHLY = "invoice-monthly"
    LEGACY_RUN = "legacy-run"
    RECONCILE = "reconcile"
    INVOICES_VOID = "invoices-void"  # an operator voids one invoice (and credits it, if it was sent)
    USAGE_PRUNE = "usage-prune"


MONTHLY_JOBS = (Job.INVOICE_MONTHLY, Job.LEGACY_RUN)  # either one bills a month
# The jobs cron runs, whose health `billing status` watches (an operator's void is not one).
SCHEDULED_JOBS = (Job.AGGREGATE_HOURLY, Job.INVOICE_MONTHLY, Job.LEGACY_RUN, Job.RECONCILE)


def month_is_invoiced(shards: list[str | None]) -> bool:
    """Whether a month's successful monthly runs (`shards`: each one's shard, "i/n", or None for a
    whole run) cover it: a whole run, or every shard of one split."""
    if any(shard is None for shard in shards):
        return True
    by_count: dict[int, set[int]] = {}
    for shard in shards:
        assert shard is not None
        index, _, count = shard.partition("/")
        by_count.setdefault(int(count), set()).add(int(index))
    return any(len(indexes) == count for count, indexes in by_count.items())


class RunOutcome(StrEnum):
    """How a run ended (also the `job_runs.status` of a finished run)."""

    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # finished, but some organizations or hours failed
    FAILED = "failed"  # stopped by an error before finishing
    INTERRUPTED = "interrupted"  # SIGTERM/SIGINT: the work in flight was finished, the rest left
    MISMATCH = "mismatch"  # reconcile: it finished and found differences

    @property
    def exit_code(self) -> ExitCode:
        return _EXIT_CODES[self]


_EXIT_CODES = {RunOutcome.SUCCEEDED: ExitCode.OK, RunOutcome.PARTIAL: ExitCode.PARTIAL,
               RunOutcome.FAILED: ExitCode.INTERNAL, RunOutcome.INTERRUPTED: ExitCode.INTERRUPTED,
               RunOutcome.MISMATCH: ExitCode.MISMATCH}


def run_outcome(*, ok: bool, interrupted: bool) -> RunOutcome:
    return RunOutcome.INTERRUPTED if interrupted else RunOutcome.SUCCEEDED if ok else RunOutcome.PARTIAL


class OrgStatus(StrEnum):
    """What one organization's invoice is at the end of a run."""

    INVOICED = "invoiced"  # issued by this run (a dry run: would be)
    ALREADY_INVOICED = "already_invoiced"  # issued by an earlier run; missing steps completed
    NOTHING_TO_BILL = "nothing_to_bill"
    FAILED = "failed"


class Step(StrEnum):
    """What a run did to one organization's invoice, in order."""

    VOIDED = "voided"  # the live invoice was voided and nothing replaced it (a regeneration with nothing to bill)
    ISSUED = "issued"
    STRIPE_REVERSED = "stripe_reversed"  # a voided invoice's Stripe invoice was voided, credited or deleted
    PDF = "pdf"
    S3 = "s3"
    STRIPE = "stripe"
    EMAIL = "email"
    CREDIT_NOTE = "credit_note"  # a credit note of a void invoice was delivered (its missing steps)


DELIVERY_STEPS = (Step.S3, Step.STRIPE, Step.EMAIL)


class Component(StrEnum):
    """Where an organization's error came from, for the per-component error counts."""

    DATA = "data"
    PDF = "pdf"
    S3 = "s3"
    STRIPE = "stripe"
    EMAIL = "email"
    BUSY = "busy"  # another process was handling the organization: a rerun completes it
