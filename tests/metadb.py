"""Writes dag_run rows the way Airflow's scheduler, CLI and `airflow db clean` do.

Columns and transitions follow the real 2.7 - 3.3 schemas loaded from the fixtures:
queued (queued_at set) -> running (start_date set) -> success/failed (end_date set);
clearing a finished run puts it back to queued with start/end reset and
clear_number + 1 (2.8+); `db clean` deletes old rows (task instances cascade).
Columns that only some releases have are written where the schema has them.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

T0 = datetime(2026, 11, 1, tzinfo=UTC)


class AirflowWriter:
    def __init__(self, dsn: str, version: str) -> None:
        self.conn: psycopg.Connection[Any] = psycopg.connect(dsn, autocommit=True)
        self.version = version
        self.v3 = version.startswith("3.")
        self.date_column = "logical_date" if self.v3 else "execution_date"
        self.has_history = self.has_table("task_instance_history")
        self.has_clear_number = "clear_number" in self.columns("dag_run")
        self.has_created_at = "created_at" in self.columns("dag_run")

    def has_table(self, table: str) -> bool:
        return self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone() == (
            True,)

    def columns(self, table: str) -> set[str]:
        rows = self.conn.execute("SELECT column_name FROM information_schema.columns "
                                 "WHERE table_schema = current_schema() AND table_name = %s",
                                 (table,)).fetchall()
        return {str(row[0]) for row in rows}

    def close(self) -> None:
        self.conn.close()

    def insert_run(self, conn: psycopg.Connection[Any], dag_id: str, *, run_type: str,
                   logical_date: datetime | None, state: str, queued_at: datetime | None,
                   start_date: datetime | None = None, end_date: datetime | None = None,
                   run_id: str | None = None) -> int:
        stamp = logical_date or queued_at or T0
        run_id = run_id or f"{run_type}__{stamp.isoformat()}"
        values: dict[str, Any] = {
            "dag_id": dag_id, "run_id": run_id, "run_type": run_type, "state": state,
            "queued_at": queued_at, "start_date": start_date, "end_date": end_date,
            "data_interval_start": logical_date, "data_interval_end": logical_date,
            "updated_at": queued_at or start_date,
        }
        if self.has_clear_number:  # 2.8 declares it NOT NULL without a server default
            values["clear_number"] = 0
        if self.v3:
            values.update(logical_date=logical_date, run_after=stamp,
                          triggered_by="test" if run_type == "manual" else None)
            if self.has_created_at:  # 3.2+
                values["created_at"] = queued_at or start_date
        else:
            if logical_date is None:
                raise ValueError("Airflow 2 requires an execution_date")
            values.update(execution_date=logical_date, external_trigger=run_type == "manual")
        columns = ", ".join(values)
        marks = ", ".join(f"%({k})s" for k in values)
        row = conn.execute(f"INSERT INTO dag_run ({columns}) VALUES ({marks}) RETURNING id",
                           values).fetchone()
        assert row is not None
        return int(row[0])

    def create_run(self, dag_id: str, *, logical_date: datetime | None,
                   run_type: str = "scheduled", at: datetime | None = None,
                   run_id: str | None = None) -> int:
        """The scheduler (or a trigger) creates a queued run."""
        at = at or (logical_date or T0) + timedelta(minutes=1)
        return self.insert_run(self.conn, dag_id, run_type=run_type, logical_date=logical_date,
                               state="queued", queued_at=at, run_id=run_id)

    def start_run(self, run: int, at: datetime) -> None:
        self.conn.execute("UPDATE dag_run SET state = 'running', start_date = %s, updated_at = %s "
                          "WHERE id = %s", (at, at, run))

    def finish_run(self, run: int, state: str, at: datetime) -> None:
        self.conn.execute("UPDATE dag_run SET state = %s, end_date = %s, updated_at = %s "
                          "WHERE id = %s", (state, at, at, run))

    def complete_run(self, dag_id: str, *, logical_date: datetime, state: str = "success",
                     run_type: str = "scheduled", start_after: float = 60.0,
                     duration: float = 300.0) -> int:
        """A run created, started and finished between two bridge cycles."""
        queued = logical_date + timedelta(seconds=30)
        run = self.create_run(dag_id, logical_date=logical_date, run_type=run_type, at=queued)
        started = queued + timedelta(seconds=start_after)
        self.start_run(run, started)
        self.finish_run(run, state, started + timedelta(seconds=duration))
        return run

    def clear_run(self, run: int, at: datetime) -> None:
        """`airflow tasks clear` on a finished run: back to queued, counted again later."""
        bump = ", clear_number = clear_number + 1" if self.has_clear_number else ""
        self.conn.execute(
            "UPDATE dag_run SET state = 'queued', queued_at = %s, start_date = NULL, "
            f"end_date = NULL, last_scheduling_decision = NULL{bump}, "
            "updated_at = %s WHERE id = %s", (at, at, run))

    def db_clean(self, before: datetime) -> int:
        """`airflow db clean --clean-before-timestamp`: old runs are deleted."""
        cur = self.conn.execute(f"DELETE FROM dag_run WHERE {self.date_column} < %s", (before,))
        return cur.rowcount

    def dags_test_run(self, dag_id: str, logical_date: datetime, end: datetime) -> int:
        """`airflow dags test`: created running, start_date = logical date, no queued_at."""
        return self.insert_run(self.conn, dag_id, run_type="manual", logical_date=logical_date,
                               state="success", queued_at=None, start_date=logical_date,
                               end_date=end)


def fill_history(af: AirflowWriter, runs_per_dag: int = 2000, dags: int = 100,
                 active: int = 50, tasks_per_run: int = 0, jobs: int = 0) -> None:
    """A large history written set-based, so the planner has a real choice.

    dag_run rows (10 % failed), `tasks_per_run` task instances per run (the first try of
    every third task failed and was retried, archived in task_instance_history; task_1
    pushes an XCom `{"rows": n}`), and `jobs` old LocalTaskJob rows; the newest `active`
    runs are left running.
    """
    date_column = af.date_column
    extra_cols, extra_vals = ("run_after, ", "t, ") if af.v3 else ("", "")
    if af.has_clear_number:
        extra_cols, extra_vals = extra_cols + "clear_number, ", extra_vals + "0, "
    af.conn.execute(f"""
        INSERT INTO dag_run (dag_id, run_id, run_type, state, {date_column}, {extra_cols}
                             queued_at, start_date, end_date, data_interval_end)
        SELECT 'dag_' || d, 'scheduled__' || n, 'scheduled',
               CASE WHEN n % 10 = 0 THEN 'failed' ELSE 'success' END, t, {extra_vals}
               t + interval '1 minute', t + interval '2 minutes', t + interval '9 minutes', t
        FROM generate_series(1, {dags}) AS d, generate_series(1, {runs_per_dag}) AS n,
             LATERAL (SELECT timestamptz '2020-01-01' + n * interval '1 hour' AS t) AS ts
    """)
    af.conn.execute(f"""
        UPDATE dag_run SET state = 'running', end_date = NULL
        WHERE id IN (SELECT id FROM dag_run ORDER BY id DESC LIMIT {active})""")
    if tasks_per_run:
        ti_id, ti_val = ("id, ", "gen_random_uuid(), ") if af.v3 else ("", "")
        af.conn.execute(f"""
            INSERT INTO task_instance ({ti_id}dag_id, run_id, task_id, map_index, state,
                try_number, max_tries, pool, pool_slots, queued_dttm, start_date, end_date,
                duration)
            SELECT {ti_val}r.dag_id, r.run_id, 'task_' || k, -1,
                   CASE WHEN r.state = 'running' THEN 'running'
                        WHEN r.state = 'failed' AND k = 1 THEN 'failed' ELSE 'success' END,
                   CASE WHEN k % 3 = 0 THEN 2 ELSE 1 END, 2, 'default_pool', 1,
                   r.start_date, r.start_date + interval '10 seconds',
                   r.start_date + interval '70 seconds', 60
            FROM dag_run r, generate_series(1, {tasks_per_run}) AS k
        """)
        th_id, th_val = ("task_instance_id, ", "gen_random_uuid(), ") if af.v3 else ("", "")
        if af.has_history:
            af.conn.execute(f"""
                INSERT INTO task_instance_history ({th_id}dag_id, run_id, task_id, map_index,
                    state, try_number, max_tries, pool, pool_slots, start_date, end_date)
                SELECT {th_val}dag_id, run_id, task_id, map_index, 'failed', 1, 2, pool, 1,
                       start_date, end_date
                FROM task_instance WHERE try_number = 2
            """)
        value = ("jsonb_build_object('rows', length(r.run_id))" if af.v3 else
                 "convert_to('{\"rows\": ' || length(r.run_id) || '}', 'UTF8')")
        af.conn.execute(f"""
            INSERT INTO xcom (dag_run_id, task_id, map_index, key, dag_id, run_id, value,
                              timestamp)
            SELECT r.id, 'task_1', -1, 'return_value', r.dag_id, r.run_id, {value}, r.start_date
            FROM dag_run r
        """)
        for table in ("task_instance", "task_instance_history", "xcom"):
            if af.has_table(table):
                af.conn.execute(f"ANALYZE {table}")
    if jobs:
        af.conn.execute(f"""
            INSERT INTO job (dag_id, state, job_type, start_date, end_date, latest_heartbeat,
                             hostname)
            SELECT 'dag_1', 'success', 'LocalTaskJob', t, t, t, 'worker'
            FROM generate_series(1, {jobs}) AS n,
                 LATERAL (SELECT timestamptz '2020-01-01' + n * interval '1 minute' AS t) AS ts
        """)
        af.conn.execute("ANALYZE job")
    af.conn.execute("ANALYZE dag_run")


TI_WHERE = "dag_id = %(d)s AND run_id = %(r)s AND task_id = %(t)s AND map_index = %(m)s"


class TaskWriter:
    """Task instances, tries, pools, jobs and DAG rows, as the scheduler writes them."""

    def __init__(self, af: AirflowWriter) -> None:
        self.af = af
        self.conn = af.conn

    def _run(self, run: int) -> tuple[str, str]:
        row = self.conn.execute("SELECT dag_id, run_id FROM dag_run WHERE id = %s",
                                (run,)).fetchone()
        assert row is not None
        return str(row[0]), str(row[1])

    def add(self, run: int, task_id: str, *, map_index: int = -1, pool: str = "default_pool",
            state: str | None = "scheduled") -> None:
        dag_id, run_id = self._run(run)
        values: dict[str, Any] = {
            "dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index,
            "state": state, "try_number": 1, "max_tries": 3, "pool": pool, "pool_slots": 1}
        if self.af.v3:
            values["id"] = uuid.uuid4()
        columns = ", ".join(values)
        marks = ", ".join(f"%({k})s" for k in values)
        self.conn.execute(f"INSERT INTO task_instance ({columns}) VALUES ({marks})", values)

    def set(self, run: int, task_id: str, state: str, at: datetime, *,
            map_index: int = -1) -> None:
        """queued sets queued_dttm, running sets start_date, final states set end_date."""
        dag_id, run_id = self._run(run)
        where = "dag_id = %(d)s AND run_id = %(r)s AND task_id = %(t)s AND map_index = %(m)s"
        sets = ["state = %(s)s", "updated_at = %(at)s"]
        if state == "queued":
            sets.append("queued_dttm = %(at)s")
        elif state == "running":
            sets += ["start_date = %(at)s", "end_date = NULL"]
        elif state in ("success", "failed", "skipped", "upstream_failed", "up_for_retry",
                       "removed"):
            sets += ["end_date = %(at)s",
                     "duration = extract(epoch FROM %(at)s - coalesce(start_date, %(at)s))"]
        self.conn.execute(f"UPDATE task_instance SET {', '.join(sets)} WHERE {where}",
                          {"d": dag_id, "r": run_id, "t": task_id, "m": map_index, "s": state,
                           "at": at})

    def run_try(self, run: int, task_id: str, final: str, at: datetime, *, map_index: int = -1,
                queued_for: float = 5.0, runs_for: float = 60.0) -> datetime:
        """queued -> running -> final; returns the end time."""
        self.set(run, task_id, "queued", at, map_index=map_index)
        started = at + timedelta(seconds=queued_for)
        self.set(run, task_id, "running", started, map_index=map_index)
        end = started + timedelta(seconds=runs_for)
        self.set(run, task_id, final, end, map_index=map_index)
        return end

    def archive_try(self, run: int, task_id: str, *, map_index: int = -1) -> None:
        """Copy the current try to task_instance_history, as a clear or a failure does
        (2.10+; older releases keep no history)."""
        if not self.af.has_history:
            return
        dag_id, run_id = self._run(run)
        cols = ("task_id, dag_id, run_id, map_index, try_number, start_date, end_date, "
                "duration, state, max_tries, pool, pool_slots, queued_dttm")
        history_cols = ("task_instance_id, " if self.af.v3 else "") + cols
        select_cols = ("gen_random_uuid(), " if self.af.v3 else "") + cols
        self.conn.execute(f"INSERT INTO task_instance_history ({history_cols}) "
                          f"SELECT {select_cols} FROM task_instance WHERE {TI_WHERE}",
                          {"d": dag_id, "r": run_id, "t": task_id, "m": map_index})

    def next_try(self, run: int, task_id: str, *, map_index: int = -1) -> None:
        """The scheduler archives the finished try and schedules the next one (retry or
        clear): the old row goes to task_instance_history, try_number + 1. (Before 2.10
        Airflow raised try_number when the try started, not when it was scheduled; a cycle
        sees the same rows once the try runs.)"""
        self.archive_try(run, task_id, map_index=map_index)
        dag_id, run_id = self._run(run)
        params = {"d": dag_id, "r": run_id, "t": task_id, "m": map_index}
        where = TI_WHERE
        self.conn.execute("UPDATE task_instance SET try_number = try_number + 1, "
                          "state = 'scheduled', start_date = NULL, end_date = NULL, "
                          f"duration = NULL, queued_dttm = NULL WHERE {where}", params)

    def clear_task(self, run: int, task_id: str, *, map_index: int = -1) -> None:
        """clear_task_instances: the try archived (2.10+) and its state reset; try number
        and dates stay, and on 3.x the task instance gets a new id."""
        self.archive_try(run, task_id, map_index=map_index)
        dag_id, run_id = self._run(run)
        new_id = ", id = %(id)s" if self.af.v3 else ""
        self.conn.execute(f"UPDATE task_instance SET state = NULL{new_id} WHERE {TI_WHERE}",
                          {"d": dag_id, "r": run_id, "t": task_id, "m": map_index,
                           "id": uuid.uuid4()})

    def pool(self, name: str, slots: int, include_deferred: bool = False) -> None:
        self.conn.execute("INSERT INTO slot_pool (pool, slots, description, include_deferred) "
                          "VALUES (%s, %s, '', %s)", (name, slots, include_deferred))

    def heartbeat(self, job_type: str, at: datetime, state: str = "running") -> None:
        self.conn.execute("INSERT INTO job (job_type, state, start_date, latest_heartbeat, "
                          "hostname) VALUES (%s, %s, %s, %s, 'host')",
                          (job_type, state, at, at))

    def dag(self, dag_id: str, paused: bool, owners: str | None = None,
            tags: tuple[str, ...] = ()) -> None:
        self._dag_row(dag_id, paused)
        self.conn.execute("UPDATE dag SET owners = %s WHERE dag_id = %s", (owners, dag_id))
        for tag in tags:
            self.conn.execute("INSERT INTO dag_tag (name, dag_id) VALUES (%s, %s)", (tag, dag_id))

    def _dag_row(self, dag_id: str, paused: bool) -> None:
        columns = self.af.columns("dag")
        values: dict[str, Any] = {"dag_id": dag_id, "is_paused": paused, "max_active_tasks": 16,
                                  "has_task_concurrency_limits": False}
        optional = {"is_active": True, "is_stale": False, "max_consecutive_failed_dag_runs": 0,
                    "bundle_name": "dags-folder", "timetable_type": "cron",
                    "partition_mapper_info": "{}"}
        values.update({k: v for k, v in optional.items() if k in columns})
        if "bundle_name" in values:
            self.conn.execute("INSERT INTO dag_bundle (name, active) VALUES ('dags-folder', true) "
                              "ON CONFLICT DO NOTHING")
        marks = ", ".join(f"%({k})s" for k in values)
        self.conn.execute(f"INSERT INTO dag ({', '.join(values)}) VALUES ({marks})", values)

    def import_error(self, filename: str, at: datetime) -> None:
        self.conn.execute("INSERT INTO import_error (timestamp, filename, stacktrace) "
                          "VALUES (%s, %s, 'Traceback ...')", (at, filename))


def push_xcom(tasks: TaskWriter, run: int, task_id: str, value: object, *,
              map_index: int = -1, key: str = "return_value", raw: bytes | None = None) -> None:
    """An XCom as Airflow stores it: JSON text in bytea (2.x; `raw` bytes as given, e.g. a
    pickle) or jsonb (3.x; `raw` as JSON text). The task instance must exist (foreign key)."""
    dag_id, run_id = tasks._run(run)
    cast = "%s"
    if tasks.af.v3 and raw is not None:  # JSON text that Python's encoder cannot write
        stored: object = raw.decode()
        cast = "CAST(%s AS jsonb)"
    elif tasks.af.v3:
        stored = Jsonb(value)
    else:
        stored = raw if raw is not None else json.dumps(value).encode()
    tasks.conn.execute(
        "INSERT INTO xcom (dag_run_id, task_id, map_index, key, dag_id, run_id, value, "
        f"timestamp) VALUES (%s, %s, %s, %s, %s, %s, {cast}, %s)",
        (run, task_id, map_index, key, dag_id, run_id, stored, T0))
