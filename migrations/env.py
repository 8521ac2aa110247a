"""Alembic environment for the bridge's cache database.

The bridge passes an open connection in `config.attributes["connection"]`; the
`alembic` command line works too, with `-x url=...` or `BRIDGE_CACHE_URL`.
"""

import os

from alembic import context
from sqlalchemy import create_engine

config = context.config


def _run(connection: object) -> None:
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "BRIDGE_CACHE_URL", "sqlite:///airflow-metrics-bridge.db")
    with create_engine(url).begin() as conn:
        _run(conn)
