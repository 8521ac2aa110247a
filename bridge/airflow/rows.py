"""Rows read from the metadata DB, as the bridge sees them (one shape for every version)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

ACTIVE_RUN_STATES = ("queued", "running")
FINISHED_RUN_STATES = ("success", "failed")


@dataclass(frozen=True)
class DagRun:
    id: int
    dag_id: str
    run_id: str
    state: str | None
    run_type: str | None
    logical_date: datetime | None
    queued_at: datetime | None
    start_date: datetime | None
    end_date: datetime | None
    data_interval_end: datetime | None = None
    run_after: datetime | None = None
    clear_number: int | None = None  # times the run was cleared (2.8+; None before)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_RUN_STATES


@dataclass(frozen=True, slots=True)
class TaskInstance:
    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    state: str | None
    try_number: int
    start_date: datetime | None
    end_date: datetime | None
    duration: float | None
    queued_dttm: datetime | None
    ti_id: str | None = None  # 3.x only


@dataclass(frozen=True)
class FailedTry:
    """A try archived in task_instance_history after it failed and was tried again."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int


@dataclass(frozen=True)
class StoredXcom:
    """One xcom row; `value` is None when the row is larger than the size limit."""

    dag_run_id: int
    task_id: str
    map_index: int
    key: str
    size: int
    value: object


@dataclass(frozen=True)
class CurrentState:
    """Small tables read whole each cycle: pools, heartbeats, DAG flags, import errors."""

    pools: dict[str, tuple[int, bool]]  # pool -> (slots, deferred tasks take slots)
    pool_usage: dict[tuple[str, str], int]  # (pool, running|queued|deferred) -> slots
    heartbeats: dict[str, datetime]  # job_type -> latest heartbeat
    paused: dict[str, bool]  # every DAG Airflow still parses -> paused
    import_errors: int
    owners: dict[str, str] = field(default_factory=dict)  # dag_id -> `owners` as Airflow keeps it
    tags: dict[str, tuple[str, ...]] = field(default_factory=dict)  # dag_id -> sorted tags
    # A digest of the DAG rows and tags above, computed by the database: while it stays,
    # they are not read again.
    dags_digest: str = ""
