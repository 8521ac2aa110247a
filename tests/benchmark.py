"""Benchmark: one refresh cycle and one scrape, next to a scrape-time full aggregation.

    python -m tests.benchmark [--runs-per-dag 2000] [--dags 100] [--version 3.3.2]

Uses $BRIDGE_TEST_DATABASE_URL or an embedded PostgreSQL, like the tests. Prints
figures; asserts nothing (speed is measured here, correctness in the tests).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import generate_latest
from sqlalchemy import create_engine, text

from bridge import config
from bridge.cache import Cache
from bridge.collector import SnapshotCollector, View
from bridge.jobs import Refresher
from bridge.server import make_app
from bridge.source import Source
from tests import postgres
from tests.metadb import AirflowWriter, fill_history

FULL_AGGREGATION = (
    "SELECT dag_id, state, run_type, count(*), "
    "sum(extract(epoch FROM end_date - start_date)) FROM dag_run GROUP BY dag_id, state, run_type"
)


def _timed(action: Callable[[], object], repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000, min(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dags", type=int, default=100)
    parser.add_argument("--runs-per-dag", type=int, default=2000)
    parser.add_argument("--active", type=int, default=50)
    parser.add_argument("--version", default=postgres.AIRFLOW_VERSIONS[-1],
                        choices=postgres.AIRFLOW_VERSIONS)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    pg = postgres.start()
    template = postgres.load_airflow_schema(pg, args.version)
    name = pg.fresh_name("amb_bench")
    pg.create_database(name, template=template)
    writer = AirflowWriter(pg.libpq(name), args.version)
    started = time.perf_counter()
    fill_history(writer, runs_per_dag=args.runs_per_dag, dags=args.dags, active=args.active)
    fill_seconds = time.perf_counter() - started
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = config.load(None, {
                "BRIDGE_AIRFLOW_DB_URL": pg.url_for(name).render_as_string(False),
                "BRIDGE_CACHE_URL": f"sqlite:///{Path(tmp) / 'cache.db'}",
                "BRIDGE_LOOKBACK": "all"})
            cache = Cache(settings.cache_url)
            cache.migrate()
            source = Source(settings)
            collector = SnapshotCollector(View.of(settings))
            refresher = Refresher(settings, source, cache, collector)
            backfill_ms, _ = _timed(refresher.refresh, 1)
            while refresher.last_cycle is None or not refresher.last_cycle.caught_up:
                refresher.refresh()
            cycle_ms, cycle_min = _timed(refresher.refresh, args.repeat)
            render_ms, _ = _timed(lambda: generate_latest(collector), 5)
            app = make_app(collector, lambda: True, "bench")
            environ = {"PATH_INFO": "/metrics", "HTTP_ACCEPT": "text/plain"}
            body = b"".join(app(environ, lambda *_: None))
            scrape_ms, scrape_min = _timed(lambda: b"".join(app(environ, lambda *_: None)),
                                           args.repeat * 5)
            engine = create_engine(settings.require_airflow_url())
            with engine.connect() as conn:
                full_ms, full_min = _timed(lambda: conn.execute(text(FULL_AGGREGATION)).fetchall(),
                                           max(3, args.repeat // 4))
            engine.dispose()
            source.dispose()
            cache.dispose()
    finally:
        writer.close()
        pg.drop_database(name)

    runs = args.dags * args.runs_per_dag
    print(f"Airflow {args.version} schema, {runs:,} dag_run rows ({args.active} active), "
          f"filled in {fill_seconds:.1f}s")
    print(f"{'what':<48}{'median ms':>12}{'min ms':>10}")
    print(f"{'first-start backfill cycle (lookback all, 1st)':<48}{backfill_ms:>12.1f}{'':>10}")
    print(f"{'steady-state refresh cycle (bridge)':<48}{cycle_ms:>12.2f}{cycle_min:>10.2f}")
    print(f"{'full GROUP BY over dag_run (scrape-time way)':<48}{full_ms:>12.2f}{full_min:>10.2f}")
    print(f"{'ratio full / bridge cycle':<48}{full_ms / cycle_ms:>12.1f}x")
    print(f"{'render /metrics once per refresh':<48}{render_ms:>12.3f}{'':>10}")
    print(f"{'one scrape of /metrics (WSGI app)':<48}{scrape_ms:>12.3f}{scrape_min:>10.3f}"
          f"   ({len(body.splitlines()):,} lines, {len(body):,} bytes)")


if __name__ == "__main__":
    main()
