"""Tax rates in PostgreSQL: save the rates of a taxes file (versions) and load them back. Every
function runs in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Connection, text

from ..taxes import TaxRate, format_percentage


class RateInUse(ValueError):
    """A rate version already on issued invoices cannot change its percentage, and one still in force
    cannot be left out of the file."""


@dataclass(frozen=True)
class SavedRates:
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    kept: list[str]  # stored versions the file does not list: left as they are (old invoices use them)


def _label(rate: TaxRate) -> str:
    return f"{rate.name} {rate.jurisdiction} from {rate.effective_from.isoformat()}"


def save_rates(session: Connection, rates: list[TaxRate], *, every_rate: bool = True) -> SavedRates:
    """Upsert every version of the file (all or nothing: the caller's transaction). A version's
    percentage never changes once an invoice used it (RateInUse): history is added, not rewritten.
    Versions the file leaves out are kept, unless one would still be in force (RateInUse: the latest
    of its jurisdiction and name), when the file is `every_rate` in force (`billing taxes apply`; the
    demo adds its own beside). A changed percentage also forgets the version's Stripe TaxRate
    (Stripe's are immutable)."""
    stored = {rate.key: rate for rate in load_rates(session)}
    used = set(session.execute(text("SELECT DISTINCT tax_rate_id FROM invoice_taxes "
                                    "WHERE tax_rate_id IS NOT NULL")).scalars())
    created, updated, unchanged = [], [], []
    refused = []
    for rate in rates:
        before = stored.get(rate.key)
        if before is not None and (before.percentage, before.mention, before.region) == \
                (rate.percentage, rate.mention, rate.region):
            unchanged.append(_label(rate))
            continue
        if before is not None and before.percentage != rate.percentage and before.id in used:
            refused.append(f"{_label(rate)} is {before.percentage}% on issued invoices: add a version with a later "
                           f"effective_from instead of changing it to {rate.percentage}%")
            continue
        (updated if before is not None else created).append(_label(rate))
        session.execute(text("""
            INSERT INTO tax_rates (country, region, name, percentage, effective_from, mention)
            VALUES (:country, :region, :name, :percentage, :effective_from, :mention)
            ON CONFLICT (country, region, name, effective_from) DO UPDATE SET
                percentage = EXCLUDED.percentage, mention = EXCLUDED.mention, updated_at = now(),
                stripe_tax_rate_id = CASE WHEN tax_rates.percentage = EXCLUDED.percentage
                                          THEN tax_rates.stripe_tax_rate_id END
        """), {"country": rate.country, "region": (rate.region or "").upper(), "name": rate.name,
               "percentage": rate.percentage, "effective_from": rate.effective_from, "mention": rate.mention})
    listed = {rate.key for rate in rates}
    kept = [rate for key, rate in stored.items() if key not in listed]
    refused += [f"{_label(rate)} ({format_percentage(rate.percentage)}) is not in the file but would stay in force for every new "
                f"invoice of {rate.jurisdiction}, besides the file's rates: list it again, or end it by adding a "
                f"version with a later effective_from (0%, with its mention)"
                for rate in kept if every_rate and _latest_of_its_series(rate, rates)]
    if refused:
        raise RateInUse("; ".join(refused))
    return SavedRates(created, updated, unchanged, [_label(rate) for rate in kept])


def _latest_of_its_series(rate: TaxRate, listed: list[TaxRate]) -> bool:
    """Whether no version the file lists of the same jurisdiction and name comes after `rate`: left out
    of the file, it is still the version in force from its date on (a version is never deleted), so a
    renamed or dropped rate would be charged on top of the file's. Older versions left out are history."""
    series = (rate.country, (rate.region or "").upper(), rate.name)
    return not any(other.key[:3] == series and other.effective_from > rate.effective_from for other in listed)


def load_rates(session: Connection) -> list[TaxRate]:
    """Every version of every rate, by jurisdiction, name and date."""
    rows = session.execute(text("SELECT id, country, region, name, percentage, effective_from, mention "
                                "FROM tax_rates ORDER BY country, region, name, effective_from"))
    return [TaxRate(r.country, r.region or None, r.name, Decimal(r.percentage), r.effective_from, r.mention, r.id)
            for r in rows]
