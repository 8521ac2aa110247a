"""The commands as a user runs them: check, migrate, refresh --once, serve."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from bridge.cache.database import migrations_path
from tests.conftest import AirflowDb, one_airflow
from tests.metadb import T0
from tests.postgres import Postgres
from tests.test_privileges import MakeRole, roles
from tests.tools import free_port

GRANT_SCRIPT = "deploy/postgres/grant-bridge-readonly.sql"


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], env={**clean, **env},
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def _env(db: AirflowDb, tmp_path: Path) -> dict[str, str]:
    return {"BRIDGE_AIRFLOW_DB_URL": db.url.render_as_string(hide_password=False),
            "BRIDGE_CACHE_URL": f"sqlite:///{tmp_path / 'cache.db'}", "BRIDGE_LOOKBACK": "all"}


@pytest.fixture
def make_role(pg: Postgres, airflow_db: AirflowDb) -> Iterator[MakeRole]:
    yield from roles(pg, airflow_db)


def test_check_passes_with_a_read_only_role(airflow_db: AirflowDb, make_role: MakeRole,
                                            tmp_path: Path) -> None:
    """On every release: the role may read only the tables the grant script names (those
    the release has), and a refresh reading that release's tables must need no other."""
    url = make_role()
    role = make_url(url).username
    env = {**_env(airflow_db, tmp_path), "BRIDGE_AIRFLOW_DB_URL": url}
    result = run_cli("check", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"airflow: role '{role}' is read-only (every relation of schema 'public' " \
        "checked): OK" in result.stdout
    assert "check: OK" in result.stdout
    # serve and refresh need no flag for it
    refreshed = run_cli("refresh", "--once", env=env, cwd=tmp_path)
    assert refreshed.returncode == 0, refreshed.stderr
    assert f"metadata DB role '{role}' is read-only" in refreshed.stderr


@one_airflow
def test_check_lists_what_a_role_could_write_beyond_the_tables_it_reads(
        airflow_db: AirflowDb, make_role: MakeRole, tmp_path: Path) -> None:
    url = make_role("GRANT UPDATE ON variable TO {role}", "GRANT DELETE ON connection TO {role}")
    role = make_url(url).username
    env = {**_env(airflow_db, tmp_path), "BRIDGE_AIRFLOW_DB_URL": url}
    result = run_cli("check", env=env, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    start = lines.index(f"airflow: DANGER: the bridge's role '{role}' can write to the "
                        "metadata DB:")
    assert lines[start + 1:start + 3] == ["  - DELETE on table connection",
                                          "  - UPDATE on table variable"]
    assert GRANT_SCRIPT in lines[start + 3]
    assert lines[-1] == "check: 1 problem(s)"


@one_airflow
def test_check_rejects_the_superuser(airflow_db: AirflowDb, tmp_path: Path) -> None:
    result = run_cli("check", env=_env(airflow_db, tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert "  - the role is a superuser (it may do anything)" in result.stdout


@one_airflow
def test_refresh_refuses_a_role_that_can_write_unless_allowed(
        airflow_db: AirflowDb, make_role: MakeRole, tmp_path: Path) -> None:
    url = make_role("ALTER TABLE variable OWNER TO {role}")
    role = make_url(url).username
    env = {**_env(airflow_db, tmp_path), "BRIDGE_AIRFLOW_DB_URL": url}
    airflow_db.writer.complete_run("etl", logical_date=T0)
    refused = run_cli("refresh", "--once", "--print", env=env, cwd=tmp_path)
    assert refused.returncode == 1
    assert f"refusing to read the metadata DB: the metadata DB role '{role}' can write: " \
        "owns table variable (an owner may write, alter and drop); owns sequence " \
        "variable_id_seq" in refused.stderr
    assert GRANT_SCRIPT in refused.stderr and "--allow-writable-role" in refused.stderr
    assert "airflow_dag_run_finished_total{" not in refused.stdout, "nothing was read"
    allowed = run_cli("refresh", "--once", "--print", "--allow-writable-role", env=env,
                      cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    assert f"the metadata DB role '{role}' can write: owns table variable" in allowed.stderr
    assert "running anyway (allow_writable_role)" in allowed.stderr
    assert 'airflow_dag_run_finished_total{dag_id="etl",run_type="scheduled",' \
        'state="success"} 1.0' in allowed.stdout
    by_setting = run_cli("refresh", "--once", env={**env, "BRIDGE_ALLOW_WRITABLE_ROLE": "true"},
                         cwd=tmp_path)
    assert by_setting.returncode == 0, by_setting.stderr


@one_airflow
def test_serve_refuses_a_role_that_can_write(airflow_db: AirflowDb, make_role: MakeRole,
                                             tmp_path: Path) -> None:
    url = make_role("GRANT pg_write_all_data TO {role}")
    env = {**_env(airflow_db, tmp_path), "BRIDGE_AIRFLOW_DB_URL": url,
           "BRIDGE_LISTEN_ADDRESS": f"127.0.0.1:{free_port()}"}
    result = run_cli("serve", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "can write: INSERT, UPDATE, DELETE on every table and sequence (member of " \
        "pg_write_all_data)" in result.stderr
    assert GRANT_SCRIPT in result.stderr
    assert result.stderr.splitlines()[-1].endswith("stopped: the metadata DB role can write")


def test_check_rejects_a_malformed_config(tmp_path: Path) -> None:
    config_file = tmp_path / "bridge.yaml"
    config_file.write_text("airflow:\n  url: postgresql://x@h/db\n  statment_timeout: 5s\n"
                           "refresh_interval: soon\n")
    result = run_cli("check", "--config", str(config_file), env={}, cwd=tmp_path)
    assert result.returncode == 2
    assert f"{config_file}: invalid configuration" in result.stderr
    assert "airflow.statment_timeout: unknown key; did you mean `statement_timeout`? known keys " \
        "here:" in result.stderr
    assert "statement_timeout" in result.stderr
    assert "refresh_interval: 'soon' is not a duration; write it as 30s, 5m, 2h or 7d" \
        in result.stderr


def test_unreachable_db_password_never_printed(tmp_path: Path) -> None:
    env = {"BRIDGE_AIRFLOW_DB_URL": "postgresql://bridge:hunter2@127.0.0.1:1/airflow",
           "BRIDGE_CACHE_URL": f"sqlite:///{tmp_path / 'cache.db'}"}
    result = run_cli("check", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "bridge:<secret>@127.0.0.1:1/airflow NOT reachable" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


@one_airflow
def test_migrate_then_refresh_once_prints_valid_metrics(airflow_db: AirflowDb,
                                                        tmp_path: Path) -> None:
    env = _env(airflow_db, tmp_path)
    migrated = run_cli("migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    head = ScriptDirectory(str(migrations_path())).get_current_head()
    assert f"is at revision {head}" in migrated.stdout
    airflow_db.writer.complete_run("etl", logical_date=T0)
    airflow_db.writer.complete_run("etl", logical_date=T0 + timedelta(hours=1), run_type="manual",
                                   state="failed")
    result = run_cli("refresh", "--once", "--print", "--allow-writable-role", env=env,
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'airflow_dag_run_finished_total{dag_id="etl",run_type="scheduled",state="success"} ' \
        '1.0' in result.stdout
    assert 'airflow_dag_run_finished_total{dag_id="etl",run_type="manual",state="failed"} ' \
        '1.0' in result.stdout
    assert "# HELP airflow_dag_runs DAG runs queued or running now. Refreshed every 10s" \
        in result.stdout
    _promtool_check_metrics(result.stdout)
    report = run_cli("report", "dags", "--since", "2026-10-01", "--format", "csv", env=env,
                     cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert report.stdout.splitlines() == [
        "day,dag_id,runs,failed,success_rate,p50_seconds,p95_seconds",
        "2026-11-01,etl,2,1,0.5,300,300"]


def _promtool_check_metrics(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("BRIDGE_REQUIRE_TOOLS") == "1":
            pytest.fail("promtool is required (install the prometheus package)")
        pytest.skip("promtool not installed")
    checked = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                             capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", \
        checked.stdout + checked.stderr


def _get(url: str) -> tuple[int, str, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


@one_airflow
def test_serve_readiness_metrics_and_clean_sigterm(airflow_db: AirflowDb,
                                                   tmp_path: Path) -> None:
    airflow_db.writer.complete_run("etl", logical_date=T0)
    port = free_port()
    env = {**_env(airflow_db, tmp_path), "BRIDGE_LISTEN_ADDRESS": f"127.0.0.1:{port}"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve",
                             "--allow-writable-role"], env={**clean, **env},
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _, _ = _get(base + "/-/ready")
            except OSError:
                status = 0
            if status == 200:
                break
            assert status in (0, 503), status
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.1)
        assert _get(base + "/-/healthy")[0] == 200
        assert "/metrics" in _get(base + "/")[1]
        status, body, headers = _get(base + "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=")
        assert 'airflow_dag_run_finished_total{dag_id="etl",run_type="scheduled",' \
            'state="success"} 1.0' in body
        assert "airflow_bridge_metadb_up 1.0" in body
        request = urllib.request.Request(base + "/metrics", headers={
            "Accept": "application/openmetrics-text; version=1.0.0"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert response.read().decode().endswith("# EOF\n")
        zipped = urllib.request.Request(base + "/metrics", headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(zipped, timeout=5) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(response.read()).decode() == body
        assert _get(base + "/nope")[0] == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "received SIGTERM, stopping after the current cycle" in output
    assert "can write: the role is a superuser (it may do anything); running anyway" in output
    assert "stopped" in output.splitlines()[-1]
    assert "postgres:" not in output or "<secret>" in output or "@" not in output


@one_airflow
def test_check_names_a_broken_web_config_file(airflow_db: AirflowDb, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_user:\n  prometheus: x\n")
    checked = run_cli("check", env={**_env(airflow_db, tmp_path),
                                    "BRIDGE_WEB_CONFIG_FILE": str(web)}, cwd=tmp_path)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert str(web) in checked.stderr and "basic_auth_user" in checked.stderr
    assert "config: OK" not in checked.stdout


def test_check_reports_a_missing_airflow_url_before_anything_is_ok(tmp_path: Path) -> None:
    checked = run_cli("check", env={"BRIDGE_CACHE_URL": f"sqlite:///{tmp_path / 'c.db'}"},
                      cwd=tmp_path)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "BRIDGE_AIRFLOW_DB_URL" in checked.stderr
    assert checked.stdout == ""
