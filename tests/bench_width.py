"""Width benchmark: the bridge on an Airflow with many DAGs and few runs each.

    python -m tests.bench_width 200 2000 5000
    python -m tests.bench_width 200 2000 --baseline 3695dde     # before | after, one run
    python -m tests.benchmark --width 200 2000                  # the same, from there

Depth (millions of task instances) is what tests/benchmark.py measures; this measures
width, where the cost of a bridge that re-reads or re-renders everything it holds shows
even when nothing happens. For each width N it fills a fresh database of the Airflow
schema (default: 3.3.2; set-based SQL) shaped like a big deployment: N DAGs
(`dag_00000` ...), each alive and unpaused in `dag` with one tag, 30 tasks per DAG, 3
finished daily runs per DAG (1 to 3 days old, every tenth failed: its second-to-last task
failed, its last upstream_failed; every fifteenth task skipped; every tenth task retried
once, the failed try in task_instance_history), and 10 % of the DAGs with one running run
whose task instances are in mixed states (success, skipped, running, queued,
up_for_retry, scheduled, deferred, none). The bridge runs at its defaults except
`lookback: all`, on a SQLite cache, through its public API only (`load_settings`,
`Bridge.build`, `refresher.refresh`, the collector's rendered bodies through
`server.make_app`), each part in a fresh process:

- first start: `Bridge.build` on an empty cache and cycles until the backfill has caught
  up (it pages through the history over several cycles): cycles, wall and CPU seconds,
  metadata rows read, peak RSS.
- restart: a new process builds the bridge on the filled cache; wall and CPU seconds
  until the first successful cycle (ready). Then idle cycles (nothing changed in
  Airflow; medians of --idle) and busy cycles (100 runs x 30 tasks created and finished
  since the last cycle, inserted set-based between cycles; medians of --busy): CPU and
  wall of the whole cycle, metadata rows read, cache rows read (where the bridge counts
  them), and `collector.publish` (building and rendering /metrics) within the cycle.
- holding: a new process restarts on the cache, cycles three times and scrapes: label
  sets served, the `airflow_bridge_series_dropped` value, /metrics body bytes plain and
  gzipped, peak RSS; once at the defaults and once with `max_series: 10000000`, whose
  served label sets are all the snapshot holds ("held"). A process that only imports the
  bridge gives the RSS baseline; RSS over it per held label set is next to the body bytes
  per label set.

CPU is the measuring process's own (`time.process_time`, every thread), the PostgreSQL
server's not included. Each figure comes from one process of its own, so no peak RSS
includes another. Label sets: a histogram's counts once; the bridge's own families are
not counted. The served totals are checked against the metadata DB ("exact").

--baseline REV also measures the bridge of git revision REV (a temporary worktree,
removed afterwards, first on the child processes' sys.path) on the same filled databases,
so that before and after come from one run on one machine: each width's metadata DB is
filled once and copied for each side (CREATE DATABASE ... TEMPLATE). Uses
$BRIDGE_TEST_DATABASE_URL or an embedded PostgreSQL. Figures only; what they count is
checked in tests/test_bench_width.py at a tiny width.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from tests import postgres, tools
from tests.metadb import AirflowWriter

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (200, 2000, 5000)
VERSIONS = tuple(v for v in postgres.AIRFLOW_VERSIONS if v.startswith("3."))
HIGH_CAP = 10_000_000
TERMINAL = ("success", "failed", "skipped", "upstream_failed", "removed")
# Task states of an active run, task k taking the ((k - 1) % 10)-th.
ACTIVE_TASK_STATES = ("success", "running", "queued", "success", "skipped", "up_for_retry",
                      "scheduled", "success", None, "deferred")
RESULT = "BENCH_WIDTH_RESULT "  # marks the child's JSON line on its stdout
Figures = dict[str, Any]  # what a child measured, as it printed it


@dataclass(frozen=True)
class Shape:
    """One width's Airflow: `dags` DAGs of `tasks` tasks with `runs_per_dag` finished runs,
    `active` running runs (default: one on 10 % of the DAGs), and `busy_runs` runs
    finished between two cycles of a busy cycle."""

    dags: int
    tasks: int = 30
    runs_per_dag: int = 3
    active: int | None = None
    busy_runs: int = 100

    @property
    def active_runs(self) -> int:
        return self.active if self.active is not None else max(1, self.dags // 10)


# ---------------------------------------------------------------- the metadata DB


def _dag_id(number: str) -> str:
    return f"'dag_' || lpad(({number})::text, 5, '0')"


def fill(writer: AirflowWriter, shape: Shape, now: datetime) -> None:
    """The whole Airflow of one width, set-based; `now` places the runs in time.

    Finished runs are 1 to `runs_per_dag` days old, all created before the bridge's
    24-hour reconcile window, so an idle cycle has nothing to re-check there.
    """
    if not writer.v3:
        raise ValueError("the width fill is written for Airflow 3 schemas")
    if shape.tasks < 2:
        raise ValueError("a failed run needs two tasks (failed, then upstream_failed)")
    conn = writer.conn
    base = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    _dags(writer, shape.dags, now)
    run_columns = _run_columns(writer)
    conn.execute(f"""
        INSERT INTO dag_run ({run_columns})
        SELECT {_run_values(writer, "'scheduled'")}
        FROM generate_series(0, {shape.dags - 1}) AS d,
             generate_series(1, {shape.runs_per_dag}) AS n,
             LATERAL (SELECT {_dag_id("d")} AS dag_id, %(base)s - n * interval '1 day' AS t,
                      CASE WHEN mod(d * {shape.runs_per_dag} + n, 10) = 0 THEN 'failed'
                           ELSE 'success' END AS state,
                      (10 + mod(d, 50)) * interval '1 minute' AS took) AS x
        ORDER BY n DESC, d""", {"base": base})
    active = shape.active_runs
    conn.execute(f"""
        INSERT INTO dag_run ({run_columns})
        SELECT {_run_values(writer, "'running'")}
        FROM generate_series(0, {active - 1}) AS i,
             LATERAL (SELECT {_dag_id(f"i * {shape.dags} / {active}")} AS dag_id,
                      %(base)s AS t, NULL::varchar AS state, NULL::interval AS took) AS x
        ORDER BY i""", {"base": base})
    _task_instances(writer, shape.tasks, after=0)
    for kind in ("SchedulerJob", "TriggererJob", "DagProcessorJob"):
        conn.execute("INSERT INTO job (job_type, state, start_date, latest_heartbeat, hostname) "
                     "VALUES (%s, 'running', %s, %s, 'scheduler-0')", (kind, base, now))
    for table in ("dag", "dag_tag", "dag_run", "task_instance", "task_instance_history", "job"):
        conn.execute(f"ANALYZE {table}")


def _dags(writer: AirflowWriter, dags: int, now: datetime) -> None:
    """`dag` rows as the DAG processor leaves them (alive, unpaused), one tag each."""
    columns = writer.columns("dag")
    values = {"dag_id": _dag_id("d"), "is_paused": "false", "max_active_tasks": "16",
              "has_task_concurrency_limits": "false", "owners": "'team_' || mod(d, 20)",
              "fileloc": f"'/opt/airflow/dags/' || {_dag_id('d')} || '.py'",
              "last_parsed_time": "%(now)s"}
    optional = {"is_active": "true", "is_stale": "false", "max_consecutive_failed_dag_runs": "0",
                "bundle_name": "'dags-folder'", "timetable_type": "'cron'",
                "timetable_summary": "'@daily'", "partition_mapper_info": "'{}'"}
    values.update({k: v for k, v in optional.items() if k in columns})
    if "bundle_name" in values:
        writer.conn.execute("INSERT INTO dag_bundle (name, active) VALUES ('dags-folder', true) "
                            "ON CONFLICT DO NOTHING")
    writer.conn.execute(f"INSERT INTO dag ({', '.join(values)}) "
                        f"SELECT {', '.join(values.values())} "
                        f"FROM generate_series(0, {dags - 1}) AS d", {"now": now})
    writer.conn.execute(f"INSERT INTO dag_tag (name, dag_id) SELECT 'team_' || mod(d, 20), "
                        f"{_dag_id('d')} FROM generate_series(0, {dags - 1}) AS d")


def _run_columns(writer: AirflowWriter) -> str:
    extra = ", created_at" if writer.has_created_at else ""
    return ("dag_id, run_id, run_type, state, logical_date, run_after, data_interval_start, "
            "data_interval_end, queued_at, start_date, end_date, updated_at, clear_number, "
            f"triggered_by{extra}")


def _run_values(writer: AirflowWriter, default_state: str) -> str:
    """Values for `_run_columns` from a row `x` (dag_id, t: the logical date, state: NULL
    for `default_state`, took: start to end, NULL while running)."""
    extra = ", x.t + interval '1 minute'" if writer.has_created_at else ""
    return f"""x.dag_id,
        'scheduled__' || to_char(x.t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),
        'scheduled', coalesce(x.state, {default_state}), x.t, x.t, x.t - interval '1 day', x.t,
        x.t + interval '1 minute', x.t + interval '2 minutes',
        x.t + interval '2 minutes' + x.took,
        coalesce(x.t + interval '2 minutes' + x.took, x.t + interval '2 minutes'), 0,
        'timetable'{extra}"""


def _task_instances(writer: AirflowWriter, tasks: int, after: int) -> None:
    """`tasks` task instances for every run with an id above `after`, in states that
    follow the run's; every tenth task of a finished run on its second try, the first
    archived as failed in task_instance_history."""
    active_states = "ARRAY[{}]::varchar[]".format(
        ", ".join("NULL" if s is None else f"'{s}'" for s in ACTIVE_TASK_STATES))
    writer.conn.execute(f"""
        INSERT INTO task_instance (id, dag_id, run_id, task_id, map_index, state, try_number,
            max_tries, pool, pool_slots, queue, priority_weight, operator, hostname,
            queued_dttm, start_date, end_date, duration, updated_at)
        SELECT gen_random_uuid(), r.dag_id, r.run_id, 'task_' || lpad(k::text, 2, '0'), -1,
               s.state, CASE WHEN r.state <> 'running' AND mod(k, 10) = 1
                             AND s.state IN ('success', 'failed') THEN 2 ELSE 1 END,
               2, 'default_pool', 1, 'default', 1, 'PythonOperator',
               CASE WHEN u.started IS NOT NULL THEN 'worker-' || mod(k, 8) END,
               u.queued, u.started, u.ended, extract(epoch FROM u.ended - u.started),
               coalesce(u.ended, u.started, u.queued, r.start_date)
        FROM dag_run r, generate_series(1, {tasks}) AS k,
             LATERAL (SELECT CASE
                 WHEN r.state = 'running' THEN ({active_states})[mod(k - 1, 10) + 1]
                 WHEN r.state = 'failed' AND k = {tasks - 1} THEN 'failed'
                 WHEN r.state = 'failed' AND k = {tasks} THEN 'upstream_failed'
                 WHEN mod(k, 15) = 0 THEN 'skipped'
                 ELSE 'success' END AS state,
                 r.start_date + k * interval '10 seconds' AS q,
                 (5 + mod(k * 37, 300)) * interval '1 second' AS took) AS s,
             LATERAL (SELECT
                 CASE WHEN s.state IN ('success', 'failed', 'running', 'queued', 'up_for_retry',
                                       'deferred') THEN s.q END AS queued,
                 CASE WHEN s.state IN ('success', 'failed', 'running', 'up_for_retry',
                                       'deferred') THEN s.q + interval '3 seconds'
                      WHEN s.state IN ('skipped', 'upstream_failed') THEN s.q END AS started,
                 CASE WHEN s.state IN ('success', 'failed', 'up_for_retry')
                      THEN s.q + interval '3 seconds' + s.took
                      WHEN s.state IN ('skipped', 'upstream_failed') THEN s.q END AS ended) AS u
        WHERE r.id > %(after)s""", {"after": after})
    writer.conn.execute("""
        INSERT INTO task_instance_history (task_instance_id, dag_id, run_id, task_id, map_index,
            try_number, state, max_tries, pool, pool_slots, queue, priority_weight, operator,
            hostname, queued_dttm, start_date, end_date, duration, updated_at)
        SELECT gen_random_uuid(), ti.dag_id, ti.run_id, ti.task_id, ti.map_index, 1, 'failed',
               ti.max_tries, ti.pool, ti.pool_slots, ti.queue, ti.priority_weight, ti.operator,
               ti.hostname, ti.queued_dttm - interval '1 minute',
               ti.start_date - interval '1 minute', ti.start_date - interval '30 seconds', 30,
               ti.start_date - interval '30 seconds'
        FROM task_instance ti JOIN dag_run r ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id
        WHERE r.id > %(after)s AND ti.try_number = 2""", {"after": after})


def finish_batch(writer: AirflowWriter, shape: Shape, batch: int) -> None:
    """`busy_runs` runs created, run and finished since the last cycle, on DAGs spread
    over the width (every tenth failed), with their task instances and retries."""
    conn = writer.conn
    row = conn.execute("SELECT coalesce(max(id), 0) FROM dag_run").fetchone()
    assert row is not None
    runs = shape.busy_runs
    conn.execute(f"""
        INSERT INTO dag_run ({_run_columns(writer)})
        SELECT {_run_values(writer, "'success'")}
        FROM generate_series(0, {runs - 1}) AS i,
             LATERAL (SELECT {_dag_id(f"mod(i * {shape.dags} / {runs}, {shape.dags})")}
                      AS dag_id,
                      now() - interval '17 minutes' + ({batch * runs} + i) * interval '1 ms'
                      AS t,
                      CASE WHEN mod(i, 10) = 9 THEN 'failed' END AS state,
                      interval '15 minutes' AS took) AS x
        ORDER BY i""")
    _task_instances(writer, shape.tasks, after=int(row[0]))


@dataclass(frozen=True)
class Truth:
    """What the metadata DB holds, counted by SQL, for the served totals to match."""

    finished_runs: int
    finished_task_instances: int
    retries: int
    run_label_sets: int  # airflow_dag_run_finished_total: (dag_id, state, run_type)
    task_label_sets: int  # airflow_task_instance_finished_total: (dag_id, task_id, state)
    retry_label_sets: int  # airflow_task_instance_retries_total: (dag_id, task_id)
    runs: int
    task_instances: int


def truth(writer: AirflowWriter) -> Truth:
    terminal = ", ".join(f"'{s}'" for s in TERMINAL)

    def one(sql: str) -> tuple[int, ...]:
        row = writer.conn.execute(sql).fetchone()
        assert row is not None
        return tuple(int(v) for v in row)

    runs, run_sets = one("SELECT count(*), count(DISTINCT (dag_id, state, run_type)) "
                         "FROM dag_run WHERE state IN ('success', 'failed')")
    tis, ti_sets = one("SELECT count(*), count(DISTINCT (dag_id, task_id, state)) FROM "
                       f"task_instance WHERE state IN ({terminal}) AND end_date IS NOT NULL")
    retries, retry_sets = one("SELECT count(*), count(DISTINCT (dag_id, task_id)) "
                              "FROM task_instance_history WHERE state = 'failed'")
    return Truth(runs, tis, retries, run_sets, ti_sets, retry_sets,
                 *one("SELECT (SELECT count(*) FROM dag_run), (SELECT count(*) FROM "
                      "task_instance)"))


# ---------------------------------------------------------------- the measuring process




@dataclass
class Family:
    """One family of a /metrics body: its label sets, those with a value other than 0
    (counters served at 0 are not in the metadata DB), and the sum of the values (of the
    `_count` samples for a histogram)."""

    kind: str
    label_sets: int = 0
    nonzero: int = 0
    total: float = 0.0


def parse_body(body: str) -> dict[str, Family]:
    """The families of a text-format body, by name (as its TYPE line names it)."""
    families: dict[str, Family] = {}
    histograms: set[str] = set()
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            families[name] = Family(kind)
            if kind == "histogram":
                histograms.add(name)
            continue
        if not line or line.startswith("#"):
            continue
        end = line.find("{")
        name = line[:line.find(" ")] if end < 0 else line[:end]
        if name in families and name not in histograms:
            family = families[name]
        elif name.endswith("_count") and name[:-6] in histograms:
            family = families[name[:-6]]
        else:
            continue  # a histogram's buckets and sum
        value = float(line.rsplit(" ", 1)[1])
        family.label_sets += 1
        family.nonzero += value != 0
        family.total += value
    return families


class PublishTimer:
    """Wall and CPU seconds of each `collector.publish` (building and rendering /metrics),
    wrapped on the instance the refresher calls."""

    def __init__(self, collector: Any) -> None:
        self.calls: list[tuple[float, float]] = []
        publish = collector.publish

        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return publish(*args, **kwargs)
            finally:
                self.calls.append((time.perf_counter() - wall, time.process_time() - cpu))

        collector.publish = timed


def _cycle(bridge: Any, timer: PublishTimer) -> dict[str, Any]:
    """One refresh cycle that must succeed, with what it cost and read."""
    calls = len(timer.calls)
    wall, cpu = time.perf_counter(), time.process_time()
    if not bridge.refresher.refresh():
        raise RuntimeError("a bridge cycle failed (see the log above)")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    published = timer.calls[calls:]
    return {"cpu": cpu, "wall": wall, "rows": bridge.refresher.last_rows_read,
            "cache_rows": getattr(bridge.refresher, "last_cache_rows_read", None),
            "publish_wall": published[-1][0] if published else None,
            "publish_cpu": published[-1][1] if published else None}


def _medians(cycles: Sequence[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in cycles[0]:
        values = [c[key] for c in cycles]
        merged[key] = None if None in values else statistics.median(values)
    return merged


def _scrape(bridge: Any) -> dict[str, Any]:
    """The pre-rendered /metrics bodies, plain and gzipped, as the server hands them over."""
    from bridge import __version__
    from bridge.server import make_app

    wsgi = make_app(bridge.collector, lambda: None, __version__)  # /-/ready unused

    def get(headers: dict[str, str]) -> bytes:
        environ = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET",
                   "HTTP_ACCEPT": "text/plain", **headers}
        return b"".join(wsgi(environ, lambda *_: None))

    plain, gzipped = get({}), get({"HTTP_ACCEPT_ENCODING": "gzip"})
    families = parse_body(plain.decode())
    dropped = families.get("airflow_bridge_series_dropped")
    return {"body_bytes": len(plain), "gzip_bytes": len(gzipped),
            "dropped": dropped.total if dropped else None,
            "label_sets": sum(f.label_sets for n, f in families.items()
                              if not n.startswith("airflow_bridge_")),
            "families": {n: [f.label_sets, f.nonzero, f.total] for n, f in families.items()}}


def child(argument: str) -> None:
    """One figure's process (see `run_child`): measures, prints its JSON line, exits."""
    spec = json.loads(argument)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import_cpu = time.process_time()
    import bridge
    from bridge import app

    out: Figures = {"bridge": bridge.__file__, "import_cpu": time.process_time() - import_cpu}
    if spec["mode"] == "idle":
        out["peak_kib"] = tools.peak_kib()
        print(RESULT + json.dumps(out), flush=True)
        return
    env = {"BRIDGE_AIRFLOW_DB_URL": spec["metadb"],
           "BRIDGE_CACHE_URL": f"sqlite:///{spec['cache']}", "BRIDGE_LOOKBACK": "all"}
    config = None
    if spec.get("config"):
        config = Path(spec["cache"]).with_suffix(".yaml")
        config.write_text(yaml.safe_dump(spec["config"]))
    settings = app.load_settings(config, env)
    wall, cpu = time.perf_counter(), time.process_time()
    built = app.Bridge.build(settings)
    try:
        timer = PublishTimer(built.collector)
        if spec["mode"] == "first":
            cycles: list[dict[str, Any]] = []
            while True:
                cycles.append(_cycle(built, timer))
                last = built.refresher.last_cycle
                if last is None or last.caught_up or len(cycles) > 10_000:
                    break
            out.update(cpu=time.process_time() - cpu, wall=time.perf_counter() - wall,
                       cycles=len(cycles), rows=sum(c["rows"] for c in cycles))
        else:
            _cycle(built, timer)
            out.update(ready_cpu=time.process_time() - cpu,
                       ready_wall=time.perf_counter() - wall)
            if spec["mode"] == "steady":
                out["idle"] = _medians([_cycle(built, timer) for _ in range(spec["idle"])])
                shape = Shape(**spec["shape"])
                writer = AirflowWriter(spec["libpq"], spec["version"])
                busy = []
                try:
                    for batch in range(spec["busy"]):
                        finish_batch(writer, shape, batch)
                        busy.append(_cycle(built, timer))
                finally:
                    writer.close()
                out["busy"] = _medians(busy)
            else:
                for _ in range(3):
                    _cycle(built, timer)
            out.update(_scrape(built))
        out["peak_kib"] = tools.peak_kib()
    finally:
        built.close()
    print(RESULT + json.dumps(out), flush=True)


# `bridge` from the side's root, before the editable install of the working tree;
# `tests` (this module) always from the working tree.
BOOT = ("import sys; root, here, spec = sys.argv[1:4]; sys.path[:0] = [root]; import bridge; "
        "sys.path.insert(0, here); from tests.bench_width import child; child(spec)")


class ChildFailed(RuntimeError):
    pass


def run_child(root: Path, spec: Figures, cwd: Path) -> Figures:
    """`child(spec)` in a fresh interpreter whose `bridge` package is `root`'s."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", BOOT, str(root), str(ROOT), json.dumps(spec)],
                          cwd=cwd, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise ChildFailed(f"{spec['mode']} (exit {done.returncode}):\n{tail}")
    figures: Figures = json.loads(lines[-1][len(RESULT):])
    bridge_dir = Path(figures["bridge"]).resolve().parent
    if bridge_dir != (root / "bridge").resolve():
        raise ChildFailed(f"{spec['mode']}: bridge imported from {bridge_dir}, not {root}")
    return figures


# ---------------------------------------------------------------- both sides of one width


@dataclass
class Side:
    """One bridge's figures on one width; `error` when a child failed."""

    label: str
    first: Figures = field(default_factory=dict)
    steady: Figures = field(default_factory=dict)
    held: dict[int | None, Figures] = field(default_factory=dict)  # by max_series (None: default)
    truth: Truth | None = None
    error: str | None = None
    code: str = ""  # the revision measured, and what was uncommitted in it


@dataclass
class Width:
    shape: Shape
    fill_s: float
    truth: Truth  # of the filled DB, before any busy cycle
    sides: list[Side]


def measure_width(pg: postgres.Postgres, template: str, version: str, shape: Shape,
                  sides: Sequence[tuple[str, Path]], idle: int = 5, busy: int = 3,
                  caps: Sequence[int | None] = (None, HIGH_CAP)) -> Width:
    """Fill one width's metadata DB once, then measure each side's bridge on a copy."""
    filled = pg.fresh_name("amb_width")
    pg.create_database(filled, template=template)
    try:
        writer = AirflowWriter(pg.libpq(filled), version)
        try:
            started = time.perf_counter()
            fill(writer, shape, datetime.now(UTC))
            fill_s = time.perf_counter() - started
            filled_truth = truth(writer)
        finally:
            writer.close()
        return Width(shape, fill_s, filled_truth,
                     [_measure_side(pg, filled, version, shape, label, root, idle, busy, caps)
                      for label, root in sides])
    finally:
        pg.drop_database(filled)


def _measure_side(pg: postgres.Postgres, filled: str, version: str, shape: Shape, label: str,
                  root: Path, idle: int, busy: int, caps: Sequence[int | None]) -> Side:
    side = Side(label, code=code_state(root))
    name = pg.fresh_name("amb_width_run")
    pg.create_database(name, template=filled)
    try:
        with tempfile.TemporaryDirectory(prefix="amb-width-") as tmp:
            base: Figures = {"metadb": pg.url_for(name).render_as_string(False),
                             "libpq": pg.libpq(name), "cache": str(Path(tmp) / "cache.db"),
                             "version": version, "shape": shape.__dict__}
            try:
                side.first = run_child(root, {**base, "mode": "first"}, Path(tmp))
                side.steady = run_child(root, {**base, "mode": "steady", "idle": idle,
                                               "busy": busy}, Path(tmp))
                for cap in caps:
                    config = {"max_series": cap} if cap is not None else None
                    side.held[cap] = run_child(root, {**base, "mode": "held",
                                                      "config": config}, Path(tmp))
            except ChildFailed as exc:
                side.error = str(exc)
        writer = AirflowWriter(pg.libpq(name), version)
        try:
            side.truth = truth(writer)
        finally:
            writer.close()
    finally:
        pg.drop_database(name)
    return side


def mismatches(side: Side) -> list[str] | None:
    """Where the served totals differ from the metadata DB's (label sets with a value other
    than 0, and the sum): in the body that serves everything held (max_series 10M), else
    in one that shed nothing; None when there is no such body."""
    held = side.held.get(HIGH_CAP) or side.held.get(None)
    if not held or side.truth is None or held["dropped"]:
        return None
    families, t = held["families"], side.truth
    wanted = {"airflow_dag_run_finished_total": (t.run_label_sets, t.finished_runs),
              "airflow_task_instance_finished_total": (t.task_label_sets,
                                                       t.finished_task_instances),
              "airflow_task_instance_retries_total": (t.retry_label_sets, t.retries)}
    found = {name: tuple(families[name][1:]) if name in families else None
             for name in wanted}
    return [f"{name}: served (label sets other than 0, sum) {found[name]}, "
            f"metadata DB {expected}" for name, expected in wanted.items()
            if found[name] != expected]


def exact(side: Side) -> bool | None:
    """Whether the served totals are the metadata DB's, to the unit (see `mismatches`)."""
    wrong = mismatches(side)
    return None if wrong is None else not wrong


def code_state(root: Path) -> str:
    """`root`'s commit, and its uncommitted changes to the bridge's code, if any."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              text=True).stdout.rstrip("\n")  # porcelain lines start with a space

    changed = git("status", "--porcelain", "--", "bridge", "migrations").splitlines()
    dirty = f" + uncommitted {', '.join(line[3:] for line in changed)}" if changed else ""
    return git("rev-parse", "--short", "HEAD") + dirty


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A checkout of `rev` in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="amb-baseline-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                       check=True, capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                           capture_output=True)
            subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True)


# ---------------------------------------------------------------- the table

Row = tuple[str, Callable[[Side, Width], float | str | None], str]
NAME, COLUMN, RATIO = 36, 16, 9


def _get(part: str, *keys: Any) -> Callable[[Side, Width], Any]:
    def get(side: Side, width: Width) -> Any:
        value: Any = getattr(side, part)
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value
    return get


def _scaled(getter: Callable[[Side, Width], Any], factor: float) -> Callable[[Side, Width], Any]:
    def get(side: Side, width: Width) -> Any:
        value = getter(side, width)
        return None if value is None else value * factor
    return get


def _rss_per_label_set(idle_kib: dict[str, int]) -> Callable[[Side, Width], Any]:
    def get(side: Side, width: Width) -> Any:
        held = side.held.get(HIGH_CAP)
        if not held or side.label not in idle_kib or not held["label_sets"]:
            return None
        return (held["peak_kib"] - idle_kib[side.label]) * 1024 / held["label_sets"]
    return get


def _body_per_label_set(side: Side, width: Width) -> Any:
    held = side.held.get(HIGH_CAP)
    return held["body_bytes"] / held["label_sets"] if held and held["label_sets"] else None


def rows(idle_kib: dict[str, int]) -> list[Row]:
    """(figure, how to get it, format); times in the unit the name says."""
    ms, mb = 1000.0, 1 / 1024
    return [
        ("first start: cycles to catch up", _get("first", "cycles"), "d"),
        ("first start: wall s", _get("first", "wall"), ".2f"),
        ("first start: CPU s", _get("first", "cpu"), ".2f"),
        ("first start: metadata rows read", _get("first", "rows"), ",d"),
        ("first start: peak RSS MB", _scaled(_get("first", "peak_kib"), mb), ".0f"),
        ("restart to ready: wall s", _get("steady", "ready_wall"), ".3f"),
        ("restart to ready: CPU s", _get("steady", "ready_cpu"), ".3f"),
        ("idle cycle: CPU ms", _scaled(_get("steady", "idle", "cpu"), ms), ".1f"),
        ("idle cycle: wall ms", _scaled(_get("steady", "idle", "wall"), ms), ".1f"),
        ("idle cycle: metadata rows read", _get("steady", "idle", "rows"), ",.0f"),
        ("idle cycle: cache rows read", _get("steady", "idle", "cache_rows"), ",.0f"),
        ("idle cycle: publish wall ms", _scaled(_get("steady", "idle", "publish_wall"), ms),
         ".1f"),
        ("idle cycle: publish CPU ms", _scaled(_get("steady", "idle", "publish_cpu"), ms),
         ".1f"),
        ("busy cycle: CPU ms", _scaled(_get("steady", "busy", "cpu"), ms), ".1f"),
        ("busy cycle: wall ms", _scaled(_get("steady", "busy", "wall"), ms), ".1f"),
        ("busy cycle: metadata rows read", _get("steady", "busy", "rows"), ",.0f"),
        ("busy cycle: cache rows read", _get("steady", "busy", "cache_rows"), ",.0f"),
        ("busy cycle: publish wall ms", _scaled(_get("steady", "busy", "publish_wall"), ms),
         ".1f"),
        ("busy cycle: publish CPU ms", _scaled(_get("steady", "busy", "publish_cpu"), ms),
         ".1f"),
        ("label sets held", _get("held", HIGH_CAP, "label_sets"), ",d"),
        ("label sets served (defaults)", _get("held", None, "label_sets"), ",d"),
        ("label sets dropped (defaults)", _get("held", None, "dropped"), ",.0f"),
        ("/metrics bytes plain (defaults)", _get("held", None, "body_bytes"), ",d"),
        ("/metrics bytes gzip (defaults)", _get("held", None, "gzip_bytes"), ",d"),
        ("/metrics bytes plain (all held)", _get("held", HIGH_CAP, "body_bytes"), ",d"),
        ("peak RSS MB (defaults)", _scaled(_get("held", None, "peak_kib"), mb), ".0f"),
        ("peak RSS MB (max_series 10M)", _scaled(_get("held", HIGH_CAP, "peak_kib"), mb),
         ".0f"),
        ("RSS over idle B / held label set", _rss_per_label_set(idle_kib), ",.0f"),
        ("body B / held label set", _body_per_label_set, ",.0f"),
        ("served totals exact (all held)",
         lambda side, width: {None: None, True: "yes", False: "NO"}[exact(side)], "s"),
    ]


def _cell(value: float | str | None, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(round(value) if spec.endswith("d") else value, spec)


def report(widths: Sequence[Width], idle_kib: dict[str, int], version: str,
           idle: int, busy: int) -> None:
    labels = [s.label for s in widths[0].sides] if widths else []
    print(f"Airflow {version} schema; bridge defaults with lookback: all, cache on SQLite; "
          f"idle: median of {idle} cycles, busy: of {busy} (each {widths[0].shape.busy_runs} "
          f"runs x {widths[0].shape.tasks} tasks finished since the last cycle)"
          + ("; ratio: after / before" if len(labels) == 2 else "") if widths else "no widths")
    for w in widths:
        print(f"  {w.shape.dags:,} DAGs: {w.truth.runs:,} dag runs "
              f"({w.shape.active_runs:,} running), {w.truth.task_instances:,} task instances, "
              f"{w.truth.retries:,} retried tries; filled in {w.fill_s:.1f} s")
    print("  peak RSS of a process that only imports the bridge: " + ", ".join(
        f"{label} {kib / 1024:.0f} MB" for label, kib in idle_kib.items()))
    ratio = len(labels) == 2
    group = COLUMN * len(labels) + (RATIO if ratio else 0)
    print(f"{'':<{NAME}}" + "".join(f"{f'{w.shape.dags:,} DAGs':>{group}}" for w in widths))
    print(f"{'':<{NAME}}" + "".join(
        "".join(f"{label:>{COLUMN}}" for label in labels) + (f"{'ratio':>{RATIO}}" if ratio
                                                             else "") for _ in widths))
    for name, get, spec in rows(idle_kib):
        line = f"{name:<{NAME}}"
        for w in widths:
            values = [get(side, w) for side in w.sides]
            line += "".join(f"{_cell(v, spec):>{COLUMN}}" for v in values)
            if ratio:
                before, after = values
                quotient = ""
                if isinstance(before, int | float) and isinstance(after, int | float) \
                        and before > 0:
                    quotient = f"{after / before:.2f}x"
                line += f"{quotient:>{RATIO}}"
        print(line)
    for w in widths:
        for side in w.sides:
            print(f"{w.shape.dags:,} DAGs, {side.label}: code {side.code}")
            for wrong in mismatches(side) or []:
                print(f"  not exact: {wrong}")
            if side.error:
                print(f"  failed: {side.error}")


def _idle_kib(root: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="amb-width-") as tmp:
        return int(run_child(root, {"mode": "idle"}, Path(tmp))["peak_kib"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dags", type=int, nargs="*", default=list(WIDTHS),
                        help="widths: DAGs per Airflow (default: %(default)s)")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure the bridge of this git revision, side by side")
    parser.add_argument("--version", default=VERSIONS[-1], choices=VERSIONS)
    parser.add_argument("--idle", type=int, default=5, help="idle cycles (median)")
    parser.add_argument("--busy", type=int, default=3, help="busy cycles (median)")
    args = parser.parse_args(argv)

    pg = postgres.start()
    template = postgres.load_airflow_schema(pg, args.version)
    try:
        with ExitStack() as stack:
            sides: list[tuple[str, Path]] = [("current", ROOT)]
            if args.baseline:
                rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short",
                                      args.baseline], check=True, capture_output=True,
                                     text=True).stdout.strip()
                sides = [(f"before {rev}", stack.enter_context(worktree(rev))),
                         ("after", ROOT)]
            idle_kib = {label: _idle_kib(root) for label, root in sides}
            widths = []
            for dags in args.dags:
                started = time.perf_counter()
                widths.append(measure_width(pg, template, args.version, Shape(dags), sides,
                                            args.idle, args.busy))
                print(f"{dags:,} DAGs measured in {time.perf_counter() - started:.0f} s",
                      file=sys.stderr, flush=True)
        report(widths, idle_kib, args.version, args.idle, args.busy)
    finally:
        pg.drop_database(template)


if __name__ == "__main__":
    main()
