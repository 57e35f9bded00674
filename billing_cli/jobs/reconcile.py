"""billing reconcile: a read-only proof that every unit of a month's usage is billed exactly once.

For every organization and metric: raw events = hourly roll-ups = quantities billed (the month's
own invoice plus adjustments on later ones). For every live invoice: its lines add up to its
total, and, when the delivery is on, Stripe holds it finalized with our number, lines and total,
S3 holds our PDF, and it was e-mailed. Also: orphan usage, and fees owed but never invoiced.

Only differences are kept (a bounded number for the report; all are counted), so memory stays
flat whatever the size of the month. A service that cannot be asked stops the check: "could not
check" must never read as "all clear".
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from ..db import credit_note_store, reconcile_store, usage_store
from ..db.engine import Transactions
from ..delivery.payments import PaymentError, PaymentGateway
from ..delivery.storage import FileStore, StorageError
from ..errors import PeerUnavailable, UsageError
from ..money import exact_sum, to_stripe_amount
from ..outcomes import Job, RunOutcome, Step
from ..periods import Month
from ..summary import RunSummary

KEPT = 1000  # differences kept for the report and --json (all are counted)


class Kind(StrEnum):
    ROLLUP_BEHIND = "rollup_behind"  # events and the hourly roll-up differ: aggregate-hourly has not seen them
    UNBILLED_USAGE = "unbilled_usage"  # the roll-up differs from what invoices billed: the next invoice adjusts
    ORPHAN_USAGE = "orphan_usage"  # usage of an organization id that has no organizations row
    NOT_INVOICED = "not_invoiced"  # fees were owed for the month, and no invoice bills it
    INVOICE_TOTAL = "invoice_total"  # an invoice's lines do not add up to its total
    STRIPE_MISSING = "stripe_missing"
    STRIPE_DRAFT = "stripe_draft"
    STRIPE_VOID = "stripe_void"  # voided in Stripe while our invoice is live: the customer is not charged
    STRIPE_NUMBER = "stripe_number"
    STRIPE_LINES = "stripe_lines"
    STRIPE_TOTAL = "stripe_total"
    STRIPE_CREDITED = "stripe_credited"  # credit notes in Stripe took part of a live invoice off: it charges less
    STRIPE_NOT_REVERSED = "stripe_not_reversed"  # a void invoice's Stripe invoice still charges the customer
    S3_MISSING = "s3_missing"
    S3_CHECKSUM = "s3_checksum"
    EMAIL_NOT_SENT = "email_not_sent"
    CREDIT_NOTE_UNDELIVERED = "credit_note_undelivered"  # a credit note's PDF, S3, Stripe or e-mail step is missing


@dataclass(frozen=True)
class Difference:
    kind: Kind
    organization_id: str
    subject: str  # the metric, or the invoice number
    ours: str  # what we expected
    found: str  # what was found
    what_to_do: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind.value, "organization_id": self.organization_id, "subject": self.subject,
                "ours": self.ours, "found": self.found, "what_to_do": self.what_to_do}


@dataclass(frozen=True)
class Checks:
    """What is checked besides the database: the deliveries that are on (their adapters)."""

    store: FileStore | None = None
    payments: PaymentGateway | None = None
    email: bool = False


@dataclass
class ReconcileResult:
    month: Month
    organizations: tuple[str, ...] = ()
    checked: Counter[str] = field(default_factory=Counter)  # what was compared: usage rows, invoices, …
    by_kind: Counter[Kind] = field(default_factory=Counter)
    differences: list[Difference] = field(default_factory=list)  # the first KEPT
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.by_kind

    def add(self, difference: Difference) -> None:
        self.by_kind[difference.kind] += 1
        if len(self.differences) < KEPT:
            self.differences.append(difference)

    def summary(self) -> RunSummary:
        outcome = RunOutcome.INTERRUPTED if self.interrupted else \
            RunOutcome.SUCCEEDED if self.ok else RunOutcome.MISMATCH
        return RunSummary(job=Job.RECONCILE, period=self.month, outcome=outcome, dry_run=False,
                          seconds=self.seconds, counts={**self.checked, "differences": sum(self.by_kind.values())},
                          errors={kind.value: n for kind, n in sorted(self.by_kind.items())},
                          failed=[{"organization_id": d.organization_id, "errors": [[d.kind.value, d.subject]]}
                                  for d in self.differences[:100]])

    def json_extra(self) -> dict:
        return {"differences": [d.as_dict() for d in self.differences]}


def reconcile_month(transactions: Transactions, month: Month, checks: Checks, *, only: tuple[str, ...] = (),
                    stop: threading.Event | None = None,
                    on_difference: Callable[[Difference], None] | None = None) -> ReconcileResult:
    started = time.perf_counter()
    result = ReconcileResult(month, only)
    ids = list(only) or None

    def found(difference: Difference) -> None:
        result.add(difference)
        if on_difference:
            on_difference(difference)

    with transactions() as conn:
        unknown = usage_store.unknown_organizations(conn, list(only)) if only else []
    if unknown:  # a typo checks nothing: it must not read as "all clear" (exit 0)
        raise UsageError(f"--org {', '.join(unknown)}: no organization with this id; check the id (nothing was "
                         f"checked; usage of ids with no organization shows as orphan_usage without --org)")
    with transactions() as conn:
        pruned = reconcile_store.pruned_months(conn, month)  # `billing usage prune` dropped their events
        windows = reconcile_store.period_windows(conn, month, ids)  # anchored organizations' own periods
        for row in reconcile_store.usage_differences(conn, month, ids, pruned=pruned, windows=windows):
            result.checked["usage_rows_differing"] += 1
            if row.period_running:  # compared with invoices once its period has ended
                result.checked["usage_rows_period_running"] += 1
            for difference in _usage(row):
                found(difference)
        for org in reconcile_store.owed_fees_not_invoiced(conn, month, ids, windows=windows):
            found(Difference(Kind.NOT_INVOICED, org, str(month), "an invoice for its fees", "none",
                             f"billing invoice-monthly --month {month} --org {org}"))
    # Each live invoice is checked; those whose amounts add up and that need no question to Stripe or
    # S3 (nor, with e-mail on, were sent) are checked by the database alone and never come back.
    every = checks.payments is not None or checks.store is not None
    with transactions() as conn:
        if not every:
            result.checked["invoices"] = reconcile_store.count_live_invoices(conn, month, ids)
        for invoice in reconcile_store.live_invoices(conn, month, ids, every=every, unsent=checks.email):
            if stop is not None and stop.is_set():  # SIGTERM: the invoices asked about so far are counted
                result.interrupted = True
                break
            if every:
                result.checked["invoices"] += 1
            for difference in _invoice(invoice, checks, result.checked):
                found(difference)
    with transactions() as conn:
        notes = credit_note_store.month_credit_notes(conn, month, list(only))
    enabled = tuple(step for step, on in ((Step.S3, checks.store), (Step.STRIPE, checks.payments),
                                          (Step.EMAIL, checks.email)) if on)
    result.checked["credit_notes"] = len(notes)
    for note in notes:
        missing = note.pending_steps(enabled)
        if missing:
            found(Difference(Kind.CREDIT_NOTE_UNDELIVERED, note.organization_id, note.number, "delivered",
                             f"missing: {', '.join(missing)}",
                             f"billing invoice-monthly --month {month} --org {note.organization_id} completes it"))
        if checks.payments is not None and note.stripe_invoice_id is not None and not note.stripe_pending:
            result.checked["stripe_invoices"] += 1
            for difference in _stripe_reversed(note, checks.payments):
                found(difference)
        if checks.store is not None and note.s3_key is not None:  # the credit note's PDF, as an invoice's
            result.checked["s3_objects"] += 1
            for difference in _s3_object(checks.store, note.organization_id, note.number, note.s3_key,
                                         note.pdf_sha256, table="credit_notes"):
                found(difference)
    result.seconds = time.perf_counter() - started
    return result


def _usage(row: reconcile_store.UsageRow) -> list[Difference]:
    org, metric = row.organization_id, row.metric
    if not row.known:
        return [Difference(Kind.ORPHAN_USAGE, org, metric, "an organizations row", f"{row.rolled_up} rolled up",
                           "create the organization (it is billed then), or fix the producer's id")]
    found = []
    if row.events != row.rolled_up:
        found.append(Difference(Kind.ROLLUP_BEHIND, org, metric, f"{row.events} in events", f"{row.rolled_up} rolled up",
                                "billing aggregate-hourly rolls the changed hours up (its next scheduled run does)"))
    # A period still running (an anchored organization's, reconciled before its anchor day) is
    # billed when it ends: until then nothing billed is not a difference.
    if row.rolled_up != row.billed and not row.free and not row.period_running:
        found.append(Difference(Kind.UNBILLED_USAGE, org, metric, f"{row.rolled_up} rolled up", f"{row.billed} billed",
                                "the organization's next invoice adjusts it (late, deleted or corrected usage)"))
    return found


def _invoice(invoice: reconcile_store.InvoiceRow, checks: Checks, checked: Counter[str]) -> list[Difference]:
    org, number = invoice.organization_id, invoice.number
    found = []
    # The lines add up to the subtotal, the tax breakdown to the tax, and the two to the total.
    if invoice.totals_differ:
        found.append(Difference(Kind.INVOICE_TOTAL, org, number, f"total {invoice.total}",
                                f"lines add up to {invoice.lines_total}, taxes to {invoice.taxes_total}",
                                "the invoice was edited in the database: find out who changed it; regenerate it if "
                                "it is wrong"))
    if checks.payments is not None:
        checked["stripe_invoices"] += 1
        found += _stripe(invoice, checks.payments)
    if checks.store is not None:
        checked["s3_objects"] += 1
        found += _s3(invoice, checks.store)
    if checks.email and invoice.emailed_at is None:
        found.append(Difference(Kind.EMAIL_NOT_SENT, org, number, "e-mailed", "not sent",
                                f"billing invoice-monthly --month {number[4:11]} completes it"))
    return found


def _stripe(invoice: reconcile_store.InvoiceRow, gateway: PaymentGateway) -> list[Difference]:
    org, number, rerun = invoice.organization_id, invoice.number, f"billing invoice-monthly --month {invoice.number[4:11]}"
    if invoice.stripe_invoice_id is None:
        return [Difference(Kind.STRIPE_MISSING, org, number, "a Stripe invoice", "none", f"{rerun} creates it")]
    try:
        remote = gateway.invoice_detail(invoice.stripe_invoice_id)
    except PaymentError as exc:
        raise PeerUnavailable(f"could not check {number} in Stripe: {exc}",
                              hint="Nothing is known about Stripe until it answers: rerun `billing reconcile`.") from None
    if remote is None:
        return [Difference(Kind.STRIPE_MISSING, org, number, invoice.stripe_invoice_id, "no such Stripe invoice",
                           "find out who deleted it in Stripe")]
    found = []
    if remote.status == "draft":
        found.append(Difference(Kind.STRIPE_DRAFT, org, number, "finalized", "draft", f"{rerun} finalizes it"))
    elif remote.status == "void":
        found.append(Difference(Kind.STRIPE_VOID, org, number, "open or paid", "void",
                                "the customer is not charged for a live invoice: find out who voided it in Stripe, "
                                f"then void ours (billing invoices void {number}) or issue it again ({rerun} --org {org} "
                                "--regenerate)"))
    if remote.our_number != number:
        found.append(Difference(Kind.STRIPE_NUMBER, org, number, number, str(remote.our_number),
                                "the Stripe invoice is not ours: check it in Stripe"))
    unchargeable = [amount for _, amount in invoice.lines if _stripe_units(amount, invoice.currency) is None]
    if unchargeable:  # edited in the database to what no Stripe invoice can hold: it cannot match
        found.append(Difference(Kind.STRIPE_LINES, org, number, f"a line of {unchargeable[0]} {invoice.currency}",
                                _lines(remote.lines), "the invoice's lines hold an amount Stripe cannot charge: "
                                "find out who changed it; regenerate it if it is wrong"))
    else:
        ours = tuple((n, to_stripe_amount(amount, invoice.currency)) for n, amount in invoice.lines)
        if remote.lines != ours:
            found.append(Difference(Kind.STRIPE_LINES, org, number, _lines(ours), _lines(remote.lines),
                                    "the Stripe invoice's lines were changed: check it in Stripe"))
    total = _stripe_units(invoice.total, invoice.currency)
    if total is None or remote.total != total or remote.currency.lower() != invoice.currency.lower():
        found.append(Difference(Kind.STRIPE_TOTAL, org, number,
                                f"{invoice.total if total is None else total} {invoice.currency}",
                                f"{remote.total} {remote.currency.upper()}", "Stripe charges another amount than "
                                "the invoice says: check it in Stripe now"))
    if remote.credited:  # our credit notes void the invoice they credit: a live one has none in Stripe
        found.append(Difference(Kind.STRIPE_CREDITED, org, number, "nothing credited",
                                f"{remote.credited} {remote.currency.upper()} credited",
                                "a credit note in Stripe lowered what the customer owes, and no invoice of ours "
                                "says so: find out who issued it; void ours (billing invoices void) if it is wrong"))
    return found


def _stripe_reversed(note: credit_note_store.StoredCreditNote, gateway: PaymentGateway) -> list[Difference]:
    """The Stripe invoice of a credited (void) invoice, recorded as reversed: voided (or deleted, a
    draft), or credited in full; anything else still asks the customer to pay for a void invoice."""
    try:
        remote = gateway.invoice_detail(str(note.stripe_invoice_id))
    except PaymentError as exc:
        raise PeerUnavailable(f"could not check {note.invoice_number} in Stripe: {exc}",
                              hint="Nothing is known about Stripe until it answers: rerun `billing reconcile`.") from None
    if remote is None or remote.status in ("void", "draft") or remote.credited >= remote.total:
        return []
    return [Difference(Kind.STRIPE_NOT_REVERSED, note.organization_id, note.number,
                       f"{note.invoice_number} voided or credited in full in Stripe",
                       f"{remote.status}, {remote.credited} of {remote.total} {remote.currency.upper()} credited",
                       f"the customer is charged for the void invoice {note.invoice_number}: find out who changed "
                       "it in Stripe, and void or credit it there")]


def _s3(invoice: reconcile_store.InvoiceRow, store: FileStore) -> list[Difference]:
    org, number = invoice.organization_id, invoice.number
    if invoice.s3_key is None:
        return [Difference(Kind.S3_MISSING, org, number, "uploaded", "not uploaded",
                           f"billing invoice-monthly --month {number[4:11]} uploads it")]
    return _s3_object(store, org, number, invoice.s3_key, invoice.pdf_sha256, table="invoices")


def _s3_object(store: FileStore, org: str, number: str, key: str, pdf_sha256: str | None, *,
               table: str) -> list[Difference]:
    """An uploaded PDF (an invoice's or a credit note's): the object is there, and its bytes are ours."""
    try:
        sha256 = store.sha256(key)
    except StorageError as exc:
        raise PeerUnavailable(f"could not check {number} in S3: {exc}",
                              hint="Nothing is known about S3 until it answers: rerun `billing reconcile`.") from None
    if sha256 is None:
        return [Difference(Kind.S3_MISSING, org, number, key, "no such object",
                           f"restore it, or clear {table}.s3_key so that invoice-monthly uploads it again")]
    if sha256 != pdf_sha256:
        return [Difference(Kind.S3_CHECKSUM, org, number, str(pdf_sha256), sha256,
                           "the object is not our PDF: restore it")]
    return []


def _stripe_units(amount: Decimal, currency: str) -> int | None:
    """The amount in Stripe's integer units; None if no Stripe amount is it (an edited invoice)."""
    try:
        return to_stripe_amount(amount, currency)
    except ValueError:
        return None


def _lines(lines: tuple[tuple[int, int], ...]) -> str:
    return f"{len(lines)} lines, {exact_sum(Decimal(a) for _, a in lines)} in minor units"
