"""Live measurement: how often a real Airflow scheduler produces the cases the bridge cannot see.

    python -m tests.live_airflow                        # Airflow 3.3.2, 10 minutes
    python -m tests.live_airflow --version 2.10.5 --minutes 10 --seed 2

The README says which clears the bridge cannot see at its default interval (a task cleared
and set `upstream_failed`/`skipped` again keeping its try number and end date, both between
two cycles; a run that finishes and is cleared again before any cycle saw it finished) and
which it handles (a run cleared and finished again between two cycles, through the
reconcile window). This script measures how often they happen instead of guessing:

1. a fresh PostgreSQL database (`amb_live_<version>_<pid>`), the Airflow venv of
   `$AIRFLOW_VENV_CACHE/venv-<version>` (built with tests/fixtures/airflow/_common.sh when
   missing), `airflow db migrate`, then a real Airflow with LocalExecutor and parallelism 2:
   on 3.x scheduler + dag-processor + api-server (tasks report through the execution API),
   on 2.x the scheduler alone; its DAG folder is a temp dir with one DAG written here,
   scheduled every `--every` seconds, whose tasks take 1-3 s: `flaky` fails randomly and is
   retried once, `check` fails randomly without retry, their downstream tasks end
   `upstream_failed`, and a branch skips one of two tasks;
2. a clearing driver, a long-lived process in the Airflow venv that calls what
   `airflow tasks clear -y -s <date> -e <date> [-f | -t flaky -d] <dag>` calls
   (`SerializedDAG.clear_dags` on 3.x, `DAG.clear_dags` on 2.x; a process per clear would
   take seconds to start and could not clear "right after" a finish): after each finish it
   clears the run with some probability, after a short (0.5-5 s) or long (5-60 s) delay,
   the whole run, only its failed tasks, or `flaky` and what is downstream of it;
3. an oracle that reads dag_run and task_instance every `--poll` seconds in one snapshot
   and records every change it sees: run finishes (run, state, end date, clear number) and
   task outcomes (try, state, end date, and on 3.x the task instance id, which a clear
   changes). It can itself miss changes shorter than a poll: its counts are a lower bound;
4. the bridge, in this process, exactly as `serve` runs it (its schedule at the default
   interval, its HTTP server), with a spy on its stages that records when each cycle read
   its snapshot and what it folded;
5. at the end: clears stop, `--settle` seconds and two more cycles (the DAG is not paused:
   a paused DAG's running runs are no longer scheduled), then the bridge's counters on
   /metrics (airflow_dag_run_finished_total, airflow_task_instance_finished_total,
   airflow_task_instance_retries_total) are compared with the oracle's counts, leaving out
   what the oracle first saw after the last cycle. The bridge's folds are matched to the
   oracle's outcomes by key and time (a row that comes back identical after a clear is
   several outcomes of one key); each outcome the bridge did not count is classified:
   A - a task's outcome came back identical (try, state, end date) after a clear, and no
       cycle read the metadata DB between the clear and the new outcome;
   B - an outcome (a run's finish, or a task's) was replaced by a clear before any cycle
       read it;
   other - a cycle did see it (a bug);
   "ambiguous" when a cycle's snapshot may have fallen in the window (the oracle sees a
   commit up to a poll late). C - a run cleared and finished again with no cycle in
   between - is reported with how many of them were counted (all should be). It prints
   the timings too (finish -> clear, clear -> new outcome) and, for each window, the share
   expected to escape every cycle from those timings alone (a window of d seconds escapes
   a cycle at a random phase with probability max(0, 1 - d / interval)).

Observations are saved in the work dir's observations.json (`--keep` keeps it);
`--report FILE` prints the report again from one.

Never collected by pytest (not a test_ module): it needs a PostgreSQL server, an Airflow
venv and minutes. Keep it small: two cores are enough.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml

from tests.tools import free_port

REPO = Path(__file__).resolve().parents[1]
COMMON_SH = REPO / "tests" / "fixtures" / "airflow" / "_common.sh"
DAG_ID = "amb_live"
RUN_FINAL = ("success", "failed")
TI_FINAL = ("success", "failed", "skipped", "upstream_failed", "removed")

DAG_FILE = '''\
"""Written by tests/live_airflow.py: quick tasks, random failures, upstream failures, a branch."""
import random
import time
from datetime import datetime, timedelta, timezone

try:
    from airflow.sdk import DAG, task
except ImportError:
    from airflow import DAG
    from airflow.decorators import task

START = datetime.fromtimestamp({start}, tz=timezone.utc)
FAIL = {fail}

with DAG("{dag_id}", schedule=timedelta(seconds={every}), start_date=START, catchup=False,
         max_active_runs={max_active}, is_paused_upon_creation=False,
         default_args={{"retries": 0}}):

    @task
    def extract():
        time.sleep(random.uniform(1, 2))

    @task(retries=1, retry_delay=timedelta(seconds=2))
    def flaky():
        time.sleep(random.uniform(1, 3))
        if random.random() < FAIL:
            raise RuntimeError("flaky failed")

    @task
    def check():
        time.sleep(1)
        if random.random() < FAIL / 2:
            raise RuntimeError("check failed")

    @task
    def load():
        time.sleep(1)

    @task
    def report():
        time.sleep(1)

    @task.branch
    def pick():
        return random.choice(["left", "right"])

    @task
    def left():
        time.sleep(1)

    @task
    def right():
        time.sleep(1)

    @task
    def publish():
        time.sleep(1)

    first, fl, ch, ld, pk = extract(), flaky(), check(), load(), pick()
    first >> [fl, ch]
    fl >> ld >> report()
    fl >> pk >> [left(), right()]
    [ld, ch] >> publish()
'''

DRIVER = '''\
"""Written by tests/live_airflow.py: clears runs of one DAG the way `airflow tasks clear` does."""
import heapq
import json
import random
import signal
import sys
import time

import airflow
from airflow import settings
from sqlalchemy import text

cfg = json.loads(sys.argv[1])
V3 = airflow.__version__.startswith("3.")
DATE = "logical_date" if V3 else "execution_date"
rng = random.Random(cfg["seed"])
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
if settings.engine is None:
    settings.configure_orm()


def load_dag():
    if V3:
        from airflow.utils.cli import get_db_dag
        return get_db_dag(None, cfg["dag_id"])
    from airflow.utils.cli import get_dag_by_file_location
    return get_dag_by_file_location(cfg["dag_id"])


def clear(logical_date, kind):
    """`airflow tasks clear -y -s D -e D [-f] [-t flaky -d] dag_id`, without the start-up.

    3.x matches `-t` as a substring of the task id, 2.x as a regex."""
    dag = load_dag()
    if kind == "task":
        if V3:
            dag = dag.partial_subset(task_ids="flaky", include_downstream=True,
                                     include_upstream=False)
        else:
            dag = dag.partial_subset(task_ids_or_regex="^flaky$", include_downstream=True,
                                     include_upstream=False)
    if V3:
        from airflow.serialization.definitions.dag import SerializedDAG
        return SerializedDAG.clear_dags([dag], start_date=logical_date, end_date=logical_date,
                                        only_failed=kind == "failed", only_running=False)
    from airflow.models.dag import DAG
    return DAG.clear_dags([dag], start_date=logical_date, end_date=logical_date,
                          only_failed=kind == "failed", only_running=False,
                          confirm_prompt=False)


seen = {}
cleared = {}
pending = []
out = open(cfg["out"], "a", buffering=1)
while not stop:
    with settings.engine.connect() as conn:
        rows = conn.execute(text(
            f"SELECT run_id, {DATE}, state, end_date FROM dag_run WHERE dag_id = :d"),
            {"d": cfg["dag_id"]}).fetchall()
    now = time.time()
    current = {}
    for run_id, logical_date, state, end in rows:
        current[run_id] = (state, end)
        if state in ("success", "failed") and seen.get(run_id) != (state, end):
            p = cfg["p_failed"] if state == "failed" else cfg["p_success"]
            if cleared.get(run_id, 0) < cfg["max_clears"] and rng.random() < p:
                fast = rng.random() < cfg["fast_share"]
                delay = rng.uniform(0.5, 5.0) if fast else rng.uniform(5.0, 60.0)
                kind = rng.choice(["run", "failed", "task"]) if state == "failed" else "run"
                cleared[run_id] = cleared.get(run_id, 0) + 1
                heapq.heappush(pending, (now + delay, run_id, logical_date, kind, state, end))
        seen[run_id] = (state, end)
    while pending and pending[0][0] <= now:
        due, run_id, logical_date, kind, state, end = heapq.heappop(pending)
        if current.get(run_id) != (state, end):
            continue  # cleared or re-run meanwhile
        started = time.time()
        try:
            n = clear(logical_date, kind)
            error = None
        except Exception as exc:  # noqa: BLE001 - reported, the driver goes on
            n, error = 0, repr(exc)[:300]
        out.write(json.dumps({"t": started, "done": time.time(), "run_id": run_id,
                              "kind": kind, "finished": state, "cleared": n,
                              "error": error}) + "\\n")
    time.sleep(cfg["poll"])
'''


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def iso(value: datetime | None) -> str | None:
    """End dates compared as UTC text: the oracle reads them aware, the bridge naive UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


# --- Airflow --------------------------------------------------------------------------------

def ensure_venv(version: str, work: Path) -> Path:
    """The Airflow venv: `$AIRFLOW_VENV_CACHE/venv-<version>` (kept), else one in `work`;
    built by the fixtures' own helper (pins included) when missing."""
    with open(work / "venv.log", "wb") as out:
        result = subprocess.run(
            ["bash", "-c", f'source "{COMMON_SH}"; ensure_venv "$0" "$1"', version, str(work)],
            check=False, stdout=subprocess.PIPE, stderr=out)
    if result.returncode:
        raise RuntimeError(f"could not build the Airflow {version} venv; see {work}/venv.log")
    return Path(result.stdout.decode().strip().splitlines()[-1])


@dataclass
class Airflow:
    """A real Airflow on a fresh database; every process in a process group of its own."""

    version: str
    venv: Path
    work: Path
    db: str
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def v3(self) -> bool:
        return self.version.startswith("3.")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:5432/{self.db}"

    def configure(self, dags: Path) -> None:
        home = self.work / "airflow_home"
        home.mkdir(parents=True, exist_ok=True)
        api_port = free_port()
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
                f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.db}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__LOAD_DEFAULT_CONNECTIONS": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__WEBSERVER__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.api_port = api_port

    def run(self, name: str, *args: str, timeout: float = 600) -> None:
        with open(self.work / f"{name}.log", "wb") as out:
            result = subprocess.run(["airflow", *args], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=timeout,
                                    start_new_session=True)
        if result.returncode:
            tail = (self.work / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"airflow {' '.join(args)} exited {result.returncode}:\n{tail}")

    def start(self, name: str, *cmd: str) -> subprocess.Popen[bytes]:
        out = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(list(cmd), env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_services(self) -> None:
        if self.v3:
            self.start("api-server", "airflow", "api-server", "--port", str(self.api_port))
            self.start("dag-processor", "airflow", "dag-processor")
        self.start("scheduler", "airflow", "scheduler")

    def stop(self) -> None:
        """SIGTERM each process group started here, then SIGKILL what is left."""
        for proc in self.procs:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 30
        for proc in self.procs:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.time()))
        for proc in self.procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group's children, too
            with suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.procs.clear()


@contextmanager
def database(name: str) -> Iterator[None]:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")
    try:
        yield
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres",
                             autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- oracle ---------------------------------------------------------------------------------

@dataclass
class Observation:
    t: float  # when the snapshot was taken (just before its first query)
    row: tuple[Any, ...]


class Oracle(threading.Thread):
    """Polls dag_run and task_instance in one snapshot; keeps each row's distinct versions."""

    def __init__(self, url: str, poll: float) -> None:
        super().__init__(daemon=True, name="oracle")
        self.url, self.poll = url, poll
        self.runs: dict[int, list[Observation]] = defaultdict(list)  # id -> (state, end, clear#)
        self.run_ids: dict[str, int] = {}
        self.tis: dict[tuple[str, str, int], list[Observation]] = defaultdict(list)
        self.polls = 0
        self.slowest = 0.0
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported at the end
            self.error = exc

    def _loop(self) -> None:
        with psycopg.connect(self.url) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            has_id = conn.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = "
                "'task_instance' AND column_name = 'id'").fetchone() == (1,)
            conn.commit()
            ti_id = "id::text" if has_id else "NULL"
            while not self.stopping.is_set():
                started = time.time()
                runs = conn.execute(
                    "SELECT id, run_id, state, end_date, clear_number FROM dag_run "
                    "WHERE dag_id = %s", (DAG_ID,)).fetchall()
                tis = conn.execute(
                    f"SELECT run_id, task_id, map_index, try_number, state, end_date, {ti_id} "
                    "FROM task_instance WHERE dag_id = %s", (DAG_ID,)).fetchall()
                conn.commit()
                for run_pk, run_id, state, end, clear_number in runs:
                    self.run_ids[run_id] = run_pk
                    self._see(self.runs[run_pk], started, (state, iso(end), clear_number))
                for run_id, task_id, map_index, try_number, state, end, tid in tis:
                    self._see(self.tis[(run_id, task_id, map_index)], started,
                              (try_number, state, iso(end), tid))
                self.polls += 1
                self.slowest = max(self.slowest, time.time() - started)
                self.stopping.wait(max(0.0, self.poll - (time.time() - started)))

    @staticmethod
    def _see(history: list[Observation], t: float, row: tuple[Any, ...]) -> None:
        if not history or history[-1].row != row:
            history.append(Observation(t, row))


# --- bridge ---------------------------------------------------------------------------------

@dataclass
class Cycle:
    entered: float  # refresh() called (the snapshot is taken after the cache lock)
    snapshot: float  # the DAG-run stage started: the metadata snapshot is a few ms older
    runs: list[tuple[int, str | None, str]] = field(default_factory=list)  # id, end, state
    tis: list[tuple[str, str, int, int, str, str | None]] = field(default_factory=list)
    ok: bool = False


class Spy:
    """Wraps the bridge's stages to record each cycle's snapshot time and what it folded."""

    def __init__(self) -> None:
        self.cycles: list[Cycle] = []
        self._current: Cycle | None = None
        self._entered = 0.0

    def install(self) -> None:
        from bridge import app
        from bridge.stages.dag_runs import DagRunStage
        from bridge.stages.task_instances import TaskInstanceStage

        spy = self
        refresh, dag_runs = app.Refresher.refresh, DagRunStage.run
        tasks = TaskInstanceStage._fold_finished

        def spied_refresh(self: Any) -> bool:
            spy._entered = time.time()
            spy._current = None
            ok = bool(refresh(self))
            if spy._current is not None:
                spy._current.ok = ok
                spy.cycles.append(spy._current)
            return ok

        def spied_dag_runs(self: Any, reader: Any, tx: Any, now: datetime) -> Any:
            spy._current = Cycle(spy._entered, time.time())
            delta = dag_runs(self, reader, tx, now)
            spy._current.runs = [(r.id, iso(r.end_date), str(r.state))
                                 for r in delta.finished_runs]
            return delta

        def spied_tasks(self: Any, tx: Any, instances: Any, runs: Any, now: datetime) -> Any:
            finished = tasks(self, tx, instances, runs, now)
            assert spy._current is not None
            spy._current.tis += [(ti.run_id, ti.task_id, ti.map_index, ti.try_number,
                                  str(ti.state), iso(ti.end_date)) for ti in finished]
            return finished

        app.Refresher.refresh = spied_refresh  # type: ignore[method-assign]
        DagRunStage.run = spied_dag_runs  # type: ignore[method-assign]
        TaskInstanceStage._fold_finished = spied_tasks  # type: ignore[method-assign]

    @property
    def snapshots(self) -> list[tuple[float, float]]:
        return [(c.entered, c.snapshot) for c in self.cycles if c.ok]


class BridgeThread(threading.Thread):
    """`bridge.app.serve` at the configured interval, on a cache of its own."""

    def __init__(self, url: str, work: Path, interval: float | None) -> None:
        super().__init__(daemon=True, name="bridge")
        from bridge import app

        self.port = free_port()
        config: dict[str, Any] = {
            "airflow": {"url": url.replace("postgresql://", "postgresql+psycopg://"),
                        "allow_writable_role": True},
            "cache": {"url": f"sqlite:///{work / 'cache.db'}"},
            "listen_address": f"127.0.0.1:{self.port}", "lookback": "all"}
        if interval is not None:
            config["refresh_interval"] = interval
        path = work / "bridge.yaml"
        path.write_text(yaml.safe_dump(config))
        self.settings = app.load_settings(path, {})
        self.stop = threading.Event()
        self.started = threading.Event()
        self.result: bool | None = None

    def run(self) -> None:
        from bridge import app
        self.result = app.serve(self.settings, self.stop, lambda _port: self.started.set())

    def counters(self) -> dict[str, Counter[tuple[tuple[str, str], ...]]]:
        """The bridge's counters as /metrics serves them, by family and label set."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            body = r.read().decode()
        out: dict[str, Counter[tuple[tuple[str, str], ...]]] = defaultdict(Counter)
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = tuple(sorted(sample.labels.items()))
                    out[sample.name][labels] += sample.value
        return out


# --- analysis -------------------------------------------------------------------------------

@dataclass
class Outcome:
    """One finish of a run, or one outcome of a task, as the oracle saw it."""

    key: Any  # run id, or (run_id, task_id, map_index)
    match: tuple[Any, ...]  # what the bridge's fold of it looks like
    state: str
    seen: float  # first seen
    gone: float | None  # first seen replaced (a clear), None if it stayed
    cleared_at: float | None  # when the clear before it was seen, if any
    same_as_before: bool  # identical to the outcome before that clear
    counted: bool = False


def run_outcomes(oracle: Oracle) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for run_pk, history in oracle.runs.items():
        last: Outcome | None = None
        cleared_at: float | None = None
        for obs in history:
            state, end, _clear_number = obs.row
            if state in RUN_FINAL:
                if last is not None and last.gone is None and last.match == (run_pk, end):
                    continue  # only the clear number moved (a clear that found nothing to do)
                if last is not None and last.gone is None:
                    last.gone = obs.t  # a clear and its re-run both between two polls
                last = Outcome(run_pk, (run_pk, end), state, obs.t, None, cleared_at,
                               last is not None and last.match == (run_pk, end))
                outcomes.append(last)
                cleared_at = None
            elif last is not None and last.gone is None:
                last.gone = cleared_at = obs.t
    return outcomes


def ti_outcomes(oracle: Oracle) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for key, history in oracle.tis.items():
        last: Outcome | None = None
        last_row: tuple[Any, ...] | None = None
        cleared_at: float | None = None
        for obs in history:
            try_number, state, end, tid = obs.row
            if state in TI_FINAL:
                if last is not None and last.gone is None and last_row is not None:
                    p_try, p_state, p_end, p_tid = last_row
                    if (p_try, p_state, p_tid) == (try_number, state, tid) and (
                            p_end is None or p_end == end):
                        last.match = (*key, try_number, end)  # its end date came later
                        last_row = obs.row
                        continue
                    last.gone = obs.t  # replaced between two polls (3.x: a new id)
                    cleared_at = obs.t
                match = (*key, try_number, end)
                same = last is not None and (last.match, last.state) == (match, state)
                last = Outcome(key, match, state, obs.t, None, cleared_at, same)
                last_row = obs.row
                outcomes.append(last)
                cleared_at = None
            elif last is not None and last.gone is None:
                last.gone = cleared_at = obs.t
    return outcomes


def cycle_between(snapshots: Sequence[tuple[float, float]], start: float, end: float | None,
                  poll: float) -> tuple[bool, bool]:
    """Whether a cycle surely, and whether one maybe, read the metadata DB after the change the
    oracle first saw at `start` and before the one it first saw at `end`. A change the
    oracle first sees at t committed within (t - poll, t]; a cycle's snapshot was taken
    within [entered, snapshot]."""
    stop = end if end is not None else float("inf")
    sure = any(entered >= start and snap < stop - poll for entered, snap in snapshots)
    maybe = any(snap >= start - poll and entered < stop for entered, snap in snapshots)
    return sure, maybe


def mark_counted(outcomes: list[Outcome], folds: Sequence[tuple[tuple[Any, ...], float]],
                 margin: float) -> int:
    """Give each fold of the bridge (what, when its cycle's snapshot was taken) to the latest
    outcome it can be: the same row, seen before that snapshot, not given a fold yet (a row
    that comes back identical after a clear is several outcomes of one key). Returns the
    folds that match none."""
    by_match: dict[tuple[Any, ...], list[Outcome]] = defaultdict(list)
    for outcome in sorted(outcomes, key=lambda o: o.seen):
        by_match[outcome.match].append(outcome)
    unmatched = 0
    for match, snapshot in sorted(folds, key=lambda f: f[1]):
        candidates = [o for o in by_match[match] if not o.counted and o.seen <= snapshot + margin]
        if candidates:
            candidates[-1].counted = True
        else:
            unmatched += 1
    return unmatched


def classify(outcome: Outcome, snapshots: Sequence[tuple[float, float]],
             poll: float) -> tuple[str, bool]:
    """Why the bridge did not count an outcome: (case, ambiguous: a cycle maybe saw it)."""
    if outcome.same_as_before and outcome.cleared_at is not None:
        sure, maybe = cycle_between(snapshots, outcome.cleared_at, outcome.seen, poll)
        if not sure:
            return "A", maybe
    sure, maybe = cycle_between(snapshots, outcome.seen, outcome.gone, poll)
    if not sure:
        return "B", maybe
    return "other", False


def escape_share(durations: Sequence[float], interval: float) -> float:
    """Expected share of windows that no cycle at a random phase falls into."""
    if not durations:
        return 0.0
    return sum(max(0.0, 1.0 - d / interval) for d in durations) / len(durations)


def distribution(name: str, values: Sequence[float], interval: float) -> str:
    if not values:
        return f"  {name}: none"
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=10) if len(ordered) > 1 else [ordered[0]] * 9
    under = sum(v < interval for v in ordered)
    return (f"  {name}: n={len(ordered)} min={ordered[0]:.1f} p10={q[0]:.1f} "
            f"p50={statistics.median(ordered):.1f} p90={q[8]:.1f} max={ordered[-1]:.1f} s; "
            f"{under} under {interval:g} s; expected to escape every cycle: "
            f"{escape_share(ordered, interval):.1%}")


def pct(part: int, whole: int) -> str:
    return f"{part / whole:.2%}" if whole else "-"


def report(tree: str, version: str, minutes: float, interval: float, poll: float, oracle: Oracle,
           spy: Spy, counters: dict[str, Counter[tuple[tuple[str, str], ...]]],
           clears: list[dict[str, Any]], retries_oracle: int, rows: dict[str, Any]) -> None:
    snapshots = spy.snapshots
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(snapshots)]
    runs = run_outcomes(oracle)
    tis = ti_outcomes(oracle)
    folded_runs = [((pk, end), c.snapshot) for c in spy.cycles if c.ok for pk, end, _ in c.runs]
    folded_tis = [((run_id, task, mi, tn, end), c.snapshot) for c in spy.cycles if c.ok
                  for run_id, task, mi, tn, _state, end in c.tis]
    margin = poll + 0.1  # the oracle sees a commit up to a poll after it
    extra_runs = mark_counted(runs, folded_runs, margin)
    extra_tis = mark_counted(tis, folded_tis, margin)
    # Airflow goes on after the clears stop: only what a last cycle could have read counts.
    cut = snapshots[-1][0] - margin if snapshots else float("inf")
    late_runs = sum(o.counted for o in runs if o.seen >= cut)
    late_tis = sum(o.counted for o in tis if o.seen >= cut)
    runs = [o for o in runs if o.seen < cut]
    tis = [o for o in tis if o.seen < cut]

    def total(name: str) -> int:
        return int(sum(counters.get(name, Counter()).values()))

    print(f"\n=== Airflow {version}: {minutes:g} min of clears, bridge {tree} at interval "
          f"{interval:g} s, oracle poll {poll:g} s ===")
    print(f"bridge cycles: {len(snapshots)} (interval p50 "
          f"{statistics.median(gaps) if gaps else 0:.2f} s, max {max(gaps, default=0):.2f} s); "
          f"oracle polls: {oracle.polls} (slowest {oracle.slowest:.2f} s)")
    kinds = Counter((c["kind"], c["finished"]) for c in clears if not c["error"])
    errors = [c for c in clears if c["error"]]
    print(f"clears: {len(clears) - len(errors)} "
          f"({', '.join(f'{k}/{s}: {n}' for (k, s), n in sorted(kinds.items()))}); "
          f"errors: {len(errors)}{' e.g. ' + errors[0]['error'] if errors else ''}")
    print(f"rows at the end: {rows}")

    for label, outcomes, extra, late, metric in (
            ("run finishes", runs, extra_runs, late_runs, "airflow_dag_run_finished_total"),
            ("task outcomes", tis, extra_tis, late_tis, "airflow_task_instance_finished_total")):
        missed = [o for o in outcomes if not o.counted]
        cases: Counter[str] = Counter()
        unsure: Counter[str] = Counter()
        for o in missed:
            case, ambiguous = classify(o, snapshots, poll)
            cases[case] += 1
            unsure[case] += ambiguous
        by_state = Counter(o.state for o in outcomes)
        bridge_by_state: Counter[str] = Counter()
        for labels, value in counters.get(metric, Counter()).items():
            bridge_by_state[dict(labels)["state"]] += int(value)
        print(f"\n{label}: oracle saw {len(outcomes)} ({dict(sorted(by_state.items()))}); "
              f"{metric} = {total(metric)} ({dict(sorted(bridge_by_state.items()))}), "
              f"of which {late} seen by the oracle only at the last cycle")
        print(f"  missed by the bridge: {len(missed)} ({pct(len(missed), len(outcomes))}); "
              + ", ".join(f"{c}: {n} ({pct(n, len(outcomes))}"
                          f"{f', {unsure[c]} ambiguous' if unsure[c] else ''})"
                          for c, n in sorted(cases.items())))
        print(f"  counted by the bridge but not seen by the oracle (double counts, or changes "
              f"shorter than a poll): {extra}")
        for o in missed:
            case, ambiguous = classify(o, snapshots, poll)
            gone = f"{o.gone - o.seen:.2f}" if o.gone else "-"
            cleared = f"{o.seen - o.cleared_at:.2f}" if o.cleared_at else "-"
            print(f"    {case}{'?' if ambiguous else ''}: {o.match} {o.state}: "
                  f"seen {datetime.fromtimestamp(o.seen, UTC):%H:%M:%S.%f}, replaced after "
                  f"{gone} s, came {cleared} s after a clear, same as before: "
                  f"{o.same_as_before}")

    print(f"\nretries: oracle (failed or up_for_retry tries of task_instance_history with a "
          f"later try) {retries_oracle}; airflow_task_instance_retries_total = "
          f"{total('airflow_task_instance_retries_total')}")

    print("\ntimings (first seen by the oracle):")
    finish_to_clear = [o.gone - o.seen for o in runs if o.gone is not None]
    print(distribution("run finish -> clear", finish_to_clear, interval))
    refinish = [o.seen - o.cleared_at for o in runs if o.cleared_at is not None]
    print(distribution("run clear -> finished again (case C window)", refinish, interval))
    same = [o.seen - o.cleared_at for o in tis if o.cleared_at is not None and o.same_as_before]
    print(distribution("task clear -> same outcome again (case A window)", same, interval))
    for state in ("upstream_failed", "skipped"):
        again = [o.seen - o.cleared_at for o in tis
                 if o.cleared_at is not None and o.state == state]
        print(distribution(f"task clear -> {state} again (any try/end date)", again, interval))
    other = [o.seen - o.cleared_at for o in tis
             if o.cleared_at is not None and not o.same_as_before]
    print(distribution("task clear -> a new outcome (new try or end date)", other, interval))
    ti_gone = [o.gone - o.seen for o in tis if o.gone is not None]
    print(distribution("task outcome -> clear (case B window for tasks)", ti_gone, interval))

    c_cases = [o for o in runs if o.cleared_at is not None and not cycle_between(
        snapshots, o.cleared_at, o.seen, poll)[0]]
    a_cases = [o for o in tis if o.same_as_before and o.cleared_at is not None
               and not cycle_between(snapshots, o.cleared_at, o.seen, poll)[0]]
    print(f"case A windows (task back identical after a clear, no cycle in between): "
          f"{len(a_cases)}, counted {sum(o.counted for o in a_cases)}")
    print(f"\ncase C (run cleared and finished again, no cycle in between): {len(c_cases)}, "
          f"counted {sum(o.counted for o in c_cases)}")
    kept = Counter((o.state, o.same_as_before) for o in tis if o.cleared_at is not None)
    print("task outcomes after a clear, by state and whether try number and end date were "
          "kept: " + ", ".join(f"{s} {'kept' if k else 'new'}: {n}"
                               for (s, k), n in sorted(kept.items())))


def evidence(url: str) -> list[str]:
    """Cleared tasks that ended upstream_failed or skipped again, their archived try next to
    the current one: kept try number and end date first, then a few that got new ones."""
    out: list[str] = []
    same = "h.try_number = t.try_number AND h.end_date = t.end_date AND h.state = t.state"
    with psycopg.connect(url) as conn:
        for where, limit in ((same, 5), (f"NOT ({same})", 3)):
            rows = conn.execute(
                "SELECT h.run_id, h.task_id, h.try_number, h.state, h.end_date, "
                "t.try_number, t.state, t.end_date FROM task_instance_history h "
                "JOIN task_instance t USING (dag_id, run_id, task_id, map_index) "
                "WHERE h.dag_id = %s AND h.state IN ('upstream_failed', 'skipped') "
                f"AND t.state IN ('upstream_failed', 'skipped') AND {where} "
                f"ORDER BY h.run_id, h.task_id LIMIT {limit}", (DAG_ID,)).fetchall()
            out += [f"  {r[0]} {r[1]}: history try {r[2]} {r[3]} end {iso(r[4])} -> "
                    f"task_instance try {r[5]} {r[6]} end {iso(r[7])}" for r in rows]
            count = conn.execute(
                "SELECT count(*) FROM task_instance_history h JOIN task_instance t "
                "USING (dag_id, run_id, task_id, map_index) WHERE h.dag_id = %s "
                "AND h.state IN ('upstream_failed', 'skipped') "
                f"AND t.state IN ('upstream_failed', 'skipped') AND {where}",
                (DAG_ID,)).fetchone()
            out.append(f"  ({count[0] if count else 0} such rows "
                       f"{'keeping' if where == same else 'not keeping'} try, state and end)")
    return out


def final_counts(url: str) -> tuple[int, dict[str, Any]]:
    with psycopg.connect(url) as conn:
        retries = conn.execute(
            "SELECT count(*) FROM (SELECT DISTINCT h.run_id, h.task_id, h.map_index, "
            "h.try_number FROM task_instance_history h JOIN task_instance t "
            "USING (dag_id, run_id, task_id, map_index) WHERE h.dag_id = %s "
            "AND h.state IN ('failed', 'up_for_retry') AND h.try_number < t.try_number) x",
            (DAG_ID,)).fetchone()
        rows = {table: conn.execute(f"SELECT count(*) FROM {table} WHERE dag_id = %s",
                                    (DAG_ID,)).fetchone()[0]  # type: ignore[index]
                for table in ("dag_run", "task_instance", "task_instance_history")}
    return int(retries[0]) if retries else 0, rows


# --- observations on disk: the report can be made again from them ----------------------------

def save(path: Path, meta: dict[str, Any], oracle: Oracle, spy: Spy,
         counters: dict[str, Counter[tuple[tuple[str, str], ...]]],
         clears: list[dict[str, Any]], retries: int, rows: dict[str, Any]) -> None:
    data = {
        "meta": meta, "clears": clears, "retries": retries, "rows": rows,
        "runs": {str(pk): [[o.t, *o.row] for o in h] for pk, h in oracle.runs.items()},
        "tis": [[*key, [[o.t, *o.row] for o in h]] for key, h in oracle.tis.items()],
        "polls": [oracle.polls, oracle.slowest],
        "cycles": [[c.entered, c.snapshot, c.ok, c.runs, c.tis] for c in spy.cycles],
        "counters": {name: [[list(labels), value] for labels, value in family.items()]
                     for name, family in counters.items()},
    }
    path.write_text(json.dumps(data))


def load(path: Path) -> tuple[dict[str, Any], Oracle, Spy,
                              dict[str, Counter[tuple[tuple[str, str], ...]]],
                              list[dict[str, Any]], int, dict[str, Any]]:
    data = json.loads(path.read_text())
    oracle = Oracle("", data["meta"]["poll"])
    for pk, history in data["runs"].items():
        oracle.runs[int(pk)] = [Observation(t, tuple(row)) for t, *row in history]
    for run_id, task_id, map_index, history in data["tis"]:
        oracle.tis[(run_id, task_id, map_index)] = [Observation(t, tuple(row))
                                                    for t, *row in history]
    oracle.polls, oracle.slowest = data["polls"]
    spy = Spy()
    spy.cycles = [Cycle(e, s, [tuple(r) for r in runs], [tuple(t) for t in tis], ok)
                  for e, s, ok, runs, tis in data["cycles"]]
    counters: dict[str, Counter[tuple[tuple[str, str], ...]]] = {
        name: Counter({tuple(tuple(kv) for kv in labels): value for labels, value in family})
        for name, family in data["counters"].items()}
    return data["meta"], oracle, spy, counters, data["clears"], data["retries"], data["rows"]


# --- main -----------------------------------------------------------------------------------

def wait_until(what: str, check: Any, timeout: float, every: float = 1.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def scalar(url: str, sql: str) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    return row[0] if row else None


def measure(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="amb-live-"))
    log(f"work dir {work}")
    venv = ensure_venv(args.version, work)
    db = f"amb_live_{args.version.replace('.', '_')}_{os.getpid()}"
    airflow = Airflow(args.version, venv, work, db)
    dags = work / "dags"
    dags.mkdir()
    (dags / f"{DAG_ID}.py").write_text(DAG_FILE.format(
        start=int(time.time()) - 120, fail=args.fail, dag_id=DAG_ID, every=args.every,
        max_active=args.max_active_runs))
    clears_file = work / "clears.jsonl"
    driver_file = work / "driver.py"
    driver_file.write_text(DRIVER)
    spy = Spy()
    spy.install()
    oracle = Oracle(airflow.url, args.poll)
    bridge: BridgeThread | None = None
    with database(db):
        try:
            airflow.configure(dags)
            log(f"airflow {args.version}: db migrate ({db})")
            airflow.run("migrate", "db", "migrate")
            interval = args.interval
            bridge = BridgeThread(airflow.url, work, interval)
            interval = bridge.settings.refresh_interval
            oracle.start()
            bridge.start()
            bridge.started.wait(60)
            airflow.start_services()
            wait_until("the first task to run", lambda: scalar(
                airflow.url, "SELECT count(*) FROM task_instance WHERE state IN "
                "('success', 'failed')") not in (None, 0), timeout=300, every=2)
            log(f"airflow {args.version}: tasks run; clearing for {args.minutes:g} min")
            airflow.start("driver", str(venv / "bin" / "python"), str(driver_file), json.dumps({
                "dag_id": DAG_ID, "out": str(clears_file), "seed": args.seed,
                "p_failed": args.p_failed, "p_success": args.p_success,
                "fast_share": args.fast_share, "max_clears": 2, "poll": 0.3}))
            deadline = time.time() + args.minutes * 60
            while time.time() < deadline:
                time.sleep(min(30.0, max(0.0, deadline - time.time())))
                for proc in airflow.procs:
                    if proc.poll() is not None:
                        raise RuntimeError(f"{proc.args} exited {proc.returncode}; see {work}")
                if oracle.error:
                    raise oracle.error
                log(f"{len(oracle.runs)} runs, {len(spy.cycles)} bridge cycles")
            log(f"stopping the clears; {args.settle:g} s more for the cleared runs to end")
            driver = airflow.procs.pop()
            with suppress(ProcessLookupError):
                os.killpg(driver.pid, signal.SIGTERM)
            driver.wait(30)
            # Not paused: a paused DAG's running runs stop being scheduled. The report
            # leaves out what the oracle saw after the last cycle.
            time.sleep(args.settle)
            settled = len(spy.cycles) + 2
            wait_until("two more bridge cycles", lambda: len(spy.cycles) >= settled,
                       timeout=interval * 4 + 60)
            counters = bridge.counters()
            retries_oracle, rows = final_counts(airflow.url)
            proof = evidence(airflow.url)
        finally:
            oracle.stopping.set()
            if bridge is not None:
                bridge.stop.set()
                bridge.join(60)
            airflow.stop()
            oracle.join(10)
    clears = [json.loads(line) for line in clears_file.read_text().splitlines()] \
        if clears_file.exists() else []
    tree = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, check=False,
                          capture_output=True, text=True).stdout.strip()
    meta = {"tree": tree, "version": args.version, "minutes": args.minutes, "interval": interval,
            "poll": args.poll, "evidence": proof}
    save(work / "observations.json", meta, oracle, spy, counters, clears, retries_oracle, rows)
    log(f"observations saved in {work / 'observations.json'}")
    show(meta, oracle, spy, counters, clears, retries_oracle, rows)
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    else:
        log(f"kept {work}")


def show(meta: dict[str, Any], oracle: Oracle, spy: Spy,
         counters: dict[str, Counter[tuple[tuple[str, str], ...]]],
         clears: list[dict[str, Any]], retries: int, rows: dict[str, Any]) -> None:
    report(meta.get("tree", "(tree not recorded)"), meta["version"], meta["minutes"],
           meta["interval"], meta["poll"], oracle, spy, counters, clears, retries, rows)
    print("\ncleared tasks that ended upstream_failed/skipped (history row -> current row):")
    print("\n".join(meta["evidence"]) or "  none")


def interrupt(_signum: int, _frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so that Airflow is stopped and its database dropped."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--version", default="3.3.2", help="Airflow version (default 3.3.2)")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to clear")
    parser.add_argument("--interval", type=float, default=None,
                        help="bridge refresh_interval (default: the bridge's own, 10 s)")
    parser.add_argument("--poll", type=float, default=0.2, help="oracle poll, seconds")
    parser.add_argument("--every", type=int, default=20, help="DAG schedule, seconds")
    parser.add_argument("--max-active-runs", type=int, default=2)
    parser.add_argument("--fail", type=float, default=0.5, help="chance a flaky try fails")
    parser.add_argument("--p-failed", type=float, default=0.7,
                        help="chance a failed run is cleared after it finishes")
    parser.add_argument("--p-success", type=float, default=0.25,
                        help="chance a successful run is cleared after it finishes")
    parser.add_argument("--fast-share", type=float, default=0.4,
                        help="share of clears made 0.5-5 s after the finish (else 5-60 s)")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds between the last clear and the comparison")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true",
                        help="keep the work dir (logs, observations.json)")
    parser.add_argument("--report", type=Path, metavar="OBSERVATIONS_JSON",
                        help="only print the report of a kept run's observations.json")
    args = parser.parse_args(argv)
    if args.report:
        show(*load(args.report))
        return
    random.seed(args.seed)
    signal.signal(signal.SIGTERM, interrupt)
    measure(args)  # interrupted (Ctrl-C, SIGTERM): Airflow stopped, its database dropped


if __name__ == "__main__":
    main()
