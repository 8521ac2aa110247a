"""Every shipped dashboard panel and alert rule, checked against real data.

A real Airflow 3.3.2 metadata DB (the captured runs of the example DAGs plus written
activity) is read by the bridge running as `airflow-metrics-bridge serve`; a real
Prometheus scrapes it with the shipped scrape job and rule files and sends alerts to a
real Alertmanager, which delivers them to a webhook served by this test. Then:

* every panel query of monitoring/grafana/dashboards/*.json, with the Grafana variables
  filled in, must return data (and at least one finite value);
* every rule expression of monitoring/alerts/*.rules.yml must evaluate without error,
  every selector it reads must match series, and each alert must be active or quiet
  exactly as the seeded data says;
* alerts reach the webhook through Alertmanager.

Needs the `prometheus` and `prometheus-alertmanager` (or `alertmanager`) binaries; the test
skips without them, unless BRIDGE_REQUIRE_TOOLS=1, in which case it fails.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.demo.dump import load_dump
from tests.conftest import AirflowDb
from tests.metadb import AirflowWriter, TaskWriter, push_xcom
from tests.postgres import FIXTURES
from tests.tools import free_port, missing_tool

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
RULE_FILES = sorted((MONITORING / "alerts").glob("*.rules.yml"))
ALERTMANAGER_CONFIG = MONITORING / "alertmanager" / "alertmanager.yml"
DASHBOARD_FILES = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
METRICS_FILE = REPO / "deploy" / "bridge" / "metrics.yaml"

JOB = "airflow-metrics-bridge"
WAIT = 60.0  # upper bound of every wait in this module, in seconds
# The alert driven through Alertmanager. Its rule file is loaded from a copy in which
# only this rule's `for:` is 0s, so it fires at the first evaluation instead of after 5m.
DRIVEN_ALERT = "BikeDataDriftDetected"

# Grafana variables: the dashboards' time range and interval, the DAG selector ("All",
# or a multi-value selection as Grafana renders it into a regex) and the quantile window.
GRAFANA_VARIABLES = {"__range": "5m", "__rate_interval": "2m", "__interval": "15s",
                     "window": "5m", "dag_id": ".*"}
DAG_SELECTION = "(etl|archive)"

# What each alert expression must say about the seeded data: (label, values that must be
# among the results, values that must not be), or QUIET for an empty result.
QUIET = None
EXPECTED_ALERTS: dict[str, tuple[str, set[str], set[str]] | None] = {
    "AirflowDagRunFailed": ("dag_id", {"etl"}, {"stale_dag", "stuck_dag"}),
    "AirflowDagNoRecentSuccess": ("dag_id", {"stale_dag"}, {"etl", "archive"}),
    "AirflowTaskFailureRatioHigh": ("dag_id", {"etl"}, {"monitor_and_fine_tune"}),
    "AirflowTaskQueueDelayHigh": ("dag_id", {"etl"}, {"monitor_and_fine_tune"}),
    "AirflowTasksStuckInQueue": ("dag_id", {"stuck_dag"}, {"etl"}),
    "AirflowSchedulerHeartbeatStale": QUIET,
    "AirflowTriggererHeartbeatStale": ("job_type", {"TriggererJob"}, set()),
    "AirflowDagProcessorHeartbeatStale": QUIET,
    "AirflowDagImportErrors": ("__value__", {"1"}, set()),
    "AirflowPoolStarved": ("pool", {"etl_pool"}, {"default_pool"}),
    "BikeDataDriftDetected": ("__value__", {"1"}, set()),
    "BikeModelR2Low": QUIET,
    "BikeModelRmseAboveProduction": ("job", {JOB}, set()),
    "BikeModelDeploymentsSkipped": ("__count__", {"1"}, set()),
    "AirflowBridgeTargetDown": QUIET,
    "AirflowBridgeMetadbUnreachable": QUIET,
    "AirflowBridgeStale": QUIET,
    "AirflowBridgeNoSuccessfulRefresh": QUIET,
    "AirflowBridgeXcomDecodeErrors": ("reason", {"not_numeric"}, set()),
}


# ---------------------------------------------------------------- PromQL helpers

_TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"'                                     # string literal
    r"|'(?:[^'\\]|\\.)*'"
    r"|\[[^\]]*\]"                                           # range or subquery
    r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
    r"|(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^{}]*\})?(\s*\(|(?=\s*(?:by|without)\b))?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on",
             "ignoring", "group_left", "group_right"}


def selectors(expr: str) -> set[str]:
    """The vector selectors of a PromQL expression: metric name plus its label matchers."""
    found = set()
    for match in _TOKEN.finditer(expr):
        name, matchers, call = match.groups()
        if not name or call is not None or name.lower() in _KEYWORDS:
            continue
        found.add(name + (re.sub(r"\s+", "", matchers) if matchers else ""))
    return found


def fill_variables(expr: str, **overrides: str) -> str:
    values = {**GRAFANA_VARIABLES, **overrides}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown Grafana variable ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def panel_targets() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) of every panel target, rows unfolded."""
    out = []
    for path in DASHBOARD_FILES:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        panels = []
        for panel in dashboard.get("panels", []):
            panels.append(panel)
            panels.extend(panel.get("panels", []))
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((path.name, str(panel.get("title")), str(target["expr"])))
    return out


def rule_list() -> list[dict[str, Any]]:
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                out.append(dict(rule, _file=path.name))
    return out


def finite(result: list[dict[str, Any]]) -> list[float]:
    values = [float(item["value"][1]) for item in result]
    return [v for v in values if math.isfinite(v)]


def test_selector_parser() -> None:
    assert selectors(
        'histogram_quantile(0.95, sum by (dag_id, le) (rate(x_bucket{dag_id=~"$dag_id"}[5m])))'
        ' > on (dag_id) group_left y:z:w unless max by (a) (up{job="j", b!="c"}) == 1 '
        'or label_replace(vector(1e3), "dag_id", "n", "", "") and time() - q offset 5m'
    ) == {'x_bucket{dag_id=~"$dag_id"}', "y:z:w", 'up{job="j",b!="c"}', "q"}


# ---------------------------------------------------------------- processes and HTTP

def require_binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    missing_tool(f"none of {', '.join(names)} is on PATH (Debian: apt-get install "
                 "prometheus prometheus-alertmanager)")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def poll(probe: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
    """Call `probe` until it returns something truthy: (True, value), or (False, last value)
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except OSError as exc:
            last = exc
        else:
            if last:
                return True, last
        time.sleep(0.25)
    return False, last


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT,
             context: Callable[[], str] = lambda: "") -> Any:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    done, last = poll(probe, timeout)
    if not done:
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}\n"
                    f"{context()}")
    return last


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} log\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


class Webhook(BaseHTTPRequestHandler):
    """Records the JSON bodies Alertmanager posts."""

    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.received.append(body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Stack:
    db: AirflowDb
    tasks: TaskWriter
    bridge_url: str
    bridge_target: str
    prometheus_url: str
    alertmanager_url: str
    received: list[dict[str, Any]]
    processes: list[Process] = field(default_factory=list)

    @property
    def writer(self) -> AirflowWriter:
        return self.db.writer

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.processes)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.prometheus_url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http_get(url)
        data = json.loads(body)
        assert status == 200 and data.get("status") == "success", f"{url}: {status} {body}"
        return data["data"]

    def query(self, expr: str) -> tuple[str, list[dict[str, Any]] | str]:
        """(status, result or error) of an instant query."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, body = http_get(url)
        data = json.loads(body)
        if data.get("status") != "success":
            return str(data.get("status")), f"HTTP {status}: {data.get('error')}"
        assert data["data"]["resultType"] == "vector", data
        return "success", list(data["data"]["result"])

    def vector(self, expr: str) -> list[dict[str, Any]]:
        status, result = self.query(expr)
        assert status == "success" and isinstance(result, list), f"{expr}: {result}"
        return result

    def value(self, expr: str) -> float | None:
        result = self.vector(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None


# ---------------------------------------------------------------- seeded Airflow activity

def at(minutes: float, base: datetime | None = None) -> datetime:
    return (base or datetime.now(UTC)) + timedelta(minutes=minutes)


def etl_run(stack: Stack, logical: datetime, state: str, queued_for: float) -> int:
    """A finished run of `etl`: extract succeeds; load succeeds, or fails, is retried and
    fails again. Tasks wait `queued_for` seconds in the queue."""
    writer, tasks = stack.writer, stack.tasks
    run = writer.create_run("etl", logical_date=logical, at=logical + timedelta(seconds=30))
    writer.start_run(run, logical + timedelta(seconds=90))
    clock = logical + timedelta(seconds=100)
    tasks.add(run, "extract")
    clock = tasks.run_try(run, "extract", "success", clock, queued_for=queued_for)
    tasks.add(run, "load")
    if state == "failed":
        clock = tasks.run_try(run, "load", "failed", clock, queued_for=queued_for)
        tasks.next_try(run, "load")
        clock = tasks.run_try(run, "load", "failed", clock, queued_for=queued_for)
    else:
        clock = tasks.run_try(run, "load", "success", clock, queued_for=queued_for)
    writer.finish_run(run, state, clock + timedelta(seconds=10))
    return run


def bike_run(stack: Stack, dag_id: str, logical: datetime, xcoms: dict[str, object]) -> int:
    """A finished run of a bike DAG whose tasks succeed and push the given XComs
    (None: the task pushes nothing)."""
    writer, tasks = stack.writer, stack.tasks
    run = writer.create_run(dag_id, logical_date=logical, at=logical + timedelta(seconds=30))
    writer.start_run(run, logical + timedelta(seconds=40))
    clock = logical + timedelta(seconds=45)
    for task_id, value in xcoms.items():
        tasks.add(run, task_id)
        clock = tasks.run_try(run, task_id, "success", clock, queued_for=2, runs_for=20)
        if value is not None:
            push_xcom(tasks, run, task_id, value)
    writer.finish_run(run, "success", clock + timedelta(seconds=5))
    return run


def seed_before_start(stack: Stack) -> None:
    """History and current state, so that every series exists before the first scrape."""
    writer, tasks = stack.writer, stack.tasks
    load_dump(writer.conn, FIXTURES / "capture-3.3.2.sql")
    writer.conn.execute("RESET search_path")  # the pg_dump file empties it
    now = datetime.now(UTC)
    tasks.pool("etl_pool", 1)
    for dag_id, paused in (("etl", False), ("archive", True), ("stale_dag", False),
                           ("stuck_dag", False)):
        tasks.dag(dag_id, paused)
    tasks.import_error("/opt/airflow/dags/broken_dag.py", now)
    tasks.heartbeat("SchedulerJob", now)
    tasks.heartbeat("DagProcessorJob", now)
    tasks.heartbeat("TriggererJob", now - timedelta(hours=1))  # a triggerer that stopped
    # etl history: two successes and a failure with a retried task.
    for hours, state in ((6, "success"), (5, "failed"), (4, "success")):
        etl_run(stack, at(-60 * hours, now), state, queued_for=5)
    # etl now: a running run (extract running and load queued in the one-slot etl_pool,
    # a deferred sensor) and a queued run.
    running = writer.create_run("etl", logical_date=at(-20, now), at=at(-19, now))
    writer.start_run(running, at(-18, now))
    tasks.add(running, "extract", pool="etl_pool")
    tasks.set(running, "extract", "queued", at(-17, now))
    tasks.set(running, "extract", "running", at(-16, now))
    tasks.add(running, "load", pool="etl_pool")
    tasks.set(running, "load", "queued", at(-15, now))
    tasks.add(running, "sensor", state="deferred")
    queued = writer.create_run("etl", logical_date=at(-10, now), at=at(-9, now))
    tasks.add(queued, "extract")
    # A DAG whose only task sits in the queue, one that last succeeded 3 days ago, and a
    # paused DAG that also did.
    stuck = writer.create_run("stuck_dag", logical_date=at(-120, now), at=at(-119, now))
    writer.start_run(stuck, at(-118, now))
    tasks.add(stuck, "wait")
    tasks.set(stuck, "wait", "queued", at(-117, now))
    for dag_id in ("stale_dag", "archive"):
        writer.complete_run(dag_id, logical_date=at(-3 * 24 * 60, now))
    # A fetch whose XCom is not a number: counted as a decode error, never served.
    bike_run(stack, "daily_fetch_bike_data", at(-90, now),
             {"fetch_bike_data": {"records_ingested": "n/a", "source": "city-counters"}})


def seed_while_running(stack: Stack) -> None:
    """New activity between scrapes, so counters, histograms and rates move."""
    tasks = stack.tasks
    now = datetime.now(UTC)
    tasks.heartbeat("SchedulerJob", now)
    tasks.heartbeat("DagProcessorJob", now)
    # One success and three failures of etl, every task waiting 10 minutes in the queue.
    for i, state in enumerate(("success", "failed", "failed", "failed")):
        etl_run(stack, at(-58 + i, now), state, queued_for=600)
    bike_run(stack, "daily_fetch_bike_data", at(-15, now),
             {"fetch_bike_data": {"records_ingested": 12000, "source": "city-counters"}})
    bike_run(stack, "daily_fetch_bike_data", at(-14, now),
             {"fetch_bike_data": {"records_ingested": "n/a", "source": "city-counters"}})
    bike_run(stack, "daily_prediction", at(-13, now), {"generate_predictions": {
        "predictions_generated": 1152, "metrics": {"r2": 0.85, "rmse": 31.0, "mae": 22.0}}})
    for i in range(3):
        bike_run(stack, "monitor_and_fine_tune", at(-12 + 3 * i, now), {
            "detect_drift": {"drift_detected": True, "drift_share": 0.5,
                             "drifted_features": ["counter_id", "lag_24h", "hour", "month"],
                             "drifted_features_count": 4},
            "fine_tune_model": None,
            "evaluate_model": {"r2_production": 0.84, "rmse_production": 20.6,
                               "improvement_delta": -0.01},
            "decide_deployment": "skip",
        })


# ---------------------------------------------------------------- the stack

@pytest.fixture
def airflow_version() -> str:
    return "3.3.2"


def prometheus_config(tmp_path: Path, bridge_target: str, own: str, alertmanager: str) -> Path:
    """The shipped prometheus.yml with local targets, 1s intervals and absolute rule paths."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    rule_files = []
    for path in RULE_FILES:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        rules = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == DRIVEN_ALERT]
        if rules:
            # Only this check: fire at the first evaluation instead of waiting for `for:`.
            rules[0]["for"] = "0s"
            path = tmp_path / path.name
            path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        rule_files.append(str(path))
    config["rule_files"] = rule_files
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert JOB in jobs, f"{PROMETHEUS_CONFIG} has no {JOB} scrape job"
    for name, job in jobs.items():
        job.update(scrape_interval="1s", scrape_timeout="1s")
        job["static_configs"] = [{"targets": [bridge_target if name == JOB else own]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def alertmanager_config(tmp_path: Path, webhook: str) -> Path:
    """The shipped routing tree and inhibit rules; one webhook receiver, no waiting."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))

    def quick(route: dict[str, Any]) -> None:
        route["receiver"] = "test-webhook"
        route.update(group_wait="1s", group_interval="1s")
        for child in route.get("routes", []):
            quick(child)

    quick(config["route"])
    config["receivers"] = [{"name": "test-webhook",
                            "webhook_configs": [{"url": webhook, "send_resolved": False}]}]
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def start(stack: Stack, name: str, cmd: list[str], tmp_path: Path,
          env: dict[str, str] | None = None) -> Process:
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                 env=env, stdin=subprocess.DEVNULL)
    process = Process(name, popen, log)
    stack.processes.append(process)
    return process


def ready(process: Process, url: str) -> bool:
    assert process.popen.poll() is None, f"{process.name} exited\n{process.tail()}"
    try:
        return http_get(url)[0] == 200
    except OSError:
        return False


@pytest.fixture
def stack(airflow_db: AirflowDb, tmp_path: Path) -> Iterator[Stack]:
    prometheus = require_binary("prometheus")
    alertmanager = require_binary("prometheus-alertmanager", "alertmanager")
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    hook.received = []  # type: ignore[attr-defined]
    threading.Thread(target=hook.serve_forever, name="webhook", daemon=True).start()
    bridge_port, prometheus_port, am_port = free_port(), free_port(), free_port()
    stack = Stack(
        db=airflow_db, tasks=TaskWriter(airflow_db.writer),
        bridge_url=f"http://127.0.0.1:{bridge_port}", bridge_target=f"127.0.0.1:{bridge_port}",
        prometheus_url=f"http://127.0.0.1:{prometheus_port}",
        alertmanager_url=f"http://127.0.0.1:{am_port}",
        received=hook.received)  # type: ignore[attr-defined]
    try:
        seed_before_start(stack)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        bridge = start(stack, "bridge", [sys.executable, "-m", "bridge.cli", "serve"], tmp_path,
                       env={**clean, "PYTHONPATH": str(REPO),
                            "BRIDGE_AIRFLOW_DB_URL":
                                airflow_db.url.render_as_string(hide_password=False),
                            "BRIDGE_CACHE_URL": f"sqlite:///{tmp_path / 'cache.db'}",
                            "BRIDGE_LISTEN_ADDRESS": stack.bridge_target,
                            "BRIDGE_LOOKBACK": "all", "BRIDGE_REFRESH_INTERVAL": "2s",
                            "BRIDGE_METRICS_FILE": str(METRICS_FILE),
                            # the test database's only role is the server's superuser
                            "BRIDGE_ALLOW_WRITABLE_ROLE": "true"})
        am_dir = tmp_path / "alertmanager"
        am_dir.mkdir()
        am = start(stack, "alertmanager", [
            alertmanager,
            f"--config.file={alertmanager_config(tmp_path, f'http://127.0.0.1:{hook.server_port}/')}",
            f"--storage.path={am_dir}", f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address="], tmp_path)
        wait_for("the bridge to become ready", lambda: ready(bridge, stack.bridge_url + "/-/ready"),
                 context=stack.logs)
        config = prometheus_config(tmp_path, stack.bridge_target, f"127.0.0.1:{prometheus_port}",
                                   f"127.0.0.1:{am_port}")
        prom = start(stack, "prometheus", [
            prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}"], tmp_path)
        wait_for("Alertmanager to become ready",
                 lambda: ready(am, stack.alertmanager_url + "/-/ready"), context=stack.logs)
        wait_for("Prometheus to become ready",
                 lambda: ready(prom, stack.prometheus_url + "/-/ready"), context=stack.logs)
        yield stack
    finally:
        for process in reversed(stack.processes):
            process.stop()
        hook.shutdown()
        hook.server_close()


# ---------------------------------------------------------------- the test

def bridge_target_up(stack: Stack) -> bool:
    targets = stack.api("targets", state="active")["activeTargets"]
    return any(t["labels"].get("job") == JOB and t["health"] == "up" for t in targets)


def provoke_refresh_errors(stack: Stack) -> None:
    """Hide a table the bridge reads until Prometheus has seen its error counter grow,
    then give it back and wait until the bridge recovered."""
    conn = stack.writer.conn
    conn.execute("ALTER TABLE import_error RENAME TO import_error_hidden")
    try:
        wait_for("refresh errors to grow in Prometheus", lambda: stack.vector(
            'increase(airflow_bridge_refresh_total{outcome="error"}[1m]) > 0'),
            context=stack.logs)
    finally:
        conn.execute("ALTER TABLE import_error_hidden RENAME TO import_error")
    wait_for("the bridge to recover", lambda: stack.value(
        f'airflow_bridge_metadb_up{{job="{JOB}"}}') == 1, context=stack.logs)


def check_panels(stack: Stack) -> tuple[list[str], list[str]]:
    """(problems, report lines) for every panel target, with DAG "All" and a selection."""
    problems, report = [], []
    for dashboard, title, raw in panel_targets():
        where = f"{dashboard}: {title!r}"
        variants = [fill_variables(raw)]
        if re.search(r"\$\{?dag_id\}?", raw):
            variants.append(fill_variables(raw, dag_id=DAG_SELECTION))
        for expr in variants:
            assert "$" not in expr, f"{where}: unsubstituted variable in {expr!r}"
            status, result = stack.query(expr)
            if status != "success" or not isinstance(result, list):
                problems.append(f"{where}: {expr}\n    -> {result}")
            elif not result:
                problems.append(f"{where}: {expr}\n    -> no data")
            elif not finite(result):
                problems.append(f"{where}: {expr}\n    -> only NaN/Inf: {result}")
            else:
                report.append(f"{where}: {len(result)} series, e.g. "
                              f"{result[0]['metric']} = {result[0]['value'][1]}  [{expr}]")
    return problems, report


def check_rules(stack: Stack) -> tuple[list[str], list[str]]:
    problems, report = [], []
    for rule in rule_list():
        name = rule.get("alert") or rule["record"]
        expr = str(rule["expr"]).strip()
        status, result = stack.query(expr)
        if status != "success" or not isinstance(result, list):
            problems.append(f"{name}: expression fails: {result}")
            continue
        for selector in sorted(selectors(expr)):
            if not stack.vector(f"count({selector})"):
                problems.append(f"{name}: selector {selector} matches no series")
        if "record" in rule:
            if not result:
                problems.append(f"{name}: recording rule expression returns no data")
            continue
        expected = EXPECTED_ALERTS.get(name, "missing")
        if expected == "missing":
            problems.append(f"{name}: no expectation in EXPECTED_ALERTS; add one")
            continue
        if expected is QUIET:
            if result:
                problems.append(f"{name}: expected quiet on the seeded data, got {result}")
            report.append(f"{name}: evaluates, quiet as expected")
            continue
        assert isinstance(expected, tuple)
        label, present, absent = expected
        if label == "__value__":
            got = {format(float(r["value"][1]), "g") for r in result}
        elif label == "__count__":
            got = {str(len(result))}
        else:
            got = {r["metric"].get(label, "") for r in result}
        if not present <= got or got & absent:
            problems.append(f"{name}: expected {label} to include {sorted(present)} and none "
                            f"of {sorted(absent)}, got {sorted(got)} from {result}")
        report.append(f"{name}: evaluates, active on the seeded data with {label} "
                      f"{sorted(got)}")
    return problems, report


def test_every_panel_and_alert_against_real_data(stack: Stack) -> None:
    wait_for("Prometheus to scrape the bridge", lambda: bridge_target_up(stack),
             context=stack.logs)
    wait_for("a few scrapes of every seeded series", lambda: (stack.value(
        f'count_over_time(airflow_bridge_xcom_decode_errors_total{{job="{JOB}"}}[1m])')
        or 0) >= 3, context=stack.logs)

    # The bridge fails a few cycles (its error counter grows), then new Airflow activity.
    provoke_refresh_errors(stack)
    seed_while_running(stack)
    wait_for("the new activity in Prometheus", lambda: all(stack.vector(expr) for expr in (
        'airflow_dag_run_finished_total{dag_id="etl",state="failed"} == 4',
        'bike_model_deployments_total{decision="skip"} == 4',
        'airflow_bridge_xcom_decode_errors_total == 2',
        'increase(airflow_task_instance_finished_total{dag_id="etl",state="failed"}[5m]) > 0',
        'increase(bike_model_deployments_total{decision="skip"}[5m]) > 2.5',
    )), context=stack.logs)

    # Every dashboard panel has data.
    problems, report = check_panels(stack)
    dag_values = stack.api("label/dag_id/values", **{"match[]": "airflow_dag_paused"})
    if not {"etl", "archive"} <= set(dag_values):
        problems.append(f"dag_id variable (label_values(airflow_dag_paused, dag_id)): "
                        f"{dag_values}")
    assert stack.value("max(airflow_dag_import_errors)") == 1
    assert stack.value('sum(airflow_dag_paused{dag_id=~"etl|archive"})') == 1
    assert stack.value(f'up{{job="{JOB}"}}') == 1

    # Every rule evaluates on real data as expected; Prometheus loaded them all, healthy,
    # and its alerts are pending or firing exactly where the data calls for them.
    should = {name for name, expected in EXPECTED_ALERTS.items() if expected is not QUIET}

    def alert_states() -> dict[str, str]:
        return {a["labels"]["alertname"]: a["state"] for a in stack.api("alerts")["alerts"]}

    if not poll(lambda: set(alert_states()) == should, timeout=20)[0]:
        states = alert_states()
        problems.append(f"Prometheus alerts: missing {sorted(should - set(states))}, "
                        f"unexpected {sorted(set(states) - should)}; all: {states}")
    rule_problems, rule_report = check_rules(stack)
    problems += rule_problems
    loaded = {r["name"]: r for g in stack.api("rules")["groups"] for r in g["rules"]}
    for rule in rule_list():
        name = rule.get("alert") or rule["record"]
        if name not in loaded:
            problems.append(f"{name}: not loaded by Prometheus")
        elif loaded[name]["health"] != "ok":
            problems.append(f"{name}: rule health {loaded[name]['health']}: "
                            f"{loaded[name].get('lastError')}")

    print("\n" + "\n".join(report + rule_report))
    assert not problems, "\n".join(problems)

    # Alerts reach the webhook through Alertmanager: the driven alert (for: 0s copy) and
    # the decode-error alert, which has no `for:` as shipped.
    def delivered(alertname: str) -> dict[str, Any] | None:
        for body in stack.received:
            for alert in body.get("alerts", []):
                if alert["labels"].get("alertname") == alertname and \
                        alert["status"] == "firing":
                    assert body["receiver"] == "test-webhook"
                    return dict(alert)
        return None

    drift = wait_for(f"{DRIVEN_ALERT} at the webhook", lambda: delivered(DRIVEN_ALERT),
                     context=stack.logs)
    assert drift["labels"] == {"alertname": DRIVEN_ALERT, "severity": "warning",
                               "component": "model", "job": JOB,
                               "instance": stack.bridge_target,
                               "monitor": "airflow-metrics-bridge"}
    assert "drift" in drift["annotations"]["summary"].lower()
    assert "What it means:" in drift["annotations"]["description"]
    decode = wait_for("AirflowBridgeXcomDecodeErrors at the webhook",
                      lambda: delivered("AirflowBridgeXcomDecodeErrors"), context=stack.logs)
    assert decode["labels"] == {"alertname": "AirflowBridgeXcomDecodeErrors",
                                "severity": "info", "component": "bridge",
                                "metric": "bike_records_ingested_total",
                                "reason": "not_numeric", "monitor": "airflow-metrics-bridge"}
    firing = [a for a in stack.api("alerts")["alerts"]
              if a["labels"]["alertname"] == DRIVEN_ALERT]
    assert [a["state"] for a in firing] == ["firing"], firing
    assert firing[0]["labels"]["instance"] == stack.bridge_target
