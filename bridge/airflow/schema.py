"""Which Airflow schema is behind the DB, detected from the schema itself.

Every difference between Airflow versions the bridge cares about is recorded here once,
as a field of `AirflowSchema`; the queries read those fields and never test versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from sqlalchemy import Connection, text

from bridge.errors import SchemaError


@dataclass(frozen=True)
class AirflowSchema:
    """What the bridge needs to know about the Airflow version behind the DB."""

    revision: str
    airflow_version: str
    major: int
    logical_date_column: str  # execution_date (2.x) or logical_date (3.x)
    has_task_instance_history: bool  # 2.10+ and 3.x
    run_after_column: str  # `run_after` (3.x), or NULL where the column does not exist
    clear_number_column: str  # `clear_number` (2.8+), or NULL where it does not exist
    xcom_size: str  # SQL size of xcom.value: bytea (2.x) as is, jsonb (3.x) as text
    xcom_value: str  # SQL of xcom.value as UTF-8 bytes, so no driver parses jsonb (3.x)
    dag_alive: str  # SQL condition for DAGs still parsed: `is_active` (2.x), `NOT is_stale`
    dag_tag_readable: bool  # roles granted before DAG tags were read may lack SELECT on it
    ti_id: str  # SQL of task_instance.id as text (3.x: a new id per try and per clear), or NULL


def _known_revisions() -> dict[str, str]:
    data = resources.files("bridge.airflow").joinpath("airflow_versions.json").read_text("utf-8")
    return dict(json.loads(data))


def _columns(conn: Connection, table: str) -> dict[str, str]:
    """Column name -> data type of one table in the schema the role reads."""
    rows = conn.execute(text(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = :table"), {"table": table})
    return {str(name): str(kind) for name, kind in rows}


def detect_schema(conn: Connection) -> AirflowSchema:
    """Tell Airflow 2.x from 3.x by the schema itself, never by configuration."""
    if conn.execute(text("SELECT to_regclass('alembic_version')")).scalar() is None or \
            conn.execute(text("SELECT to_regclass('dag_run')")).scalar() is None:
        raise SchemaError("no `alembic_version`/`dag_run` table: this is not an Airflow metadata "
                          "DB, or the role cannot see it (check the database name and search_path)")
    revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    columns = _columns(conn, "dag_run")
    if "logical_date" in columns:
        major, date_column = 3, "logical_date"
    elif "execution_date" in columns:
        major, date_column = 2, "execution_date"
    else:
        raise SchemaError("dag_run has neither execution_date nor logical_date: unsupported "
                          "Airflow schema (the bridge reads Airflow 2.7+ and 3.x)")
    history = conn.execute(text("SELECT to_regclass('task_instance_history')")).scalar()
    dag_tag = bool(conn.execute(text(
        "SELECT to_regclass('dag_tag') IS NOT NULL "
        "AND has_table_privilege(current_user, 'dag_tag', 'SELECT')")).scalar())
    xcom_jsonb = _columns(conn, "xcom").get("value") == "jsonb"  # 3.x; bytea before
    # The schema only tells the first release with this migration head, hence the "+".
    known = _known_revisions().get(str(revision))
    version = f"{known}+" if known else f"{major}.x"
    return AirflowSchema(
        revision=str(revision),
        airflow_version=version,
        major=major,
        logical_date_column=date_column,
        has_task_instance_history=history is not None,
        run_after_column="run_after" if "run_after" in columns else "NULL",
        clear_number_column="clear_number" if "clear_number" in columns else "NULL",
        xcom_size="octet_length(value::text)" if xcom_jsonb else "octet_length(value)",
        xcom_value="convert_to(value::text, 'UTF8')" if xcom_jsonb else "value",
        dag_alive="NOT is_stale" if "is_stale" in _columns(conn, "dag") else "is_active",
        dag_tag_readable=dag_tag,
        ti_id="ti.id::text" if "id" in _columns(conn, "task_instance") else "NULL",
    )
