"""The cache's tables, as the Alembic migrations in `migrations/` create them.

The migrations own the schema; these objects mirror it for queries, and a test compares
the two. All timestamps are naive UTC. Label sets are stored as sorted JSON objects.
"""

from __future__ import annotations

import json

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)

from bridge.metric import Labels

metadata = MetaData()

bridge_state = Table(
    "bridge_state", metadata,
    Column("key", String(200), primary_key=True),
    Column("value", Text, nullable=False),
)
tracked_dag_run = Table(
    "tracked_dag_run", metadata,
    Column("dag_run_id", BigInteger, primary_key=True),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("state", String(20), nullable=False),
)
dag_run_id_gap = Table(
    "dag_run_id_gap", metadata,
    Column("dag_run_id", BigInteger, primary_key=True),
    Column("missing_since", DateTime, nullable=False),
)
dag_run_finished = Table(
    "dag_run_finished", metadata,
    Column("dag_run_id", BigInteger, primary_key=True),
    Column("end_key", String(40), primary_key=True),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("run_type", String(50), nullable=False),
    Column("state", String(20), nullable=False),
    Column("logical_date", DateTime),
    Column("queued_at", DateTime),
    Column("start_date", DateTime),
    Column("end_date", DateTime),
    Column("duration_seconds", Float),
    Column("folded_at", DateTime, nullable=False),
    Index("ix_dag_run_finished_dag_end", "dag_id", "end_date"),
)
task_instance_finished = Table(
    "task_instance_finished", metadata,
    Column("dag_run_id", BigInteger, primary_key=True),
    Column("task_id", String(250), primary_key=True),
    Column("map_index", Integer, primary_key=True),
    Column("try_number", Integer, primary_key=True),
    Column("end_key", String(40), primary_key=True),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("state", String(20), nullable=False),
    Column("start_date", DateTime),
    Column("end_date", DateTime),
    Column("duration_seconds", Float),
    Column("queued_seconds", Float),
    Column("folded_at", DateTime, nullable=False),
    Index("ix_task_instance_finished_dag_end", "dag_id", "end_date"),
)
task_instance_retry = Table(
    "task_instance_retry", metadata,
    Column("dag_run_id", BigInteger, primary_key=True),
    Column("task_id", String(250), primary_key=True),
    Column("map_index", Integer, primary_key=True),
    Column("try_number", Integer, primary_key=True),
    Column("dag_id", String(250), nullable=False),
    Column("folded_at", DateTime, nullable=False),
)
business_value = Table(
    "business_value", metadata,
    Column("dag_run_id", BigInteger, primary_key=True),
    Column("end_key", String(40), primary_key=True),
    Column("metric", String(200), primary_key=True),
    Column("labels", Text, primary_key=True),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("logical_date", DateTime),
    Column("end_date", DateTime),
    Column("value", Float, nullable=False),
    Index("ix_business_value_metric_end", "metric", "end_date"),
)
metric_latest = Table(
    "metric_latest", metadata,
    Column("metric", String(200), primary_key=True),
    Column("labels", Text, primary_key=True),
    Column("as_of", DateTime, nullable=False),
    Column("value", Float, nullable=False),
    Column("seq", BigInteger, nullable=False, server_default="0"),
    Column("absent", Boolean, nullable=False, server_default=false()),
    Index("ix_metric_latest_seq", "seq"),
)
metric_counter = Table(
    "metric_counter", metadata,
    Column("metric", String(200), primary_key=True),
    Column("labels", Text, primary_key=True),
    Column("value", Float, nullable=False),
    Column("seq", BigInteger, nullable=False, server_default="0"),
    Index("ix_metric_counter_seq", "seq"),
)
metric_gauge = Table(
    "metric_gauge", metadata,
    Column("metric", String(200), primary_key=True),
    Column("labels", Text, primary_key=True),
    Column("value", Float, nullable=False),
    Column("seq", BigInteger, nullable=False, server_default="0"),
    Index("ix_metric_gauge_seq", "seq"),
)
metric_histogram = Table(
    "metric_histogram", metadata,
    Column("metric", String(200), primary_key=True),
    Column("labels", Text, primary_key=True),
    Column("sum", Float, nullable=False),
    Column("count", Float, nullable=False),
    Column("seq", BigInteger, nullable=False, server_default="0"),
    Index("ix_metric_histogram_seq", "seq"),
)
metric_histogram_bucket = Table(
    "metric_histogram_bucket", metadata,
    Column("metric", String(200), primary_key=True),
    Column("labels", Text, primary_key=True),
    Column("le", Float, primary_key=True),
    Column("count", Float, nullable=False),
    Column("seq", BigInteger, nullable=False, server_default="0"),
    Index("ix_metric_histogram_bucket_seq", "seq"),
)


def encode_labels(labels: Labels) -> str:
    return json.dumps(dict(sorted(labels)), separators=(",", ":"), sort_keys=True)


def decode_labels(text_value: str) -> Labels:
    return tuple(sorted(json.loads(text_value).items()))
