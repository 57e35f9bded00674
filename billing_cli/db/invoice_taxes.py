"""Invoices' tax breakdowns (invoice_taxes): written with the invoices they belong to, read back
for their documents and for the credit notes that reverse them. In the caller's transaction."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Connection, text

from ..taxes import InvoiceTax, Treatment


# Each invoice's tax breakdown, in its order, written inside issuing's statement (invoice_store._issue)
# and keyed by the invoices' numbers: a data-modifying CTE reading the `inv` CTE of the invoices
# inserted by that statement.
INSERT_BY_NUMBER = """
    INSERT INTO invoice_taxes (invoice_id, position, name, country, region, percentage, taxable_amount, amount,
                               treatment, mention, tax_rate_id)
    SELECT inv.id, t.position, t.name, t.country, t.region, t.percentage, t.taxable_amount, t.amount, t.treatment,
           t.mention, t.tax_rate_id
    FROM unnest(CAST(:tax_numbers AS text[]), CAST(:tax_positions AS integer[]), CAST(:tax_names AS text[]),
                CAST(:tax_countries AS text[]), CAST(:tax_regions AS text[]), CAST(:tax_percentages AS numeric[]),
                CAST(:tax_bases AS numeric[]), CAST(:tax_amounts AS numeric[]), CAST(:tax_treatments AS text[]),
                CAST(:tax_mentions AS text[]), CAST(:tax_rates AS bigint[]))
         AS t(number, position, name, country, region, percentage, taxable_amount, amount, treatment, mention,
              tax_rate_id)
    JOIN inv USING (number)"""


def params_by_number(invoices: list[tuple[str, tuple[InvoiceTax, ...]]]) -> dict[str, list]:
    """INSERT_BY_NUMBER's arrays: each invoice's tax breakdown, in its order, by invoice number."""
    rows = [(number, position, tax) for number, taxes in invoices for position, tax in enumerate(taxes, start=1)]
    return {"tax_numbers": [n for n, _, _ in rows], "tax_positions": [p for _, p, _ in rows],
            "tax_names": [t.name for _, _, t in rows], "tax_countries": [t.country for _, _, t in rows],
            "tax_regions": [t.region for _, _, t in rows], "tax_percentages": [t.percentage for _, _, t in rows],
            "tax_bases": [t.taxable_amount for _, _, t in rows], "tax_amounts": [t.amount for _, _, t in rows],
            "tax_treatments": [str(t.treatment) for _, _, t in rows], "tax_mentions": [t.mention for _, _, t in rows],
            "tax_rates": [t.rate_id for _, _, t in rows]}


def load(session: Connection, invoice_id: int) -> tuple[InvoiceTax, ...]:
    """An invoice's tax breakdown as issued (empty: issued with taxes off)."""
    return tuple(InvoiceTax(r.name, r.country, r.region, Decimal(r.percentage), Decimal(r.taxable_amount),
                            Decimal(r.amount), Treatment(r.treatment), r.mention, r.tax_rate_id)
                 for r in session.execute(text("SELECT * FROM invoice_taxes WHERE invoice_id = :id ORDER BY position"),
                                          {"id": invoice_id}))
