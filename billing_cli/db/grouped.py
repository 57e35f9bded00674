"""Writes grouped across threads: while one thread writes, the others queue their requests, and
the next thread in line writes everything queued in one transaction (or one call), then hands each
thread its own answer. Nothing waits for a group to fill: a thread alone writes alone.

When a group's transaction fails, each of its requests is written again alone, in its own
transaction, so that an error that belongs to one request fails that request only, exactly as if
it had been written alone. A lost database (OperationalError) fails them all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from .engine import Transactions

# At most this many writes per transaction (an issued invoice holds an advisory lock until commit).
MAX_BLOCK = 64

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Ticket(Generic[T, R]):
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
        self._queue: list[Ticket[T, R]] = []
        self._queue_lock = threading.Lock()
        self._turn = threading.Lock()  # one block at a time in this process

    def submit(self, request: T) -> R:
        ticket: Ticket[T, R] = Ticket(request)
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

    def _write_block(self, block: list[Ticket[T, R]]) -> None:
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

    def _write_together(self, block: list[Ticket[T, R]]) -> None:
        with self._transactions() as conn:
            results = self._write(conn, [ticket.request for ticket in block])
        for ticket, result in zip(block, results, strict=True):
            _settle(ticket, result)

    def _write_alone(self, ticket: Ticket[T, R]) -> None:
        try:
            with self._transactions() as conn:
                (result,) = self._write(conn, [ticket.request])
        except OperationalError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the worker, which reports it
            ticket.settle(error=exc)
            return
        _settle(ticket, result)


def _settle(ticket: Ticket[T, R], result: R | Exception) -> None:
    if isinstance(result, Exception):
        ticket.settle(error=result)
    else:
        ticket.settle(result=result)
