"""The metadata DB side: schema detection, read-only sessions, and plans that stay indexed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from bridge import config
from bridge.source import Reader, Source, SourceError, detect_schema, write_privileges
from tests.conftest import AirflowDb, BridgeFactory
from tests.metadb import fill_history
from tests.postgres import Postgres

BIG_TABLES = {"dag_run", "task_instance", "task_instance_history", "xcom", "job"}


def _settings(db: AirflowDb, **env: str) -> config.Settings:
    return config.load(None, {"BRIDGE_AIRFLOW_DB_URL": db.url.render_as_string(False), **env})


def test_schema_version_is_detected_from_the_schema(airflow_db: AirflowDb) -> None:
    source = Source(_settings(airflow_db))
    schema = source.schema
    source.dispose()
    if airflow_db.version.startswith("2."):
        assert (schema.major, schema.logical_date_column) == (2, "execution_date")
        assert schema.revision == "5f2621c13b39"
        assert schema.airflow_version == "2.10.3+"
    else:
        assert (schema.major, schema.logical_date_column) == (3, "logical_date")
        assert schema.revision == "d2f4e1b3c5a7"
        assert schema.airflow_version == "3.3.0+"
    assert schema.has_task_instance_history


def test_not_an_airflow_db_is_a_clear_error(pg: Postgres) -> None:
    name = pg.fresh_name("amb_empty")
    pg.create_database(name)
    try:
        engine = create_engine(pg.url_for(name))
        with engine.connect() as conn, pytest.raises(Exception, match="not an Airflow metadata"):
            detect_schema(conn)
        engine.dispose()
    finally:
        pg.drop_database(name)


def test_sessions_are_read_only_with_timeouts(airflow_db: AirflowDb) -> None:
    source = Source(_settings(airflow_db, BRIDGE_REFRESH_INTERVAL="30s"))
    with source.reading() as reader:
        row = reader.execute("SELECT current_setting('transaction_read_only'), "
                             "current_setting('statement_timeout'), "
                             "current_setting('lock_timeout'), "
                             "current_setting('application_name'), "
                             "current_setting('transaction_isolation')")[0]
        assert tuple(row) == ("on", "30s", "5s", "airflow-metrics-bridge", "repeatable read")
        with pytest.raises(SourceError, match="read-only transaction"):
            reader.execute("DELETE FROM dag_run")
    source.dispose()


def test_superuser_role_is_reported_as_write_capable(airflow_db: AirflowDb) -> None:
    engine = create_engine(airflow_db.url)
    with engine.connect() as conn:
        problems = write_privileges(conn)
    engine.dispose()
    assert "the role is a superuser" in problems
    assert any(p.startswith("INSERT, UPDATE, DELETE, TRUNCATE on dag_run") for p in problems)


def _seq_scans(plan: dict[str, Any]) -> list[str]:
    found = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in BIG_TABLES:
        found.append(plan["Relation Name"])
    for child in plan.get("Plans", []):
        found += _seq_scans(child)
    return found


def test_every_statement_of_a_cycle_uses_indexes(airflow_db: AirflowDb,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 make_bridge: BridgeFactory,
                                                 tmp_path: Path) -> None:
    fill_history(airflow_db.writer, runs_per_dag=500, tasks_per_run=4, jobs=50_000)
    metrics_file = tmp_path / "metrics.yaml"
    metrics_file.write_text(yaml.safe_dump({"metrics": [
        {"name": "rows_total", "help": "rows", "type": "counter", "dag_id": "dag_100",
         "task_id": "task_1", "path": "rows"}]}))
    bridge = make_bridge(airflow_db.url, lookback="7d", metrics_file=str(metrics_file))
    recorded: list[tuple[str, dict[str, Any]]] = []
    original = Reader.execute

    def recording(self: Reader, sql: str, params: dict[str, Any] | None = None) -> Any:
        recorded.append((sql, dict(params or {})))
        return original(self, sql, params)

    monkeypatch.setattr(Reader, "execute", recording)
    bridge.cycle()  # the first-start backfill
    airflow_db.writer.conn.execute(
        "UPDATE task_instance SET state = 'success', end_date = now() WHERE state = 'running'")
    airflow_db.writer.conn.execute(
        "UPDATE dag_run SET state = 'success', end_date = now() WHERE state = 'running'")
    scrape = bridge.cycle()  # a steady-state cycle that folds 50 runs and their tasks
    assert scrape.value("airflow_dag_run_finished_total", dag_id="dag_100", state="success",
                        run_type="scheduled") == 50, "the 50 active runs, all of dag_100"
    assert scrape.value("airflow_task_instance_finished_total", dag_id="dag_100",
                        task_id="task_1", state="success") == 50
    assert scrape.value("airflow_task_instance_retries_total", dag_id="dag_100",
                        task_id="task_3") == 50
    tables = {table for sql, _ in recorded for table in BIG_TABLES if f" {table} " in sql + " "}
    assert scrape.value("rows_total") == sum(len(f"scheduled__{n}") for n in range(451, 501))
    assert tables == BIG_TABLES, tables

    engine = create_engine(airflow_db.url)
    with engine.connect() as conn:
        for sql, params in recorded:
            plan = conn.execute(text("EXPLAIN (FORMAT JSON) " + sql), params).scalar()
            tree = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
            assert not _seq_scans(tree), f"sequential scan in: {sql} {params}"
    engine.dispose()
