"""Invoices in PostgreSQL: issue (gapless numbers), void, record delivery steps, read back.

Every function runs in the caller's transaction; the caller decides when to commit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from ..composition import ComposedInvoice
from ..invoices import InvoiceDocument, invoice_number
from ..periods import Month
from ..pricing import InvoiceLine, plan_snapshot


@dataclass(frozen=True)
class StoredInvoice:
    """An issued invoice and how far its delivery got (each step's field is set when it succeeded)."""

    id: int
    organization_id: str
    number: str
    currency: str
    total: Decimal
    created_at: datetime
    pdf_sha256: str | None = None
    pdf_bytes: int | None = None
    pdf_path: str | None = None
    s3_key: str | None = None
    stripe_customer_id: str | None = None
    stripe_customer_name: str | None = None  # what billing last told Stripe (None: unknown)
    stripe_customer_email: str | None = None
    stripe_invoice_id: str | None = None
    stripe_status: str | None = None
    stripe_hosted_url: str | None = None  # Stripe's page for the sent invoice
    emailed_at: datetime | None = None


_STORED = """
    SELECT i.id, i.organization_id, i.number, i.currency, i.total, i.created_at, i.pdf_sha256, i.pdf_bytes,
           i.pdf_path, CASE WHEN i.s3_uploaded_at IS NOT NULL THEN i.s3_key END AS s3_key,
           o.stripe_customer_id, sc.name AS stripe_customer_name, sc.email AS stripe_customer_email,
           i.stripe_invoice_id, i.stripe_status, i.stripe_hosted_url, i.emailed_at
    FROM invoices i LEFT JOIN organizations o ON o.id = i.organization_id
    LEFT JOIN stripe_customers sc ON sc.organization_id = i.organization_id AND sc.customer_id = o.stripe_customer_id
"""


def live_invoices(session: Connection, month: Month, organization_ids: list[str]) -> dict[str, StoredInvoice]:
    """The live (not void) invoice of each given organization for the month, if any."""
    rows = session.execute(text(f"{_STORED} WHERE i.period_start = :period AND i.status <> 'void' "
                                "AND i.organization_id = ANY(:ids)"),
                           {"period": month.first_day, "ids": organization_ids}).mappings()
    return {r["organization_id"]: StoredInvoice(**r) for r in rows}


def load_live_invoice(session: Connection, invoice_id: int) -> StoredInvoice | None:
    """One invoice as stored now, for a step about to run; None if it has been voided since."""
    row = session.execute(text(f"{_STORED} WHERE i.id = :id AND i.status <> 'void'"), {"id": invoice_id}).mappings()
    found = row.one_or_none()
    return StoredInvoice(**found) if found is not None else None


def void_invoice(session: Connection, invoice_id: int, reason: str, *, organization_id: str | None = None) -> bool:
    """Void a live invoice; it keeps its number (gapless) and stays for the audit trail. With the
    organization's id, under its lock (see issue_invoice). False if it was void already."""
    if organization_id is not None:
        organization_lock(session, organization_id)
    # Its Stripe invoice, if it has one, is reversed next (pending_reversals), in the same run.
    return session.execute(text("""
        UPDATE invoices SET status = 'void', voided_at = now(), void_reason = :reason,
                            stripe_reversal = CASE WHEN stripe_invoice_id IS NOT NULL THEN 'pending' END
        WHERE id = :id AND status <> 'void'"""), {"id": invoice_id, "reason": reason}).rowcount == 1


@dataclass(frozen=True)
class PendingReversal:
    """A void invoice whose Stripe invoice has not been voided, credited or deleted yet."""

    id: int
    number: str
    stripe_invoice_id: str
    replaced_by: str | None  # the number of the invoice that replaced it, if one did


def pending_reversals(session: Connection, organization_ids: list[str]) -> dict[str, list[PendingReversal]]:
    """Each organization's void invoices whose Stripe invoice still needs reversing, oldest first."""
    rows = session.execute(text("""
        SELECT v.organization_id, v.id, v.number, v.stripe_invoice_id, r.number AS replaced_by
        FROM invoices v LEFT JOIN invoices r ON r.replaces_invoice_id = v.id
        WHERE v.stripe_reversal = 'pending' AND v.organization_id = ANY(:ids)
        ORDER BY v.id"""), {"ids": organization_ids}).mappings()
    found: dict[str, list[PendingReversal]] = {}
    for row in rows:
        found.setdefault(row["organization_id"], []).append(
            PendingReversal(row["id"], row["number"], row["stripe_invoice_id"], row["replaced_by"]))
    return found


def record_reversal(session: Connection, invoice_id: int, how: str, credit_note_id: str | None = None) -> None:
    """The void invoice's Stripe invoice was voided, credited in full or deleted."""
    session.execute(text("""
        UPDATE invoices SET stripe_reversal = :how, stripe_credit_note_id = :note, stripe_reversed_at = now()
        WHERE id = :id AND stripe_reversal = 'pending'"""), {"id": invoice_id, "how": how, "note": credit_note_id})


def next_number_preview(session: Connection, month: Month) -> int:
    """The sequence number the next issued invoice of the month would get (read-only)."""
    last = session.execute(text("SELECT last_number FROM invoice_number_counters WHERE period_start = :p"),
                           {"p": month.first_day}).scalar_one_or_none()
    return (last or 0) + 1


class StalePlan(Exception):
    """The organization's invoices changed between planning and issuing (another run issued or
    voided one): the plan may bill something twice or miss a credit, so nothing was issued."""


def organization_lock(session: Connection, organization_id: str) -> None:
    """Serialise everything that issues or voids this organization's invoices, until commit."""
    key = int.from_bytes(hashlib.sha256(f"billing-org:{organization_id}".encode()).digest()[:8], "big", signed=True)
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def issue_invoice(session: Connection, *, organization_id: str, bill_to_name: str, bill_to_email: str,
                  bill_to_address: tuple[str, ...] = (), bill_to_tax_id: str | None = None,
                  invoice: ComposedInvoice, revisions: Mapping[Month, int], issue_date: date, due_date: date,
                  planned_with: frozenset[int], replaces: StoredInvoice | None = None,
                  stripe_customer: tuple[str | None, str | None, str | None] = (None, None, None)) -> StoredInvoice:
    """Insert the invoice, its lines, the usage it bills per period and the periods it accounts for
    (at which usage revision), with the month's next number. Raises StalePlan, touching nothing,
    when the organization's live invoices are no longer those the plan was made from. The counter
    row stays locked until the caller commits, so a rollback returns the number (gapless)."""
    organization_lock(session, organization_id)
    live = frozenset(session.execute(text("SELECT id FROM invoices WHERE organization_id = :org AND status <> 'void'"),
                                     {"org": organization_id}).scalars())
    if live != planned_with:
        raise StalePlan(f"the invoices of {organization_id} changed while it was planned")
    month = invoice.period
    if replaces is not None:
        void_invoice(session, replaces.id, "regenerated")
    sequence = session.execute(text("""
        INSERT INTO invoice_number_counters AS c (period_start, last_number) VALUES (:p, 1)
        ON CONFLICT (period_start) DO UPDATE SET last_number = c.last_number + 1
        RETURNING last_number
    """), {"p": month.first_day}).scalar_one()
    number = invoice_number(month, sequence)
    invoice_id, created_at = session.execute(text("""
        INSERT INTO invoices (organization_id, period_start, number, status, currency, subtotal, total,
                              plan_id, plan_snapshot, bill_to_name, bill_to_email, bill_to_address, bill_to_tax_id,
                              issue_date, due_date, replaces_invoice_id)
        VALUES (:org, :period, :number, 'issued', :currency, :subtotal, :total, :plan, CAST(:snapshot AS jsonb),
                :name, :email, :address, :tax_id, :issue, :due, :replaces)
        RETURNING id, created_at
    """), {"org": organization_id, "period": month.first_day, "number": number, "currency": invoice.currency,
           "subtotal": invoice.subtotal, "total": invoice.total, "plan": invoice.plan_id,
           "snapshot": json.dumps(plan_snapshot(invoice.plan)), "name": bill_to_name, "email": bill_to_email,
           "address": list(bill_to_address) or None, "tax_id": bill_to_tax_id,
           "issue": issue_date, "due": due_date, "replaces": replaces.id if replaces else None}).one()
    session.execute(text("""
        INSERT INTO invoice_lines (invoice_id, line_no, kind, metric, description, quantity, unit_price, amount,
                                   period_start)
        VALUES (:invoice, :line_no, :kind, :metric, :description, :quantity, :unit_price, :amount, :period)
    """), [{"invoice": invoice_id, "line_no": n, "kind": line.kind, "metric": line.metric,
            "description": line.description, "quantity": line.quantity, "unit_price": line.unit_price,
            "amount": line.amount, "period": (line.period or month).first_day}
           for n, line in enumerate(invoice.lines, start=1)])
    if invoice.usage:
        session.execute(text("INSERT INTO invoice_usage (invoice_id, period_start, metric, quantity) "
                             "VALUES (:invoice, :period, :metric, :quantity)"),
                        [{"invoice": invoice_id, "period": period.first_day, "metric": metric, "quantity": quantity}
                         for (period, metric), quantity in invoice.usage.items()])
    session.execute(text("INSERT INTO invoice_periods (invoice_id, period_start, revision) "
                         "VALUES (:invoice, :period, :revision)"),
                    [{"invoice": invoice_id, "period": period.first_day, "revision": revisions.get(period, 0)}
                     for period in invoice.periods])
    customer_id, customer_name, customer_email = stripe_customer  # carried to its Stripe step, not stored here
    return StoredInvoice(id=invoice_id, organization_id=organization_id, number=number, currency=invoice.currency,
                         total=invoice.total, created_at=created_at, stripe_customer_id=customer_id,
                         stripe_customer_name=customer_name, stripe_customer_email=customer_email)


def record_pdf(session: Connection, invoice_id: int, *, sha256: str, size: int, path: str | None) -> None:
    session.execute(text("""
        UPDATE invoices SET pdf_sha256 = :sha, pdf_bytes = :size, pdf_path = coalesce(:path, pdf_path),
                            pdf_rendered_at = now()
        WHERE id = :id
    """), {"id": invoice_id, "sha": sha256, "size": size, "path": path})


def load_document(session: Connection, invoice_id: int) -> InvoiceDocument:
    row = session.execute(text("""
        SELECT i.id, i.organization_id, i.number, i.bill_to_name, i.bill_to_email, i.period_start, i.issue_date,
               i.due_date, i.currency, i.total, i.bill_to_address, i.bill_to_tax_id, r.number AS replaces
        FROM invoices i LEFT JOIN invoices r ON r.id = i.replaces_invoice_id WHERE i.id = :id
    """), {"id": invoice_id}).one()
    lines = tuple(InvoiceLine(r.kind, r.description, Decimal(r.quantity), Decimal(r.unit_price),
                              Decimal(r.amount), r.metric, Month.containing_date(r.period_start))
                  for r in session.execute(text("SELECT * FROM invoice_lines WHERE invoice_id = :id "
                                                "ORDER BY line_no"), {"id": invoice_id}))
    return InvoiceDocument(row.number, row.organization_id, row.bill_to_name, row.bill_to_email,
                           Month.containing_date(row.period_start), row.issue_date, row.due_date, row.currency,
                           lines, Decimal(row.total), replaces=row.replaces,
                           bill_to_address=tuple(row.bill_to_address or ()), bill_to_tax_id=row.bill_to_tax_id)


def record_s3(session: Connection, invoice_id: int, key: str) -> None:
    session.execute(text("UPDATE invoices SET s3_key = :key, s3_uploaded_at = now() WHERE id = :id"),
                    {"id": invoice_id, "key": key})


def record_stripe_customer(session: Connection, organization_id: str, customer_id: str, *, name: str,
                           email: str) -> None:
    """The organization's Stripe customer, and the name and e-mail it now has at Stripe."""
    session.execute(text("UPDATE organizations SET stripe_customer_id = :c WHERE id = :id "
                         "AND stripe_customer_id IS NULL"), {"id": organization_id, "c": customer_id})
    session.execute(text("""
        INSERT INTO stripe_customers (organization_id, customer_id, name, email) VALUES (:id, :c, :name, :email)
        ON CONFLICT (organization_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, name = EXCLUDED.name,
            email = EXCLUDED.email, synced_at = now()
    """), {"id": organization_id, "c": customer_id, "name": name, "email": email})


def record_stripe_invoice(session: Connection, invoice_id: int, stripe_invoice_id: str, status: str,
                          hosted_url: str | None = None) -> None:
    session.execute(text("""
        UPDATE invoices SET stripe_invoice_id = :sid, stripe_status = :status, stripe_updated_at = now(),
                            stripe_hosted_url = COALESCE(:url, stripe_hosted_url)
        WHERE id = :id
    """), {"id": invoice_id, "sid": stripe_invoice_id, "status": status, "url": hosted_url})


def record_email(session: Connection, invoice_id: int, message_id: str) -> None:
    session.execute(text("UPDATE invoices SET emailed_at = now(), email_message_id = :m WHERE id = :id"),
                    {"id": invoice_id, "m": message_id})
