"""Business metric values per finished run, and the latest value of each gauge.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "business_value",
        sa.Column("dag_run_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("end_key", sa.String(40), primary_key=True),
        sa.Column("metric", sa.String(200), primary_key=True),
        sa.Column("labels", sa.Text, primary_key=True),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("logical_date", sa.DateTime),
        sa.Column("end_date", sa.DateTime),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_index("ix_business_value_metric_end", "business_value", ["metric", "end_date"])
    op.create_table(
        "metric_latest",
        sa.Column("metric", sa.String(200), primary_key=True),
        sa.Column("labels", sa.Text, primary_key=True),
        sa.Column("as_of", sa.DateTime, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("metric_latest")
    op.drop_table("business_value")
