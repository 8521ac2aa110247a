"""Report views: a stable surface for SQL written by people, over the internal tables.

The tables may change shape between releases; these views keep their names and columns.
Timestamps stay naive UTC; `day` is the UTC date of `end_date`.

A later migration that rebuilds one of the underlying tables on SQLite (batch mode: copy,
drop, rename) must drop these views first and create them again afterwards: SQLite refuses
to rename a table into place while a view names it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

VIEWS = ("report_dag_runs", "report_daily_dag_runs", "report_task_instances",
         "report_business_values", "report_latest_business_values")


def _day(column: str) -> str:
    """Date truncation is the one thing SQLite and PostgreSQL spell differently."""
    if op.get_bind().dialect.name == "sqlite":
        return f"date({column})"
    return f"CAST({column} AS date)"


def _definitions() -> dict[str, str]:
    return {
        "report_dag_runs": f"""
            SELECT dag_id, run_id, run_type, state, logical_date, start_date, end_date,
                   duration_seconds, {_day("end_date")} AS day
            FROM dag_run_finished""",
        "report_daily_dag_runs": """
            SELECT dag_id, day,
                   count(*) AS runs,
                   sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS failed,
                   sum(CASE WHEN state = 'success' THEN 1 ELSE 0 END) AS succeeded,
                   CASE WHEN count(*) = 0 THEN NULL
                        ELSE CAST(sum(CASE WHEN state = 'success' THEN 1 ELSE 0 END) AS FLOAT)
                             / count(*) END AS success_rate,
                   avg(duration_seconds) AS avg_duration_seconds
            FROM report_dag_runs
            GROUP BY dag_id, day""",
        "report_task_instances": f"""
            SELECT dag_id, run_id, task_id, map_index, try_number, state, start_date,
                   end_date, duration_seconds, queued_seconds, {_day("end_date")} AS day
            FROM task_instance_finished""",
        "report_business_values": """
            SELECT metric, labels, dag_id, run_id, logical_date, end_date, value
            FROM business_value""",
        "report_latest_business_values": """
            SELECT metric, labels, value, 'gauge' AS kind, as_of
            FROM metric_latest
            UNION ALL
            SELECT c.metric, c.labels, c.value, 'counter' AS kind,
                   (SELECT max(b.end_date) FROM business_value b
                    WHERE b.metric = c.metric AND b.labels = c.labels) AS as_of
            FROM metric_counter c
            WHERE c.metric IN (SELECT metric FROM business_value)""",
    }


def upgrade() -> None:
    for name, select in _definitions().items():
        op.execute(f"CREATE VIEW {name} AS {select}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
