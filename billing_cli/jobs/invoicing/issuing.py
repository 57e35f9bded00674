"""Writes in blocks: the invoices that worker threads are ready to issue at the same time go into
one transaction; so do the PDF records.

Issued one per transaction, invoices cannot overlap: the month's number counter row stays locked
from an invoice's number to its commit, fsync included, so every issuing waits for the one before
it. Here a worker that finds another worker writing queues its request; when that block commits,
the next worker in line writes every request queued meanwhile in one transaction: for issuing,
consecutive numbers and one commit (invoice_store.issue_invoices). Nothing waits for a block to
fill: a worker alone writes alone, so a run with one worker issues exactly as before. Each worker
gets its own answer before it goes on (a PDF is recorded before its deliveries start).

The guarantees are those of one transaction: the block's numbers are committed with its invoices
or not at all (a crash, or a rollback, returns them all: no gap). When the block's transaction
fails, each of its requests is written again alone, in its own transaction, so that an error that
belongs to one invoice (its data, a concurrent run's invoice) fails that invoice only, exactly as
if it had been written alone. A lost database fails them all: the run stops, a rerun resumes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from ...db import invoice_store
from ...db.engine import Transactions
from ...db.invoice_store import IssueRequest, PdfRecord, StoredInvoice

# At most this many writes per transaction (an issued invoice holds an advisory lock until commit).
MAX_BLOCK = 64

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Ticket(Generic[T, R]):
    request: T
    done: bool = False
    result: R | None = None
    error: BaseException | None = None

    def settle(self, result: R | None = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.done = result, error, True


class GroupedWrites(Generic[T, R]):
    """`submit(request)`: the request written, alone or in a block with those of other threads; its
    result, or the error writing it alone would have raised. `write(conn, requests)` writes a block
    in the caller's transaction and returns one result per request, in order: a value, or an
    exception that concerns that request alone (raised to its worker; the others are committed)."""

    def __init__(self, transactions: Transactions,
                 write: Callable[[Connection, Sequence[T]], Sequence[R | Exception]],
                 max_block: int = MAX_BLOCK) -> None:
        self._transactions = transactions
        self._write = write
        self._max_block = max_block
        self._queue: list[_Ticket[T, R]] = []
        self._queue_lock = threading.Lock()
        self._turn = threading.Lock()  # one block at a time in this process

    def submit(self, request: T) -> R:
        ticket: _Ticket[T, R] = _Ticket(request)
        with self._queue_lock:
            self._queue.append(ticket)
        with self._turn:
            while not ticket.done:  # usually once: this ticket is in the first block taken
                with self._queue_lock:
                    block, self._queue = self._queue[:self._max_block], self._queue[self._max_block:]
                self._write_block(block)
        if ticket.error is not None:
            raise ticket.error
        return ticket.result  # type: ignore[return-value]

    def _write_block(self, block: list[_Ticket[T, R]]) -> None:
        try:
            if len(block) > 1:
                try:
                    self._write_together(block)
                    return
                except OperationalError:
                    raise  # the database is gone: every request of the block fails with it
                except Exception:  # noqa: BLE001 - each is written alone next, and fails alone if it must
                    pass  # the transaction rolled back: nothing of the block was written
            for ticket in block:
                self._write_alone(ticket)
        except BaseException as exc:
            for ticket in block:  # never leave a waiting worker without an answer
                if not ticket.done:
                    ticket.settle(error=exc)
            if not isinstance(exc, Exception):
                raise

    def _write_together(self, block: list[_Ticket[T, R]]) -> None:
        with self._transactions() as conn:
            results = self._write(conn, [ticket.request for ticket in block])
        for ticket, result in zip(block, results, strict=True):
            _settle(ticket, result)

    def _write_alone(self, ticket: _Ticket[T, R]) -> None:
        try:
            with self._transactions() as conn:
                (result,) = self._write(conn, [ticket.request])
        except OperationalError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the worker, which reports it
            ticket.settle(error=exc)
            return
        _settle(ticket, result)


def _settle(ticket: _Ticket[T, R], result: R | Exception) -> None:
    if isinstance(result, Exception):
        ticket.settle(error=result)
    else:
        ticket.settle(result=result)


def block_issuer(transactions: Transactions, max_block: int = MAX_BLOCK) -> GroupedWrites[IssueRequest, StoredInvoice]:
    """Invoices issued in blocks (invoice_store.issue_invoices); a stale plan's StalePlan is raised
    to its worker alone."""
    return GroupedWrites(transactions, invoice_store.issue_invoices, max_block)


def pdf_recorder(transactions: Transactions, max_block: int = MAX_BLOCK) -> GroupedWrites[PdfRecord, None]:
    """Rendered PDFs recorded in blocks (invoice_store.record_pdfs)."""
    return GroupedWrites(transactions, invoice_store.record_pdfs, max_block)
