"""DAG-run metrics against real Airflow 2.10 and 3.x schemas: exact counts across cycles."""

from __future__ import annotations

from datetime import timedelta

from tests.conftest import AirflowDb, BridgeFactory, Scrape
from tests.metadb import T0

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
