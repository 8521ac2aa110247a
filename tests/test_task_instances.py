"""Task-instance metrics on real Airflow 2.10 and 3.x schemas: exact counts per try."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from bridge.demo.dump import load_dump
from tests.conftest import AirflowDb, BridgeFactory, Scrape
from tests.metadb import T0, TaskWriter
from tests.postgres import AIRFLOW_VERSIONS, CAPTURED_VERSIONS, FIXTURES

TI_FINISHED = "airflow_task_instance_finished_total"
RETRIES = "airflow_task_instance_retries_total"


@pytest.fixture
def tasks(airflow_db: AirflowDb) -> TaskWriter:
    return TaskWriter(airflow_db.writer)


def running_run(db: AirflowDb, dag_id: str = "etl", day: int = 0) -> int:
    run = db.writer.create_run(dag_id, logical_date=T0 + timedelta(days=day))
    db.writer.start_run(run, T0 + timedelta(days=day, minutes=1))
    return run


def ti(scrape: Scrape, task_id: str, state: str, dag_id: str = "etl") -> float | None:
    return scrape.value(TI_FINISHED, dag_id=dag_id, task_id=task_id, state=state)


def test_retries_then_success(airflow_db: AirflowDb, tasks: TaskWriter,
                              make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(airflow_db.url)
    run = running_run(airflow_db)
    tasks.add(run, "load")
    at = T0 + timedelta(minutes=2)
    at = tasks.run_try(run, "load", "up_for_retry", at)
    scrape = bridge.cycle()
    assert scrape.value("airflow_task_instances", dag_id="etl", state="up_for_retry") == 1
    assert ti(scrape, "load", "failed") is None
    tasks.next_try(run, "load")
    at = tasks.run_try(run, "load", "up_for_retry", at + timedelta(minutes=5))
    tasks.next_try(run, "load")
    end = tasks.run_try(run, "load", "success", at + timedelta(minutes=5), queued_for=3,
                        runs_for=30)
    airflow_db.writer.finish_run(run, "success", end)
    for _ in range(2):
        scrape = bridge.cycle()
        assert ti(scrape, "load", "success") == 1
        assert ti(scrape, "load", "failed") is None
        assert scrape.value(RETRIES, dag_id="etl", task_id="load") == 2
        # Task durations are served per DAG (etl has one task): _count and _sum.
        assert scrape.value("airflow_task_instance_duration_seconds_count", dag_id="etl",
                            state="success") == 1
        assert scrape.value("airflow_task_instance_duration_seconds_sum", dag_id="etl",
                            state="success") == 30
        assert scrape.value("airflow_task_instance_queued_seconds_count", dag_id="etl") == 1
        assert scrape.value("airflow_task_instance_queued_seconds_sum", dag_id="etl") == 3
        assert scrape.value("airflow_task_instances", dag_id="etl",
                            state="up_for_retry") is None, "not zero-filled"


def test_retries_exhausted_and_branches(airflow_db: AirflowDb, tasks: TaskWriter,
                                        make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(airflow_db.url)
    run = running_run(airflow_db)
    for task in ("extract", "branch_a", "branch_b", "report"):
        tasks.add(run, task)
    at = tasks.run_try(run, "extract", "up_for_retry", T0 + timedelta(minutes=2))
    tasks.next_try(run, "extract")
    at = tasks.run_try(run, "extract", "failed", at)
    tasks.set(run, "branch_a", "skipped", at)
    tasks.set(run, "branch_b", "upstream_failed", at)
    tasks.set(run, "report", "upstream_failed", at)
    airflow_db.writer.finish_run(run, "failed", at)
    scrape = bridge.cycle()
    assert ti(scrape, "extract", "failed") == 1
    assert scrape.value(RETRIES, dag_id="etl", task_id="extract") == 1
    assert ti(scrape, "branch_a", "skipped") == 1
    assert ti(scrape, "branch_b", "upstream_failed") == 1
    assert ti(scrape, "report", "upstream_failed") == 1
    assert len(scrape.series(TI_FINISHED)) == 4
    assert bridge.cycle().airflow() == scrape.airflow()


def test_long_run_shows_an_early_failure_within_one_cycle(
        airflow_db: AirflowDb, tasks: TaskWriter, make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(airflow_db.url)
    run = running_run(airflow_db)
    tasks.add(run, "first")
    tasks.add(run, "slow")
    tasks.run_try(run, "first", "failed", T0 + timedelta(minutes=2))
    tasks.set(run, "slow", "running", T0 + timedelta(minutes=3))
    scrape = bridge.cycle()
    assert ti(scrape, "first", "failed") == 1
    assert scrape.value("airflow_task_instances", dag_id="etl", state="running") == 1
    assert scrape.value("airflow_dag_runs", dag_id="etl", state="running") == 1
    tasks.set(run, "slow", "success", T0 + timedelta(hours=6))
    airflow_db.writer.finish_run(run, "failed", T0 + timedelta(hours=6))
    scrape = bridge.cycle()
    assert ti(scrape, "first", "failed") == 1
    assert ti(scrape, "slow", "success") == 1
    assert scrape.value("airflow_task_instances", dag_id="etl", state="running") == 0


def test_mapped_and_deferred_tasks(airflow_db: AirflowDb, tasks: TaskWriter,
                                   make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(airflow_db.url)
    run = running_run(airflow_db)
    for index in range(3):
        tasks.add(run, "score", map_index=index)
    tasks.add(run, "wait_sensor")
    tasks.set(run, "wait_sensor", "deferred", T0 + timedelta(minutes=2))
    for index in range(3):
        tasks.run_try(run, "score", "success", T0 + timedelta(minutes=2), map_index=index)
    scrape = bridge.cycle()
    assert ti(scrape, "score", "success") == 3
    assert scrape.value("airflow_task_instances", dag_id="etl", state="deferred") == 1
    assert all("map_index" not in dict(labels) for labels in scrape.series(TI_FINISHED))
    tasks.run_try(run, "wait_sensor", "success", T0 + timedelta(minutes=9))
    airflow_db.writer.finish_run(run, "success", T0 + timedelta(minutes=20))
    scrape = bridge.cycle()
    assert ti(scrape, "score", "success") == 3
    assert ti(scrape, "wait_sensor", "success") == 1
    assert scrape.value("airflow_task_instances", dag_id="etl", state="deferred") is None, \
        "not zero-filled"


def test_every_state_that_is_not_final_is_work_of_now(
        airflow_db: AirflowDb, tasks: TaskWriter, make_bridge: BridgeFactory) -> None:
    """TaskInstanceState of every supported release, final states aside: a task waiting
    for a human (3.3), one restarting after a clear while it ran, ... each is counted."""
    not_final = ("scheduled", "queued", "running", "restarting", "deferred", "up_for_retry",
                 "up_for_reschedule", "awaiting_input", "shutdown")
    bridge = make_bridge(airflow_db.url)
    run = running_run(airflow_db)
    for state in not_final:
        tasks.add(run, f"t_{state}")
        tasks.set(run, f"t_{state}", state, T0 + timedelta(minutes=2))
    scrape = bridge.cycle()
    assert {dict(labels)["state"]: value
            for labels, value in scrape.series("airflow_task_instances").items()} == \
        dict.fromkeys(not_final, 1.0)
    assert scrape.series(TI_FINISHED) == {}


def test_task_cleared_in_an_old_finished_run(airflow_db: AirflowDb, tasks: TaskWriter,
                                             make_bridge: BridgeFactory) -> None:
    af = airflow_db.writer
    bridge = make_bridge(airflow_db.url)
    run = running_run(airflow_db)
    tasks.add(run, "load")
    end = tasks.run_try(run, "load", "failed", T0 + timedelta(minutes=2))
    af.finish_run(run, "failed", end)
    assert ti(bridge.cycle(), "load", "failed") == 1

    af.clear_run(run, T0 + timedelta(days=30))
    tasks.next_try(run, "load")
    bridge.cycle()
    af.start_run(run, T0 + timedelta(days=30, minutes=1))
    end = tasks.run_try(run, "load", "success", T0 + timedelta(days=30, minutes=1))
    af.finish_run(run, "success", end)
    scrape = bridge.cycle()
    assert ti(scrape, "load", "failed") == 1
    assert ti(scrape, "load", "success") == 1
    assert scrape.value(RETRIES, dag_id="etl", task_id="load") == 1, \
        "the failed try that was cleared was tried again"
    assert scrape.value("airflow_dag_run_finished_total", dag_id="etl", state="success",
                        run_type="scheduled") == 1


def test_pools_fill_and_drain(airflow_db: AirflowDb, tasks: TaskWriter,
                              make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(airflow_db.url)
    tasks.pool("gpu", 2)
    run = running_run(airflow_db)
    for name in ("a", "b", "c"):
        tasks.add(run, name, pool="gpu")
    tasks.set(run, "a", "running", T0)
    tasks.set(run, "b", "running", T0)
    tasks.set(run, "c", "queued", T0)

    def pool(scrape: Scrape) -> dict[str, float | None]:
        return {s: scrape.value("airflow_pool_slots", pool="gpu", state=s)
                for s in ("open", "running", "queued", "deferred", "total")}

    assert pool(bridge.cycle()) == {"open": 0, "running": 2, "queued": 1, "deferred": 0,
                                    "total": 2}
    for name in ("a", "b"):
        tasks.set(run, name, "success", T0 + timedelta(minutes=1))
    tasks.set(run, "c", "running", T0 + timedelta(minutes=1))
    assert pool(bridge.cycle()) == {"open": 1, "running": 1, "queued": 0, "deferred": 0,
                                    "total": 2}
    tasks.set(run, "c", "success", T0 + timedelta(minutes=2))
    scrape = bridge.cycle()
    assert pool(scrape) == {"open": 2, "running": 0, "queued": 0, "deferred": 0, "total": 2}
    assert scrape.value("airflow_pool_slots", pool="default_pool", state="total") == 128
    airflow_db.writer.conn.execute("ALTER TABLE slot_pool ALTER COLUMN slots DROP NOT NULL")
    airflow_db.writer.conn.execute("UPDATE slot_pool SET slots = NULL WHERE pool = 'gpu'")
    assert pool(bridge.cycle())["total"] == 0, "a NULL slots value (nullable in 2.x) is 0"


def test_heartbeats_paused_dags_and_import_errors(airflow_db: AirflowDb, tasks: TaskWriter,
                                                  make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(airflow_db.url)
    tasks.heartbeat("SchedulerJob", T0 - timedelta(hours=1), state="failed")
    tasks.heartbeat("SchedulerJob", T0)
    tasks.heartbeat("TriggererJob", T0 + timedelta(seconds=5))
    tasks.dag("etl", paused=False, owners="data-eng", tags=("team:data", "nightly"))
    tasks.dag("old_report", paused=True)
    tasks.import_error("dags/broken.py", T0)
    scrape = bridge.cycle()
    assert scrape.series("airflow_dag_info") == {
        frozenset({("dag_id", "etl"), ("owners", "data-eng"), ("tags", "nightly,team:data")}): 1,
        frozenset({("dag_id", "old_report"), ("owners", ""), ("tags", "")}): 1}
    beats = scrape.series("airflow_job_last_heartbeat_timestamp_seconds")
    assert beats == {frozenset({("job_type", "SchedulerJob")}): T0.timestamp(),
                     frozenset({("job_type", "TriggererJob")}): T0.timestamp() + 5}
    assert scrape.value("airflow_dag_paused", dag_id="etl") == 0
    assert scrape.value("airflow_dag_paused", dag_id="old_report") == 1
    assert scrape.value("airflow_dag_import_errors") == 1
    # A dead scheduler: no new heartbeat, so the timestamp stays and ages.
    assert bridge.cycle().series("airflow_job_last_heartbeat_timestamp_seconds") == beats
    # DAG rows are read again only when their digest changes, and then every change shows.
    rows_idle = bridge.refresher.last_rows_read
    airflow_db.writer.conn.execute("UPDATE dag SET is_paused = true, owners = 'ml' "
                                   "WHERE dag_id = 'etl'")
    airflow_db.writer.conn.execute("DELETE FROM dag_tag WHERE name = 'nightly'")
    scrape = bridge.cycle()
    assert scrape.value("airflow_dag_paused", dag_id="etl") == 1
    assert scrape.series("airflow_dag_info") == {
        frozenset({("dag_id", "etl"), ("owners", "ml"), ("tags", "team:data")}): 1,
        frozenset({("dag_id", "old_report"), ("owners", ""), ("tags", "")}): 1}
    assert bridge.refresher.last_rows_read > rows_idle, "the DAG rows were read again"
    bridge.cycle()
    assert bridge.refresher.last_rows_read == rows_idle, "unchanged: one digest row, no DAG rows"


def test_captures_are_those_of_the_captured_releases() -> None:
    captured = {path.name.removeprefix("capture-").removesuffix(".sql")
                for path in FIXTURES.glob("capture-*.sql")}
    assert captured == set(CAPTURED_VERSIONS) and captured <= set(AIRFLOW_VERSIONS)


@pytest.mark.parametrize("airflow_version", CAPTURED_VERSIONS)
def test_runs_captured_from_real_airflow(airflow_db: AirflowDb, make_bridge: BridgeFactory) -> None:
    """`airflow dags test` runs of the example DAGs, as real Airflow wrote them."""
    load_dump(airflow_db.writer.conn, FIXTURES / f"capture-{airflow_db.version}.sql")
    scrape = make_bridge(airflow_db.url).cycle()
    v3 = airflow_db.version.startswith("3.")
    for dag_id in ("daily_fetch_bike_data", "daily_prediction", "monitor_and_fine_tune"):
        assert scrape.value("airflow_dag_run_finished_total", dag_id=dag_id, state="success",
                            run_type="manual") == 3
    assert scrape.value("airflow_dag_run_finished_total", dag_id="xcom_shapes",
                        state="failed" if v3 else "success", run_type="manual") == 3
    assert scrape.series("airflow_dag_run_duration_seconds_count") == {}, \
        "dags test runs start at their logical date: no honest duration"
    assert ti(scrape, "times_ten", "success", "xcom_shapes") == 9
    assert ti(scrape, "flaky", "success", "xcom_shapes") == 3
    assert scrape.value(RETRIES, dag_id="xcom_shapes", task_id="flaky") == 3
    assert ti(scrape, "return_nan", "failed" if v3 else "success", "xcom_shapes") == 3
    assert ti(scrape, "fine_tune_model", "success", "monitor_and_fine_tune") == 3
    assert sum(scrape.series(TI_FINISHED).values()) == 3 * 6 + 3 * 8 + 9
    assert scrape.value("airflow_dag_paused", dag_id="xcom_shapes") == 1
    assert scrape.value("airflow_dag_paused", dag_id="daily_prediction") == 0


def test_failed_try_never_tried_again_is_not_a_retry(airflow_db: AirflowDb, tasks: TaskWriter,
                                                     make_bridge: BridgeFactory) -> None:
    """Try 1 failed and was retried; try 2 failed, was archived, and its run timed out
    before a third try: one retry, not two."""
    bridge = make_bridge(airflow_db.url)
    run = running_run(airflow_db)
    tasks.add(run, "load")
    at = tasks.run_try(run, "load", "up_for_retry", T0 + timedelta(minutes=2))
    tasks.next_try(run, "load")
    at = tasks.run_try(run, "load", "up_for_retry", at + timedelta(minutes=5))
    tasks.archive_try(run, "load")
    tasks.set(run, "load", "skipped", at + timedelta(minutes=1))  # the run timed out
    airflow_db.writer.finish_run(run, "failed", at + timedelta(minutes=1))
    for _ in range(2):
        scrape = bridge.cycle()
        assert scrape.value(RETRIES, dag_id="etl", task_id="load") == 1
        assert ti(scrape, "load", "skipped") == 1


def test_final_state_committed_before_its_end_date_counts_once(
        airflow_db: AirflowDb, tasks: TaskWriter, make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(airflow_db.url)
    run = running_run(airflow_db)
    tasks.add(run, "branch_b")
    tasks.add(run, "after")
    airflow_db.writer.conn.execute(
        "UPDATE task_instance SET state = 'skipped', end_date = NULL WHERE task_id = 'branch_b'")
    assert ti(bridge.cycle(), "branch_b", "skipped") is None, "not until its end date is written"
    tasks.set(run, "branch_b", "skipped", T0 + timedelta(minutes=3))
    assert ti(bridge.cycle(), "branch_b", "skipped") == 1
    airflow_db.writer.conn.execute(  # a final state whose end date never comes
        "UPDATE task_instance SET state = 'removed', end_date = NULL WHERE task_id = 'after'")
    assert ti(bridge.cycle(), "after", "removed") is None
    airflow_db.writer.finish_run(run, "success", T0 + timedelta(minutes=4))
    for _ in range(2):
        scrape = bridge.cycle()
        assert ti(scrape, "branch_b", "skipped") == 1
        assert ti(scrape, "after", "removed") == 1, "counted with its run's final read"


def failed_upstream(db: AirflowDb, tasks: TaskWriter) -> tuple[int, datetime]:
    """A running run whose `extract` failed and whose `load` is upstream_failed; the end."""
    run = running_run(db)
    tasks.add(run, "extract")
    tasks.add(run, "load")
    end = tasks.run_try(run, "extract", "failed", T0 + timedelta(minutes=2))
    tasks.set(run, "load", "upstream_failed", end)
    return run, end


def test_cleared_task_failing_upstream_again_without_a_new_try_counts_again(
        airflow_db: AirflowDb, tasks: TaskWriter, make_bridge: BridgeFactory) -> None:
    """Airflow keeps try number and end date of a task set upstream_failed again after a
    clear; the bridge saw it cleared, so the second outcome counts."""
    af = airflow_db.writer
    bridge = make_bridge(airflow_db.url)
    run, end = failed_upstream(airflow_db, tasks)
    af.finish_run(run, "failed", end)
    bridge.cycle()
    af.clear_run(run, end + timedelta(minutes=10))
    tasks.next_try(run, "extract")
    af.conn.execute("UPDATE task_instance SET state = NULL WHERE task_id = 'load'")
    scrape = bridge.cycle()  # the run is queued again, its tasks reset
    assert ti(scrape, "load", "upstream_failed") == 1
    af.start_run(run, end + timedelta(minutes=11))
    end2 = tasks.run_try(run, "extract", "failed", end + timedelta(minutes=11))
    af.conn.execute("UPDATE task_instance SET state = 'upstream_failed' WHERE task_id = 'load'")
    af.finish_run(run, "failed", end2)
    for _ in range(2):
        scrape = bridge.cycle()
        assert ti(scrape, "extract", "failed") == 2
        assert ti(scrape, "load", "upstream_failed") == 2
        assert scrape.value("airflow_dag_run_finished_total", dag_id="etl", state="failed",
                            run_type="scheduled") == 2


def test_tasks_cleared_in_a_running_run_count_again_without_a_clear_number(
        airflow_db: AirflowDb, tasks: TaskWriter, make_bridge: BridgeFactory) -> None:
    """Clearing tasks of a run that is still running leaves the run's clear_number at 0
    (on Airflow 2 nothing else tells of the clear): a cycle that saw the task reset lets
    its next outcome count, even with the same try number and end date."""
    bridge = make_bridge(airflow_db.url)
    run, end = failed_upstream(airflow_db, tasks)
    scrape = bridge.cycle()
    assert (ti(scrape, "extract", "failed"), ti(scrape, "load", "upstream_failed")) == (1, 1)
    tasks.next_try(run, "extract")  # cleared: the run stays running, clear_number 0
    tasks.clear_task(run, "load")
    scrape = bridge.cycle()  # the tasks reset
    assert ti(scrape, "load", "upstream_failed") == 1
    tasks.run_try(run, "extract", "failed", end + timedelta(minutes=1))
    tasks.set(run, "load", "upstream_failed", end)  # the same try and end date as before
    for _ in range(2):
        scrape = bridge.cycle()
        assert ti(scrape, "extract", "failed") == 2
        assert ti(scrape, "load", "upstream_failed") == 2, "the second outcome was dropped"


@pytest.mark.parametrize("second", ["upstream_failed", "success"])
def test_clear_and_an_outcome_with_the_same_try_and_end_between_two_cycles(
        airflow_db: AirflowDb, tasks: TaskWriter, make_bridge: BridgeFactory,
        second: str) -> None:
    """A cleared task set upstream_failed again keeps try number and end date, whether it
    was upstream_failed (after a failed upstream) or success before. With no cycle between
    the clear and the new outcome, only the new task instance id of 3.x tells them apart:
    there both outcomes count; 2.x rows look exactly as before (the documented case)."""
    af = airflow_db.writer
    bridge = make_bridge(airflow_db.url)
    recent = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)  # as Airflow dates
    run = af.create_run("etl", logical_date=recent)
    af.start_run(run, recent + timedelta(minutes=1))
    tasks.add(run, "extract")
    tasks.add(run, "load")
    first = "failed" if second == "upstream_failed" else "success"
    end = tasks.run_try(run, "extract", first, recent + timedelta(minutes=2))
    if first == "failed":
        tasks.set(run, "load", "upstream_failed", end)
    else:
        end = tasks.run_try(run, "load", "success", end)
    af.finish_run(run, first, end)
    bridge.cycle()
    af.clear_run(run, end + timedelta(minutes=10))  # all of this between two cycles
    tasks.clear_task(run, "extract")
    tasks.clear_task(run, "load")
    af.conn.execute("UPDATE task_instance SET try_number = try_number + 1 "  # rescheduled
                    "WHERE task_id = 'extract'")
    af.start_run(run, end + timedelta(minutes=11))
    end2 = tasks.run_try(run, "extract", "failed", end + timedelta(minutes=11))
    af.conn.execute("UPDATE task_instance SET state = 'upstream_failed' WHERE task_id = 'load'")
    af.finish_run(run, "failed", end2)
    v3 = airflow_db.version.startswith("3.")
    for _ in range(2):
        scrape = bridge.cycle()
        runs = scrape.value("airflow_dag_run_finished_total", dag_id="etl", state="failed",
                            run_type="scheduled")
        if first == "failed":
            assert (ti(scrape, "extract", "failed"), runs) == (2, 2)
            assert ti(scrape, "load", "upstream_failed") == (2 if v3 else 1)
        else:
            assert (ti(scrape, "extract", "success"), ti(scrape, "extract", "failed")) == (1, 1)
            assert (ti(scrape, "load", "success"), runs) == (1, 1)
            assert ti(scrape, "load", "upstream_failed") == (1 if v3 else None)


def test_outcomes_folded_before_keys_had_ids_are_not_counted_again(
        airflow_db: AirflowDb, tasks: TaskWriter, make_bridge: BridgeFactory) -> None:
    """A cache of an earlier release keyed 3.x outcomes without the task instance id: the
    same outcome, read again with its id, must not count a second time."""
    bridge = make_bridge(airflow_db.url)
    run = running_run(airflow_db)
    tasks.add(run, "load")
    tasks.run_try(run, "load", "success", T0 + timedelta(minutes=2))
    assert ti(bridge.cycle(), "load", "success") == 1
    with bridge.cache.engine.begin() as conn:  # the key as an earlier release wrote it
        rows = conn.execute(text("UPDATE task_instance_finished SET end_key = "
                                 "substr(end_key, 1, instr(end_key, '/') - 1) "
                                 "WHERE end_key LIKE '%/%'")).rowcount
    assert rows == (1 if airflow_db.version.startswith("3.") else 0)
    for _ in range(2):
        assert ti(bridge.cycle(), "load", "success") == 1


def test_tasks_left_alone_by_a_clear_are_not_counted_again(
        airflow_db: AirflowDb, tasks: TaskWriter, make_bridge: BridgeFactory) -> None:
    af = airflow_db.writer
    bridge = make_bridge(airflow_db.url)
    run = running_run(airflow_db)
    tasks.add(run, "first")
    tasks.add(run, "second")
    tasks.run_try(run, "first", "success", T0 + timedelta(minutes=2))
    end = tasks.run_try(run, "second", "failed", T0 + timedelta(minutes=2))
    af.finish_run(run, "failed", end)
    bridge.cycle()
    af.clear_run(run, end + timedelta(minutes=1))  # only `second` is cleared
    tasks.next_try(run, "second")
    bridge.cycle()
    af.start_run(run, end + timedelta(minutes=2))
    end2 = tasks.run_try(run, "second", "success", end + timedelta(minutes=2))
    af.finish_run(run, "success", end2)
    for _ in range(2):
        scrape = bridge.cycle()
        assert ti(scrape, "first", "success") == 1
        assert ti(scrape, "second", "failed") == 1
        assert ti(scrape, "second", "success") == 1
