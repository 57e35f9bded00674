"""Invoices in PostgreSQL: issue (gapless numbers), void, record delivery steps, read back.

Every function runs in the caller's transaction; the caller decides when to commit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from ..anchors import BillingPeriod, fees_as_json
from . import credit_note_store, invoice_taxes
from .engine import pipelined
from .json_rows import json_rows
from .line_rows import read_lines
from ..composition import ComposedInvoice
from ..credit_notes import was_sent
from ..invoices import InvoiceDocument, invoice_number
from ..periods import Month
from ..pricing import plan_snapshot


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
    stripe_invoice_id: str | None = None
    stripe_status: str | None = None
    stripe_hosted_url: str | None = None  # Stripe's page for the sent invoice
    emailed_at: datetime | None = None
    replaces_invoice_id: int | None = None  # the void invoice it replaces (a regeneration's replacement)


_STORED = """
    SELECT i.id, i.organization_id, i.number, i.currency, i.total, i.created_at, i.pdf_sha256, i.pdf_bytes,
           i.pdf_path, CASE WHEN i.s3_uploaded_at IS NOT NULL THEN i.s3_key END AS s3_key,
           o.stripe_customer_id, i.stripe_invoice_id, i.stripe_status, i.stripe_hosted_url, i.emailed_at,
           i.replaces_invoice_id
    FROM invoices i LEFT JOIN organizations o ON o.id = i.organization_id
"""


def live_invoices(session: Connection, month: Month, organization_ids: list[str]) -> dict[str, StoredInvoice]:
    """The live (not void) invoice of each given organization for the month, if any."""
    rows = session.execute(text(f"{_STORED} WHERE i.billing_month = :period AND i.status <> 'void' "
                                "AND i.organization_id = ANY(:ids)"),
                           {"period": month.first_day, "ids": organization_ids}).mappings()
    return {r["organization_id"]: StoredInvoice(**r) for r in rows}


def load_live_invoice(session: Connection, invoice_id: int) -> StoredInvoice | None:
    """One invoice as stored now, for a step about to run; None if it has been voided since."""
    row = session.execute(text(f"{_STORED} WHERE i.id = :id AND i.status <> 'void'"), {"id": invoice_id}).mappings()
    found = row.one_or_none()
    return StoredInvoice(**found) if found is not None else None


def void_invoice(session: Connection, invoice_id: int, reason: str, *, organization_id: str | None = None,
                 replaced: bool = False) -> bool:
    """Void a live invoice; it keeps its number (gapless) and stays for the audit trail. With the
    organization's id, under its lock (see issue_invoice). False if it was void already.
    The earlier periods it adjusted get a new usage revision, so that the organization's next
    invoice rates them again without it: a later invoice that adjusted the same period counted on
    what this one billed, and would otherwise hide it (`replaced`: its replacement, issued in the
    same transaction, has already rated them again without it)."""
    if organization_id is not None:
        organization_lock(session, organization_id)
    # Its Stripe invoice, if it has one, is reversed next (pending_reversals), in the same run.
    voided = session.execute(text("""
        UPDATE invoices SET status = 'void', voided_at = now(), void_reason = :reason,
                            stripe_reversal = CASE WHEN stripe_invoice_id IS NOT NULL THEN 'pending' END
        WHERE id = :id AND status <> 'void'"""), {"id": invoice_id, "reason": reason}).rowcount == 1
    if voided and not replaced:
        session.execute(text("""
            INSERT INTO usage_revisions AS r (organization_id, period_start, revised_at)
            SELECT i.organization_id, p.period_start, now()
            FROM invoices i JOIN invoice_periods p ON p.invoice_id = i.id
            WHERE i.id = :id AND p.period_start <> i.billing_month
            ON CONFLICT (organization_id, period_start) DO UPDATE
                SET revision = r.revision + 1, revised_at = EXCLUDED.revised_at"""), {"id": invoice_id})
    if voided:  # the customer had it: its credit note, in the same transaction (delivered next)
        credit_note_store.issue_for_void(session, invoice_id, reason)
    return voided


@dataclass(frozen=True)
class InvoiceByNumber:
    """An invoice as `billing invoices void` finds it: whether it is live, and whether it was sent."""

    id: int
    organization_id: str
    bill_to_name: str
    billing_month: date  # the first day of the month its period starts in (its number's month)
    currency: str
    total: Decimal
    status: str
    voided_at: datetime | None
    void_reason: str | None
    stripe_invoice_id: str | None
    sent: bool  # credit_notes.was_sent: e-mailed, or sent in Stripe


def invoice_by_number(session: Connection, number: str) -> InvoiceByNumber | None:
    row = session.execute(text("""
        SELECT id, organization_id, bill_to_name, billing_month, currency, total, status, voided_at, void_reason,
               stripe_invoice_id, emailed_at, stripe_status
        FROM invoices WHERE number = :number"""), {"number": number}).mappings().one_or_none()
    if row is None:
        return None
    fields = dict(row)
    sent = was_sent(emailed_at=fields.pop("emailed_at"), stripe_status=fields.pop("stripe_status"))
    return InvoiceByNumber(**fields, sent=sent)


@dataclass(frozen=True)
class PendingReversal:
    """A void invoice whose Stripe invoice has not been voided, credited or deleted yet."""

    id: int
    number: str
    stripe_invoice_id: str
    replaced_by: str | None  # the number of the invoice that replaced it, if one did
    credit_note: str | None = None  # our credit note for it, if it had been sent


def pending_reversals(session: Connection, organization_ids: list[str]) -> dict[str, list[PendingReversal]]:
    """Each organization's void invoices whose Stripe invoice still needs reversing, oldest first."""
    rows = session.execute(text("""
        SELECT v.organization_id, v.id, v.number, v.stripe_invoice_id, r.number AS replaced_by,
               c.number AS credit_note
        FROM invoices v LEFT JOIN invoices r ON r.replaces_invoice_id = v.id
        LEFT JOIN credit_notes c ON c.invoice_id = v.id
        WHERE v.stripe_reversal = 'pending' AND v.organization_id = ANY(:ids)
        ORDER BY v.id"""), {"ids": organization_ids}).mappings()
    found: dict[str, list[PendingReversal]] = {}
    for row in rows:
        found.setdefault(row["organization_id"], []).append(
            PendingReversal(row["id"], row["number"], row["stripe_invoice_id"], row["replaced_by"],
                            row["credit_note"]))
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
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _organization_key(organization_id)})


def _organization_key(organization_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"billing-org:{organization_id}".encode()).digest()[:8], "big", signed=True)


@dataclass(frozen=True)
class IssueRequest:
    """One planned invoice to issue: who is billed, what, and the live invoices its plan was made from."""

    organization_id: str
    bill_to_name: str
    bill_to_email: str
    invoice: ComposedInvoice
    revisions: Mapping[Month, int]
    issue_date: date
    due_date: date
    planned_with: frozenset[int]
    replaces: StoredInvoice | None = None
    stripe_customer_id: str | None = None  # carried to its Stripe step
    bill_to_address: tuple[str, ...] = ()  # copied onto the invoice: it re-renders the same after a move
    bill_to_tax_id: str | None = None


def issue_invoice(session: Connection, *, organization_id: str, bill_to_name: str, bill_to_email: str,
                  bill_to_address: tuple[str, ...] = (), bill_to_tax_id: str | None = None,
                  invoice: ComposedInvoice, revisions: Mapping[Month, int], issue_date: date, due_date: date,
                  planned_with: frozenset[int], replaces: StoredInvoice | None = None,
                  stripe_customer_id: str | None = None) -> StoredInvoice:
    """One invoice: issue_invoices with a block of one; raises StalePlan, touching nothing, when the
    organization's live invoices are no longer those the plan was made from."""
    issued = issue_invoices(session, [IssueRequest(organization_id, bill_to_name, bill_to_email, invoice, revisions,
                                                   issue_date, due_date, planned_with, replaces, stripe_customer_id,
                                                   tuple(bill_to_address), bill_to_tax_id)])[0]
    if isinstance(issued, StalePlan):
        raise issued
    return issued


def issue_invoices(session: Connection, requests: Sequence[IssueRequest]) -> list[StoredInvoice | StalePlan]:
    """Issue a block of invoices of one month: each with its lines, the usage it bills per period and
    the periods it accounts for (at which usage revision), numbered with the month's next numbers,
    consecutive, in the order given. A request whose organization's live invoices are no longer
    those its plan was made from gets StalePlan in its place and takes no number; the others are
    issued. Each organization is locked (organization_lock) before its invoices are read, so that
    nothing else issues or voids them until commit. The counter row stays locked until the caller
    commits, so a rollback returns every number of the block (gapless); so does any error, which
    leaves the caller's transaction to roll back whole.

    A constant number of statements whatever the block's size: issuing one invoice per transaction
    makes every invoice wait for the one before it to commit (the counter row lock is held through
    the commit's fsync)."""
    return issue_and_record(session, requests) if requests else []  # type: ignore[return-value]


def issue_and_record(session: Connection, items: Sequence[IssueRequest | PdfRecord]) -> list[StoredInvoice | StalePlan | None]:
    """A block of invoices to issue (issue_invoices) and of rendered PDFs to record (record_pdfs), in
    one transaction: one result per item, in order (None for a PDF record)."""
    requests = [item for item in items if isinstance(item, IssueRequest)]
    records = [item for item in items if isinstance(item, PdfRecord)]
    if not requests:
        with pipelined(session) as run:
            run(_CURRENT_PLANS, {})
            run(_RECORD_PDFS, _record_params(records))
        return [None] * len(records)
    month = requests[0].invoice.period
    if any(r.invoice.period != month for r in requests):
        raise ValueError("a block of invoices to issue must all be of one month")
    if len({r.organization_id for r in requests}) != len(requests):
        raise ValueError("a block of invoices to issue holds one invoice per organization")
    issued = iter(_issue(session, month, requests, records))
    return [next(issued) if isinstance(item, IssueRequest) else None for item in items]


# The statements of a run's blocks are prepared (psycopg, after 5 executions), and so are the
# foreign-key checks of their inserts (PostgreSQL's own); a generic plan made when a month's
# invoices were still few scans the whole invoices table (every foreign-key check of every line),
# for the rest of the run when nothing analyzes the table meanwhile: a run that slows down as it
# goes (11 sequential scans of the table per invoice measured, docs/benchmarks.md). Planned each
# time for the table as it is, they use the indexes.
_CURRENT_PLANS = text("SET LOCAL plan_cache_mode = force_custom_plan")
_LOCK_ORGANIZATIONS = text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) AS k")
_RAISE_COUNTER = text("""
    INSERT INTO invoice_number_counters AS c (period_start, last_number) VALUES (:p, :k)
    ON CONFLICT (period_start) DO UPDATE SET last_number = c.last_number + :k
    RETURNING last_number
""")
_LIVE_INVOICES = text("SELECT organization_id, id FROM invoices WHERE organization_id = ANY(:orgs) AND status <> 'void'")


def _issue(session: Connection, month: Month, requests: Sequence[IssueRequest],
           records: Sequence[PdfRecord]) -> list[StoredInvoice | StalePlan]:
    """issue_invoices in three round trips whatever the block's size (issuing one invoice per
    transaction made every invoice wait for the one before it to commit: the counter row lock is
    held through the commit's fsync; and each round trip of the block's holder is a wait that the
    whole process's issuing waits behind): (1) the organizations' locks, the counter raised by the
    whole block, their live invoices and the PDF records, sent together; (2) the invoices with their
    lines, taxes, usage and periods, one statement; (3) the caller's COMMIT. A stale request gives
    its number back in the same transaction (the counter is lowered again before anything commits:
    no gap). A block with a regeneration voids the invoice it replaces before the counter is taken,
    as before (one more round trip each)."""
    org_ids = [r.organization_id for r in requests]
    # Locks in one order (their keys sorted), so that two blocks never wait for each other in a cycle;
    # then the counter row (nothing that holds it waits for an organization's lock).
    keys = sorted({_organization_key(org) for org in org_ids})
    voids = any(r.replaces is not None for r in requests)
    with pipelined(session) as run:
        run(_CURRENT_PLANS, {})
        run(_LOCK_ORGANIZATIONS, {"keys": keys})
        raised = None if voids else run(_RAISE_COUNTER, {"p": month.first_day, "k": len(requests)})
        live_rows = run(_LIVE_INVOICES, {"orgs": org_ids})
        if records:  # rows of invoices this process issued (their organizations are locked by its run)
            run(_RECORD_PDFS, _record_params(records))
    live: dict[str, set[int]] = {org: set() for org in org_ids}
    for org, invoice_id in live_rows.fetchall():
        live[org].add(invoice_id)
    results: list[StoredInvoice | StalePlan | None] = [None] * len(requests)
    fresh: list[tuple[int, IssueRequest]] = []
    for at, request in enumerate(requests):
        if frozenset(live[request.organization_id]) != request.planned_with:
            results[at] = StalePlan(f"the invoices of {request.organization_id} changed while it was planned")
        else:
            fresh.append((at, request))
    stale = len(requests) - len(fresh)
    if raised is not None:
        (last,) = raised.fetchone()
        if stale:  # their numbers are given back, in this transaction: nothing is committed with a gap
            last = session.execute(text("UPDATE invoice_number_counters SET last_number = last_number - :k "
                                        "WHERE period_start = :p RETURNING last_number"),
                                   {"p": month.first_day, "k": stale}).scalar_one()
        if not fresh:
            return results  # type: ignore[return-value]
    else:
        if not fresh:
            return results  # type: ignore[return-value]
        for _, request in fresh:
            if request.replaces is not None:
                void_invoice(session, request.replaces.id, "regenerated", replaced=True)
        last = session.execute(_RAISE_COUNTER, {"p": month.first_day, "k": len(fresh)}).scalar_one()
    numbers = [invoice_number(month, sequence) for sequence in range(last - len(fresh) + 1, last + 1)]
    rows = session.execute(text(f"""
        WITH inv AS (
            INSERT INTO invoices (organization_id, billing_month, period_start, period_end, number, status, currency,
                                  subtotal, tax_total, total, plan_id, plan_snapshot, bill_to_name, bill_to_email,
                                  bill_to_address, bill_to_tax_id, issue_date, due_date, replaces_invoice_id,
                                  fee_share)
            SELECT org, :period, period_start, period_end, number, 'issued', currency, subtotal, tax, total, plan,
                   snapshot, name, email, address, tax_id, issue, due, replaces, fee_share
            FROM json_to_recordset(CAST(:invoices AS json))
                 AS r(org text, number text, currency text, subtotal numeric, tax numeric, total numeric, plan text,
                      snapshot jsonb, name text, email text, address text[], tax_id text, issue date, due date,
                      replaces bigint, period_start timestamptz, period_end timestamptz, fee_share jsonb)
            RETURNING number, id, created_at
        ), lines AS (
            INSERT INTO invoice_lines (invoice_id, line_no, kind, metric, description, quantity, unit_price, amount,
                                       period_start, period_from, period_to)
            SELECT inv.id, l.line_no, l.kind, l.metric, l.description, l.quantity, l.unit_price, l.amount,
                   l.period_start, l.period_from, l.period_to
            FROM json_to_recordset(CAST(:lines AS json))
                 AS l(number text, line_no integer, kind text, metric text, description text, quantity numeric,
                      unit_price numeric, amount numeric, period_start date, period_from timestamptz,
                      period_to timestamptz)
            JOIN inv USING (number)
        ), taxes AS (
            {invoice_taxes.INSERT_BY_NUMBER}
        ), usage AS (
            INSERT INTO invoice_usage (invoice_id, period_start, metric, quantity)
            SELECT inv.id, u.period_start, u.metric, u.quantity
            FROM json_to_recordset(CAST(:usage AS json)) AS u(number text, period_start date, metric text, quantity numeric)
            JOIN inv USING (number)
        ), periods AS (
            INSERT INTO invoice_periods (invoice_id, period_start, revision)
            SELECT inv.id, p.period_start, p.revision
            FROM json_to_recordset(CAST(:periods AS json)) AS p(number text, period_start date, revision bigint)
            JOIN inv USING (number)
        )
        SELECT number, id, created_at FROM inv
    """), {"period": month.first_day, **_block_rows(numbers, [r for _, r in fresh])}).all()
    inserted = {number: (invoice_id, created_at) for number, invoice_id, created_at in rows}
    for number, (at, request) in zip(numbers, fresh, strict=True):
        invoice_id, created_at = inserted[number]
        results[at] = StoredInvoice(id=invoice_id, organization_id=request.organization_id, number=number,
                                    currency=request.invoice.currency, total=request.invoice.total,
                                    created_at=created_at, stripe_customer_id=request.stripe_customer_id,
                                    replaces_invoice_id=request.replaces.id if request.replaces else None)
    return results  # type: ignore[return-value]


def _block_rows(numbers: Sequence[str], requests: Sequence[IssueRequest]) -> dict[str, str]:
    """The block's invoices and their lines, taxes, usage and periods, as JSON rows by invoice number
    (json_rows: one parameter per table)."""
    pairs = list(zip(numbers, requests, strict=True))
    return {
        "invoices": json_rows({
            "org": r.organization_id, "number": number, "currency": r.invoice.currency,
            "subtotal": r.invoice.subtotal, "tax": r.invoice.tax_total, "total": r.invoice.total,
            "plan": r.invoice.plan_id, "snapshot": plan_snapshot(r.invoice.plan), "name": r.bill_to_name,
            "email": r.bill_to_email, "address": list(r.bill_to_address or ()) or None, "tax_id": r.bill_to_tax_id,
            "issue": r.issue_date, "due": r.due_date, "replaces": r.replaces.id if r.replaces else None,
            "period_start": r.invoice.bounds.start, "period_end": r.invoice.bounds.end,
            "fee_share": fees_as_json(r.invoice.fees)} for number, r in pairs),
        "lines": json_rows({
            "number": number, "line_no": n, "kind": str(line.kind), "metric": line.metric,
            "description": line.description, "quantity": line.quantity, "unit_price": line.unit_price,
            "amount": line.amount, "period_start": (line.period or r.invoice.period).first_day,
            "period_from": line.bounds.start if line.bounds is not None else None,
            "period_to": line.bounds.end if line.bounds is not None else None}
            for number, r in pairs for n, line in enumerate(r.invoice.lines, start=1)),
        "taxes": invoice_taxes.rows_by_number([(number, r.invoice.taxes) for number, r in pairs]),
        # the usage each invoice bills per period, and the periods it accounts for (at which revision)
        "usage": json_rows({"number": number, "period_start": period.first_day, "metric": metric, "quantity": quantity}
                           for number, r in pairs for (period, metric), quantity in r.invoice.usage.items()),
        "periods": json_rows({"number": number, "period_start": period.first_day,
                              "revision": r.revisions.get(period, 0)}
                             for number, r in pairs for period in r.invoice.periods),
    }


@dataclass(frozen=True)
class PdfRecord:
    """A rendered PDF of an issued invoice: its hash, its size, and where its file was written."""

    invoice_id: int
    sha256: str
    size: int
    path: str | None = None


def record_pdf(session: Connection, invoice_id: int, *, sha256: str, size: int, path: str | None) -> None:
    record_pdfs(session, [PdfRecord(invoice_id, sha256, size, path)])


_RECORD_PDFS = text("""
    UPDATE invoices i SET pdf_sha256 = r.sha, pdf_bytes = r.size, pdf_path = coalesce(r.path, i.pdf_path),
                          pdf_rendered_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:shas AS text[]), CAST(:sizes AS integer[]),
                CAST(:paths AS text[])) AS r(id, sha, size, path)
    WHERE i.id = r.id
""")


def _record_params(records: Sequence[PdfRecord]) -> dict[str, list]:
    return {"ids": [r.invoice_id for r in records], "shas": [r.sha256 for r in records],
            "sizes": [r.size for r in records], "paths": [r.path for r in records]}


def record_pdfs(session: Connection, records: Sequence[PdfRecord]) -> list[None]:
    """Record rendered PDFs (one statement for them all); one None per record, in order."""
    if records:
        session.execute(_RECORD_PDFS, _record_params(records))
    return [None] * len(records)


def load_document(session: Connection, invoice_id: int) -> InvoiceDocument:
    row = session.execute(text("""
        SELECT i.id, i.organization_id, i.number, i.bill_to_name, i.bill_to_email, i.billing_month, i.period_start,
               i.period_end, i.issue_date,
               i.due_date, i.currency, i.total, i.bill_to_address, i.bill_to_tax_id, r.number AS replaces
        FROM invoices i LEFT JOIN invoices r ON r.id = i.replaces_invoice_id WHERE i.id = :id
    """), {"id": invoice_id}).one()
    lines = read_lines(session.execute(text("SELECT * FROM invoice_lines WHERE invoice_id = :id ORDER BY line_no"),
                                       {"id": invoice_id}))
    return InvoiceDocument(row.number, row.organization_id, row.bill_to_name, row.bill_to_email,
                           Month.containing_date(row.billing_month), row.issue_date, row.due_date, row.currency,
                           lines, Decimal(row.total), replaces=row.replaces,
                           bounds=BillingPeriod(Month.containing_date(row.billing_month), row.period_start,
                                                row.period_end),
                           bill_to_address=tuple(row.bill_to_address or ()), bill_to_tax_id=row.bill_to_tax_id,
                           taxes=invoice_taxes.load(session, invoice_id))


def record_s3(session: Connection, invoice_id: int, key: str) -> None:
    session.execute(text("UPDATE invoices SET s3_key = :key, s3_uploaded_at = now() WHERE id = :id"),
                    {"id": invoice_id, "key": key})


@dataclass(frozen=True)
class CustomerState:
    """An organization's name and e-mail as they are now, and its Stripe customer as billing last
    told Stripe about it (None: no customer yet, or nothing recorded of what it was told)."""

    name: str
    email: str
    customer_id: str | None
    synced_name: str | None
    synced_email: str | None
    synced_at: datetime | None  # when that was recorded: changes with every update


def customer_state(session: Connection, organization_id: str) -> CustomerState:
    row = session.execute(text("""
        SELECT o.name, o.email, o.stripe_customer_id AS customer_id, sc.name AS synced_name,
               sc.email AS synced_email, sc.synced_at
        FROM organizations o
        LEFT JOIN stripe_customers sc ON sc.organization_id = o.id AND sc.customer_id = o.stripe_customer_id
        WHERE o.id = :id"""), {"id": organization_id}).mappings().one()
    return CustomerState(**row)


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
