"""/metrics from memory: metric families are built once per refresh and served as they are.

A scrape only hands over the families of the latest snapshot; it never touches a
database and costs O(series).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bridge.cache import Aggregates, Labels
from bridge.metrics import BY_NAME, CATALOG, MetricSpec

ACTIVE_RUN_STATES = ("queued", "running")


@dataclass(frozen=True)
class Health:
    """The bridge's view of itself; counters here restart with the process."""

    version: str
    airflow_version: str = "unknown"
    metadb_up: bool = False
    refreshes: Mapping[tuple[str, str], int] = field(default_factory=dict)
    durations: Mapping[str, float] = field(default_factory=dict)
    last_success: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """The last good data plus current health: everything a scrape will see."""

    aggregates: Aggregates
    active_runs: Mapping[tuple[str, str], int]
    health: Health


EMPTY = Aggregates({}, {}, {})


def _help(spec: MetricSpec, interval: float) -> str:
    return f"{spec.help} Refreshed every {interval:g}s by airflow-metrics-bridge."


def _family(spec: MetricSpec, interval: float) -> Metric:
    kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
             "histogram": HistogramMetricFamily}
    family: Metric = kinds[spec.kind](spec.name, _help(spec, interval), labels=spec.labels)
    return family


def _values(spec: MetricSpec, labels: Labels) -> list[str]:
    given = dict(labels)
    return [given.get(name, "") for name in spec.labels]


def build_families(snapshot: Snapshot, interval: float) -> list[Metric]:
    """Turn a snapshot into families, one per catalog entry, in catalog order."""
    # Any: the three family classes take different add_metric arguments.
    families: dict[str, Any] = {spec.name: _family(spec, interval) for spec in CATALOG}
    agg = snapshot.aggregates
    for name, series in agg.counters.items():
        spec = BY_NAME.get(name)
        if spec is not None:
            for labels, value in sorted(series.items()):
                families[name].add_metric(_values(spec, labels), value)
    for name, series in agg.gauges.items():
        spec = BY_NAME.get(name)
        if spec is not None:
            for labels, value in sorted(series.items()):
                families[name].add_metric(_values(spec, labels), value)
    for name, hists in agg.histograms.items():
        spec = BY_NAME.get(name)
        if spec is not None:
            for labels, hist in sorted(hists.items()):
                buckets = [(_le(le), count) for le, count in hist.buckets]
                families[name].add_metric(_values(spec, labels), buckets, hist.sum)

    known_dags = {v for series in agg.counters.get("airflow_dag_run_finished_total", {})
                  for k, v in series if k == "dag_id"}
    known_dags |= {dag_id for dag_id, _ in snapshot.active_runs}
    for dag_id in sorted(known_dags):
        for state in ACTIVE_RUN_STATES:
            families["airflow_dag_runs"].add_metric(
                [dag_id, state], snapshot.active_runs.get((dag_id, state), 0))

    health = snapshot.health
    families["airflow_bridge_metadb_up"].add_metric([], 1.0 if health.metadb_up else 0.0)
    for (job, outcome), count in sorted(health.refreshes.items()):
        families["airflow_bridge_refresh_total"].add_metric([job, outcome], count)
    for job, seconds in sorted(health.durations.items()):
        families["airflow_bridge_refresh_duration_seconds"].add_metric([job], seconds)
    for job, stamp in sorted(health.last_success.items()):
        families["airflow_bridge_refresh_last_success_timestamp_seconds"].add_metric([job], stamp)
    families["airflow_bridge_build_info"].add_metric([health.version, health.airflow_version], 1)
    return list(families.values())


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class SnapshotCollector(Collector):
    """Serves the families of the latest published snapshot.

    The rendered exposition of a snapshot is kept per format, so repeated scrapes
    between two refreshes cost a dictionary lookup.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._families: tuple[Metric, ...] = ()
        self._rendered: dict[str, bytes] = {}

    def publish(self, snapshot: Snapshot) -> None:
        families = tuple(build_families(snapshot, self.interval))
        with self._lock:
            self._families = families
            self._rendered = {}

    def rendered(self, key: str, render: Callable[[Collector], bytes]) -> bytes:
        """The snapshot rendered by `render`, computed once per snapshot and `key`."""
        with self._lock:
            cached = self._rendered.get(key)
            families = self._families
            cache = self._rendered
        if cached is None:
            cached = render(_Frozen(families))
            with self._lock:
                cache[key] = cached
        return cached

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families: Iterable[Metric] = self._families
        yield from families


class _Frozen(Collector):
    def __init__(self, families: tuple[Metric, ...]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families
