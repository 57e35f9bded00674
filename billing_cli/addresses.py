"""A customer's billing details (organizations.billing_*, tax_id, tax_exempt) and its postal address
as printed on an invoice. Pure: no database, no I/O.

The country is an ISO 3166-1 alpha-2 code, checked with pycountry; it is printed as the country's
English name (the invoice's words are English), so an issued invoice's lines never depend on the
configured locale. The order of postal code, city and region follows the country's custom for the
common cases; anything else is printed as `postal code city`.
"""

from __future__ import annotations

from dataclasses import dataclass

# City, region and postal code on one line: `Springfield, IL 62701`.
_CITY_REGION_CODE = frozenset({"US", "CA", "AU"})
# City, then the postal code on a line of its own: `London` / `EC1A 1AA`.
_CODE_BELOW = frozenset({"GB", "IE"})


class CountryError(ValueError):
    pass


def country_name(code: str) -> str:
    """The English short name of an ISO 3166-1 alpha-2 code (any case), else CountryError."""
    import pycountry

    country = pycountry.countries.get(alpha_2=code.strip().upper()) if len(code.strip()) == 2 else None
    if country is None:
        raise CountryError(f"billing country {code!r} is not an ISO 3166-1 alpha-2 code (e.g. DE, US, GB)")
    return getattr(country, "common_name", None) or country.name


@dataclass(frozen=True)
class BillingDetails:
    """What the account service keeps about whom an organization's invoices are addressed to."""

    address_line1: str | None = None
    address_line2: str | None = None
    postal_code: str | None = None
    city: str | None = None
    region: str | None = None
    country: str | None = None  # ISO 3166-1 alpha-2, as stored (checked by `postal_lines`)
    tax_id: str | None = None
    tax_exempt: bool = False

    def postal_lines(self) -> tuple[str, ...]:
        """The address as printed, blank parts left out; CountryError for a country that is not a code."""
        def part(value: str | None) -> str:
            return " ".join((value or "").split())  # no line breaks or runs of blanks from the other service

        code = part(self.country).upper()
        country = country_name(part(self.country)) if code else ""
        city, region, postal = part(self.city), part(self.region), part(self.postal_code)
        if code in _CITY_REGION_CODE:
            locality = [", ".join(filter(None, (city, " ".join(filter(None, (region, postal))))))]
        elif code in _CODE_BELOW:
            locality = [", ".join(filter(None, (city, region))), postal]
        else:
            locality = [" ".join(filter(None, (postal, city))), region]
        return tuple(line for line in (part(self.address_line1), part(self.address_line2), *locality, country)
                     if line)

    @property
    def printed_tax_id(self) -> str | None:
        return " ".join(self.tax_id.split()) or None if self.tax_id else None
