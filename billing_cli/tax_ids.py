"""Tax ids (VAT, GST, ABN...) checked with python-stdnum: the format and check digits of the
buyer's or seller's id for its country. Pure: no database, no I/O, no online lookup (VIES).

An EU VAT id carries its country prefix (`FR40303265045`, Greece `EL…`) and the prefix must be the
organization's billing country; other countries' ids are checked by their own module (GB VAT, AU
ABN, IN GSTIN, CH UID, NO MVA, ...), with or without a prefix. A country python-stdnum has no
module for is accepted as written (there is nothing to check it against).
"""

from __future__ import annotations

from dataclasses import dataclass

# The member states of the European Union (ISO 3166-1 alpha-2), for VAT.
EU_COUNTRIES = frozenset({"AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE",
                          "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK"})
# python-stdnum's module for the tax id of a few countries whose id is not called `vat` there.
_MODULES = {"AU": "au.abn", "IN": "in_.gstin", "GB": "gb.vat", "CA": "ca.bn", "NZ": "nz.ird", "US": "us.ein"}


class TaxIdError(ValueError):
    """A tax id that is not valid for its country."""


@dataclass(frozen=True)
class TaxId:
    """A checked tax id: as printed (the organization's own spelling, blanks collapsed), and compact."""

    printed: str
    compact: str
    country: str
    checked: bool  # False: python-stdnum has no check for this country; accepted as written

    @property
    def is_eu_vat(self) -> bool:
        return self.checked and self.country in EU_COUNTRIES


def _module(country: str):
    from importlib import import_module

    from stdnum.util import get_cc_module

    if country in EU_COUNTRIES:
        return import_module("stdnum.eu.vat")
    if country in _MODULES:
        return import_module(f"stdnum.{_MODULES[country]}")
    return get_cc_module(country.lower(), "vat")


def check_tax_id(tax_id: str, country: str) -> TaxId:
    """The tax id checked for `country` (ISO 3166-1 alpha-2); TaxIdError naming what is wrong."""
    printed = " ".join(tax_id.split())
    country = country.strip().upper()
    if not printed:
        raise TaxIdError("the tax id is empty")
    module = _module(country)
    if module is None:
        return TaxId(printed, printed.replace(" ", ""), country, checked=False)
    from stdnum.exceptions import ValidationError

    try:
        compact = module.validate(printed)
    except ValidationError as exc:
        kind = "EU VAT number" if country in EU_COUNTRIES else f"{country} tax id"
        prefixed = ("EL" if country == "GR" else country) + printed.replace(" ", "")
        if country in EU_COUNTRIES and module.is_valid(prefixed):  # the number alone, as often kept
            raise TaxIdError(f"tax id {printed!r} lacks its country prefix: write {prefixed}") from None
        raise TaxIdError(f"tax id {printed!r} is not a valid {kind} ({exc})") from None
    if country in EU_COUNTRIES:
        prefix = "GR" if compact[:2] == "EL" else compact[:2]
        if prefix != country:
            raise TaxIdError(f"tax id {printed!r} is a VAT number of {prefix}, not of the billing country {country}")
    return TaxId(printed, compact, country, checked=True)
