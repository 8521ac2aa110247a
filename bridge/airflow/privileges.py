"""Could the bridge's role change the metadata DB? Asked of PostgreSQL, relation by relation.

The bridge only reads, so a role that can write is one bug or one leaked password away
from damaging Airflow. PostgreSQL hands out write access in many ways: grants on any
table (not just the ones the bridge reads, and column grants too), owning a table, a
sequence, the schema or the database, superuser, `pg_write_all_data`, CREATEROLE (which
may grant itself that), and roles the role can switch to with SET ROLE even when it does
not inherit their privileges. Every relation of the current schema is asked about, for
the role and for each role it may SET ROLE to.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import Connection, text

GRANT_SCRIPT = "deploy/postgres/grant-bridge-readonly.sql"
WRITE_ALL = "pg_write_all_data"
# pg_write_all_data acts as INSERT, UPDATE, DELETE on every table, view and sequence
# (UPDATE is what a sequence takes of those); TRUNCATE and sequence USAGE are not given.
_WRITE_ALL_IMPLIES = {"INSERT", "UPDATE", "DELETE"}
_KINDS = {"r": "table", "p": "table", "v": "view", "m": "materialized view",
          "f": "foreign table", "S": "sequence"}

_RELATIONS = text("""
SELECT c.relname AS name, c.relkind::text AS kind,
       pg_has_role(CAST(:role AS name), c.relowner, 'USAGE') AS owns,
       CASE WHEN c.relkind = 'S' THEN array_remove(ARRAY[
              CASE WHEN has_sequence_privilege(CAST(:role AS name), c.oid, 'UPDATE')
                   THEN 'UPDATE' END,
              CASE WHEN has_sequence_privilege(CAST(:role AS name), c.oid, 'USAGE')
                   THEN 'USAGE' END], NULL)
            ELSE array_remove(ARRAY[
              CASE WHEN has_any_column_privilege(CAST(:role AS name), c.oid, 'INSERT')
                   THEN 'INSERT' END,
              CASE WHEN has_any_column_privilege(CAST(:role AS name), c.oid, 'UPDATE')
                   THEN 'UPDATE' END,
              CASE WHEN has_table_privilege(CAST(:role AS name), c.oid, 'DELETE')
                   THEN 'DELETE' END,
              CASE WHEN has_table_privilege(CAST(:role AS name), c.oid, 'TRUNCATE')
                   THEN 'TRUNCATE' END], NULL)
       END AS granted
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
ORDER BY c.relname
""")

_ROLE = text("""
SELECT r.rolcreaterole AS createrole,
       coalesce((SELECT pg_has_role(CAST(:role AS name), w.oid, 'USAGE') FROM pg_roles w
                 WHERE w.rolname = :write_all), false) AS writes_all,
       (SELECT has_schema_privilege(CAST(:role AS name), n.oid, 'CREATE')
          FROM pg_namespace n WHERE n.nspname = current_schema()) AS schema_create,
       (SELECT pg_has_role(CAST(:role AS name), n.nspowner, 'USAGE')
          FROM pg_namespace n WHERE n.nspname = current_schema()) AS schema_owner,
       has_database_privilege(CAST(:role AS name), current_database(), 'CREATE') AS db_create,
       (SELECT pg_has_role(CAST(:role AS name), d.datdba, 'USAGE')
          FROM pg_database d WHERE d.datname = current_database()) AS db_owner
FROM pg_roles r WHERE r.rolname = :role
""")


class NotReadOnlyTransaction(RuntimeError):
    """The inspection itself must not be able to change anything or hang."""


@dataclass(frozen=True)
class RoleAccess:
    """What the connected role could change; no problems means it can only read."""

    role: str
    schema: str
    problems: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return not self.problems

    def why(self) -> str:
        return f"the metadata DB role {self.role!r} can write: " + "; ".join(self.problems)


FIX = (f"Connect with a role that has SELECT only ({GRANT_SCRIPT} grants exactly what the "
       "bridge reads), or run `serve`/`refresh` with --allow-writable-role (the setting "
       "airflow.allow_writable_role, BRIDGE_ALLOW_WRITABLE_ROLE=true) to read anyway.")


class WritableRoleError(Exception):
    """Raised where the bridge refuses to read with a role that can write."""

    def __init__(self, access: RoleAccess) -> None:
        super().__init__(f"{access.why()}. {FIX}")
        self.access = access


def inspect_role(conn: Connection) -> RoleAccess:
    """Every way the current role could write, as sentences an operator can act on.

    Runs only inside a read-only transaction with a statement timeout (as
    `Source.transaction` opens it): a question about privileges must neither change nor
    wait on anything.
    """
    row = conn.execute(text(
        "SELECT current_user AS role, current_schema() AS schema, "
        "current_database() AS db, current_setting('transaction_read_only') AS read_only, "
        "current_setting('statement_timeout') AS timeout, "
        "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser")).one()
    if row.read_only != "on" or row.timeout in ("0", "0ms"):
        raise NotReadOnlyTransaction("privileges are inspected only in a read-only "
                                     "transaction with a statement_timeout")
    role, schema = str(row.role), str(row.schema or "")
    if row.superuser:
        return RoleAccess(role, schema, ("the role is a superuser (it may do anything)",))
    problems = _role_problems(conn, role, schema, str(row.db))
    # Superuser status is never inherited, other privileges only through INHERIT: what
    # SET ROLE would give is asked of each role the current one is a member of.
    for other in conn.execute(text(
            "SELECT r.rolname AS name, r.rolsuper AS superuser, "
            "pg_has_role(current_user, r.oid, 'USAGE') AS inherited FROM pg_roles r "
            "WHERE r.rolname <> current_user AND pg_has_role(current_user, r.oid, 'MEMBER') "
            "ORDER BY r.rolname")):
        if other.superuser:
            problems.append(f"may SET ROLE {other.name}, a superuser")
        elif not other.inherited:
            problems += [f"via SET ROLE {other.name}: {p}"
                         for p in _role_problems(conn, str(other.name), schema, str(row.db))]
    return RoleAccess(role, schema, tuple(problems))


def _role_problems(conn: Connection, role: str, schema: str, database: str) -> list[str]:
    """What `role` itself may write, its inherited privileges included."""
    flags = conn.execute(_ROLE, {"role": role, "write_all": WRITE_ALL}).one()
    problems: list[str] = []
    if flags.createrole:
        problems.append(f"CREATEROLE (it may grant itself {WRITE_ALL} or any other role)")
    if flags.writes_all:
        problems.append(f"INSERT, UPDATE, DELETE on every table and sequence (member of "
                        f"{WRITE_ALL})")
    implied = _WRITE_ALL_IMPLIES if flags.writes_all else set()
    owned: dict[str, list[str]] = defaultdict(list)
    granted: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for rel in conn.execute(_RELATIONS, {"role": role}):
        kind = _KINDS[rel.kind]
        if rel.owns:
            owned[kind].append(rel.name)
            continue
        privileges = tuple(p for p in rel.granted if p not in implied)
        if privileges:
            granted[(kind, privileges)].append(rel.name)
    for kind, names in owned.items():
        problems.append(f"owns {_plural(kind, names)} {', '.join(names)} (an owner may "
                        "write, alter and drop)")
    for (kind, privileges), names in granted.items():
        problems.append(f"{', '.join(privileges)} on {_plural(kind, names)} {', '.join(names)}")
    if flags.schema_owner:
        problems.append(f"owns the schema {schema}")
    elif flags.schema_create:
        problems.append(f"CREATE on the schema {schema}")
    if flags.db_owner:
        problems.append(f"owns the database {database}")
    elif flags.db_create:
        problems.append(f"CREATE on the database {database} (it may add schemas)")
    return problems


def _plural(kind: str, names: list[str]) -> str:
    return kind if len(names) == 1 else kind + "s"
