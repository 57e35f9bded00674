"""Secret values: never printed, and the masked forms `billing config` and error messages show."""

from __future__ import annotations

import re


class Secret:
    """A secret string: printing or repr-ing it (also in a traceback) never shows the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# Query parameters of a PostgreSQL URL that never carry a secret (libpq's connection keywords).
_SAFE_QUERY = frozenset({"sslmode", "connect_timeout", "application_name", "target_session_attrs", "host",
                         "hostaddr", "port", "dbname", "gssencmode", "channel_binding", "sslrootcert",
                         "load_balance_hosts", "keepalives", "keepalives_idle", "keepalives_interval",
                         "keepalives_count", "tcp_user_timeout"})


def mask_url_password(url: str, *, keep_user: bool = True) -> str:
    """A URL safe to print: the password (or, with `keep_user=False`, the whole user part, which
    may itself be a token) replaced by ****, and every query value that could be a secret
    (`?password=…`, `?token=…`) too. Works on text that does not parse as a URL as well.

    The user part runs to the LAST `@`: a password pasted without percent-encoding may hold `/`,
    `?`, `#` (SQLAlchemy reads it up to the next `@`) or `@` itself (then SQLAlchemy and libpq take
    its tail for the host). An `@` further on, in a query value, hides more than needed: never less."""
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://", url)
    start = scheme.end() if scheme else 0
    userinfo, at, rest = url[start:].rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")  # the user name ends at the first ':' (SQLAlchemy's rule)
        if not keep_user:
            shown = "****"
        elif colon:
            shown = f"{user}:****"
        else:
            shown = userinfo  # a user name alone, no password
        url = f"{url[:start]}{shown}@{rest}"

    def value(match: re.Match[str]) -> str:
        separator, name, equals = match.groups()
        if name.lower() in _SAFE_QUERY:
            return match.group(0)
        # a key with no '=' may be a secret pasted after the '?' by mistake: hidden whole
        return f"{separator}{name}=****" if equals else f"{separator}****"

    return re.sub(r"([?&])([^=&#]+)(=[^&#]*)?", value, url)
