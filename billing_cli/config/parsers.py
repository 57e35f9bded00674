"""Parsers of variable values: each turns the (stripped) text into a typed value or says what is wrong."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..schedules import ScheduleError, parse_schedule
from .secret import mask_url_password

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_POSTGRES_URL = re.compile(r"^postgres(ql)?(\+psycopg)?://")
_HTTP_URL = re.compile(r"^https?://[^\s/]+")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class Parser:
    """Text -> value. A ValueError's message is shown after `NAME='text':`, so it need not repeat them."""

    kind = "str"  # shown as Variable.kind
    masks_always = False  # True: printed masked even when the variable is not marked secret

    def __call__(self, text: str) -> object:
        raise NotImplementedError

    def mask(self, text: str) -> str:
        """The printable form of a secret value of this kind."""
        return "****"


def parse_bool(value: str) -> bool:
    """true/false, 1/0, yes/no in any case; anything else is refused rather than taken as false."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("not a boolean: use true/false, 1/0 or yes/no")


class Bool(Parser):
    kind = "bool"

    def __call__(self, text: str) -> bool:
        return parse_bool(text)


@dataclass(frozen=True)
class Int(Parser):
    """A whole number within [low, high]: every count and limit is bounded, so a typo cannot run away."""

    low: int
    high: int
    kind = "int"

    def __call__(self, text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise ValueError("not a whole number") from None
        if not self.low <= number <= self.high:
            raise ValueError(f"out of range: use {self.low} to {self.high}")
        return number


class Month(Parser):
    kind = "month"

    def __call__(self, text: str) -> str:
        if not _MONTH.match(text):
            raise ValueError("not a month: use YYYY-MM, e.g. 2024-01")
        return text


class PostgresUrl(Parser):
    kind = "url"
    masks_always = True

    def __call__(self, text: str) -> str:
        from .postgres_url import check_postgres_url

        if not _POSTGRES_URL.match(text):
            raise ValueError("not a PostgreSQL URL: use postgresql://user:password@host:5432/dbname")
        check_postgres_url(text)  # what SQLAlchemy and libpq would refuse (or misread) on connecting
        return text

    def mask(self, text: str) -> str:
        return mask_url_password(text)  # host and database help when debugging; only the password is hidden


class Folder(Parser):
    kind = "path"

    def __call__(self, text: str) -> Path:
        return Path(text).expanduser()


class Schedule(Parser):
    """Six-field cron, seconds first (five accepted); returned with single spaces."""

    kind = "schedule"

    def __call__(self, text: str) -> str:
        try:
            parse_schedule("configured", text)
        except ScheduleError as exc:
            # The message repeats the expression; the variable's name and value already lead it.
            raise ValueError(str(exc).removeprefix(f"configured schedule {text!r}: ")) from None
        return " ".join(text.split())


class Text(Parser):
    def __call__(self, text: str) -> str:
        # Values end up in e-mail headers, HTTP requests and one-line log records.
        if any(ch in text for ch in "\r\n\x00"):
            raise ValueError("contains a line break or NUL")
        return text


@dataclass(frozen=True)
class Lines(Text):
    """Several lines in one variable, joined by `separator`; blank lines are dropped."""

    separator: str

    def __call__(self, text: str) -> tuple[str, ...]:  # type: ignore[override]
        parts = super().__call__(text).split(self.separator)
        return tuple(part.strip() for part in parts if part.strip())


class Choice(Text):
    """One of a few words; with ignore_case, returned in lower case."""

    def __init__(self, *options: str, ignore_case: bool = False) -> None:
        self.options = options
        self.ignore_case = ignore_case

    def __call__(self, text: str) -> str:
        word = super().__call__(text)
        word = word.lower() if self.ignore_case else word
        if word not in self.options:
            raise ValueError(f"use {', '.join(self.options[:-1])} or {self.options[-1]}")
        return word

    def __repr__(self) -> str:
        return f"Choice{self.options!r}"


class Email(Text):
    """An address, bare or as `Name <address>`."""

    def __call__(self, text: str) -> str:
        if not _EMAIL.match(super().__call__(text).rsplit("<", 1)[-1].rstrip(">")):
            raise ValueError("not an e-mail address")
        return text


class HttpUrl(Text):
    masks_always = True  # a token may hide in the user part or the query, secret flag or not

    def __call__(self, text: str) -> str:
        if not _HTTP_URL.match(super().__call__(text)):
            raise ValueError("not an http(s) URL")
        return text

    def mask(self, text: str) -> str:
        return mask_url_password(text, keep_user=False)


class Locale(Text):
    """A CLDR locale for the invoices' numbers and money (Babel): `de`, `en_GB`, `pt-BR`."""

    kind = "locale"

    def __call__(self, text: str) -> str:
        from ..localized import check_locale

        return check_locale(super().__call__(text))


class StripeKey(Text):
    def __call__(self, text: str) -> str:
        if not super().__call__(text).startswith(("sk_", "rk_")):
            raise ValueError("not a Stripe secret key: it starts with sk_ (or rk_ for a restricted key)")
        return text

    def mask(self, text: str) -> str:
        # sk_t / sk_l tells a test key from a live one; short values could be guessed from a prefix.
        return text[:4] + "****" if len(text) > 8 else "****"


class Country(Text):
    """An ISO 3166-1 alpha-2 country code, written in capitals: `DE`, `GB`."""

    kind = "country"

    def __call__(self, text: str) -> str:
        from ..addresses import CountryError, country_name

        code = super().__call__(text).strip().upper()
        try:
            country_name(code)
        except CountryError:
            raise ValueError("not an ISO 3166-1 alpha-2 country code (e.g. DE, GB, US)") from None
        return code
