"""Credit notes in PostgreSQL: issued with the void of a sent invoice (same transaction, gapless
numbers per month), their delivery steps recorded as they succeed, read back to resume.

Every function runs in the caller's transaction; the caller decides when to commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from ..anchors import BillingPeriod
from ..credit_notes import credit_lines, credit_note_number, credit_taxes, was_sent
from ..invoices import InvoiceDocument
from . import invoice_taxes
from .line_rows import bounds_params, read_lines
from ..money import exact_sum
from ..outcomes import Step
from ..periods import Month
from ..pricing import InvoiceLine


@dataclass(frozen=True)
class StoredCreditNote:
    """An issued credit note and how far its delivery got (each step's field is set when it succeeded)."""

    id: int
    number: str
    invoice_id: int
    invoice_number: str
    organization_id: str
    currency: str
    total: Decimal
    created_at: datetime
    pdf_sha256: str | None = None
    s3_key: str | None = None
    emailed_at: datetime | None = None
    stripe_invoice_id: str | None = None  # the credited invoice's, if Stripe had it
    stripe_pending: bool = False  # its Stripe invoice is still to be voided or credited
    stripe_credit_note_id: str | None = None

    def pending_steps(self, enabled: tuple[Step, ...]) -> tuple[Step, ...]:
        """The steps still missing: its PDF, then those of the deliveries in `enabled`."""
        done = {Step.S3: self.s3_key is not None, Step.STRIPE: not self.stripe_pending,
                Step.EMAIL: self.emailed_at is not None}
        deliveries = tuple(step for step in (Step.S3, Step.STRIPE, Step.EMAIL) if step in enabled and not done[step])
        return ((Step.PDF,) if self.pdf_sha256 is None else ()) + deliveries


# A credit note `c` with a step of its own still missing (its PDF, S3 upload or e-mail; a Stripe step
# is its invoice's pending reversal): the predicate of the partial index ix_credit_notes_undelivered.
STEP_MISSING = "(c.emailed_at IS NULL OR c.s3_uploaded_at IS NULL OR c.pdf_sha256 IS NULL)"

_STORED = """
    SELECT c.id, c.number, c.invoice_id, i.number AS invoice_number, c.organization_id, c.currency, c.total,
           c.created_at, c.pdf_sha256, CASE WHEN c.s3_uploaded_at IS NOT NULL THEN c.s3_key END AS s3_key,
           c.emailed_at, i.stripe_invoice_id, coalesce(i.stripe_reversal = 'pending', false) AS stripe_pending,
           i.stripe_credit_note_id
    FROM credit_notes c JOIN invoices i ON i.id = c.invoice_id
"""


def issue_for_void(session: Connection, invoice_id: int, reason: str | None = None, *,
                   finalized_in_stripe: bool = False) -> str | None:
    """Right after `invoice_id` was voided, in the same transaction: if the customer had been sent
    it (credit_notes.was_sent; or `finalized_in_stripe`: its reversal found it finalized in Stripe,
    which only our send does, though a crash kept us from recording the send), issue its credit
    note: the month's next credit note number, the invoice's lines negated, `reason` (default: the
    invoice's void reason). Returns the number, or None for an invoice never sent (or one that has
    its credit note already: the unique invoice_id keeps it to one)."""
    invoice = session.execute(text("""
        SELECT i.organization_id, i.billing_month, i.currency, i.subtotal, i.total, i.emailed_at, i.stripe_status,
               i.void_reason, EXISTS (SELECT 1 FROM credit_notes c WHERE c.invoice_id = i.id) AS credited
        FROM invoices i WHERE i.id = :id"""), {"id": invoice_id}).one()
    sent = finalized_in_stripe or was_sent(emailed_at=invoice.emailed_at, stripe_status=invoice.stripe_status)
    if invoice.credited or not sent:
        return None
    reason = reason or invoice.void_reason or "void"
    lines = credit_lines(_invoice_lines(session, invoice_id))
    # The counter row stays locked until the caller commits: a rollback returns the number (gapless).
    sequence = session.execute(text("""
        INSERT INTO credit_note_number_counters AS c (period_start, last_number) VALUES (:p, 1)
        ON CONFLICT (period_start) DO UPDATE SET last_number = c.last_number + 1
        RETURNING last_number"""), {"p": invoice.billing_month}).scalar_one()
    number = credit_note_number(Month.containing_date(invoice.billing_month), sequence)
    subtotal = exact_sum(line.amount for line in lines)
    tax_total = exact_sum(tax.amount for tax in credit_taxes(invoice_taxes.load(session, invoice_id)))
    total = exact_sum((subtotal, tax_total))
    note_id = session.execute(text("""
        INSERT INTO credit_notes (number, invoice_id, organization_id, period_start, currency, subtotal, tax_total,
                                  total, reason, issue_date)
        VALUES (:number, :invoice, :org, :period, :currency, :subtotal, :tax_total, :total, :reason,
                CAST(now() AT TIME ZONE 'UTC' AS date))
        RETURNING id"""), {"number": number, "invoice": invoice_id, "org": invoice.organization_id,
                           "period": invoice.billing_month, "currency": invoice.currency, "subtotal": subtotal,
                           "tax_total": tax_total, "total": total, "reason": reason}).scalar_one()
    if lines:
        session.execute(text("""
            INSERT INTO credit_note_lines (credit_note_id, line_no, kind, metric, description, quantity, unit_price,
                                           amount, period_start, period_from, period_to)
            SELECT :note, n, kind, metric, description, quantity, unit_price, amount, period, period_from, period_to
            FROM unnest(CAST(:kinds AS text[]), CAST(:metrics AS text[]), CAST(:descriptions AS text[]),
                        CAST(:quantities AS numeric[]), CAST(:unit_prices AS numeric[]), CAST(:amounts AS numeric[]),
                        CAST(:periods AS date[]), CAST(:froms AS timestamptz[]), CAST(:tos AS timestamptz[]))
                 WITH ORDINALITY AS l(kind, metric, description, quantity, unit_price, amount, period, period_from,
                                      period_to, n)"""),
            {"note": note_id, "kinds": [str(line.kind) for line in lines], "metrics": [line.metric for line in lines],
             "descriptions": [line.description for line in lines], "quantities": [line.quantity for line in lines],
             "unit_prices": [line.unit_price for line in lines], "amounts": [line.amount for line in lines],
             "periods": [(line.period or Month.containing_date(invoice.billing_month)).first_day for line in lines],
             **bounds_params(lines)})
    return number


def _invoice_lines(session: Connection, invoice_id: int) -> tuple[InvoiceLine, ...]:
    return read_lines(session.execute(text("SELECT * FROM invoice_lines WHERE invoice_id = :id ORDER BY line_no"),
                                      {"id": invoice_id}))


def undelivered(session: Connection, organization_ids: Sequence[str]) -> dict[str, list[StoredCreditNote]]:
    """Each organization's credit notes with a step still missing (PDF, S3, Stripe or e-mail, whether
    or not that delivery is on: the caller decides), oldest first."""
    rows = session.execute(text(f"""{_STORED}
        WHERE c.organization_id = ANY(:ids)
          AND ({STEP_MISSING} OR i.stripe_reversal = 'pending')
        ORDER BY c.id"""), {"ids": list(organization_ids)}).mappings()
    found: dict[str, list[StoredCreditNote]] = {}
    for row in rows:
        found.setdefault(row["organization_id"], []).append(StoredCreditNote(**row))
    return found


def load(session: Connection, credit_note_id: int) -> StoredCreditNote:
    return StoredCreditNote(**session.execute(text(f"{_STORED} WHERE c.id = :id"),
                                              {"id": credit_note_id}).mappings().one())


def of_invoice(session: Connection, invoice_id: int) -> StoredCreditNote | None:
    row = session.execute(text(f"{_STORED} WHERE c.invoice_id = :id"), {"id": invoice_id}).mappings().one_or_none()
    return StoredCreditNote(**row) if row is not None else None


def load_document(session: Connection, credit_note_id: int) -> InvoiceDocument:
    """What the credit note's PDF and e-mail show: the credited invoice's customer (as it was
    issued to), the credit note's own number, date and negated lines."""
    row = session.execute(text("""
        SELECT c.number, c.organization_id, c.period_start, c.issue_date, c.currency, c.total, c.reason,
               c.invoice_id, i.number AS credits, i.billing_month, i.period_start AS invoice_period_start,
               i.period_end AS invoice_period_end, i.bill_to_name, i.bill_to_email, i.bill_to_address, i.bill_to_tax_id,
               r.number AS replaced_by
        FROM credit_notes c JOIN invoices i ON i.id = c.invoice_id
        LEFT JOIN invoices r ON r.replaces_invoice_id = i.id
        WHERE c.id = :id"""), {"id": credit_note_id}).one()
    lines = read_lines(session.execute(text("SELECT * FROM credit_note_lines WHERE credit_note_id = :id "
                                            "ORDER BY line_no"), {"id": credit_note_id}))
    return InvoiceDocument(row.number, row.organization_id, row.bill_to_name, row.bill_to_email,
                           Month.containing_date(row.period_start), row.issue_date, row.issue_date, row.currency,
                           lines, Decimal(row.total), bill_to_address=tuple(row.bill_to_address or ()),
                           bill_to_tax_id=row.bill_to_tax_id, credits=row.credits, reason=row.reason,
                           replaced_by=row.replaced_by,
                           bounds=BillingPeriod(Month.containing_date(row.billing_month), row.invoice_period_start,
                                                row.invoice_period_end),  # the credited invoice's period
                           taxes=credit_taxes(invoice_taxes.load(session, row.invoice_id)))


def record_pdf(session: Connection, credit_note_id: int, *, sha256: str, size: int) -> None:
    session.execute(text("UPDATE credit_notes SET pdf_sha256 = :sha, pdf_bytes = :size, pdf_rendered_at = now() "
                         "WHERE id = :id"), {"id": credit_note_id, "sha": sha256, "size": size})


def record_s3(session: Connection, credit_note_id: int, key: str) -> None:
    session.execute(text("UPDATE credit_notes SET s3_key = :key, s3_uploaded_at = now() WHERE id = :id"),
                    {"id": credit_note_id, "key": key})


def record_email(session: Connection, credit_note_id: int, message_id: str) -> None:
    session.execute(text("UPDATE credit_notes SET emailed_at = now(), email_message_id = :m WHERE id = :id"),
                    {"id": credit_note_id, "m": message_id})


def month_credit_notes(session: Connection, month: Month, organization_ids: Sequence[str] = ()) -> list[StoredCreditNote]:
    """The credit notes of a month (the credited invoices' billing month), for `billing reconcile`."""
    only = " AND c.organization_id = ANY(:ids)" if organization_ids else ""
    rows = session.execute(text(f"{_STORED} WHERE c.period_start = :p{only} ORDER BY c.number"),
                           {"p": month.first_day, "ids": list(organization_ids)}).mappings()
    return [StoredCreditNote(**row) for row in rows]
