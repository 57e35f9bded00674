"""Test fixtures: a real PostgreSQL (TEST_DATABASE_URL, or an embedded server started once per run),
a migrated template database, and per-test isolation.

Two isolation styles:
- `transactions`: a transaction factory whose transactions are savepoints inside one outer
  transaction that is rolled back after the test (fast; for jobs called in-process);
- `db_url`: a fresh database cloned from the migrated template (for the CLI and subprocesses,
  which open their own connections).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Connection, Engine, create_engine, make_url

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.peers.fixtures"]
_counter = itertools.count()


def _psycopg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin URL (SQLAlchemy form) on a real PostgreSQL server."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        from billing_cli.db.engine import sqlalchemy_url

        url = sqlalchemy_url(url)
        try:
            with psycopg.connect(_psycopg_conninfo(url), connect_timeout=5):
                pass
        except psycopg.OperationalError as exc:
            pytest.exit(f"TEST_DATABASE_URL is set but unreachable: {exc}", returncode=3)
        yield url
        return
    from billing_cli.db.embedded import embedded_server

    # Short path: the server's Unix socket lives in its data folder (path length limit).
    home = Path(f"/tmp/billing-tests-{os.getpid()}")
    try:
        with embedded_server(home) as embedded_url:
            yield embedded_url
    finally:
        import shutil

        shutil.rmtree(home, ignore_errors=True)


def _admin(server_url: str) -> psycopg.Connection:
    return psycopg.connect(_psycopg_conninfo(server_url), autocommit=True)


@pytest.fixture(scope="session")
def template_url(server_url: str) -> Iterator[str]:
    """A database migrated to the head revision, cloned for each `db_url`."""
    from billing_cli.db.engine import make_engine
    from billing_cli.db.migrate import upgrade

    name = f"billing_test_{os.getpid()}_template"
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(server_url, name)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    """A new, empty database (no schema) for migration tests."""
    yield from _scratch_database(server_url, template=None)


@pytest.fixture
def db_url(server_url: str, template_url: str) -> Iterator[str]:
    """A new database at the head schema, dropped after the test."""
    yield from _scratch_database(server_url, template=make_url(template_url).database)


def _scratch_database(server_url: str, template: str | None) -> Iterator[str]:
    name = f"billing_test_{os.getpid()}_{next(_counter)}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with _admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    try:
        yield _with_database(server_url, name)
    finally:
        with _admin(server_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def shared_engine(server_url: str, template_url: str) -> Iterator[Engine]:
    """One migrated database shared by the rollback-isolated tests."""
    name = f"billing_test_{os.getpid()}_shared"
    with _admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{make_url(template_url).database}"')
    engine = create_engine(_with_database(server_url, name))
    yield engine
    engine.dispose()
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def transactions(shared_engine: Engine):
    """What jobs get instead of `engine.begin`: each transaction is a savepoint inside one outer
    transaction that is rolled back after the test, so tests leave nothing behind."""
    with shared_engine.connect() as connection:
        outer = connection.begin()

        @contextmanager
        def savepoint() -> Iterator[Connection]:
            with connection.begin_nested():
                yield connection

        yield savepoint
        outer.rollback()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No billing variable from the developer's shell or .env leaks into a test."""
    from billing_cli.config import VARIABLES

    for var in VARIABLES:
        monkeypatch.delenv(var.name, raising=False)
    for name in ("KUBERNETES_SERVICE_HOST", "BILLING_ENV_FILE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOG_FORMAT", "plain")  # key=value lines; the JSON and Rich forms have their own tests
    # Invoice numbers follow the order invoices are issued in: one worker makes that the order of the
    # organizations, so tests can name numbers. Concurrency has its own tests (processes, shards).
    monkeypatch.setenv("INVOICE_CONCURRENCY", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def billing_subprocess_env(**overrides: str) -> dict[str, str]:
    """The environment for a `billing` subprocess: no billing variables but the given ones."""
    from billing_cli.config import VARIABLES

    env = {k: v for k, v in os.environ.items()
           if k not in {v.name for v in VARIABLES} | {"KUBERNETES_SERVICE_HOST", "BILLING_ENV_FILE"}}
    env["LOG_FORMAT"] = "plain"
    # This checkout's code, whatever the virtualenv's editable install points at.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(overrides)
    return env


BILLING = [sys.executable, "-m", "billing_cli"]
