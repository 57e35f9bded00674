"""Invoice lines and credit note lines as rows: the columns both tables share, read and written the
same way (`period_start` names the period's month; `period_from` / `period_to` are its days when
they are not that calendar month, NULL otherwise)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal

from ..anchors import BillingPeriod
from ..periods import Month
from ..pricing import InvoiceLine


def read_lines(rows: Iterable) -> tuple[InvoiceLine, ...]:
    """The lines of `SELECT * FROM invoice_lines` (or `credit_note_lines`), in the rows' order."""
    return tuple(_line(row) for row in rows)


def _line(row) -> InvoiceLine:
    month = Month.containing_date(row.period_start)
    bounds = BillingPeriod(month, row.period_from, row.period_to) if row.period_from is not None else None
    return InvoiceLine(row.kind, row.description, Decimal(row.quantity), Decimal(row.unit_price), Decimal(row.amount),
                       row.metric, month, bounds)


def bounds_params(lines: Sequence[InvoiceLine]) -> dict[str, list]:
    """The `froms` and `tos` arrays of an insert of `lines` (TIMESTAMPTZ; NULL for a calendar month)."""
    return {"froms": [line.bounds.start if line.bounds is not None else None for line in lines],
            "tos": [line.bounds.end if line.bounds is not None else None for line in lines]}
