"""Write access of the bridge's role, asked of a real PostgreSQL with real roles."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from bridge import app
from bridge.airflow.privileges import NotReadOnlyTransaction, RoleAccess, inspect_role
from bridge.airflow.source import Source
from tests.conftest import AirflowDb, one_airflow
from tests.postgres import Postgres

# What deploy/postgres/grant-bridge-readonly.sql grants, where the version has the table.
READ_TABLES = ("dag_run", "task_instance", "task_instance_history", "xcom", "slot_pool", "job",
               "dag", "dag_tag", "import_error", "parse_import_error", "alembic_version")
OWNER_NOTE = "(an owner may write, alter and drop)"
MakeRole = Callable[..., str]


def roles(pg: Postgres, airflow_db: AirflowDb) -> Iterator[MakeRole]:
    """A new login role with SELECT on what the bridge reads, then `sql` ({role} filled
    in) run as the superuser in the Airflow DB; returns the role's DB URL. Dropped after."""
    made: list[str] = []

    def factory(*sql: str, attributes: str = "") -> str:
        role = pg.fresh_name("amb_role")
        made.append(role)
        with pg.admin() as conn:
            conn.execute(f"CREATE ROLE {role} LOGIN {attributes}")
        db = airflow_db.writer.conn
        present = [t for t in READ_TABLES
                   if db.execute("SELECT to_regclass(%s)", (t,)).fetchone() != (None,)]
        db.execute(f"GRANT SELECT ON {', '.join(present)} TO {role}")
        for statement in sql:
            db.execute(statement.format(role=role, db=airflow_db.name))
        return str(airflow_db.url.set(username=role).render_as_string(hide_password=False))

    yield factory
    for role in made:
        airflow_db.writer.conn.execute(
            f"REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role}")
        with pg.admin() as conn:
            conn.execute(f"DROP ROLE {role}")


@pytest.fixture
def make_role(pg: Postgres, airflow_db: AirflowDb) -> Iterator[MakeRole]:
    yield from roles(pg, airflow_db)


def access_of(url: str) -> RoleAccess:
    """As `check` and the first cycle ask it: in the source's read-only transaction."""
    source = Source(app.load_settings(None, {"BRIDGE_AIRFLOW_DB_URL": url}))
    try:
        with source.transaction() as conn:
            return inspect_role(conn)
    finally:
        source.dispose()


@one_airflow
def test_a_select_only_role_is_read_only(make_role: MakeRole) -> None:
    access = access_of(make_role())
    assert access.problems == ()
    assert access.read_only
    assert access.schema == "public"


@one_airflow
@pytest.mark.parametrize(("sql", "attributes", "problems"), [
    (("GRANT UPDATE ON variable TO {role}",), "", ("UPDATE on table variable",)),
    (("GRANT UPDATE (val) ON variable TO {role}",), "", ("UPDATE on table variable",)),
    (("GRANT INSERT, DELETE ON connection, variable TO {role}",), "",
     ("INSERT, DELETE on tables connection, variable",)),
    (("GRANT TRUNCATE ON log TO {role}", "GRANT USAGE ON SEQUENCE log_id_seq TO {role}"), "",
     ("TRUNCATE on table log", "USAGE on sequence log_id_seq")),
    (("ALTER TABLE variable OWNER TO {role}",), "",
     (f"owns table variable {OWNER_NOTE}", f"owns sequence variable_id_seq {OWNER_NOTE}")),
    (("GRANT pg_write_all_data TO {role}",), "",
     ("INSERT, UPDATE, DELETE on every table and sequence (member of pg_write_all_data)",)),
    (("GRANT pg_write_all_data TO {role}",), "NOINHERIT",
     ("via SET ROLE pg_write_all_data: INSERT, UPDATE, DELETE on every table and sequence "
      "(member of pg_write_all_data)",)),
    (("GRANT CREATE ON SCHEMA public TO {role}",), "", ("CREATE on the schema public",)),
    (('ALTER DATABASE "{db}" OWNER TO {role}',), "",
     ("owns the schema public", "owns the database {db}")),
    ((), "CREATEROLE",
     ("CREATEROLE (it may grant itself pg_write_all_data or any other role)",)),
    ((), "SUPERUSER", ("the role is a superuser (it may do anything)",)),
], ids=["update-variable", "update-column", "insert-delete", "truncate-sequence", "owner",
        "pg_write_all_data", "pg_write_all_data-noinherit", "create-schema", "database-owner",
        "createrole", "superuser"])
def test_every_way_to_write_is_reported(make_role: MakeRole, airflow_db: AirflowDb,
                                        sql: tuple[str, ...], attributes: str,
                                        problems: tuple[str, ...]) -> None:
    access = access_of(make_role(*sql, attributes=attributes))
    assert access.problems == tuple(p.format(db=airflow_db.name) for p in problems)
    assert not access.read_only


@one_airflow
def test_a_role_it_may_set_role_to_is_asked_too(make_role: MakeRole, pg: Postgres) -> None:
    """Privileges of a role the bridge's NOINHERIT role belongs to are one SET ROLE away."""
    writer = pg.fresh_name("amb_writer")
    with pg.admin() as conn:
        conn.execute(f"CREATE ROLE {writer} NOLOGIN SUPERUSER")
    try:
        access = access_of(make_role(f"GRANT {writer} TO {{role}}", attributes="NOINHERIT"))
        assert access.problems == (f"may SET ROLE {writer}, a superuser",)
    finally:
        with pg.admin() as conn:
            conn.execute(f"DROP ROLE {writer}")


@one_airflow
def test_it_refuses_to_run_outside_a_read_only_transaction(make_role: MakeRole) -> None:
    source = Source(app.load_settings(None, {"BRIDGE_AIRFLOW_DB_URL": make_role()}))
    try:
        with source.engine.connect() as conn, pytest.raises(NotReadOnlyTransaction):
            inspect_role(conn)
        with source.engine.connect() as conn, conn.begin():
            conn.execute(text("SET TRANSACTION READ ONLY"))
            with pytest.raises(NotReadOnlyTransaction):  # no statement_timeout
                inspect_role(conn)
    finally:
        source.dispose()
