"""Engines and transaction factories, with connection failures turned into one clear line."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, create_engine, make_url, text
from sqlalchemy.exc import DBAPIError, OperationalError

from ..config.postgres_url import sqlalchemy_url
from ..config.secret import mask_url_password
from ..errors import ConfigError, DatabaseUnavailable

# What jobs receive to open their units of work: `with transactions() as conn:` commits when the
# block succeeds and rolls back when it raises. In production it is `engine.begin`; tests pass
# savepoints inside an outer transaction that they roll back. (SQLAlchemy Core: the ORM is not
# imported on the jobs' path, which keeps every cron start fast.)
Transactions = Callable[[], AbstractContextManager[Connection]]


def describe_server(url: str) -> str:
    """`host:port/dbname` of a URL, never any part of its password: read from the masked URL."""
    parsed = make_url(sqlalchemy_url(mask_url_password(url, keep_user=False)))
    host = parsed.host or parsed.query.get("host") or "localhost"
    port = f":{parsed.port or 5432}" if parsed.host else ""
    return f"{host}{port}/{parsed.database or ''}"


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    # When the server cuts every connection, the pool logs each failed reset with a traceback on
    # stderr; the run reports the lost database in one line (exit 4) instead.
    import logging

    logging.getLogger("sqlalchemy.pool").addHandler(logging.NullHandler())
    logging.getLogger("sqlalchemy.pool").propagate = False
    return create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        # No ping per checkout: a run's connections are fresh, and a database that goes away mid-run
        # stops the run (exit 4) anyway; a ping would add a round trip to every short transaction.
        pool_pre_ping=False,
        connect_args={
            "connect_timeout": 10, "application_name": "billing",
            # A run's lock lives in its database session. Keepalives both ways: the client notices
            # a dead server, and the server drops the session of a lost node (and its lock) within
            # about a minute, not the kernel's default two hours.
            "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
            "options": "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3 "
                       "-c tcp_user_timeout=60000",
        },
    )


@dataclass
class Database:
    """An engine plus the session factory jobs use; `where` is safe to print."""

    engine: Engine
    where: str
    embedded: bool = False

    @property
    def transactions(self) -> Transactions:
        return self.engine.begin


# The server answered, and refused these credentials or this database: waiting will not help
# (a configuration error, exit 3), unlike a server that is down or restarting (exit 4).
_REFUSED_LOGIN = ("password authentication failed", "authentication failed", "no pg_hba.conf entry",
                  "does not exist", "permission denied for database", "not permitted to log in")


# libpq refused an option of the URL before trying to connect (`invalid sslmode value: "bogus"`).
# The configuration check refuses those it knows; this catches the rest, e.g. of a newer libpq.
_BAD_OPTION = re.compile(r"invalid connection option|invalid \w+ value|invalid port number")


# The server stopped one statement, for a reason that is not the connection's: another session
# held what it needed, or an administrator's limit. Retryable (exit 4) like a lost connection, but
# said as it is: "cannot reach PostgreSQL" would send the operator to the wrong place.
_STOPPED = {"55P03": "it waited longer than lock_timeout for a lock another session held",
            "57014": "it was cancelled (statement_timeout, or by an administrator)",
            "40P01": "it was in a deadlock with another session",
            "40001": "it conflicted with a concurrent transaction (serialization failure)"}


def unavailable(exc: DBAPIError, where: str) -> DatabaseUnavailable | ConfigError:
    """The one-line error for a database we cannot use (psycopg's reason, without secrets)."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in _STOPPED:
        primary = getattr(getattr(exc.orig, "diag", None), "message_primary", None) or sqlstate
        return DatabaseUnavailable(
            f"PostgreSQL at {where} stopped a statement of this run: {_STOPPED[sqlstate]} ({primary})",
            hint="See pg_stat_activity and pg_locks for the other session; rerun: the run resumes where it stopped.",
        )
    reason = str(exc.orig).strip().splitlines()[-1] if exc.orig is not None else type(exc).__name__
    reason = reason.split("failed: ")[-1].strip() if "authentication failed" not in reason else reason
    if any(marker in reason for marker in _REFUSED_LOGIN):
        return ConfigError(f"PostgreSQL at {where} refused the login: {reason}",
                           hint="Fix DATABASE_URL (user, password, database name) or the server's grants.")
    if _BAD_OPTION.search(reason):
        reason = reason.removeprefix("connection is bad: ")
        return ConfigError(f"DATABASE_URL cannot be used for PostgreSQL at {where}: {reason}",
                           hint="Fix the option in DATABASE_URL's query (libpq's connection parameters).")
    return DatabaseUnavailable(
        f"cannot reach PostgreSQL at {where}: {reason}",
        hint="Check DATABASE_URL and that the server is up; retry later if it is restarting.",
    )


def check_connection(engine: Engine, where: str) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        raise unavailable(exc, where) from None


@contextmanager
def translate_disconnects(where: str) -> Iterator[None]:
    """Turn a lost connection in the middle of a job into DatabaseUnavailable (exit 4, retryable)."""
    try:
        yield
    except OperationalError as exc:
        raise unavailable(exc, where) from None
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise unavailable(exc, where) from None
        raise


def stream_rows(conn: Connection, statement: TextClause, params: dict[str, Any]) -> Iterator[Any]:
    """The statement's rows one by one as PostgreSQL sends them (psycopg's streaming, libpq's
    single-row mode), in the connection's transaction, holding only the row at hand.

    For a large aggregate read whole, rather than SQLAlchemy's `yield_per`: that goes through a
    server-side cursor, and PostgreSQL never runs a cursor's query with parallel workers."""
    from psycopg.rows import namedtuple_row

    compiled = statement.compile(dialect=conn.dialect)
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor(row_factory=namedtuple_row) as cursor:
        yield from cursor.stream(compiled.string, compiled.construct_params(params))


@contextmanager
def pipelined(conn: Connection) -> Iterator[Callable[[TextClause, dict[str, Any]], Any]]:
    """Statements sent together, in one round trip (psycopg's pipeline mode), in the connection's
    transaction: `run(statement, params)` queues one and returns its cursor, whose rows can be
    fetched once the block has ended. PostgreSQL runs them one after the other, in order, each with
    its own snapshot, exactly as if each had waited for the one before it; an error in one skips
    those after it and is raised at the end of the block as SQLAlchemy raises it (IntegrityError,
    OperationalError...), leaving the transaction to roll back."""
    import psycopg

    driver = conn.connection.driver_connection
    assert driver is not None

    def run(statement: TextClause, params: dict[str, Any]) -> Any:
        compiled = statement.compile(dialect=conn.dialect)
        cursor = driver.cursor()
        cursor.execute(compiled.string, compiled.construct_params(params))
        return cursor

    try:
        with driver.pipeline():
            yield run
    except psycopg.Error as exc:
        raise DBAPIError.instance(None, None, exc, psycopg.Error) from exc

