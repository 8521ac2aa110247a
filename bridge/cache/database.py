"""The cache database: SQLite by default, PostgreSQL when several bridges share it.

Its schema is created and upgraded only by the Alembic migrations in `migrations/`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import util as import_util
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from bridge.cache.ledger import CacheTransaction
from bridge.cache.totals import Totals


def migrations_path() -> Path:
    """`migrations/` of a source checkout, or the copy installed as `bridge.migrations`."""
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").exists():
        return checkout
    spec = import_util.find_spec("bridge.migrations")
    if spec is None or spec.origin is None:
        raise RuntimeError("the cache migrations are missing from this installation")
    return Path(spec.origin).parent


class Cache:
    """The cache database: its engine, its migrations and its transactions."""

    def __init__(self, url: URL | str) -> None:
        self.url = url
        is_sqlite = make_url(url).get_backend_name() == "sqlite"
        self.engine: Engine = create_engine(
            url, connect_args={"timeout": 30} if is_sqlite else {}, pool_pre_ping=not is_sqlite)
        if is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def migrate(self) -> None:
        """Bring the cache schema to the newest revision (idempotent)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(migrations_path()))
        with self.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @contextmanager
    def transaction(self) -> Iterator[CacheTransaction]:
        with self.engine.begin() as conn:
            tx = CacheTransaction(conn)
            yield tx
            tx.flush()

    def load(self, totals: Totals) -> int:
        """Bring `totals` up to date with the cache (everything, the first time); rows read."""
        with self.engine.connect() as conn:
            return totals.load(conn)

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
