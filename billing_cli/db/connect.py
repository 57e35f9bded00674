"""Open the database a command runs against: DATABASE_URL, or the embedded default."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..config import Settings
from .embedded import embedded_server
from .engine import Database, check_connection, describe_server, make_engine, translate_disconnects
from .migrate import check_schema, upgrade


@contextmanager
def open_database(
    settings: Settings,
    *,
    notice: Callable[[str], None] = lambda _: None,
    require_schema: bool = True,
    pool_size: int = 5,
) -> Iterator[Database]:
    """Yield a reachable database whose schema this program matches (the embedded one is migrated
    on the spot; a real one must be upgraded by the operator with `billing db upgrade`)."""
    if settings.database_url is None:
        home = settings.billing_home.expanduser().resolve()
        notice(f"DATABASE_URL is not set: using the embedded PostgreSQL in {home / 'pgdata'} "
               "(started now, stopped when this command exits)")
        with embedded_server(home) as url:
            engine = make_engine(url, pool_size=pool_size)
            try:
                upgrade(engine)
                with translate_disconnects("the embedded database"):
                    yield Database(engine, where=f"embedded PostgreSQL in {home}", embedded=True)
            finally:
                engine.dispose()
        return

    url = settings.database_url.reveal()
    where = describe_server(url)
    engine = make_engine(url, pool_size=pool_size)
    try:
        check_connection(engine, where)
        if require_schema:
            check_schema(engine)
        with translate_disconnects(where):
            yield Database(engine, where=where)
    finally:
        engine.dispose()
