"""The bridge's own metrics: is the metadata DB reachable, how refreshes go, what is left out.

These counters live in the process (they restart with it); the Airflow totals live in the
cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bridge.metric import MetricSpec, Series

REFRESH_JOB = "metadb"  # the refresh_job label: one cycle reads the metadata DB

METADB_UP = MetricSpec(
    "airflow_bridge_metadb_up", "gauge",
    "1 if the last refresh reached the Airflow metadata DB, else 0.")
REFRESHES = MetricSpec(
    "airflow_bridge_refresh_total", "counter",
    "Refresh cycles run since the bridge started, by outcome.", ("refresh_job", "outcome"))
REFRESH_DURATION = MetricSpec(
    "airflow_bridge_refresh_duration_seconds", "gauge",
    "Duration of the latest refresh cycle.", ("refresh_job",))
LAST_SUCCESS = MetricSpec(
    "airflow_bridge_refresh_last_success_timestamp_seconds", "gauge",
    "End time of the latest successful refresh cycle, in Unix seconds.", ("refresh_job",))
SERIES_DROPPED = MetricSpec(
    "airflow_bridge_series_dropped", "gauge",
    "Series the max_series cap leaves out of /metrics now (per-task families only).")
BUILD_INFO = MetricSpec(
    "airflow_bridge_build_info", "gauge",
    "Always 1; labels give the bridge version and the detected Airflow version.",
    ("version", "airflow_version"))
SPECS = (METADB_UP, REFRESHES, REFRESH_DURATION, LAST_SUCCESS, SERIES_DROPPED, BUILD_INFO)


@dataclass(frozen=True)
class Health:
    """The bridge's view of itself at one moment."""

    version: str
    airflow_version: str = "unknown"
    metadb_up: bool = False
    refreshes: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (job, outcome)
    durations: Mapping[str, float] = field(default_factory=dict)
    last_success: Mapping[str, float] = field(default_factory=dict)


def series(health: Health, dropped_now: int) -> dict[str, Series]:
    """The samples of every family here; `dropped_now` is what the snapshot being built
    leaves out (a gauge: it falls back to 0 once the cap no longer bites)."""
    return {
        METADB_UP.name: {(): 1.0 if health.metadb_up else 0.0},
        REFRESHES.name: {
            (("outcome", o), ("refresh_job", j)): n for (j, o), n in health.refreshes.items()},
        REFRESH_DURATION.name: {(("refresh_job", j),): s for j, s in health.durations.items()},
        LAST_SUCCESS.name: {(("refresh_job", j),): s for j, s in health.last_success.items()},
        SERIES_DROPPED.name: {(): dropped_now},
        BUILD_INFO.name: {
            (("airflow_version", health.airflow_version), ("version", health.version)): 1.0},
    }
