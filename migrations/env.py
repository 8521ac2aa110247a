"""Alembic environment for the bridge's cache database.

The bridge passes an open connection in `config.attributes["connection"]`; the
`alembic` command line works too, with `-x url=...` or `BRIDGE_CACHE_URL`.
"""

import os

from alembic import context
from sqlalchemy import Connection, create_engine

from bridge.cache.tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    # target_metadata lets `alembic revision --autogenerate` start from the table mirror.
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


given = config.attributes.get("connection")
if isinstance(given, Connection):
    _run(given)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "BRIDGE_CACHE_URL", "sqlite:///airflow-metrics-bridge.db")
    with create_engine(url).begin() as conn:
        _run(conn)
