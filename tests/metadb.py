"""Writes dag_run rows the way Airflow's scheduler, CLI and `airflow db clean` do.

Columns and transitions follow the real 2.10 / 3.x schemas loaded from the fixtures:
queued (queued_at set) -> running (start_date set) -> success/failed (end_date set);
clearing a finished run puts it back to queued with start/end reset and
clear_number + 1; `db clean` deletes old rows (task instances cascade).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

T0 = datetime(2026, 11, 1, tzinfo=UTC)


class AirflowWriter:
    def __init__(self, dsn: str, version: str) -> None:
        self.conn: psycopg.Connection[Any] = psycopg.connect(dsn, autocommit=True)
        self.version = version
        self.v3 = version.startswith("3.")
        self.date_column = "logical_date" if self.v3 else "execution_date"

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
        if self.v3:
            values.update(logical_date=logical_date, run_after=stamp,
                          triggered_by="test" if run_type == "manual" else None,
                          created_at=queued_at or start_date)
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
        self.conn.execute(
            "UPDATE dag_run SET state = 'queued', queued_at = %s, start_date = NULL, "
            "end_date = NULL, last_scheduling_decision = NULL, clear_number = clear_number + 1, "
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
                 active: int = 50) -> None:
    """A large dag_run table, written set-based, so the planner has a real choice."""
    date_column = af.date_column
    extra_cols, extra_vals = ("run_after, ", "t, ") if af.v3 else ("", "")
    af.conn.execute(f"""
        INSERT INTO dag_run (dag_id, run_id, run_type, state, {date_column}, {extra_cols}
                             queued_at, start_date, end_date)
        SELECT 'dag_' || d, 'scheduled__' || n, 'scheduled',
               CASE WHEN n % 10 = 0 THEN 'failed' ELSE 'success' END, t, {extra_vals}
               t + interval '1 minute', t + interval '2 minutes', t + interval '9 minutes'
        FROM generate_series(1, {dags}) AS d, generate_series(1, {runs_per_dag}) AS n,
             LATERAL (SELECT timestamptz '2020-01-01' + n * interval '1 hour' AS t) AS ts
    """)
    af.conn.execute(f"""
        UPDATE dag_run SET state = 'running', end_date = NULL
        WHERE id IN (SELECT id FROM dag_run ORDER BY id DESC LIMIT {active})""")
    af.conn.execute("ANALYZE dag_run")
