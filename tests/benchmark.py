"""Benchmark: the bridge's whole refresh cycle next to what other exporters run per scrape.

    python -m tests.benchmark                      # 100 k and 10 M task instances
    python -m tests.benchmark --task-instances 100000 --freshness 5

For each size it fills a real Airflow schema (default: the newest fixture; set-based SQL:
one run per DAG and hour from 2020-01-01, at least 10 DAGs and at most 5 000 runs each,
10 % failed, 4 task instances per run, retried tries in task_instance_history, old jobs),
leaves 50 runs active, and times, as medians of --repeat runs:

- bridge: one steady-state cycle end to end, as `Refresher.refresh` runs it: the queries
  in one read-only snapshot, folding into the cache (SQLite), then building the metric
  families and rendering both exposition formats, plain and gzipped
  (`SnapshotCollector.publish`): when it returns, scrapes hand over the new bytes.
  "publish" is the part of it spent building and rendering the "series" (few here: the
  bridge starts on the filled history with lookback 0, so it counts only what finishes
  from then on; rendering many series is timed below); "rows read" its rows.
- SQL floor: only the statements ("stmts") that one steady-state cycle sent to the
  metadata DB, captured with a `before_cursor_execute` listener and replayed in the same
  kind of read-only transaction, rows fetched, nothing folded or published.
- 7-day: the aggregates below restricted to a REST-polling exporter's 7-day lookback:
  the runs due within 7 days of the newest run of the fill (not of now(); 168 runs per
  DAG) and their task instances. Written for the indexes (see `window_aggregation`);
  SQL only, the exporter's API calls and JSON come on top.
- full agg: the `GROUP BY` over all runs and task instances that plugin exporters run
  on every scrape.

and prints the ratios full agg / bridge, 7-day / bridge and bridge / SQL floor. Then:
publishing 10 000 series (building the families and rendering both formats, by a new
collector and when 10 series changed since the last refresh) and one scrape of them;
freshness (a task's commit in the metadata DB to its count on /metrics, the bridge
serving at its default interval); the peak RSS of a fresh process that imports the
bridge, idle and holding 10 000 and 100 000 series (published, rendered, scraped once),
one process per figure so that none includes another; and /metrics of 10 000 series
under 50 keep-alive connections, with and without gzip (tests.bench_http). Uses
$BRIDGE_TEST_DATABASE_URL or an embedded PostgreSQL, with a template database of its
own. Figures only; correctness is in the tests (tests/test_benchmark.py runs these parts
at a tiny size).
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text

from bridge import app
from bridge.airflow.schema import AirflowSchema
from bridge.collector import Snapshot, SnapshotCollector, View
from bridge.health import Health
from bridge.server import make_app
from tests import bench_http, postgres, tools
from tests.bench_http import counters
from tests.metadb import AirflowWriter, TaskWriter, fill_history

TASKS_PER_RUN = 4
ACTIVE = 50
WINDOW = timedelta(days=7)
RSS_SERIES = (10_000, 100_000)
FULL_AGGREGATION = (
    "SELECT dag_id, state, run_type, count(*), "
    "sum(extract(epoch FROM end_date - start_date)) FROM dag_run GROUP BY dag_id, state, run_type",
    "SELECT dag_id, task_id, state, count(*), sum(duration) FROM task_instance "
    "GROUP BY dag_id, task_id, state",
)
ROOT = Path(__file__).resolve().parent.parent

Statement = tuple[str, Any]  # SQL as sent to the driver, and its parameters


def window_column(schema: AirflowSchema) -> str:
    """The date a 7-day lookback filters on: `run_after` where Airflow indexes it (3.x),
    else the logical date, which only the unique (dag_id, logical date) index holds."""
    return schema.run_after_column if schema.run_after_column != "NULL" \
        else schema.logical_date_column


def window_aggregation(schema: AirflowSchema) -> tuple[str, str]:
    """FULL_AGGREGATION restricted to the runs after :since and their task instances.

    Written for the indexes, as a fair competitor would: on 3.x a range of the run_after
    index; on 2.x DAG by DAG over the unique (dag_id, execution_date) index, as a REST
    exporter asks for each DAG's runs since a date (the DAG ids from a loose index scan
    of dag_run: the fill writes no `dag` rows, and listing them would cost no less); the
    task instances run by run through ti_dag_run. `OFFSET 0` keeps the planner from
    flattening those lookups into scans of whole tables, which it prefers at small sizes
    although they are slower.
    """
    column = window_column(schema)
    if column == "run_after":
        runs = "SELECT dag_id, run_id, state, run_type, start_date, end_date FROM dag_run " \
               "WHERE run_after > :since"
    else:
        runs = f"""
            WITH RECURSIVE dags(dag_id) AS (
                (SELECT dag_id FROM dag_run ORDER BY dag_id LIMIT 1)
                UNION ALL
                SELECT (SELECT r.dag_id FROM dag_run r WHERE r.dag_id > dags.dag_id
                        ORDER BY r.dag_id LIMIT 1)
                FROM dags WHERE dags.dag_id IS NOT NULL)
            SELECT r.* FROM dags CROSS JOIN LATERAL (
                SELECT dag_id, run_id, state, run_type, start_date, end_date FROM dag_run
                WHERE dag_run.dag_id = dags.dag_id AND dag_run.{column} > :since
                OFFSET 0) AS r"""
    recent = f"WITH recent AS MATERIALIZED ({runs}) "
    return (
        recent + "SELECT dag_id, state, run_type, count(*), "
        "sum(extract(epoch FROM end_date - start_date)) FROM recent "
        "GROUP BY dag_id, state, run_type",
        recent + "SELECT ti.dag_id, ti.task_id, ti.state, count(*), sum(ti.duration) "
        "FROM recent CROSS JOIN LATERAL (SELECT dag_id, task_id, state, duration "
        "FROM task_instance WHERE task_instance.dag_id = recent.dag_id "
        "AND task_instance.run_id = recent.run_id OFFSET 0) AS ti "
        "GROUP BY ti.dag_id, ti.task_id, ti.state",
    )


def window_since(conn: Connection, schema: AirflowSchema) -> datetime:
    """Start of the 7-day window: 7 days before the newest run of the fill (not now())."""
    newest = conn.execute(text(f"SELECT max({window_column(schema)}) FROM dag_run")).scalar()
    assert isinstance(newest, datetime), "no dag_run rows"
    return newest - WINDOW


def aggregate(conn: Connection, statements: Sequence[str],
              params: dict[str, Any] | None = None) -> list[int]:
    """Run each aggregation, all rows fetched; the rows counted by each (sum of count(*))."""
    return [sum(int(row[3]) for row in conn.execute(text(sql), params or {}).fetchall())
            for sql in statements]


@contextmanager
def capture(engine: Engine) -> Iterator[list[Statement]]:
    """Every statement sent through `engine` while inside, as the driver got it."""
    statements: list[Statement] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def replay(engine: Engine, statements: Sequence[Statement]) -> int:
    """Send `statements` again in one read-only snapshot, as a cycle reads; rows fetched."""
    conn = engine.connect().execution_options(
        isolation_level="REPEATABLE READ", postgresql_readonly=True)
    rows = 0
    with conn, conn.begin():
        for statement, parameters in statements:
            result = conn.exec_driver_sql(statement, parameters)
            if result.returns_rows:
                rows += len(result.fetchall())
    return rows


class TimedCollector(SnapshotCollector):
    """The collector, timing each publish (building families, rendering both formats)
    and counting the Airflow series it was given."""

    def __init__(self, view: View) -> None:
        super().__init__(view)
        self.publish_ms: list[float] = []
        self.series = 0

    def publish(self, snapshot: Snapshot) -> int:
        started = time.perf_counter()
        dropped = super().publish(snapshot)
        self.publish_ms.append((time.perf_counter() - started) * 1000)
        self.series = sum(len(family) for family in snapshot.series.values())
        return dropped


@dataclass(frozen=True)
class Figures:
    """One size's figures; times are medians in milliseconds."""

    task_instances: int
    runs: int
    fill_s: float
    cycle_ms: float
    publish_ms: float
    series: int  # Airflow series the cycle published
    rows_read: int
    statements: int  # sent to the metadata DB by one steady-state cycle
    replayed: int  # statements the SQL floor sent (counted by the same listener)
    floor_ms: float
    floor_rows: int
    window_ms: float
    window_runs: int
    window_task_instances: int
    full_ms: float
    full_rows: int


def _median_ms(action: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def shape(task_instances: int) -> tuple[int, int]:
    """(DAGs, runs per DAG) for a size: at least 10 DAGs, at most 5 000 runs each."""
    runs = task_instances // TASKS_PER_RUN
    dags = max(10, runs // 5000)
    return dags, runs // dags


def measure(pg: postgres.Postgres, template: str, version: str, task_instances: int,
            repeat: int, dags: int | None = None) -> Figures:
    """Fill a fresh database of `template` and time the bridge and the others on it."""
    default_dags, _ = shape(task_instances)
    dags = dags or default_dags
    runs_per_dag = task_instances // TASKS_PER_RUN // dags
    runs = dags * runs_per_dag
    name = pg.fresh_name("amb_bench")
    pg.create_database(name, template=template)
    writer = AirflowWriter(pg.libpq(name), version)
    started = time.perf_counter()
    fill_history(writer, runs_per_dag=runs_per_dag, dags=dags, active=ACTIVE,
                 tasks_per_run=TASKS_PER_RUN, jobs=runs // 10)
    filled = time.perf_counter() - started
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = app.load_settings(None, {
                "BRIDGE_AIRFLOW_DB_URL": pg.url_for(name).render_as_string(False),
                "BRIDGE_CACHE_URL": f"sqlite:///{Path(tmp) / 'cache.db'}",
                "BRIDGE_LOOKBACK": "0"})
            bridge = app.Bridge.build(settings)
            try:
                refresher = bridge.refresher
                collector = TimedCollector(View.of(settings))
                refresher.collector = bridge.collector = collector

                def refresh() -> None:
                    if not refresher.refresh():
                        raise RuntimeError("a bridge cycle failed (see the log)")

                refresh()  # the first cycle: schema detection, the reconcile window
                engine = bridge.source.engine
                with capture(engine) as cycle:
                    refresh()
                collector.publish_ms.clear()
                cycle_ms = _median_ms(refresh, repeat)
                publish_ms = statistics.median(collector.publish_ms)
                series = collector.series
                rows_read = refresher.last_rows_read
                with capture(engine) as replayed:
                    floor_rows = replay(engine, cycle)
                floor_ms = _median_ms(lambda: replay(engine, cycle), repeat)
                schema = bridge.source.schema
            finally:
                bridge.close()
        other = create_engine(settings.require_airflow_url())
        try:
            with other.connect() as conn:
                window = window_aggregation(schema)
                params = {"since": window_since(conn, schema)}
                window_runs, window_tis = aggregate(conn, window, params)
                window_ms = _median_ms(lambda: aggregate(conn, window, params), repeat)
                full_rows = sum(aggregate(conn, FULL_AGGREGATION))
                full_ms = _median_ms(lambda: aggregate(conn, FULL_AGGREGATION),
                                     max(3, repeat // 5))
        finally:
            other.dispose()
    finally:
        writer.close()
        pg.drop_database(name)
    return Figures(
        task_instances=runs * TASKS_PER_RUN, runs=runs, fill_s=filled, cycle_ms=cycle_ms,
        publish_ms=publish_ms, series=series, rows_read=rows_read, statements=len(cycle),
        replayed=len(replayed), floor_ms=floor_ms, floor_rows=floor_rows,
        window_ms=window_ms, window_runs=window_runs, window_task_instances=window_tis,
        full_ms=full_ms, full_rows=full_rows)


def report(results: Sequence[Figures], version: str, repeat: int) -> None:
    print(f"Airflow {version} schema; {ACTIVE} active runs; cache on SQLite; "
          f"medians of {repeat} runs (full agg: of {max(3, repeat // 5)}); times in ms")
    print(f"{'task instances':>15}{'dag runs':>11}{'fill s':>8}{'bridge':>9}{'publish':>9}"
          f"{'series':>8}{'rows read':>11}{'SQL floor':>11}{'stmts':>7}{'7-day':>9}"
          f"{'rows read':>11}{'full agg':>10}{'rows read':>12}")
    for r in results:
        print(f"{r.task_instances:>15,}{r.runs:>11,}{r.fill_s:>8.0f}{r.cycle_ms:>9.1f}"
              f"{r.publish_ms:>9.1f}{r.series:>8,}{r.rows_read:>11,}{r.floor_ms:>11.1f}{r.statements:>7}"
              f"{r.window_ms:>9.1f}{r.window_runs + r.window_task_instances:>11,}"
              f"{r.full_ms:>10.1f}{r.full_rows:>12,}")
    print(f"{'task instances':>15}{'full agg / bridge':>19}{'7-day / bridge':>16}"
          f"{'bridge / SQL floor':>20}")
    for r in results:
        print(f"{r.task_instances:>15,}{r.full_ms / r.cycle_ms:>18.1f}x"
              f"{r.window_ms / r.cycle_ms:>15.1f}x{r.cycle_ms / r.floor_ms:>19.1f}x")
    if len(results) > 1:
        print(f"bridge cycle at the largest size / at the smallest: "
              f"{results[-1].cycle_ms / results[0].cycle_ms:.2f}x")



@dataclass(frozen=True)
class Publishing:
    """Publishing `series` counter series (families built, both formats rendered and
    gzipped), and one scrape of the result."""

    cold_ms: float  # the first publish, by a new collector
    steady_ms: float  # median publish when 10 series changed since the last one
    scrape_ms: float  # median scrape: the pre-rendered bytes handed over
    body: bytes  # the last scrape's body, plain text


def publishing(series: int, repeat: int = 20) -> Publishing:
    collector = SnapshotCollector(View(30, max_series=series + 1000))
    values = counters(series)
    started = time.perf_counter()
    collector.publish(Snapshot(values, Health(version="bench")))
    cold = (time.perf_counter() - started) * 1000
    family = values["airflow_task_instance_finished_total"]
    keys = list(family)
    steady = []
    for _ in range(repeat):  # a few tasks finished since the last refresh
        changed = dict(family)
        for key in random.sample(keys, min(10, len(keys))):
            changed[key] += 1
        family = changed
        started = time.perf_counter()
        collector.publish(Snapshot({"airflow_task_instance_finished_total": changed},
                                   Health(version="bench")))
        steady.append(time.perf_counter() - started)
    wsgi = make_app(collector, lambda: None, "bench")
    environ = {"PATH_INFO": "/metrics", "HTTP_ACCEPT": "text/plain"}

    def scrape() -> bytes:
        return b"".join(wsgi(environ, lambda *_: None))

    return Publishing(cold, statistics.median(steady) * 1000, _median_ms(scrape, 200),
                      scrape())




def hold(series: int) -> int:
    """Publish `series` series, scrape them once (0: stay idle); the peak RSS in KiB.

    Meant for a fresh process (`peak_rss_kib`), so that the peak is this figure's alone.
    """
    if series:
        collector = SnapshotCollector(View(30, max_series=series + 1000))
        collector.publish(Snapshot(counters(series), Health(version="bench")))
        wsgi = make_app(collector, lambda: None, "bench")
        body = b"".join(wsgi({"PATH_INFO": "/metrics", "HTTP_ACCEPT": "text/plain"},
                             lambda *_: None))
        assert body
    return tools.peak_kib()


def peak_rss_kib(series: int) -> int:
    """Peak RSS of a fresh interpreter that imports the bridge and holds `series` series."""
    child = subprocess.run(
        [sys.executable, "-c", f"from tests.benchmark import hold; print(hold({series}))"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    return int(child.stdout.split()[-1])


def freshness(pg: postgres.Postgres, template: str, version: str,
              finishes: int) -> list[float]:
    """Seconds from a task's commit in the metadata DB to its count on /metrics, at the
    default refresh interval, over `finishes` tasks finishing at random moments."""
    name = pg.fresh_name("amb_fresh")
    pg.create_database(name, template=template)
    writer = AirflowWriter(pg.libpq(name), version)
    tasks = TaskWriter(writer)
    now = datetime.now(UTC)
    run = writer.create_run("fresh", logical_date=now, at=now)
    writer.start_run(run, now)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop, started = threading.Event(), threading.Event()
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = app.load_settings(None, {
            "BRIDGE_AIRFLOW_DB_URL": pg.url_for(name).render_as_string(False),
            "BRIDGE_CACHE_URL": f"sqlite:///{Path(tmp) / 'cache.db'}",
            "BRIDGE_LISTEN_ADDRESS": f"127.0.0.1:{port}",
            "BRIDGE_ALLOW_WRITABLE_ROLE": "true"})  # the benchmark's own throwaway DB
        server = threading.Thread(target=app.serve, args=(settings, stop),
                                  kwargs={"started": lambda _: started.set()}, daemon=True)
        server.start()
        started.wait(30)
        rng = random.Random(7)
        try:
            for i in range(finishes):
                time.sleep(rng.uniform(0, settings.refresh_interval))
                task_id = f"task_{i}"
                tasks.add(run, task_id)
                tasks.run_try(run, task_id, "success", datetime.now(UTC), runs_for=1)
                committed = time.monotonic()
                wanted = f'task_id="{task_id}"'
                while not any(line.startswith("airflow_task_instance_finished_total")
                              and wanted in line for line in _scrape(port).splitlines()):
                    time.sleep(0.05)
                latencies.append(time.monotonic() - committed)
        finally:
            stop.set()
            server.join(30)
            writer.close()
            pg.drop_database(name)
    return latencies


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def report_rss(series: Sequence[int]) -> None:
    """Peak RSS, each figure from its own fresh process so none includes another."""
    idle = peak_rss_kib(0)
    parts = [f"idle, bridge imported {idle / 1024:.0f} MB"]
    for n in series:
        held = peak_rss_kib(n)
        parts.append(f"{n:,} series {held / 1024:.0f} MB "
                     f"(+{(held - idle) / 1024:.0f} MB, {(held - idle) * 1024 / n:,.0f} B/series)")
    print("peak RSS of a fresh process: " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task-instances", type=int, nargs="+",
                        default=[100_000, 10_000_000])
    parser.add_argument("--version", default=postgres.AIRFLOW_VERSIONS[-1],
                        choices=postgres.AIRFLOW_VERSIONS)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--freshness", type=int, default=20, metavar="N",
                        help="tasks to time from commit to /metrics (0 to skip)")
    parser.add_argument("--http-seconds", type=float, default=10, metavar="S",
                        help="seconds of each /metrics load run, see tests.bench_http "
                             "(0 to skip)")
    parser.add_argument("--width", type=int, nargs="+", metavar="DAGS",
                        help="run the width benchmark instead (tests.bench_width; its "
                             "--baseline REV, --idle and --busy pass on)")
    args, rest = parser.parse_known_args()
    if args.width:
        from tests import bench_width
        bench_width.main([*map(str, args.width), "--version", args.version, *rest])
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    pg = postgres.start()
    template = postgres.load_airflow_schema(pg, args.version)  # named per process
    try:
        results = [measure(pg, template, args.version, n, args.repeat)
                   for n in args.task_instances]
        report(results, args.version, args.repeat)
        _report_scrape_and_freshness(pg, template, args)
    finally:
        pg.drop_database(template)
    report_rss(RSS_SERIES)
    if args.http_seconds:
        print("\n".join(bench_http.run(10_000, 50, args.http_seconds)))


def _report_scrape_and_freshness(pg: postgres.Postgres, template: str,
                                 args: argparse.Namespace) -> None:
    published = publishing(10_000, args.repeat)
    print(f"10,000 series: building the families and rendering both formats, plain and "
          f"gzipped, once per refresh (in the refresh thread): {published.cold_ms:.1f} ms "
          f"by a new collector, {published.steady_ms:.1f} ms when 10 series changed; "
          f"one scrape {published.scrape_ms:.3f} ms")
    if args.freshness:
        fresh = sorted(freshness(pg, template, args.version, args.freshness))
        p99 = fresh[min(len(fresh) - 1, round(0.99 * (len(fresh) - 1)))]
        print(f"freshness at the default interval, task commit -> /metrics, "
              f"{len(fresh)} tasks: p50 {statistics.median(fresh):.1f} s, p99 {p99:.1f} s, "
              f"max {fresh[-1]:.1f} s")


if __name__ == "__main__":
    main()
