"""The metric catalog: every family the bridge serves itself, gathered from the modules that
compute them (names are typed there, once), in the order /metrics shows them."""

from __future__ import annotations

from bridge import health
from bridge.metric import MetricSpec
from bridge.stages import business, current, dag_runs, task_instances

AIRFLOW: tuple[MetricSpec, ...] = (*dag_runs.SPECS, *task_instances.SPECS, *current.SPECS)
BRIDGE: tuple[MetricSpec, ...] = (*health.SPECS, *business.SPECS)
CATALOG: tuple[MetricSpec, ...] = (*AIRFLOW, *BRIDGE)
BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOG}
HISTOGRAMS: tuple[MetricSpec, ...] = tuple(s for s in CATALOG if s.kind == "histogram")
