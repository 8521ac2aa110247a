"""A change sequence on the totals, so that a bridge reads only what changed.

Every cycle that changes totals takes the next number of `totals.seq` (in `bridge_state`,
under the cycle lock) and stamps the rows it writes with it. A bridge holds the totals in
memory and, before each cycle, reads by index only the rows stamped after the last
number it knows: what another bridge sharing the cache wrote meanwhile. Rows written
before this revision carry 0 and are read once, at start.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TOTALS = ("metric_counter", "metric_gauge", "metric_latest", "metric_histogram",
          "metric_histogram_bucket")


def upgrade() -> None:
    for table in TOTALS:
        op.add_column(table, sa.Column("seq", sa.BigInteger, nullable=False,
                                       server_default="0"))
        op.create_index(f"ix_{table}_seq", table, ["seq"])


def downgrade() -> None:
    for table in TOTALS:
        op.drop_index(f"ix_{table}_seq", table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("seq")
