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
    MetricSpec("airflow_bridge_build_info", "gauge",
               "Always 1; labels give the bridge version and the detected Airflow version.",
               ("version", "airflow_version")),
)

BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOG}
