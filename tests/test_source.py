"""The metadata DB side: schema detection, read-only sessions, and plans that stay indexed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from sqlalchemy import create_engine, text

from bridge import config
from bridge.airflow.schema import detect_schema
from bridge.airflow.source import Reader, Source
from bridge.errors import SourceError
from tests.conftest import AirflowDb, BridgeFactory, one_airflow
from tests.metadb import T0, fill_history
from tests.postgres import AIRFLOW_VERSIONS, Postgres
from tests.tools import free_port

BIG_TABLES = {"dag_run", "task_instance", "task_instance_history", "xcom", "job"}


def _settings(db: AirflowDb, **env: str) -> config.Settings:
    return config.load(None, {"BRIDGE_AIRFLOW_DB_URL": db.url.render_as_string(False), **env})


# fixture release -> (alembic head, first release with that head, has task_instance_history)
DETECTED = {
    "2.7.3": ("405de8318b3a", "2.7.0+", False),
    "2.8.4": ("88344c1d9134", "2.8.1+", False),
    "2.9.3": ("686269002441", "2.9.2+", False),
    "2.10.5": ("5f2621c13b39", "2.10.3+", True),
    "2.11.2": ("5f2621c13b39", "2.10.3+", True),
    "3.0.6": ("fe199e1abd77", "3.0.3+", True),
    "3.1.8": ("509b94a1042d", "3.1.8+", True),
    "3.2.2": ("1d6611b6ab7c", "3.2.0+", True),
    "3.3.2": ("d2f4e1b3c5a7", "3.3.0+", True),
}


def test_schema_version_is_detected_from_the_schema(airflow_db: AirflowDb) -> None:
    source = Source(_settings(airflow_db))
    schema = source.schema
    source.dispose()
    major = int(airflow_db.version[0])
    revision, first_release, history = DETECTED[airflow_db.version]
    assert (schema.revision, schema.airflow_version) == (revision, first_release)
    assert schema.major == major
    assert schema.logical_date_column == ("logical_date" if major == 3 else "execution_date")
    assert schema.has_task_instance_history is history
    assert schema.clear_number_column == ("NULL" if airflow_db.version == "2.7.3"
                                          else "clear_number")
    assert schema.run_after_column == ("run_after" if major == 3 else "NULL")
    assert schema.dag_alive == ("NOT is_stale" if major == 3 else "is_active")
    assert ("::text" in schema.xcom_value) is (major == 3), "jsonb on 3.x, bytea on 2.x"


def test_every_fixture_release_is_known() -> None:
    assert set(DETECTED) == set(AIRFLOW_VERSIONS)


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


@one_airflow
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
    assert tables == BIG_TABLES - ({"task_instance_history"} if not
                                   airflow_db.writer.has_history else set()), tables

    engine = create_engine(airflow_db.url)
    with engine.connect() as conn:
        for sql, params in recorded:
            plan = conn.execute(text("EXPLAIN (FORMAT JSON) " + sql), params).scalar()
            tree = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
            assert not _seq_scans(tree), f"sequential scan in: {sql} {params}"
    engine.dispose()


@pytest.fixture
def pgbouncer(airflow_db: AirflowDb) -> Iterator[Any]:
    """A real PgBouncer in transaction mode in front of the test database."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if binary is None:
        if os.environ.get("BRIDGE_REQUIRE_TOOLS") == "1":
            pytest.fail("pgbouncer is required (install the pgbouncer package)")
        pytest.skip("pgbouncer not installed")
    url = airflow_db.url
    host = url.host or str(url.query["host"])
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="amb-pgbouncer-"))  # readable by its own user
    workdir.chmod(0o755)
    config = workdir / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"airflow = host={host} port={url.port or 5432} dbname={url.database} "
        f"user={url.username}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {workdir / 'users.txt'}\n"
        "pool_mode = transaction\n")
    (workdir / "users.txt").write_text(f'"{url.username}" ""\n')
    # As root it must switch user: to the embedded server's own (for its socket) or postgres.
    owner = Path(host).owner() if host.startswith("/") else "postgres"
    user = ["-u", owner] if os.geteuid() == 0 else []
    process = subprocess.Popen([binary, *user, str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert time.monotonic() < deadline, "pgbouncer did not start"
        time.sleep(0.05)
    yield url.set(host="127.0.0.1", port=port, database="airflow", query={})
    process.terminate()
    process.wait(timeout=10)
    shutil.rmtree(workdir)


@one_airflow
def test_works_through_pgbouncer_in_transaction_mode(
        airflow_db: AirflowDb, pgbouncer: Any, make_bridge: BridgeFactory) -> None:
    airflow_db.writer.complete_run("etl", logical_date=T0)
    bridge = make_bridge(pgbouncer)
    for expected in (1, 2):
        scrape = bridge.cycle()
        assert scrape.value("airflow_dag_run_finished_total", dag_id="etl", state="success",
                            run_type="scheduled") == expected
        airflow_db.writer.complete_run("etl", logical_date=T0 + timedelta(days=expected))
    source = Source(_settings_for(pgbouncer))
    with source.reading() as reader:
        row = reader.execute("SELECT current_setting('transaction_read_only'), "
                             "current_setting('statement_timeout')")[0]
    source.dispose()
    assert tuple(row) == ("on", "30s"), "per-transaction settings hold behind the pooler"


def _settings_for(url: Any) -> config.Settings:
    return config.load(None, {"BRIDGE_AIRFLOW_DB_URL": url.render_as_string(False)})


@one_airflow
@pytest.mark.parametrize("table", ["alembic_version", "dag_run"])
def test_a_lock_on_an_airflow_table_times_out_instead_of_hanging(
        airflow_db: AirflowDb, pg: Postgres, make_bridge: BridgeFactory, table: str) -> None:
    """Even the first statement (schema detection, the revision check) runs under the
    timeouts: a held lock fails the cycle after lock_timeout, and the bridge recovers."""
    bridge = make_bridge(airflow_db.url, airflow={"lock_timeout": "1s",
                                                  "statement_timeout": "2s"})
    outcome: list[bool] = []
    with psycopg.connect(pg.libpq(airflow_db.name)) as holder:
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        worker = threading.Thread(target=lambda: outcome.append(bridge.refresher.refresh()))
        worker.start()
        worker.join(60)  # a guard against hanging the suite, not a speed check
        assert not worker.is_alive(), "the cycle hung on the lock"
    assert outcome == [False]
    assert bridge.scrape().value("airflow_bridge_metadb_up") == 0
    assert bridge.cycle().value("airflow_bridge_metadb_up") == 1
