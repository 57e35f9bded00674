"""DATABASE_URL checked before any connection: read by SQLAlchemy and libpq as the operator meant it."""

from __future__ import annotations

import re
from difflib import get_close_matches

# libpq checks these options' values only when it connects, and a bad one ("invalid sslmode
# value") would pass for an unreachable server; checked here so `billing config` names it too.
_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
    "sslnegotiation": ("postgres", "direct"),
    "sslcertmode": ("disable", "allow", "require"),
}
_WHOLE_NUMBERS = ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
                  "tcp_user_timeout")

PERCENT_ENCODE = ("the user name or password holds an '@', so the host would be read from what follows it: "
                  "percent-encode the password (@ as %40, : as %3A, / as %2F, ? as %3F, # as %23, % as %25)")


def sqlalchemy_url(url: str) -> str:
    """Accept the usual `postgres://` and `postgresql://` spellings; always drive psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def check_postgres_url(text: str) -> None:
    """Raise ValueError saying why SQLAlchemy or libpq cannot use the URL `text` (a port that is not
    a number, an unclosed IPv6 bracket, a raw '@' in the password, an unknown query option or a bad
    value of one). The message never repeats any part of the user name or password."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    _check_host_list(text)
    try:
        url = make_url(sqlalchemy_url(text))
    except ArgumentError:
        raise ValueError("not a URL: use postgresql://user:password@host:5432/dbname") from None
    except ValueError:  # SQLAlchemy read something that is not a number as the port
        authority = re.match(r"[^/?]*", text.partition("://")[2]).group()  # type: ignore[union-attr]
        user_and_password, _, host_and_port = authority.rpartition("@")
        if "@" in user_and_password.partition(":")[2]:  # e.g. `pw@x:y@host`: SQLAlchemy's port is `y@host`
            raise ValueError(PERCENT_ENCODE) from None
        if "[" in host_and_port and "]" not in host_and_port:
            raise ValueError("an IPv6 host opened with '[' is not closed with ']'") from None
        raise ValueError("the port is not a number") from None
    if "@" in (url.host or ""):
        raise ValueError(PERCENT_ENCODE)
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ValueError(f"the port {url.port} is out of range: use 1 to 65535")
    _check_options(url.query)


def _check_host_list(text: str) -> None:
    """libpq's list of hosts (`db1:5432,db2:5432`, a primary and its standby): SQLAlchemy reads it as a
    bad port or one unknown host; the form it reads is one `host` option each."""
    rest = text.partition("://")[2]
    at, query = rest.rfind("@"), rest.find("?")
    if -1 < query < at:
        return  # the last '@' is in the query (or in a password holding '?'): no host list read from there
    hosts = re.match(r"[^/?]*", rest[at + 1:]).group()  # type: ignore[union-attr]  # after the user part, if any
    if "," not in hosts:
        return
    with_ports = [host if ":" in host.rpartition("]")[2] else f"{host}:5432" for host in hosts.split(",")]
    raise ValueError(f"several hosts ({hosts}) before the database name, which SQLAlchemy cannot read: write "
                     f"them as postgresql://user:password@/dbname?host={'&host='.join(with_ports)}")


def _check_options(query: object) -> None:
    """The query's options are libpq's connection keywords (the installed libpq's list), with valid values."""
    from psycopg.pq import Conninfo

    known = {option.keyword.decode() for option in Conninfo.get_defaults()}
    for name, values in query.items():  # type: ignore[attr-defined]
        if name not in known:
            guess = get_close_matches(name, known, n=1)
            raise ValueError(f"unknown connection option {name!r} in the query"
                             + (f" (did you mean {guess[0]!r}?)" if guess else ""))
        for value in (values,) if isinstance(values, str) else values:
            if name in _CHOICES and value not in _CHOICES[name]:
                raise ValueError(f"{name}={value!r} in the query: use {', '.join(_CHOICES[name])}")
            if name in _WHOLE_NUMBERS and not re.fullmatch(r"\s*-?\d+\s*", value):
                raise ValueError(f"{name}={value!r} in the query is not a whole number")
