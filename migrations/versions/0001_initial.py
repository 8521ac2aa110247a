"""Initial cache schema: watermarks, tracked runs, folded runs and metric totals.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bridge_state",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "tracked_dag_run",
        sa.Column("dag_run_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
    )
    op.create_table(
        "dag_run_id_gap",
        sa.Column("dag_run_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("missing_since", sa.DateTime, nullable=False),
    )
    op.create_table(
        "dag_run_finished",
        sa.Column("dag_run_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("end_key", sa.String(40), primary_key=True),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("run_type", sa.String(50), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("logical_date", sa.DateTime),
        sa.Column("queued_at", sa.DateTime),
        sa.Column("start_date", sa.DateTime),
        sa.Column("end_date", sa.DateTime),
        sa.Column("duration_seconds", sa.Float),
        sa.Column("folded_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_dag_run_finished_dag_end", "dag_run_finished", ["dag_id", "end_date"])
    for name in ("metric_counter", "metric_gauge"):
        op.create_table(
            name,
            sa.Column("metric", sa.String(200), primary_key=True),
            sa.Column("labels", sa.Text, primary_key=True),
            sa.Column("value", sa.Float, nullable=False),
        )
    op.create_table(
        "metric_histogram",
        sa.Column("metric", sa.String(200), primary_key=True),
        sa.Column("labels", sa.Text, primary_key=True),
        sa.Column("sum", sa.Float, nullable=False),
        sa.Column("count", sa.Float, nullable=False),
    )
    op.create_table(
        "metric_histogram_bucket",
        sa.Column("metric", sa.String(200), primary_key=True),
        sa.Column("labels", sa.Text, primary_key=True),
        sa.Column("le", sa.Float, primary_key=True),
        sa.Column("count", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for name in ("metric_histogram_bucket", "metric_histogram", "metric_gauge", "metric_counter",
                 "dag_run_finished", "dag_run_id_gap", "tracked_dag_run", "bridge_state"):
        op.drop_table(name)
