"""The bridge's own database: watermarks, folded runs and the exact metric totals.

The schema is created and upgraded only by the Alembic migrations in `migrations/`;
the table objects below mirror it for queries. All timestamps are naive UTC.
A refresh cycle writes everything it learned in one transaction, so a crash or a
SIGTERM leaves either the whole cycle or none of it.
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import util as import_util
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]
CLAIM_CHUNK = 500

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
)
metric_latest = Table(
    "metric_latest", metadata,
    Column("metric", String(200), primary_key=True),
    Column("labels", Text, primary_key=True),
    Column("as_of", DateTime, nullable=False),
    Column("value", Float, nullable=False),
)
metric_counter = Table(
    "metric_counter", metadata,
    Column("metric", String(200), primary_key=True),
    Column("labels", Text, primary_key=True),
    Column("value", Float, nullable=False),
)
metric_gauge = Table(
    "metric_gauge", metadata,
    Column("metric", String(200), primary_key=True),
    Column("labels", Text, primary_key=True),
    Column("value", Float, nullable=False),
)
metric_histogram = Table(
    "metric_histogram", metadata,
    Column("metric", String(200), primary_key=True),
    Column("labels", Text, primary_key=True),
    Column("sum", Float, nullable=False),
    Column("count", Float, nullable=False),
)
metric_histogram_bucket = Table(
    "metric_histogram_bucket", metadata,
    Column("metric", String(200), primary_key=True),
    Column("labels", Text, primary_key=True),
    Column("le", Float, primary_key=True),
    Column("count", Float, nullable=False),
)


def encode_labels(labels: Labels) -> str:
    return json.dumps(dict(sorted(labels)), separators=(",", ":"), sort_keys=True)


def decode_labels(text_value: str) -> Labels:
    return tuple(sorted(json.loads(text_value).items()))


def utc_naive(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def migrations_path() -> Path:
    """`migrations/` of a source checkout, or the copy installed as `bridge.migrations`."""
    checkout = Path(__file__).resolve().parent.parent / "migrations"
    if (checkout / "env.py").exists():
        return checkout
    spec = import_util.find_spec("bridge.migrations")
    if spec is None or spec.origin is None:
        raise RuntimeError("the cache migrations are missing from this installation")
    return Path(spec.origin).parent


@dataclass(frozen=True)
class HistogramValue:
    """Cumulative buckets as Prometheus wants them, +Inf last."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float


@dataclass(frozen=True)
class Aggregates:
    """Everything the cache holds for /metrics, read in one go after a cycle."""

    counters: dict[str, dict[Labels, float]]
    gauges: dict[str, dict[Labels, float]]
    histograms: dict[str, dict[Labels, HistogramValue]]


@dataclass
class _Histogram:
    sum: float = 0.0
    count: float = 0.0
    buckets: dict[float, float] = field(default_factory=lambda: defaultdict(float))


class CacheTransaction:
    """Writes of one refresh cycle; metric increments are summed and written at commit."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._dialect = conn.dialect.name
        self._counters: dict[tuple[str, Labels], float] = defaultdict(float)
        self._gauges_max: dict[tuple[str, Labels], float] = {}
        self._histograms: dict[tuple[str, Labels], _Histogram] = defaultdict(_Histogram)
        self._latest: dict[tuple[str, Labels], tuple[datetime, float]] = {}

    def _insert(self, table: Table) -> Any:
        module: Any = postgresql if self._dialect == "postgresql" else sqlite
        return module.insert(table)

    def lock(self) -> None:
        """Take the cache's write lock for this transaction (a row lock on PostgreSQL, the
        database write lock on SQLite) so that refresh cycles never interleave."""
        self.set_state("cycle.lock", now_utc().isoformat())

    # -- small key/value state ------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        return self.conn.execute(
            select(bridge_state.c.value).where(bridge_state.c.key == key)).scalar()

    def set_state(self, key: str, value: str) -> None:
        stmt = self._insert(bridge_state).values(key=key, value=value)
        self.conn.execute(stmt.on_conflict_do_update(index_elements=["key"],
                                                     set_={"value": stmt.excluded.value}))

    # -- tracked runs and id gaps ---------------------------------------------------------
    def tracked_runs(self) -> dict[int, str]:
        rows = self.conn.execute(select(tracked_dag_run.c.dag_run_id, tracked_dag_run.c.state))
        return {int(run_id): str(state) for run_id, state in rows}

    def replace_tracked_runs(self, runs: Iterable[tuple[int, str, str, str]]) -> None:
        self.conn.execute(delete(tracked_dag_run))
        rows = [dict(dag_run_id=i, dag_id=d, run_id=r, state=s) for i, d, r, s in runs]
        if rows:
            self.conn.execute(tracked_dag_run.insert(), rows)

    def id_gaps(self) -> dict[int, datetime]:
        gap = dag_run_id_gap.c
        rows = self.conn.execute(select(gap.dag_run_id, gap.missing_since))
        return {int(run_id): since for run_id, since in rows}

    def replace_id_gaps(self, gaps: dict[int, datetime]) -> None:
        self.conn.execute(delete(dag_run_id_gap))
        if gaps:
            self.conn.execute(dag_run_id_gap.insert(), [
                {"dag_run_id": i, "missing_since": since} for i, since in gaps.items()])

    # -- exactly-once folding -------------------------------------------------------------
    def claim(self, table: Table, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Record rows keyed by the table's primary key; returns those not recorded before.

        This is the exactly-once step of every fold. A plain INSERT follows the lookup, so
        if another bridge sharing this cache records the same key meanwhile, the primary
        key rejects this whole cycle rather than letting both count it.
        """
        keys = [column.name for column in table.primary_key.columns]
        columns = [table.c[k] for k in keys]
        fresh: dict[tuple[Any, ...], dict[str, Any]] = {}
        for start in range(0, len(rows), CLAIM_CHUNK):
            chunk = rows[start:start + CLAIM_CHUNK]
            wanted = {tuple(row[k] for k in keys) for row in chunk}
            done = {tuple(row) for row in self.conn.execute(
                select(*columns).where(tuple_(*columns).in_(wanted)))}
            for row in chunk:
                key = tuple(row[k] for k in keys)
                if key not in done:
                    fresh.setdefault(key, row)
        if fresh:
            self.conn.execute(table.insert(), list(fresh.values()))
        return list(fresh.values())

    def add(self, metric: str, labels: Labels, amount: float = 1.0) -> None:
        self._counters[(metric, labels)] += amount

    def gauge_max(self, metric: str, labels: Labels, value: float) -> None:
        key = (metric, labels)
        self._gauges_max[key] = max(value, self._gauges_max.get(key, value))

    def latest(self, metric: str, labels: Labels, value: float, as_of: datetime) -> None:
        """A gauge that keeps the value of the newest `as_of`, whatever the folding order."""
        key = (metric, labels)
        if key not in self._latest or self._latest[key][0] <= as_of:
            self._latest[key] = (as_of, value)

    def observe(self, metric: str, labels: Labels, value: float, bounds: Sequence[float]) -> None:
        hist = self._histograms[(metric, labels)]
        hist.sum += value
        hist.count += 1
        index = bisect_left(bounds, value)
        if index < len(bounds):
            hist.buckets[bounds[index]] += 1

    def flush(self) -> None:
        for (metric, labels), amount in self._counters.items():
            self._upsert_add(metric_counter, {"metric": metric, "labels": encode_labels(labels),
                                              "value": amount}, ("value",))
        for (metric, labels), value in self._gauges_max.items():
            stmt = self._insert(metric_gauge).values(metric=metric, labels=encode_labels(labels),
                                                     value=value)
            current = metric_gauge.c.value
            self.conn.execute(stmt.on_conflict_do_update(
                index_elements=["metric", "labels"],
                set_={"value": _greatest(self._dialect, current, stmt.excluded.value)}))
        for (metric, labels), hist in self._histograms.items():
            encoded = encode_labels(labels)
            self._upsert_add(metric_histogram, {"metric": metric, "labels": encoded,
                                                "sum": hist.sum, "count": hist.count},
                             ("sum", "count"))
            for le, count in hist.buckets.items():
                self._upsert_add(metric_histogram_bucket, {"metric": metric, "labels": encoded,
                                                           "le": le, "count": count}, ("count",))
        for (metric, labels), (as_of, value) in self._latest.items():
            stmt = self._insert(metric_latest).values(
                metric=metric, labels=encode_labels(labels), as_of=as_of, value=value)
            self.conn.execute(stmt.on_conflict_do_update(
                index_elements=["metric", "labels"],
                set_={"as_of": stmt.excluded.as_of, "value": stmt.excluded.value},
                where=metric_latest.c.as_of <= stmt.excluded.as_of))
        self._counters.clear()
        self._gauges_max.clear()
        self._latest.clear()
        self._histograms.clear()

    def _upsert_add(self, table: Table, values: dict[str, Any], summed: Sequence[str]) -> None:
        stmt = self._insert(table).values(**values)
        keys = [c.name for c in table.primary_key.columns]
        self.conn.execute(stmt.on_conflict_do_update(
            index_elements=keys,
            set_={name: table.c[name] + stmt.excluded[name] for name in summed}))


def _greatest(dialect: str, left: Any, right: Any) -> Any:
    return func.greatest(left, right) if dialect == "postgresql" else func.max(left, right)


class Cache:
    def __init__(self, url: URL | str) -> None:
        self.url = url
        is_sqlite = make_url(url).get_backend_name() == "sqlite"
        self.engine: Engine = create_engine(
            url, connect_args={"timeout": 30} if is_sqlite else {}, pool_pre_ping=not is_sqlite)
        if is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def migrate(self) -> None:
        """Bring the cache schema to the newest revision (idempotent)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(migrations_path()))
        with self.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @contextmanager
    def transaction(self) -> Iterator[CacheTransaction]:
        with self.engine.begin() as conn:
            tx = CacheTransaction(conn)
            yield tx
            tx.flush()

    def aggregates(self, bounds: Mapping[str, Sequence[float]]) -> Aggregates:
        """Read every total; histograms get all configured bounds even where empty."""
        counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        histograms: dict[str, dict[Labels, HistogramValue]] = defaultdict(dict)
        with self.engine.connect() as conn:
            for metric, labels, value in conn.execute(select(metric_counter)):
                counters[metric][decode_labels(labels)] = float(value)
            for metric, labels, value in conn.execute(select(metric_gauge)):
                gauges[metric][decode_labels(labels)] = float(value)
            latest = metric_latest.c
            for metric, labels, value in conn.execute(
                    select(latest.metric, latest.labels, latest.value)):
                gauges[metric][decode_labels(labels)] = float(value)
            buckets: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
            for metric, labels, le, count in conn.execute(
                    select(metric_histogram_bucket).order_by(metric_histogram_bucket.c.le)):
                buckets[(metric, labels)].append((float(le), float(count)))
            for metric, labels, total, count in conn.execute(select(metric_histogram)):
                histograms[metric][decode_labels(labels)] = _cumulative(
                    buckets.get((metric, labels), []), bounds.get(metric, ()), float(total),
                    float(count))
        return Aggregates(dict(counters), dict(gauges), dict(histograms))

    def dispose(self) -> None:
        self.engine.dispose()


def _cumulative(buckets: list[tuple[float, float]], bounds: Sequence[float], total: float,
                count: float) -> HistogramValue:
    stored = dict(buckets)
    running = 0.0
    out: list[tuple[float, float]] = []
    for le in sorted(set(stored) | set(bounds)):
        running += stored.get(le, 0.0)
        out.append((le, running))
    out.append((float("inf"), count))
    return HistogramValue(tuple(out), total, count)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def now_utc() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
