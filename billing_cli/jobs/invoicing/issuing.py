"""Writes in blocks: the invoices that worker threads are ready to issue at the same time go into
one transaction; so do the PDF records.

Issued one per transaction, invoices cannot overlap: the month's number counter row stays locked
from an invoice's number to its commit, fsync included, so every issuing waits for the one before
it. Here a worker that finds another worker writing queues its request; when that block commits,
the next worker in line writes every request queued meanwhile in one transaction: for issuing,
consecutive numbers and one commit (invoice_store.issue_invoices). Nothing waits for a block to
fill: a worker alone writes alone, so a run with one worker issues exactly as before. Each worker
gets its own answer before it goes on (a PDF is recorded before its deliveries start). Issuing and
recording PDFs share the blocks (block_writer): one turn, one transaction, one commit for both.

The guarantees are those of one transaction: the block's numbers are committed with its invoices
or not at all (a crash, or a rollback, returns them all: no gap). When the block's transaction
fails, each of its requests is written again alone, in its own transaction, so that an error that
belongs to one invoice (its data, a concurrent run's invoice) fails that invoice only, exactly as
if it had been written alone. A lost database fails them all: the run stops, a rerun resumes.
"""

from __future__ import annotations

from ...db import invoice_store
from ...db.engine import Transactions
from ...db.grouped import MAX_BLOCK, GroupedWrites
from ...db.invoice_store import IssueRequest, PdfRecord, StoredInvoice


def block_writer(transactions: Transactions,
                 max_block: int = MAX_BLOCK) -> GroupedWrites[IssueRequest | PdfRecord, StoredInvoice | None]:
    """Invoices issued and rendered PDFs recorded in blocks, both in the same transactions
    (invoice_store.issue_and_record): the PDF records queued while a block was being written go
    with the next invoices, in their first round trip, instead of a transaction of their own that
    the next block would wait for. A stale plan's StalePlan is raised to its worker alone."""
    return GroupedWrites(transactions, invoice_store.issue_and_record, max_block)
