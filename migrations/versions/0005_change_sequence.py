"""A change sequence on the totals, so that a bridge reads only what changed; business
gauges that go absent.

Every cycle that changes totals takes the next number of `totals.seq` (in `bridge_state`,
under the cycle lock) and stamps the rows it writes with it. A bridge holds the totals in
memory and, before each cycle, reads by index only the rows stamped after the last
number it knows: what another bridge sharing the cache wrote meanwhile. Rows written
before this revision carry 0 and are read once, at start.

`metric_latest.absent`: the newest run of a business gauge gave no usable value, so the
series is not served until a run gives one (its `value` is then meaningless). The view
`report_latest_business_values` leaves such rows out, as `/metrics` does.

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


LATEST_VIEW = """
    CREATE VIEW report_latest_business_values AS
    SELECT metric, labels, value, 'gauge' AS kind, as_of
    FROM metric_latest{where}
    UNION ALL
    SELECT c.metric, c.labels, c.value, 'counter' AS kind,
           (SELECT max(b.end_date) FROM business_value b
            WHERE b.metric = c.metric AND b.labels = c.labels) AS as_of
    FROM metric_counter c
    WHERE c.metric IN (SELECT metric FROM business_value)"""


def upgrade() -> None:
    for table in TOTALS:
        op.add_column(table, sa.Column("seq", sa.BigInteger, nullable=False,
                                       server_default="0"))
        op.create_index(f"ix_{table}_seq", table, ["seq"])
    op.add_column("metric_latest", sa.Column("absent", sa.Boolean, nullable=False,
                                             server_default=sa.false()))
    op.execute("DROP VIEW report_latest_business_values")
    op.execute(LATEST_VIEW.format(where=" WHERE NOT absent"))


def downgrade() -> None:
    # SQLite rebuilds a table to drop a column, and refuses while a view names it.
    op.execute("DROP VIEW report_latest_business_values")
    with op.batch_alter_table("metric_latest") as batch:
        batch.drop_column("absent")
    for table in TOTALS:
        op.drop_index(f"ix_{table}_seq", table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("seq")
    op.execute(LATEST_VIEW.format(where=""))
