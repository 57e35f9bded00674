"""Tax rates as code: read and validate a taxes TOML file (format: docs/taxes.md).

All of the file is checked before anything is written, and every error is reported at once, each
naming the file, the line and the rate, with a "did you mean" for an unknown key or country.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from datetime import date
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

from .addresses import CountryError, country_name
from .errors import UsageError
from .plain_text import has_control_character
from .taxes import TaxRate

_RATE_KEYS = {"country", "region", "name", "percentage", "effective_from", "mention"}
_MAX_NAME, _MAX_REGION, _MAX_MENTION = 50, 64, 500
# Codes in common use that ISO 3166-1 does not have: Greece's VAT prefix, and the United Kingdom.
_NOT_ISO = {"EL": "GR", "UK": "GB"}


class TaxFileError(UsageError):
    """A taxes file that cannot be applied; exit code 2 (fix the file)."""


def load_tax_file(path: Path) -> list[TaxRate]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # UTF-8, with or without the BOM some editors write
    except OSError as exc:
        raise TaxFileError(f"cannot read taxes file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:  # e.g. saved as "Unicode" (UTF-16) or in a legacy code page
        raise TaxFileError(f"taxes file {path} is not UTF-8: {exc.reason} at byte {exc.start}",
                           hint="Save it as UTF-8 (TOML files are UTF-8); nothing was applied.") from None
    return parse_taxes(text, source=str(path))


def _did_you_mean(word: str, allowed: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _starts(text: str) -> list[int]:
    return [n for n, line in enumerate(text.splitlines(), start=1) if line.strip().startswith("[[rate]]")]


def _line_of(text_lines: list[str], start: int, key: str) -> int:
    for number in range(start + 1, len(text_lines) + 1):
        stripped = text_lines[number - 1].strip()
        if stripped.startswith("["):
            break
        if re.match(rf"^{re.escape(key)}\s*=", stripped):
            return number
    return start


def _significant(value: Decimal) -> Decimal:
    """The percentage without trailing zeros ("9.97500" is 9.975: three decimals, within Stripe's four),
    never in exponent notation (20, not 2E+1)."""
    if not value.is_finite():
        return value
    if value.is_zero():
        return Decimal(0)  # "0.000", "-0": 0
    value = value.normalize(Context(prec=max(len(value.as_tuple().digits), 1)))  # as many digits: never rounded
    return Decimal(int(value)) if value.as_tuple().exponent > 0 else value  # type: ignore[operator]


def _text(value: Any, longest: int, *, line_breaks: bool = False) -> bool:
    """Text without control characters (`plain_text`), not blank, at most `longest` characters."""
    return (isinstance(value, str) and bool(value.strip()) and len(value) <= longest
            and not has_control_character(value, allowed="\n\r\t" if line_breaks else ""))


def parse_taxes(text: str, *, source: str = "taxes.toml") -> list[TaxRate]:
    """Every rate of the file, or TaxFileError listing every error found (one a line, in file order)."""
    try:
        document = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise TaxFileError(f"{source}: not valid TOML: {exc}") from None
    text_lines, starts = text.splitlines(), _starts(text)
    errors: list[tuple[int, str]] = []
    for key in sorted(set(document) - {"rate"}):
        errors.append((0, f"{source}: unknown key {key!r} at the top level{_did_you_mean(key, {'rate'})}; rates go "
                          "in [[rate]] tables"))
    raw_rates = document.get("rate", [])
    if not isinstance(raw_rates, list) or not raw_rates:
        errors.append((0, f"{source}: no [[rate]] tables found"))
        raw_rates = []
    rates: list[TaxRate] = []
    seen: dict[tuple, int] = {}
    for index, raw in enumerate(raw_rates):
        start = starts[index] if index < len(starts) else 1
        rate = _rate(raw, source, text_lines, start, index, errors)
        if rate is None:
            continue
        if rate.key in seen:
            errors.append((start, f"{source}:{start}: rate {rate.name} {rate.jurisdiction} from "
                                  f"{rate.effective_from} is defined twice (first at line {seen[rate.key]})"))
        seen.setdefault(rate.key, start)
        rates.append(rate)
    if len(errors) == 1:
        raise TaxFileError(errors[0][1])
    if errors:
        ordered = [message for _, message in sorted(errors, key=lambda e: e[0])]
        raise TaxFileError(f"{source}: {len(errors)} errors:\n  " + "\n  ".join(ordered))
    return rates


def _rate(raw: Any, source: str, text_lines: list[str], start: int, index: int,
          errors: list[tuple[int, str]]) -> TaxRate | None:
    if not isinstance(raw, dict):
        errors.append((start, f"{source}:{start}: rate #{index + 1}: rates go in [[rate]] tables"))
        return None
    found = len(errors)

    def fail(key: str | None, message: str) -> None:
        line = _line_of(text_lines, start, key) if key else start
        errors.append((line, f"{source}:{line}: rate #{index + 1}: {message}"))

    for key in raw:
        if key not in _RATE_KEYS:
            fail(key, f"unknown key {key!r}{_did_you_mean(key, _RATE_KEYS)}")
    for key in ("country", "name", "percentage", "effective_from"):
        if key not in raw:
            fail(None, f"`{key}` is missing")
    country = raw.get("country")
    if "country" in raw:
        if not isinstance(country, str) or len(country.strip()) != 2:
            fail("country", f"`country` = {country!r} must be an ISO 3166-1 alpha-2 code (e.g. DE, GB, US)")
        else:
            try:
                country_name(country)
            except CountryError:
                code = _NOT_ISO.get(country.strip().upper())
                example = f"did you mean {code!r}?" if code else "e.g. DE, GB, US"
                fail("country", f"`country` = {country!r} is not an ISO 3166-1 alpha-2 code ({example})")
            if country != country.strip().upper():
                fail("country", f"`country` = {country!r}: write it in capitals ({country.strip().upper()!r})")
    region = raw.get("region")
    if region is not None and not _text(region, _MAX_REGION):
        fail("region", "`region` must be the region as organizations.billing_region holds it (e.g. QC, CA), "
                       "without control characters")
    name = raw.get("name")
    if "name" in raw and not _text(name, _MAX_NAME):
        fail("name", f"`name` must be the tax's name, at most {_MAX_NAME} characters without control characters "
                     "(e.g. VAT, GST, sales tax)")
    percentage = raw.get("percentage")
    if "percentage" in raw:
        if isinstance(percentage, bool) or not isinstance(percentage, (int, Decimal, str)):
            fail("percentage", "`percentage` must be a number (e.g. 20 or \"9.975\")")
            percentage = None
        else:
            try:
                percentage = _significant(Decimal(percentage))
            except ArithmeticError:
                fail("percentage", f"`percentage` = {percentage!r} is not a number")
                percentage = None
            if percentage is not None and (not percentage.is_finite() or not 0 <= percentage < 100):
                fail("percentage", f"`percentage` = {percentage} must be at least 0 and below 100")
            elif percentage is not None and percentage.as_tuple().exponent < -4:  # type: ignore[operator]
                fail("percentage", f"`percentage` = {percentage} has more than 4 decimals (Stripe's limit)")
    effective = raw.get("effective_from")
    if "effective_from" in raw and (not isinstance(effective, date) or hasattr(effective, "hour")):
        fail("effective_from", f"`effective_from` = {effective!r} must be a date, written bare: 2024-01-01")
    mention = raw.get("mention")
    if mention is not None and not _text(mention, _MAX_MENTION, line_breaks=True):
        fail("mention", f"`mention` must be text of at most {_MAX_MENTION} characters, without control characters "
                        "other than line breaks")
    if len(errors) > found:
        return None
    return TaxRate(country.strip().upper(), region.strip().upper() if region else None, name.strip(), percentage,  # type: ignore[union-attr,arg-type]
                   effective, mention.strip() if mention else None)
