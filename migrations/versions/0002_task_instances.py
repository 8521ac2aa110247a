"""Task instances folded exactly once, and their retried tries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_instance_finished",
        sa.Column("dag_run_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("task_id", sa.String(250), primary_key=True),
        sa.Column("map_index", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("try_number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("end_key", sa.String(40), primary_key=True),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("start_date", sa.DateTime),
        sa.Column("end_date", sa.DateTime),
        sa.Column("duration_seconds", sa.Float),
        sa.Column("queued_seconds", sa.Float),
        sa.Column("folded_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_task_instance_finished_dag_end", "task_instance_finished",
                    ["dag_id", "end_date"])
    op.create_table(
        "task_instance_retry",
        sa.Column("dag_run_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("task_id", sa.String(250), primary_key=True),
        sa.Column("map_index", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("try_number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("folded_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("task_instance_retry")
    op.drop_table("task_instance_finished")
