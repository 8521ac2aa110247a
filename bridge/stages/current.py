"""Gauges of now: active runs and task instances, pool slots, heartbeats, DAG flags.

They are read fresh every cycle and replaced, never accumulated. Every DAG the bridge
knows gets an explicit zero for its queued and running runs and task instances (what
alert rules and panels read), so a DAG going idle reads 0 rather than vanishing; the
other task states are served where non-zero only, so that thousands of idle DAGs do not
cost four zero series each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bridge.airflow.rows import ACTIVE_RUN_STATES, CurrentState
from bridge.metric import Labels, MetricSpec, Series
from bridge.stages.dag_runs import DagRunDelta
from bridge.stages.task_instances import TaskInstanceDelta

ACTIVE_RUNS = MetricSpec(
    "airflow_dag_runs", "gauge", "DAG runs queued or running now.", ("dag_id", "state"))
TASK_INSTANCES = MetricSpec(
    "airflow_task_instances", "gauge",
    "Task instances of active DAG runs in a non-final state now.", ("dag_id", "state"))
POOL_SLOTS = MetricSpec(
    "airflow_pool_slots", "gauge",
    "Pool slots by state (open, running, queued, deferred, total; -1 total means unlimited).",
    ("pool", "state"))
HEARTBEAT = MetricSpec(
    "airflow_job_last_heartbeat_timestamp_seconds", "gauge",
    "Latest heartbeat of the scheduler, triggerer and DAG processor jobs, in Unix seconds.",
    ("job_type",))
DAG_PAUSED = MetricSpec(
    "airflow_dag_paused", "gauge", "1 if the DAG is paused, else 0.", ("dag_id",))
IMPORT_ERRORS = MetricSpec(
    "airflow_dag_import_errors", "gauge", "DAG files that currently fail to import.")
DAG_INFO = MetricSpec(
    "airflow_dag_info", "gauge",
    "Always 1 for each DAG Airflow parses; its owners and tags (comma-separated), to join on "
    "dag_id, e.g. to route alerts by team.", ("dag_id", "owners", "tags"))
SPECS = (ACTIVE_RUNS, TASK_INSTANCES, POOL_SLOTS, HEARTBEAT, DAG_PAUSED, IMPORT_ERRORS, DAG_INFO)
MAX_INFO_LABEL = 200  # owners and tags are free text in Airflow

# Every state of TaskInstanceState that is not final, on every supported release:
# `restarting` (cleared while running), `shutdown` (2.x, deprecated), `awaiting_input`
# (3.3: parked for a human's answer).
TASK_STATES_NOW = ("scheduled", "queued", "running", "restarting", "deferred", "up_for_retry",
                   "up_for_reschedule", "awaiting_input", "shutdown")
ZERO_FILLED_TASK_STATES = ("queued", "running")
POOL_STATES = ("running", "queued", "deferred")


@dataclass(frozen=True)
class Live:
    """Gauges of now from the latest successful cycle."""

    active_runs: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (dag, state)
    task_instances: Mapping[tuple[str, str], int] = field(default_factory=dict)
    state: CurrentState | None = None


def live(runs: DagRunDelta, tasks: TaskInstanceDelta, state: CurrentState) -> Live:
    """What one cycle saw of now."""
    return Live(
        dict(Counter((run.dag_id, str(run.state)) for run in runs.active_runs)),
        dict(Counter((ti.dag_id, str(ti.state)) for ti in tasks.instances
                     if ti.state in TASK_STATES_NOW)),
        state)


def series(now: Live, known_dags: Iterable[str]) -> dict[str, Series]:
    """The samples of every family here, with zeros for the known DAGs."""
    dags = set(known_dags) | {dag for dag, _ in now.active_runs} | \
        {dag for dag, _ in now.task_instances}
    out: dict[str, Series] = {
        ACTIVE_RUNS.name: {(("dag_id", d), ("state", s)): now.active_runs.get((d, s), 0)
                           for d in dags for s in ACTIVE_RUN_STATES},
        TASK_INSTANCES.name: {
            **{(("dag_id", d), ("state", s)): 0 for d in dags for s in ZERO_FILLED_TASK_STATES},
            **{(("dag_id", d), ("state", s)): n for (d, s), n in now.task_instances.items()}},
    }
    state = now.state
    if state is None:
        return out
    out[POOL_SLOTS.name] = _pool_slots(state)
    out[HEARTBEAT.name] = {(("job_type", job),): beat.timestamp()
                           for job, beat in state.heartbeats.items()}
    out[DAG_PAUSED.name] = {(("dag_id", d),): float(p) for d, p in state.paused.items()}
    out[IMPORT_ERRORS.name] = {(): state.import_errors}
    out[DAG_INFO.name] = {
        (("dag_id", d), ("owners", state.owners.get(d, "").strip()[:MAX_INFO_LABEL]),
         ("tags", ",".join(state.tags.get(d, ()))[:MAX_INFO_LABEL])): 1.0
        for d in state.paused}
    return out


def _pool_slots(state: CurrentState) -> Series:
    """Slots by state; `open` follows Airflow: deferred tasks hold a slot only if the pool
    says so, and an unlimited pool (-1 slots) is always open."""
    pools: dict[Labels, float] = {}
    for pool, (slots, deferred_takes_slot) in state.pools.items():
        used = {s: state.pool_usage.get((pool, s), 0) for s in POOL_STATES}
        occupied = used["running"] + used["queued"] + \
            (used["deferred"] if deferred_takes_slot else 0)
        values = {**used, "total": slots, "open": -1 if slots < 0 else max(slots - occupied, 0)}
        for name, value in values.items():
            pools[(("pool", pool), ("state", name))] = value
    return pools
