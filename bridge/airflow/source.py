"""The Airflow metadata DB, read-only: connections, the reading transaction and the queries.

Every statement here is a bounded index lookup (a partial state index, a primary-key
range, or a primary-key list); none of them grows with the history Airflow keeps.
Sessions are read-only and snapshot-consistent, and timeouts are set per transaction
with `set_config(..., true)` so they also hold behind PgBouncer in transaction mode.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from bridge.airflow.rows import CurrentState, DagRun, FailedTry, StoredXcom, TaskInstance
from bridge.airflow.schema import AirflowSchema, detect_schema
from bridge.config import Settings
from bridge.errors import SourceError, first_line

CHUNK = 1000
HEARTBEAT_JOB_TYPES = ("SchedulerJob", "TriggererJob", "DagProcessorJob")


def create_source_engine(settings: Settings) -> Engine:
    """A small pool of read-only sessions; no `options=` at connect (PgBouncer rejects it)."""
    return create_engine(
        settings.require_airflow_url(),
        pool_size=settings.pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "application_name": settings.application_name,
            "connect_timeout": max(1, int(settings.connect_timeout)),
            "prepare_threshold": None,  # no server-side prepared statements behind poolers
        },
    )


class Reader:
    """Queries over one read-only, snapshot-consistent transaction."""

    def __init__(self, conn: Connection, schema: AirflowSchema) -> None:
        self.conn = conn
        self.schema = schema
        self.rows_read = 0
        self._columns = (
            "id, dag_id, run_id, state, run_type, "
            f"{schema.logical_date_column} AS logical_date, queued_at, start_date, end_date, "
            f"data_interval_end, {schema.run_after_column} AS run_after, "
            f"{schema.clear_number_column} AS clear_number"
        )

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[Row[Any]]:
        """Run one statement; any database failure becomes a SourceError."""
        try:
            rows = list(self.conn.execute(text(sql), params or {}))
        except SQLAlchemyError as exc:
            raise SourceError(first_line(exc)) from exc
        self.rows_read += len(rows)
        return rows

    def _runs(self, sql: str, params: dict[str, Any] | None = None) -> list[DagRun]:
        return [DagRun(**row._mapping) for row in self.execute(sql, params)]

    def active_runs(self) -> list[DagRun]:
        # Literal states so the planner can match the partial indexes
        # idx_dag_run_running_dags / idx_dag_run_queued_dags.
        return self._runs(
            f"SELECT {self._columns} FROM dag_run WHERE state = 'running' UNION ALL "
            f"SELECT {self._columns} FROM dag_run WHERE state = 'queued'"
        )

    def runs_after(self, after_id: int, limit: int) -> list[DagRun]:
        return self._runs(
            f"SELECT {self._columns} FROM dag_run WHERE id > :after ORDER BY id LIMIT :limit",
            {"after": after_id, "limit": limit},
        )

    def runs_by_id(self, ids: Sequence[int]) -> list[DagRun]:
        if not ids:
            return []
        return self._runs(f"SELECT {self._columns} FROM dag_run WHERE id = ANY(:ids)",
                          {"ids": list(ids)})

    def runs_finished_since(self, floor_id: int, since: datetime) -> list[DagRun]:
        """Finished runs with id >= `floor_id` that ended at or after `since`.

        A primary-key range scan bounded by the reconcile window; the end-date filter
        keeps what crosses the wire to the few runs that finished lately.
        """
        return self._runs(
            f"SELECT {self._columns} FROM dag_run WHERE id >= :floor AND end_date >= :since "
            "AND state IN ('success', 'failed') ORDER BY id", {"floor": floor_id, "since": since})

    def run_ids_between(self, low: int, high: int) -> set[int]:
        """Ids present in (low, high], by primary-key range."""
        rows = self.execute("SELECT id FROM dag_run WHERE id > :low AND id <= :high",
                            {"low": low, "high": high})
        return {int(row.id) for row in rows}

    def task_instances(self, runs: Sequence[tuple[str, str]]) -> list[TaskInstance]:
        """Task instances of the given (dag_id, run_id) runs, through the ti_dag_run index."""
        found: list[TaskInstance] = []
        for start in range(0, len(runs), CHUNK):
            chunk = runs[start:start + CHUNK]
            rows = self.execute(
                "SELECT ti.dag_id, ti.task_id, ti.run_id, ti.map_index, ti.state, "
                "coalesce(ti.try_number, 0) AS try_number, ti.start_date, ti.end_date, "
                f"ti.duration, ti.queued_dttm, {self.schema.ti_id} AS ti_id "
                "FROM task_instance ti "
                "JOIN unnest(CAST(:dags AS varchar[]), CAST(:runs AS varchar[])) "
                "AS k(dag_id, run_id) ON ti.dag_id = k.dag_id AND ti.run_id = k.run_id",
                {"dags": [d for d, _ in chunk], "runs": [r for _, r in chunk]})
            found += [TaskInstance(*row) for row in rows]  # type: ignore[call-arg]  # field order
        return found

    def failed_tries(self, keys: Sequence[tuple[str, str, str, int]]) -> list[FailedTry]:
        """Archived failed tries of the given task instances (dag, task, run, map index)."""
        found: list[FailedTry] = []
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start:start + CHUNK]
            rows = self.execute(
                "SELECT h.dag_id, h.task_id, h.run_id, h.map_index, h.try_number "
                "FROM task_instance_history h "
                "JOIN unnest(CAST(:dags AS varchar[]), CAST(:tasks AS varchar[]), "
                "CAST(:runs AS varchar[]), CAST(:maps AS integer[])) "
                "AS k(dag_id, task_id, run_id, map_index) ON h.dag_id = k.dag_id "
                "AND h.task_id = k.task_id AND h.run_id = k.run_id AND h.map_index = k.map_index "
                "WHERE h.state IN ('failed', 'up_for_retry')",
                {"dags": [k[0] for k in chunk], "tasks": [k[1] for k in chunk],
                 "runs": [k[2] for k in chunk], "maps": [k[3] for k in chunk]})
            found += [FailedTry(**row._mapping) for row in rows]
        return found

    def xcoms(self, run_ids: Sequence[int], task_ids: Sequence[str], keys: Sequence[str],
              max_bytes: int) -> list[StoredXcom]:
        """The wanted XComs of the given runs, by the (dag_run_id, ...) primary key.

        Values over `max_bytes` are not transferred; their size is.
        """
        size = self.schema.xcom_size
        found: list[StoredXcom] = []
        for start in range(0, len(run_ids), CHUNK):
            rows = self.execute(
                f"SELECT dag_run_id, task_id, map_index, key, coalesce({size}, 0) AS size, "
                f"CASE WHEN {size} <= :max THEN {self.schema.xcom_value} END AS value FROM xcom "
                "WHERE dag_run_id = ANY(:ids) AND task_id = ANY(:tasks) AND key = ANY(:keys)",
                {"ids": list(run_ids[start:start + CHUNK]), "tasks": list(task_ids),
                 "keys": list(keys), "max": max_bytes})
            found += [StoredXcom(**row._mapping) for row in rows]
        return found

    def current_state(self, previous: CurrentState | None = None) -> CurrentState:
        """Pools, heartbeats, import errors, alive DAGs; `previous`: the last cycle's."""
        pools = {str(r.pool): (int(r.slots), bool(r.include_deferred)) for r in self.execute(
            "SELECT pool, coalesce(slots, 0) AS slots, coalesce(include_deferred, false) "
            "AS include_deferred FROM slot_pool WHERE pool IS NOT NULL")}
        usage = {(str(r.pool), str(r.state)): int(r.slots) for r in self.execute(
            "SELECT pool, state, sum(pool_slots) AS slots FROM task_instance "
            "WHERE state IN ('running', 'queued', 'deferred') GROUP BY pool, state")}
        heartbeats: dict[str, datetime] = {}
        for job_type in HEARTBEAT_JOB_TYPES:
            # One backward probe of the (job_type, latest_heartbeat) index per type.
            rows = self.execute("SELECT max(latest_heartbeat) AS beat FROM job "
                                f"WHERE job_type = '{job_type}'")
            if rows and rows[0].beat is not None:
                heartbeats[job_type] = rows[0].beat
        errors = int(self.execute("SELECT count(*) AS n FROM import_error")[0].n)
        paused, owners, tags, digest = self._dags(previous)
        return CurrentState(pools, usage, heartbeats, paused, errors, owners=owners, tags=tags,
                            dags_digest=digest)

    def _dags(self, previous: CurrentState | None) -> tuple[
            dict[str, bool], dict[str, str], dict[str, tuple[str, ...]], str]:
        """Alive DAGs: paused flag, owners, tags. The database digests them first, so a
        cycle reads one row, not one per DAG and tag, while none of them changed."""
        alive = f"FROM dag WHERE {self.schema.dag_alive}"
        tag_digest = "(SELECT string_agg(dag_id || '/' || name, '|' ORDER BY dag_id, name) " \
            "FROM dag_tag)" if self.schema.dag_tag_readable else "''"
        digest = str(self.execute(
            "SELECT encode(sha256(convert_to(coalesce((SELECT string_agg(dag_id || '/' || "
            "coalesce(is_paused, false)::text || '/' || coalesce(owners, ''), '|' "
            f"ORDER BY dag_id) {alive}), '') || '#' || coalesce({tag_digest}, ''), 'UTF8')), "
            "'hex') AS digest")[0].digest)
        if previous is not None and previous.dags_digest == digest:
            return previous.paused, previous.owners, previous.tags, digest
        dags = self.execute("SELECT dag_id, coalesce(is_paused, false) AS is_paused, "
                            f"coalesce(owners, '') AS owners {alive}")
        tags: dict[str, list[str]] = {}
        if self.schema.dag_tag_readable:
            for row in self.execute("SELECT dag_id, name FROM dag_tag ORDER BY dag_id, name"):
                tags.setdefault(str(row.dag_id), []).append(str(row.name))
        return ({str(r.dag_id): bool(r.is_paused) for r in dags},
                {str(r.dag_id): str(r.owners) for r in dags},
                {dag_id: tuple(names) for dag_id, names in tags.items()}, digest)

    def max_run_id(self) -> int:
        return int(self.execute("SELECT coalesce(max(id), 0) FROM dag_run")[0][0])

    def first_run_id_since(self, since: datetime) -> int:
        """Lowest id whose run was created at or after `since`, by binary search on the key.

        Ids grow with creation time, so this finds the backfill start in about log2(N)
        primary-key probes instead of scanning the table by date.
        """
        low = int(self.execute("SELECT coalesce(min(id), 1) FROM dag_run")[0][0])
        high = self.max_run_id() + 1
        probe = ("SELECT id, coalesce(queued_at, start_date, end_date) AS created FROM dag_run "
                 "WHERE id >= :id ORDER BY id LIMIT 1")
        while low < high:
            middle = (low + high) // 2
            rows = self.execute(probe, {"id": middle})
            if not rows:
                high = middle
                continue
            found_id, created = rows[0].id, rows[0].created
            if created is not None and created >= since:
                high = middle
            else:
                low = int(found_id) + 1
        return low


class Source:
    """The metadata DB: one engine, a detected schema, read-only snapshots."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or create_source_engine(settings)
        self._schema: AirflowSchema | None = None

    @property
    def schema(self) -> AirflowSchema:
        """The detected schema; detected on first use, under the timeouts like any read."""
        if self._schema is None:
            with self.reading() as reader:
                return reader.schema
        return self._schema

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A read-only, repeatable-read transaction whose first statement sets the
        server-side timeouts: nothing runs before them, not even schema detection, so a
        lock held on any table Airflow owns cannot hang the bridge."""
        try:
            conn = self.engine.connect().execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True)
        except SQLAlchemyError as exc:
            raise SourceError(first_line(exc)) from exc
        with conn:
            try:
                transaction = conn.begin()
                conn.execute(text(
                    "SELECT set_config('statement_timeout', :st, true), "
                    "set_config('lock_timeout', :lt, true)"),
                    {"st": f"{int(self.settings.statement_timeout * 1000)}",
                     "lt": f"{int(self.settings.lock_timeout * 1000)}"})
            except SQLAlchemyError as exc:
                raise SourceError(first_line(exc)) from exc
            with transaction:
                yield conn

    @contextmanager
    def reading(self) -> Iterator[Reader]:
        """A snapshot of the metadata DB to read one cycle from, schema checked first."""
        with self.transaction() as conn:
            try:
                schema = self._schema
                if schema is None or str(conn.execute(text(
                        "SELECT version_num FROM alembic_version")).scalar()) != schema.revision:
                    schema = self._schema = detect_schema(conn)  # first read, or migrated
            except SQLAlchemyError as exc:
                raise SourceError(first_line(exc)) from exc
            yield Reader(conn, schema)

    def dispose(self) -> None:
        self.engine.dispose()
