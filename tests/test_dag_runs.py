"""DAG-run metrics against real Airflow 2.10 and 3.x schemas: exact counts across cycles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from bridge.stages import dag_runs
from tests.conftest import AirflowDb, BridgeFactory, Scrape
from tests.metadb import T0, AirflowWriter, TaskWriter
from tests.postgres import Postgres

FINISHED = "airflow_dag_run_finished_total"


def finished(scrape: Scrape, dag_id: str, state: str = "success",
             run_type: str = "scheduled") -> float | None:
    return scrape.value(FINISHED, dag_id=dag_id, state=state, run_type=run_type)


def test_runs_move_through_states_and_count_once(airflow_db: AirflowDb,
                                                 make_bridge: BridgeFactory) -> None:
    af = airflow_db.writer
    bridge = make_bridge(airflow_db.url)
    run = af.create_run("etl", logical_date=T0)
    scrape = bridge.cycle()
    assert scrape.value("airflow_dag_runs", dag_id="etl", state="queued") == 1
    assert scrape.value("airflow_dag_runs", dag_id="etl", state="running") == 0
    assert finished(scrape, "etl") is None

    af.start_run(run, T0 + timedelta(minutes=2))
    scrape = bridge.cycle()
    assert scrape.value("airflow_dag_runs", dag_id="etl", state="queued") == 0
    assert scrape.value("airflow_dag_runs", dag_id="etl", state="running") == 1

    af.finish_run(run, "success", T0 + timedelta(minutes=12))
    for _ in range(3):
        scrape = bridge.cycle()
        assert finished(scrape, "etl") == 1
        assert scrape.value("airflow_dag_runs", dag_id="etl", state="running") == 0
        assert scrape.value("airflow_dag_run_duration_seconds_count", dag_id="etl",
                            state="success") == 1
        assert scrape.value("airflow_dag_run_duration_seconds_sum", dag_id="etl",
                            state="success") == 600
        assert scrape.value("airflow_dag_run_duration_seconds_bucket", dag_id="etl",
                            state="success", le="300.0") == 0
        assert scrape.value("airflow_dag_run_duration_seconds_bucket", dag_id="etl",
                            state="success", le="600.0") == 1
        assert scrape.value("airflow_dag_run_last_finished_timestamp_seconds", dag_id="etl",
                            state="success") == (T0 + timedelta(minutes=12)).timestamp()


def test_runs_finished_between_cycles_count_by_type_and_state(airflow_db: AirflowDb,
                                                              make_bridge: BridgeFactory) -> None:
    af = airflow_db.writer
    bridge = make_bridge(airflow_db.url)
    bridge.cycle()
    for day in range(3):
        af.complete_run("etl", logical_date=T0 + timedelta(days=day), duration=100)
    af.complete_run("etl", logical_date=T0 + timedelta(days=3), state="failed", duration=4000)
    af.complete_run("etl", logical_date=T0 + timedelta(days=4), run_type="manual",
                    duration=50)
    af.complete_run("etl", logical_date=T0 - timedelta(days=30), run_type="backfill",
                    duration=70)
    af.complete_run("report", logical_date=T0, duration=10)
    scrape = bridge.cycle()
    assert finished(scrape, "etl") == 3
    assert finished(scrape, "etl", "failed") == 1
    assert finished(scrape, "etl", run_type="manual") == 1
    assert finished(scrape, "etl", run_type="backfill") == 1
    assert finished(scrape, "report") == 1
    assert len(scrape.series(FINISHED)) == 5
    assert scrape.value("airflow_dag_run_duration_seconds_count", dag_id="etl",
                        state="success") == 5
    assert scrape.value("airflow_dag_run_duration_seconds_sum", dag_id="etl",
                        state="success") == 420
    assert scrape.value("airflow_dag_run_duration_seconds_bucket", dag_id="etl",
                        state="success", le="60.0") == 1
    assert scrape.value("airflow_dag_run_duration_seconds_bucket", dag_id="etl",
                        state="success", le="120.0") == 5
    assert scrape.value("airflow_dag_run_duration_seconds_bucket", dag_id="etl",
                        state="failed", le="3600.0") == 0
    assert scrape.value("airflow_dag_run_duration_seconds_bucket", dag_id="etl",
                        state="failed", le="7200.0") == 1
    assert scrape.value("airflow_dag_run_duration_seconds_bucket", dag_id="etl",
                        state="failed", le="+Inf") == 1
    assert bridge.cycle().airflow() == scrape.airflow()


def test_cleared_run_counts_again_and_db_clean_never_decreases(airflow_db: AirflowDb,
                                                              make_bridge: BridgeFactory) -> None:
    af = airflow_db.writer
    bridge = make_bridge(airflow_db.url)
    old = af.complete_run("etl", logical_date=T0, state="failed")
    af.complete_run("etl", logical_date=T0 + timedelta(days=1))
    scrape = bridge.cycle()
    assert finished(scrape, "etl", "failed") == 1
    assert finished(scrape, "etl") == 1

    af.clear_run(old, T0 + timedelta(days=2))
    scrape = bridge.cycle()
    assert scrape.value("airflow_dag_runs", dag_id="etl", state="queued") == 1
    af.start_run(old, T0 + timedelta(days=2, minutes=1))
    af.finish_run(old, "success", T0 + timedelta(days=2, minutes=3))
    scrape = bridge.cycle()
    assert finished(scrape, "etl", "failed") == 1
    assert finished(scrape, "etl") == 2
    assert scrape.value("airflow_dag_runs", dag_id="etl", state="queued") == 0

    assert af.db_clean(T0 + timedelta(days=30)) == 2
    for _ in range(2):
        scrape = bridge.cycle()
        assert finished(scrape, "etl", "failed") == 1
        assert finished(scrape, "etl") == 2
        assert scrape.value("airflow_dag_run_duration_seconds_count", dag_id="etl",
                            state="success") == 2


def test_restart_keeps_totals_and_counts_what_happened_while_down(
        airflow_db: AirflowDb, make_bridge: BridgeFactory) -> None:
    af = airflow_db.writer
    first = make_bridge(airflow_db.url)
    af.complete_run("etl", logical_date=T0)
    running = af.create_run("etl", logical_date=T0 + timedelta(days=1))
    af.start_run(running, T0 + timedelta(days=1, minutes=1))
    before = first.cycle()
    assert finished(before, "etl") == 1
    first.close()

    af.finish_run(running, "failed", T0 + timedelta(days=1, minutes=9))
    af.complete_run("etl", logical_date=T0 + timedelta(days=2))
    second = make_bridge(airflow_db.url)
    served = second.scrape()
    assert finished(served, "etl") == 1, "cached totals are served before the first cycle"
    after = second.cycle()
    assert finished(after, "etl") == 2
    assert finished(after, "etl", "failed") == 1
    assert after.value("airflow_dag_run_duration_seconds_sum", dag_id="etl",
                       state="failed") == 480
    assert second.cycle().series(FINISHED) == after.series(FINISHED)


def test_id_committed_late_below_high_water_is_still_counted(
        airflow_db: AirflowDb, make_bridge: BridgeFactory) -> None:
    af = airflow_db.writer
    bridge = make_bridge(airflow_db.url)
    bridge.cycle()
    slow = psycopg.connect(af.conn.info.dsn)  # a second scheduler, in a long transaction
    late = af.insert_run(slow, "etl", run_type="scheduled", logical_date=T0, state="success",
                         queued_at=T0, start_date=T0, end_date=T0 + timedelta(minutes=1))
    early = af.complete_run("etl", logical_date=T0 + timedelta(days=1))
    assert late < early
    assert finished(bridge.cycle(), "etl") == 1
    slow.commit()
    slow.close()
    assert finished(bridge.cycle(), "etl") == 2
    assert finished(bridge.cycle(), "etl") == 2


def test_rows_airflow_leaves_incomplete(airflow_db: AirflowDb, make_bridge: BridgeFactory) -> None:
    af = airflow_db.writer
    bridge = make_bridge(airflow_db.url)
    af.dags_test_run("etl", T0 - timedelta(days=400), T0)
    no_end = af.complete_run("etl", logical_date=T0 + timedelta(days=1))
    af.conn.execute("UPDATE dag_run SET end_date = NULL WHERE id = %s", (no_end,))
    deleted = af.create_run("etl", logical_date=T0 + timedelta(days=2))
    scrape = bridge.cycle()
    assert finished(scrape, "etl") == 1
    assert finished(scrape, "etl", run_type="manual") == 1
    assert scrape.value("airflow_dag_run_duration_seconds_count", dag_id="etl",
                        state="success") is None, "no honest duration for either run"
    af.conn.execute("DELETE FROM dag_run WHERE id = %s", (deleted,))
    scrape = bridge.cycle()
    assert scrape.value("airflow_dag_runs", dag_id="etl", state="queued") == 0
    assert finished(scrape, "etl") == 1


def _history(af: AirflowWriter) -> int:
    """30 finished runs, one a day going back 30 days, and one still running."""
    now = datetime.now(UTC).replace(microsecond=0)
    for age in range(30, 0, -1):
        af.complete_run("etl", logical_date=now - timedelta(days=age) + timedelta(hours=1))
    running = af.create_run("etl", logical_date=now - timedelta(hours=1),
                            at=now - timedelta(minutes=50))
    af.start_run(running, now - timedelta(minutes=49))
    return running


@pytest.mark.parametrize(("lookback", "expected"), [("7d", 7), ("0", 0), ("all", 30)])
def test_first_start_backfills_the_lookback_only(airflow_db: AirflowDb,
                                                 make_bridge: BridgeFactory, lookback: str,
                                                 expected: int) -> None:
    af = airflow_db.writer
    running = _history(af)
    bridge = make_bridge(airflow_db.url, lookback=lookback)
    scrape = bridge.cycle()
    assert (finished(scrape, "etl") or 0) == expected
    assert scrape.value("airflow_dag_runs", dag_id="etl", state="running") == 1
    af.finish_run(running, "success", datetime.now(UTC))
    assert finished(bridge.cycle(), "etl") == expected + 1


def test_backfill_larger_than_one_cycle_continues_and_is_served_once_done(
        airflow_db: AirflowDb, make_bridge: BridgeFactory, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A first start's backfill goes on over several cycles, logging its progress; the
    counters appear only once it is done, at their final values, so that no alert reads
    the history arriving page by page as fresh events. A restart half-way keeps them back
    too, and /-/ready says why it is not ready."""
    monkeypatch.setattr(dag_runs, "MAX_PAGES_PER_CYCLE", 5)
    af = airflow_db.writer
    for day in range(120):
        af.complete_run("etl", logical_date=T0 - timedelta(days=day))
    bridge = make_bridge(airflow_db.url, batch_size=10)
    caplog.set_level("INFO", logger="bridge.stages.dag_runs")
    assert finished(bridge.cycle(), "etl") is None
    assert (bridge.refresher.not_ready() or "").startswith(
        "first start: backfilling the history, 50 of 120 DAG run ids read (")
    assert "first start: backfill 50 of 120 DAG run ids read" in caplog.text
    bridge.close()
    bridge = make_bridge(airflow_db.url, batch_size=10)  # the same cache
    assert finished(bridge.scrape(), "etl") is None, "held back after a restart too"
    assert finished(bridge.cycle(), "etl") is None
    why = bridge.refresher.not_ready() or ""
    assert why.startswith("first start: backfilling the history, 100 of 120 DAG run ids read (")
    assert "left)" in why
    assert not bridge.refresher.ready.is_set()
    assert finished(bridge.cycle(), "etl") == 120
    assert bridge.refresher.ready.is_set()
    assert bridge.refresher.not_ready() is None
    assert "first start: backfill done, DAG run ids 0 to 120 read" in caplog.text


def test_postgres_cache_gives_the_same_totals(airflow_db: AirflowDb, make_bridge: BridgeFactory,
                                              pg: Postgres) -> None:
    cache_db = pg.fresh_name("amb_cache")
    pg.create_database(cache_db)
    try:
        af = airflow_db.writer
        url = pg.url_for(cache_db).render_as_string(hide_password=False)
        bridge = make_bridge(airflow_db.url, cache_url=url)
        run = af.complete_run("etl", logical_date=T0, duration=90)
        af.complete_run("etl", logical_date=T0 + timedelta(days=1), state="failed")
        scrape = bridge.cycle()
        assert finished(scrape, "etl") == 1
        assert finished(scrape, "etl", "failed") == 1
        af.clear_run(run, T0 + timedelta(days=2))
        bridge.cycle()
        af.start_run(run, T0 + timedelta(days=2, minutes=1))
        af.finish_run(run, "success", T0 + timedelta(days=2, minutes=2))
        bridge.close()
        scrape = make_bridge(airflow_db.url, cache_url=url).cycle()
        assert finished(scrape, "etl") == 2
        assert scrape.value("airflow_dag_run_duration_seconds_sum", dag_id="etl",
                            state="success") == 150
        assert scrape.value("airflow_dag_run_last_finished_timestamp_seconds", dag_id="etl",
                            state="success") == (T0 + timedelta(days=2, minutes=2)).timestamp()
    finally:
        pg.drop_database(cache_db)


def test_run_cleared_and_finished_again_between_two_cycles_counts_twice(
        airflow_db: AirflowDb, make_bridge: BridgeFactory) -> None:
    """Never seen active again: the reconcile window finds the second finish."""
    af, tasks = airflow_db.writer, TaskWriter(airflow_db.writer)
    now = datetime.now(UTC).replace(microsecond=0)
    bridge = make_bridge(airflow_db.url)
    bridge.cycle()
    run = af.create_run("etl", logical_date=now - timedelta(minutes=9),
                        at=now - timedelta(minutes=9))
    af.start_run(run, now - timedelta(minutes=8))
    tasks.add(run, "load")
    tasks.run_try(run, "load", "success", now - timedelta(minutes=8), runs_for=30)
    af.finish_run(run, "success", now - timedelta(minutes=7))
    scrape = bridge.cycle()
    assert finished(scrape, "etl", "success") == 1
    af.clear_run(run, now - timedelta(minutes=6))
    tasks.next_try(run, "load")
    af.start_run(run, now - timedelta(minutes=5))
    tasks.run_try(run, "load", "failed", now - timedelta(minutes=5), runs_for=30)
    af.finish_run(run, "failed", now - timedelta(minutes=4))
    for _ in range(2):
        scrape = bridge.cycle()
        assert finished(scrape, "etl", "success") == 1
        assert finished(scrape, "etl", "failed") == 1
        assert scrape.value("airflow_task_instance_finished_total", dag_id="etl",
                            task_id="load", state="success") == 1
        assert scrape.value("airflow_task_instance_finished_total", dag_id="etl",
                            task_id="load", state="failed") == 1


def test_run_older_than_the_reconcile_window_is_not_reread(
        airflow_db: AirflowDb, make_bridge: BridgeFactory) -> None:
    """The window bounds the re-reading: a run created before it is left alone."""
    af = airflow_db.writer
    now = datetime.now(UTC).replace(microsecond=0)
    bridge = make_bridge(airflow_db.url, reconcile_window="1h")
    old = af.create_run("etl", logical_date=now - timedelta(hours=3),
                        at=now - timedelta(hours=3))
    af.start_run(old, now - timedelta(hours=3))
    af.finish_run(old, "success", now - timedelta(hours=2))
    assert finished(bridge.cycle(), "etl", "success") == 1
    af.clear_run(old, now - timedelta(minutes=3))
    af.conn.execute("UPDATE dag_run SET queued_at = %s WHERE id = %s",
                    (now - timedelta(hours=3), old))  # created long ago, as Airflow keeps it
    af.start_run(old, now - timedelta(minutes=2))
    af.finish_run(old, "failed", now - timedelta(minutes=1))
    assert finished(bridge.cycle(), "etl", "failed") is None


def test_id_in_flight_at_first_start_is_counted_when_it_commits(
        airflow_db: AirflowDb, pg: Postgres, make_bridge: BridgeFactory) -> None:
    af = airflow_db.writer
    with psycopg.connect(pg.libpq(airflow_db.name)) as slow:
        in_flight = af.insert_run(slow, "etl", run_type="scheduled", logical_date=T0,
                                  state="running", queued_at=T0, start_date=T0)
        later = af.complete_run("etl", logical_date=T0 + timedelta(days=1))
        assert later > in_flight
        bridge = make_bridge(airflow_db.url, lookback="0")
        assert finished(bridge.cycle(), "etl") is None, "lookback 0: nothing before the start"
        slow.execute("UPDATE dag_run SET state = 'success', end_date = %s WHERE id = %s",
                     (T0 + timedelta(minutes=5), in_flight))
    for _ in range(2):
        assert finished(bridge.cycle(), "etl") == 1


def test_alive_dag_serves_its_run_counters_at_zero_before_its_first_finish(
        airflow_db: AirflowDb, make_bridge: BridgeFactory) -> None:
    """increase() sees no rise on a series' first sample: a DAG's first failure after the
    bridge started must land on a series that was already there, at 0. Known DAGs get
    zeros of the gauges of now for queued and running work only."""
    af = airflow_db.writer
    TaskWriter(af).dag("quiet", paused=False)
    bridge = make_bridge(airflow_db.url, lookback="0")
    scrape = bridge.cycle()
    assert scrape.series(FINISHED) == {
        frozenset({("dag_id", "quiet"), ("state", state), ("run_type", run_type)}): 0.0
        for state in ("success", "failed") for run_type in ("scheduled", "manual")}
    af.complete_run("quiet", logical_date=T0, state="failed")
    scrape = bridge.cycle()
    assert finished(scrape, "quiet", "failed") == 1
    assert finished(scrape, "quiet", "success") == 0
    assert scrape.series("airflow_task_instances") == {
        frozenset({("dag_id", "quiet"), ("state", state)}): 0.0
        for state in ("queued", "running")}


@pytest.mark.parametrize("lookback", ["0", "all"])
def test_id_in_flight_at_first_start_cleared_and_finished_again_counts_twice(
        airflow_db: AirflowDb, pg: Postgres, make_bridge: BridgeFactory, lookback: str) -> None:
    """A run still uncommitted at the first start lands below the reconcile window's
    first id (and, with lookback 0, below the backfill's start): once it has appeared,
    a clear and a second finish between two cycles must still be re-read."""
    af = airflow_db.writer
    now = datetime.now(UTC).replace(microsecond=0)
    with psycopg.connect(pg.libpq(airflow_db.name)) as slow:
        in_flight = af.insert_run(slow, "etl", run_type="scheduled",
                                  logical_date=now - timedelta(minutes=30), state="running",
                                  queued_at=now - timedelta(minutes=30),
                                  start_date=now - timedelta(minutes=29))
        later = af.create_run("etl", logical_date=now - timedelta(minutes=20),
                              at=now - timedelta(minutes=20))
        assert later > in_flight
        bridge = make_bridge(airflow_db.url, lookback=lookback)
        bridge.cycle()
        slow.execute("UPDATE dag_run SET state = 'success', end_date = %s WHERE id = %s",
                     (now - timedelta(minutes=10), in_flight))
    assert finished(bridge.cycle(), "etl", "success") == 1
    af.clear_run(in_flight, now - timedelta(minutes=6))
    af.start_run(in_flight, now - timedelta(minutes=5))
    af.finish_run(in_flight, "failed", now - timedelta(minutes=4))
    for _ in range(2):
        scrape = bridge.cycle()
        assert finished(scrape, "etl", "success") == 1
        assert finished(scrape, "etl", "failed") == 1, "the second finish was not re-read"
