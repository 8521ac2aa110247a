"""The metadata DB side: schema detection, read-only sessions, and plans that stay indexed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from bridge import config
from bridge.cache import Cache, now_utc
from bridge.dag_runs import DagRunJob
from bridge.source import Reader, Source, SourceError, detect_schema, write_privileges
from tests.conftest import AirflowDb
from tests.metadb import fill_history
from tests.postgres import Postgres

BIG_TABLES = {"dag_run", "task_instance", "task_instance_history", "xcom"}


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
                                                 tmp_path: Any) -> None:
    fill_history(airflow_db.writer)
    settings = _settings(airflow_db, BRIDGE_LOOKBACK="7d",
                         BRIDGE_CACHE_URL=f"sqlite:///{tmp_path / 'c.db'}")
    source, cache = Source(settings), Cache(settings.cache_url)
    cache.migrate()
    job = DagRunJob(settings)
    recorded: list[tuple[str, dict[str, Any]]] = []
    original = Reader.execute

    def recording(self: Reader, sql: str, params: dict[str, Any] | None = None) -> Any:
        recorded.append((sql, dict(params or {})))
        return original(self, sql, params)

    monkeypatch.setattr(Reader, "execute", recording)
    for _ in range(2):  # the first-start backfill, then a steady-state cycle
        with source.reading() as reader, cache.transaction() as tx:
            job.run(reader, tx, now_utc())
    airflow_db.writer.conn.execute(
        "UPDATE dag_run SET state = 'success', end_date = now() WHERE state = 'running'")
    with source.reading() as reader, cache.transaction() as tx:
        assert job.run(reader, tx, now_utc()).folded == 50
    kinds = {sql.split(" FROM ")[-1][:40] for sql, _ in recorded}
    assert len(kinds) >= 5, kinds

    engine = create_engine(airflow_db.url)
    with engine.connect() as conn:
        for sql, params in recorded:
            if "dag_run" not in sql:
                continue
            plan = conn.execute(text("EXPLAIN (FORMAT JSON) " + sql), params).scalar()
            tree = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
            assert not _seq_scans(tree), f"sequential scan in: {sql} {params}"
    engine.dispose()
    source.dispose()
    cache.dispose()
