"""Invoices' tax breakdowns (invoice_taxes): written with the invoices they belong to, read back
for their documents and for the credit notes that reverse them. In the caller's transaction."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Connection, text

from ..taxes import InvoiceTax, Treatment
from .json_rows import json_rows


# Each invoice's tax breakdown, in its order, written inside issuing's statement (invoice_store._issue)
# and keyed by the invoices' numbers: a data-modifying CTE reading the `inv` CTE of the invoices
# inserted by that statement.
INSERT_BY_NUMBER = """
    INSERT INTO invoice_taxes (invoice_id, position, name, country, region, percentage, taxable_amount, amount,
                               treatment, mention, tax_rate_id)
    SELECT inv.id, t.position, t.name, t.country, t.region, t.percentage, t.taxable_amount, t.amount, t.treatment,
           t.mention, t.tax_rate_id
    FROM json_to_recordset(CAST(:taxes AS json))
         AS t(number text, position integer, name text, country text, region text, percentage numeric,
              taxable_amount numeric, amount numeric, treatment text, mention text, tax_rate_id bigint)
    JOIN inv USING (number)"""


def rows_by_number(invoices: list[tuple[str, tuple[InvoiceTax, ...]]]) -> str:
    """INSERT_BY_NUMBER's :taxes: each invoice's tax breakdown, in its order, by invoice number."""
    return json_rows({"number": number, "position": position, "name": t.name, "country": t.country,
                      "region": t.region, "percentage": t.percentage, "taxable_amount": t.taxable_amount,
                      "amount": t.amount, "treatment": str(t.treatment), "mention": t.mention, "tax_rate_id": t.rate_id}
                     for number, taxes in invoices for position, t in enumerate(taxes, start=1))


def load(session: Connection, invoice_id: int) -> tuple[InvoiceTax, ...]:
    """An invoice's tax breakdown as issued (empty: issued with taxes off)."""
    return tuple(InvoiceTax(r.name, r.country, r.region, Decimal(r.percentage), Decimal(r.taxable_amount),
                            Decimal(r.amount), Treatment(r.treatment), r.mention, r.tax_rate_id)
                 for r in session.execute(text("SELECT * FROM invoice_taxes WHERE invoice_id = :id ORDER BY position"),
                                          {"id": invoice_id}))
