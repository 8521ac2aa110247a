"""The metric catalog: every name the bridge serves, its type, labels and meaning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


CATALOG: tuple[MetricSpec, ...] = (
    MetricSpec("airflow_dag_run_finished_total", "counter",
               "DAG runs that reached a final state, counted once per finish.",
               ("dag_id", "state", "run_type")),
    MetricSpec("airflow_dag_run_duration_seconds", "histogram",
               "Duration of finished DAG runs, start to end.", ("dag_id", "state")),
    MetricSpec("airflow_dag_runs", "gauge", "DAG runs queued or running now.",
               ("dag_id", "state")),
    MetricSpec("airflow_dag_run_last_finished_timestamp_seconds", "gauge",
               "End time of the latest finished DAG run, in Unix seconds.", ("dag_id", "state")),
    MetricSpec("airflow_dag_run_start_delay_seconds", "histogram",
               "Delay from when a DAG run was due (end of its data interval, or queued) to its "
               "start.", ("dag_id",)),
    MetricSpec("airflow_task_instance_finished_total", "counter",
               "Task instances that reached a terminal state, counted once per try.",
               ("dag_id", "task_id", "state")),
    MetricSpec("airflow_task_instance_retries_total", "counter",
               "Failed task tries that were tried again.", ("dag_id", "task_id")),
    MetricSpec("airflow_task_instance_duration_seconds", "histogram",
               "Duration of finished task tries, start to end.", ("dag_id", "task_id", "state")),
    MetricSpec("airflow_task_instance_queued_seconds", "histogram",
               "Time task instances waited from queued to started.", ("dag_id",)),
    MetricSpec("airflow_task_instances", "gauge",
               "Task instances of active DAG runs in a non-final state now.", ("dag_id", "state")),
    MetricSpec("airflow_pool_slots", "gauge",
               "Pool slots by state (open, running, queued, deferred, total; -1 total means "
               "unlimited).", ("pool", "state")),
    MetricSpec("airflow_job_last_heartbeat_timestamp_seconds", "gauge",
               "Latest heartbeat of the scheduler, triggerer and DAG processor jobs, in Unix "
               "seconds.", ("job_type",)),
    MetricSpec("airflow_dag_paused", "gauge", "1 if the DAG is paused, else 0.", ("dag_id",)),
    MetricSpec("airflow_dag_import_errors", "gauge", "DAG files that currently fail to import."),
    MetricSpec("airflow_bridge_metadb_up", "gauge",
               "1 if the last refresh reached the Airflow metadata DB, else 0."),
    MetricSpec("airflow_bridge_refresh_total", "counter",
               "Refresh cycles run since the bridge started, by outcome.",
               ("refresh_job", "outcome")),
    MetricSpec("airflow_bridge_refresh_duration_seconds", "gauge",
               "Duration of the latest refresh cycle.", ("refresh_job",)),
    MetricSpec("airflow_bridge_refresh_last_success_timestamp_seconds", "gauge",
               "End time of the latest successful refresh cycle, in Unix seconds.",
               ("refresh_job",)),
    MetricSpec("airflow_bridge_xcom_decode_errors_total", "counter",
               "XCom values that could not be used for a business metric, by reason; the "
               "value was skipped, never served.", ("metric", "reason")),
    MetricSpec("airflow_bridge_series_dropped_total", "counter",
               "Series left out of /metrics by the max_series cap, added up at every refresh."),
    MetricSpec("airflow_bridge_build_info", "gauge",
               "Always 1; labels give the bridge version and the detected Airflow version.",
               ("version", "airflow_version")),
)

BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOG}
