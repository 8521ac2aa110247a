"""Benchmark: the bridge's refresh cycle next to the scrape-time full aggregation.

    python -m tests.benchmark                      # 100 k and 10 M task instances
    python -m tests.benchmark --task-instances 100000

For each size it fills a real Airflow schema (set-based SQL: runs, task instances,
retried tries in task_instance_history, old jobs), leaves 50 runs active, and times,
end to end, (a) one steady-state bridge cycle (queries, folding into the cache,
publishing the snapshot) and (b) the GROUP BY over all runs and task instances that
plugin exporters run on every scrape. It also times one scrape of 10 000 series,
measures freshness (a task's commit in the metadata DB to its count on /metrics, with
the bridge serving at its default interval), and reports the peak RSS. Uses
$BRIDGE_TEST_DATABASE_URL or an embedded PostgreSQL. Figures only; correctness is in
the tests.
"""

from __future__ import annotations

import argparse
import random
import resource
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

from bridge import app
from bridge.collector import Snapshot, SnapshotCollector, View
from bridge.health import Health
from bridge.server import make_app
from tests import postgres
from tests.metadb import AirflowWriter, TaskWriter, fill_history

TASKS_PER_RUN = 4
ACTIVE = 50
FULL_AGGREGATION = (
    "SELECT dag_id, state, run_type, count(*), "
    "sum(extract(epoch FROM end_date - start_date)) FROM dag_run GROUP BY dag_id, state, run_type",
    "SELECT dag_id, task_id, state, count(*), sum(duration) FROM task_instance "
    "GROUP BY dag_id, task_id, state",
)


def _median_ms(action: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def measure(pg: postgres.Postgres, template: str, version: str, task_instances: int,
            repeat: int) -> dict[str, float]:
    runs = task_instances // TASKS_PER_RUN
    dags = max(10, runs // 5000)
    name = pg.fresh_name("amb_bench")
    pg.create_database(name, template=template)
    writer = AirflowWriter(pg.libpq(name), version)
    started = time.perf_counter()
    fill_history(writer, runs_per_dag=runs // dags, dags=dags, active=ACTIVE,
                 tasks_per_run=TASKS_PER_RUN, jobs=runs // 10)
    filled = time.perf_counter() - started
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = app.load_settings(None, {
                "BRIDGE_AIRFLOW_DB_URL": pg.url_for(name).render_as_string(False),
                "BRIDGE_CACHE_URL": f"sqlite:///{Path(tmp) / 'cache.db'}",
                "BRIDGE_LOOKBACK": "0"})
            bridge = app.Bridge.build(settings)
            refresher = bridge.refresher
            assert refresher.refresh()
            cycle_ms = _median_ms(refresher.refresh, repeat)
            rows_read = refresher.last_rows_read
            engine = create_engine(settings.require_airflow_url())
            with engine.connect() as conn:
                full_ms = _median_ms(
                    lambda: [conn.execute(text(sql)).fetchall() for sql in FULL_AGGREGATION],
                    max(3, repeat // 5))
                full_rows = runs * (1 + TASKS_PER_RUN)
            engine.dispose()
            bridge.close()
    finally:
        writer.close()
        pg.drop_database(name)
    return {"task_instances": runs * TASKS_PER_RUN, "runs": runs, "fill_s": filled,
            "cycle_ms": cycle_ms, "rows_read": rows_read, "full_ms": full_ms,
            "full_rows": full_rows}


def scrape_ms(series: int) -> tuple[float, float]:
    """(render at refresh, scrape) with `series` counter series, via the WSGI app."""
    per_dag = 100
    counters = {"airflow_task_instance_finished_total": {
        (("dag_id", f"dag_{i // per_dag}"), ("state", "success"), ("task_id", f"task_{i}")):
            float(i) for i in range(series)}}
    collector = SnapshotCollector(View(30, max_series=series + 1000))
    started = time.perf_counter()
    collector.publish(Snapshot(counters, Health(version="bench")))
    render = (time.perf_counter() - started) * 1000
    app = make_app(collector, lambda: True, "bench")
    environ = {"PATH_INFO": "/metrics", "HTTP_ACCEPT": "text/plain"}

    def scrape() -> bytes:
        return b"".join(app(environ, lambda *_: None))

    return render, _median_ms(scrape, 200)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task-instances", type=int, nargs="+",
                        default=[100_000, 10_000_000])
    parser.add_argument("--version", default=postgres.AIRFLOW_VERSIONS[-1],
                        choices=postgres.AIRFLOW_VERSIONS)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--freshness", type=int, default=20, metavar="N",
                        help="tasks to time from commit to /metrics (0 to skip)")
    args = parser.parse_args()

    pg = postgres.start()
    template = postgres.load_airflow_schema(pg, args.version)
    results = [measure(pg, template, args.version, n, args.repeat)
               for n in args.task_instances]
    print(f"Airflow {args.version} schema; {ACTIVE} active runs; cache on SQLite; "
          f"median of {args.repeat} cycles")
    print(f"{'task instances':>15}{'dag runs':>11}{'fill s':>8}{'bridge ms':>11}"
          f"{'rows read':>11}{'full agg ms':>13}{'rows read':>12}{'ratio':>9}")
    for r in results:
        print(f"{r['task_instances']:>15,}{r['runs']:>11,}{r['fill_s']:>8.0f}"
              f"{r['cycle_ms']:>11.1f}{r['rows_read']:>11,}{r['full_ms']:>13.1f}"
              f"{r['full_rows']:>12,}{r['full_ms'] / r['cycle_ms']:>8.0f}x")
    if len(results) > 1:
        print(f"bridge cycle at the largest size / at the smallest: "
              f"{results[-1]['cycle_ms'] / results[0]['cycle_ms']:.2f}x")
    render, scrape = scrape_ms(10_000)
    print(f"10,000 series: one scrape {scrape:.3f} ms; rendering both formats once per "
          f"refresh (in the refresh thread) {render:.1f} ms")
    if args.freshness:
        fresh = sorted(freshness(pg, template, args.version, args.freshness))
        p99 = fresh[min(len(fresh) - 1, round(0.99 * (len(fresh) - 1)))]
        print(f"freshness at the default interval, task commit -> /metrics, "
              f"{len(fresh)} tasks: p50 {statistics.median(fresh):.1f} s, p99 {p99:.1f} s, "
              f"max {fresh[-1]:.1f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
