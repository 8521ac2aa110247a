"""The demo: a simulated pipeline the bridge reads exactly, and a clean start and stop."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from bridge import cli
from bridge.demo import demo
from bridge.demo.simulator import DAGS, FETCH, MONITOR, PREDICT, Simulator, plan_day
from tests.conftest import AirflowDb, BridgeFactory, Scrape
from tests.postgres import Postgres
from tests.tools import free_port

ROOT = Path(__file__).resolve().parent.parent
METRICS_FILE = ROOT / "deploy" / "bridge" / "metrics.yaml"
DAYS = 40


def _resolve(value: object, path: str | None) -> object:
    for part in path.split(".") if path else []:
        assert isinstance(value, dict), f"{path}: {value!r} is not an object"
        value = value[part]
    return value


def test_plans_are_reproducible_and_realistic() -> None:
    assert [plan_day(7, day) for day in range(1, 11)] == [plan_day(7, day) for day in range(1, 11)]
    assert plan_day(7, 3) != plan_day(8, 3)
    plans = [plan for day in range(1, DAYS + 1) for plan in plan_day(7, day)]
    assert Counter(plan.dag_id for plan in plans) == dict.fromkeys(DAGS, DAYS)
    for plan in plans:
        assert tuple(task.task_id for task in plan.tasks) == DAGS[plan.dag_id]
    xcoms = {(plan.dag_id, task.task_id): [] for plan in plans for task in plan.tasks}
    for plan in plans:
        for task in plan.tasks:
            xcoms[(plan.dag_id, task.task_id)].append(task.xcom)
    assert all(8_000 <= x["records_ingested"] <= 20_000 for x in xcoms[FETCH, "fetch_bike_data"])
    predictions = xcoms[PREDICT, "generate_predictions"]
    assert all(0.75 <= x["metrics"]["r2"] <= 0.95 for x in predictions)
    assert all(15 <= x["metrics"]["rmse"] <= 35 for x in predictions)
    drift = [x["drift_detected"] for x in xcoms[MONITOR, "detect_drift"]]
    decisions = set(xcoms[MONITOR, "decide_deployment"])
    assert True in drift and False in drift and decisions == {"deploy", "skip"}
    assert any(plan.state == "failed" for plan in plans)
    assert any(task.tries == ("failed", "success") for plan in plans for task in plan.tasks)


def test_xcoms_have_the_shapes_the_metrics_file_reads() -> None:
    """Every XCom metric of deploy/bridge/metrics.yaml finds its value in the simulation."""
    plans = [plan for day in range(1, 4) for plan in plan_day(7, day)]
    definitions = yaml.safe_load(METRICS_FILE.read_text())["metrics"]
    for definition in definitions:
        if definition.get("source", "xcom") != "xcom":
            continue
        values = [_resolve(task.xcom, definition.get("path")) for plan in plans
                  if plan.dag_id == definition["dag_id"] for task in plan.tasks
                  if task.task_id == definition["task_id"]]
        assert values, definition["name"]
        wanted: Any = str if definition.get("value_label") else (int, float)
        assert all(isinstance(v, wanted) for v in values), (definition["name"], values)


@pytest.mark.parametrize("airflow_version", ["3.3.2"])
def test_the_bridge_reads_exactly_what_was_simulated(airflow_db: AirflowDb,
                                                     make_bridge: BridgeFactory) -> None:
    conn = airflow_db.writer.conn
    simulator = Simulator(conn, seed=7, day_seconds=1.0, say=lambda _line: None)
    simulator.setup()
    for day in range(1, DAYS + 1):
        simulator.simulate_day(day)
    scrape = make_bridge(airflow_db.url, metrics_file=str(METRICS_FILE)).cycle()

    plans = [plan for day in range(1, DAYS + 1) for plan in plan_day(7, day)]
    for (dag_id, state), count in Counter((p.dag_id, p.state) for p in plans).items():
        assert scrape.value("airflow_dag_run_finished_total", dag_id=dag_id, state=state,
                            run_type="scheduled") == count
    records = sum(task.xcom["records_ingested"] for plan in plans for task in plan.tasks
                  if plan.dag_id == FETCH and task.succeeded)
    assert scrape.value("bike_records_ingested_total") == records
    decisions = Counter(task.xcom for plan in plans if plan.state == "success"
                        for task in plan.tasks if task.task_id == "decide_deployment")
    for decision, count in decisions.items():
        assert scrape.value("bike_model_deployments_total", decision=decision) == count
    retried = Counter((plan.dag_id, task.task_id) for plan in plans for task in plan.tasks
                      for _ in task.tries[1:])
    for (dag_id, task_id), count in retried.items():
        assert scrape.value("airflow_task_instance_retries_total", dag_id=dag_id,
                            task_id=task_id) == count
    assert scrape.value("airflow_job_last_heartbeat_timestamp_seconds",
                        job_type="SchedulerJob") is not None
    assert scrape.value("airflow_dag_paused", dag_id=FETCH) == 0

    # Each try keeps its own id, as in Airflow 3: the archived try is not the current one.
    archived = conn.execute("SELECT count(*), count(*) FILTER (WHERE state = 'failed') "
                            "FROM task_instance_history").fetchone()
    assert archived == (sum(retried.values()), sum(retried.values()))
    shared = conn.execute("SELECT count(*) FROM task_instance_history h JOIN task_instance t "
                          "ON t.id = h.task_instance_id").fetchone()
    assert shared == (0,)


def test_prometheus_config_points_at_the_demo(tmp_path: Path) -> None:
    checkout = demo.DemoFiles.checkout(ROOT)
    generated = demo.prometheus_config(checkout, "127.0.0.1:19101", "127.0.0.1:19090")
    targets = [t for job in generated["scrape_configs"] for s in job["static_configs"]
               for t in s["targets"]]
    assert targets == ["127.0.0.1:19101", "127.0.0.1:19090"]
    assert "alerting" not in generated
    assert generated["rule_files"] and all(Path(p).is_absolute() and Path(p).is_file()
                                           for p in generated["rule_files"])
    promtool = shutil.which("promtool")
    if promtool:
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(generated))
        check = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


def test_without_its_files_the_demo_explains_and_exits_2(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Neither a checkout nor the wheel's copies (an editable install has none)."""
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    args = cli._parser().parse_args(["demo"])
    assert demo.run(args) == 2
    assert "lacks the demo's files" in capsys.readouterr().err


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel) as `python -m build` makes them: the wheel is built from the sdist,
    so a file the sdist lacks is missing from the wheel too."""
    dist = tmp_path_factory.mktemp("dist")
    made = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    return (next(dist.glob("airflow_metrics_bridge-*.tar.gz")),
            next(dist.glob("airflow_metrics_bridge-*.whl")))


def test_wheel_ships_the_package_and_the_demo_files_only(built: tuple[Path, Path]) -> None:
    sdist, wheel = built
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    shipped = {n for n in names if not n.startswith("airflow_metrics_bridge-")}
    assert {"bridge/demo/airflow_schema/airflow-3.3.2.sql", "bridge/demo/bike/metrics.yaml",
            "bridge/demo/monitoring/prometheus.yml", "bridge/airflow/airflow_versions.json",
            "bridge/migrations/env.py", "bridge/py.typed"} <= shipped
    assert {n for n in shipped if not n.startswith("bridge/")} == set(), "nothing but bridge/"
    assert [n for n in shipped if n.startswith("bridge/demo/airflow_schema/")] == [
        "bridge/demo/airflow_schema/airflow-3.3.2.sql"], "one schema, no fixture scripts"
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "migrations/env.py",
            "tests/fixtures/airflow/airflow-3.3.2.sql"} <= members


@pytest.fixture(scope="module")
def installed_wheel(built: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The console script of the wheel built from this tree, in a fresh virtualenv."""
    work = tmp_path_factory.mktemp("wheel")
    wheel = built[1]
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
    subprocess.run([str(work / "venv" / "bin" / "pip"), "install", "-q", f"{wheel}[demo]"],
                   check=True, capture_output=True)
    return work / "venv" / "bin" / "airflow-metrics-bridge"


@pytest.fixture(params=["checkout", "wheel"])
def bridge_command(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "checkout":
        return [sys.executable, "-m", "bridge.cli"]
    return [str(request.getfixturevalue("installed_wheel"))]


def test_installed_wheel_checks_a_metadata_db(installed_wheel: Path, tmp_path: Path,
                                             pg: Postgres,
                                             airflow_templates: dict[str, str]) -> None:
    env = {"PATH": os.environ.get("PATH", ""),
           "BRIDGE_AIRFLOW_DB_URL": pg.libpq(airflow_templates["3.3.2"]),
           "BRIDGE_CACHE_URL": f"sqlite:///{tmp_path / 'cache.db'}"}
    check = subprocess.run([str(installed_wheel), "check"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert "config: OK" in check.stdout, check.stdout + check.stderr
    assert "reachable, Airflow 3." in check.stdout, check.stdout
    help_text = subprocess.run([str(installed_wheel), "demo", "--help"], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0 and "--day-seconds" in help_text.stdout


def test_the_demo_options_leave_the_other_commands_alone() -> None:
    parser = cli._parser()
    assert parser.parse_args(["demo"]).log_level == "warning"
    assert parser.parse_args(["serve"]).log_level == "info"
    args = parser.parse_args(["demo", "--listen", "0.0.0.0:9", "--day-seconds", "0.5"])
    assert (args.listen, args.day_seconds, args.seed, args.config) == ("0.0.0.0:9", 0.5, 7, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--day-seconds", "0"])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError):
        return 0, ""


def _totals(scrape: Scrape) -> tuple[float, float, float]:
    runs = sum(v for labels, v in scrape.series("airflow_dag_run_finished_total").items()
               if dict(labels)["dag_id"] in DAGS)
    tasks = sum(scrape.series("airflow_task_instance_finished_total").values())
    return runs, tasks, scrape.value("bike_records_ingested_total") or 0.0


def _leftovers(marker: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline:
            found.append(cmdline)
    return found


def test_demo_serves_live_metrics_and_stops_clean(tmp_path: Path,
                                                  bridge_command: list[str]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    process = subprocess.Popen(
        [*bridge_command, "demo", "--listen", f"127.0.0.1:{port}",
         "--day-seconds", "1"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert process.stdout is not None
    stdout = process.stdout
    drain = threading.Thread(target=lambda: lines.extend(stdout), daemon=True)
    drain.start()
    try:
        deadline = time.monotonic() + 60
        while _get(f"{base}/-/ready")[0] != 200:
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "not ready within 60s:\n" + "".join(lines)
            time.sleep(0.2)
        names = ("bike_records_ingested_total", "bike_prediction_r2",
                 "airflow_dag_run_finished_total", "airflow_task_instance_finished_total")
        deadline = time.monotonic() + 20
        while True:  # ready after the first cycle; the first runs finish within a day
            first = Scrape(_get(f"{base}/metrics")[1])
            missing = [name for name in names if not first.series(name)]
            if not missing:
                break
            assert time.monotonic() < deadline, f"{missing} missing:\n{first.text}"
            time.sleep(0.5)
        start = _totals(first)
        deadline = time.monotonic() + 20
        while True:  # two more simulated days: three runs each
            now = _totals(Scrape(_get(f"{base}/metrics")[1]))
            if now[0] >= start[0] + 6 and now[1] > start[1] and now[2] > start[2]:
                break
            assert time.monotonic() < deadline, f"counters did not grow: {start} -> {now}"
            time.sleep(0.5)
        scrape = Scrape(_get(f"{base}/metrics")[1])
        dags = {dict(labels)["dag_id"] for labels in
                scrape.series("airflow_dag_run_finished_total")}
        assert dags == set(DAGS)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0, "".join(lines)
    finally:
        if process.poll() is None:  # a failed assertion: still stop it the clean way
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    drain.join(5)
    output = "".join(lines)
    head = "".join(lines[:10])
    assert f"{base}/metrics" in head and f"{base}/" in head, head
    match = re.search(r"temp dir\s+(\S+)", output)
    assert match, output
    workdir = match.group(1)
    assert workdir.startswith("/tmp/")
    assert not Path(workdir).exists(), output
    assert _leftovers(workdir) == []
    assert "day 2 (2026-01-02): daily_fetch_bike_data" in output
    assert "stopped; removed" in output
