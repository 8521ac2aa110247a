"""The write side of a refresh cycle: watermarks, the exactly-once ledger, metric increments.

Everything one cycle learned is written in one transaction, so a crash or a SIGTERM leaves
either the whole cycle or none of it. `claim` is the exactly-once step of every fold;
metric increments are summed in memory and added to the totals rows at commit, in bulk;
the bridge then adds the same increments to the totals it holds in memory.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from bridge.cache.folds import EndKey, F
from bridge.cache.tables import (
    bridge_state,
    dag_run_id_gap,
    encode_labels,
    metric_counter,
    metric_gauge,
    metric_histogram,
    metric_histogram_bucket,
    metric_latest,
    tracked_dag_run,
)
from bridge.cache.totals import STATE_SEQ, Increments, stored_seq
from bridge.metric import Labels
from bridge.timeutil import naive_utc_now

CLAIM_CHUNK = 500
WRITE_CHUNK = 5000


class CacheTransaction:
    """Writes of one refresh cycle; metric increments are summed and written at commit."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._dialect = conn.dialect.name
        self.increments = Increments()
        self.seq: int | None = None  # the change sequence flush() stamped, if it wrote

    def _insert(self, table: Table) -> Any:
        module: Any = postgresql if self._dialect == "postgresql" else sqlite
        return module.insert(table)

    def lock(self) -> None:
        """Take the cache's write lock for this transaction (a row lock on PostgreSQL, the
        database write lock on SQLite) so that refresh cycles never interleave."""
        self.set_state("cycle.lock", naive_utc_now().isoformat())

    # -- small key/value state ------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        return self.conn.execute(
            select(bridge_state.c.value).where(bridge_state.c.key == key)).scalar()

    def set_state(self, key: str, value: str) -> None:
        stmt = self._insert(bridge_state).values(key=key, value=value)
        self.conn.execute(stmt.on_conflict_do_update(index_elements=["key"],
                                                     set_={"value": stmt.excluded.value}))

    # -- tracked runs and id gaps ---------------------------------------------------------
    def tracked_run_ids(self) -> set[int]:
        """Runs that were active at the end of the previous cycle."""
        return {int(i) for i in self.conn.execute(select(tracked_dag_run.c.dag_run_id)).scalars()}

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
    def claim(self, folds: Sequence[F]) -> list[F]:
        """Record `folds` (all of one table); returns those not recorded before.

        This is the exactly-once step of every fold. A plain INSERT follows the lookup, so
        if another bridge sharing this cache records the same key meanwhile, the primary
        key rejects this whole cycle rather than letting both count it.
        """
        if not folds:
            return []
        table = folds[0].table
        keys = [column.name for column in table.primary_key.columns]
        fresh: dict[tuple[Any, ...], F] = {}
        for start in range(0, len(folds), CLAIM_CHUNK):
            chunk = folds[start:start + CLAIM_CHUNK]
            wanted = {fold.key() for fold in chunk}
            done = set(self._under(table, wanted, keys))
            for fold in chunk:
                key = fold.key()
                if key not in done:
                    fresh.setdefault(key, fold)
        if fresh:
            self.conn.execute(table.insert(), [fold.row() for fold in fresh.values()])
        return list(fresh.values())

    def recorded(self, table: Table, prefixes: Sequence[tuple[Any, ...]],
                 *columns: str) -> list[tuple[Any, ...]]:
        """Rows recorded under these primary-key prefixes: each prefix, then `columns`."""
        keys = [column.name for column in table.primary_key.columns]
        found: list[tuple[Any, ...]] = []
        for start in range(0, len(prefixes), CLAIM_CHUNK):
            chunk = {tuple(p) for p in prefixes[start:start + CLAIM_CHUNK]}
            found += self._under(table, chunk, [*keys[:len(next(iter(chunk)))], *columns])
        return found

    def _under(self, table: Table, prefixes: set[tuple[Any, ...]],
               columns: Sequence[str]) -> list[tuple[Any, ...]]:
        """`columns` of the rows whose primary key starts with one of `prefixes` (as long
        as each prefix, the first of `columns`). Looked up by the key's first column, an
        index range on every database (SQLite scans a table for a list of row values),
        and narrowed here: a run has few rows."""
        if not prefixes:
            return []
        width = len(next(iter(prefixes)))
        first = table.primary_key.columns.values()[0]
        rows = self.conn.execute(select(*(table.c[c] for c in columns)).where(
            first.in_(sorted({p[0] for p in prefixes}))))
        return [tuple(row) for row in rows if tuple(row[:width]) in prefixes]

    def reopen(self, table: Table, tries: Sequence[tuple[Any, ...]]) -> int:
        """Let the next outcome of these tries be claimed again; returns how many reopened.

        `tries` are primary keys without the last column, the end key: each folded key of
        them not reopened yet is renamed to its next reopening (see `EndKey`).
        """
        keys = [column.name for column in table.primary_key.columns]
        prefix, last = [table.c[k] for k in keys[:-1]], table.c[keys[-1]]
        reopened = 0
        for start in range(0, len(tries), CLAIM_CHUNK):
            chunk = {tuple(t) for t in tries[start:start + CLAIM_CHUNK]}
            folded: dict[tuple[Any, ...], list[EndKey]] = defaultdict(list)
            for row in self._under(table, chunk, keys):
                folded[tuple(row[:-1])].append(EndKey.decode(str(row[-1])))
            for key, end_keys in folded.items():
                for end_key in (k for k in end_keys if not k.reopened):
                    self.conn.execute(table.update().where(
                        *(c == v for c, v in zip(prefix, key, strict=True)),
                        last == end_key.encode(),
                    ).values({keys[-1]: end_key.reopen(end_keys).encode()}))
                    reopened += 1
        return reopened

    # Label pairs may come in any order; totals key on them sorted by name.
    def add(self, metric: str, labels: Labels, amount: float = 1.0) -> None:
        self.increments.counters[(metric, tuple(sorted(labels)))] += amount

    def gauge_max(self, metric: str, labels: Labels, value: float) -> None:
        self.increments.keep_max(metric, tuple(sorted(labels)), value)

    def latest(self, metric: str, labels: Labels, value: float | None, as_of: datetime) -> None:
        """A gauge that keeps the value of the newest `as_of`, whatever the folding order;
        None: the run of `as_of` gave no usable value, and the series goes absent."""
        self.increments.keep_latest(metric, tuple(sorted(labels)), value, as_of)

    def observe(self, metric: str, labels: Labels, value: float, bounds: Sequence[float]) -> None:
        self.increments.observe(metric, tuple(sorted(labels)), value, bounds)

    def flush(self) -> None:
        """Add the cycle's increments to the totals rows, in bulk, stamped with the next
        change sequence (`seq`); a cycle that changed no total takes no number."""
        inc = self.increments
        if not inc:
            return
        self.seq = stored_seq(self.conn) + 1
        self.set_state(STATE_SEQ, str(self.seq))
        seq = self.seq
        encoded: dict[Labels, str] = {}

        def enc(labels: Labels) -> str:
            text = encoded.get(labels)
            if text is None:
                text = encoded[labels] = encode_labels(labels)
            return text

        self._bulk(metric_counter, [
            {"metric": m, "labels": enc(labels), "value": amount, "seq": seq}
            for (m, labels), amount in inc.counters.items()], added=("value",))
        stmt = self._insert(metric_gauge)
        self._execute(stmt.on_conflict_do_update(
            index_elements=["metric", "labels"],
            set_={"value": _greatest(self._dialect, metric_gauge.c.value, stmt.excluded.value),
                  "seq": stmt.excluded.seq}),
            [{"metric": m, "labels": enc(labels), "value": value, "seq": seq}
             for (m, labels), value in inc.gauges_max.items()])
        self._bulk(metric_histogram, [
            {"metric": m, "labels": enc(labels), "sum": h.sum, "count": h.count, "seq": seq}
            for (m, labels), h in inc.histograms.items()], added=("sum", "count"))
        self._bulk(metric_histogram_bucket, [
            {"metric": m, "labels": enc(labels), "le": le, "count": count, "seq": seq}
            for (m, labels), h in inc.histograms.items() for le, count in h.buckets.items()],
            added=("count",))
        stmt = self._insert(metric_latest)
        self._execute(stmt.on_conflict_do_update(
            index_elements=["metric", "labels"],
            set_={"as_of": stmt.excluded.as_of, "value": stmt.excluded.value,
                  "absent": stmt.excluded.absent, "seq": stmt.excluded.seq},
            where=metric_latest.c.as_of <= stmt.excluded.as_of),
            [{"metric": m, "labels": enc(labels), "as_of": as_of, "value": value or 0.0,
              "absent": value is None, "seq": seq}
             for (m, labels), (as_of, value) in inc.latest.items()])

    def _bulk(self, table: Table, rows: list[dict[str, Any]], added: Sequence[str]) -> None:
        """Upsert `rows`, adding their `added` columns to those of rows already there."""
        stmt = self._insert(table)
        keys = [c.name for c in table.primary_key.columns]
        self._execute(stmt.on_conflict_do_update(
            index_elements=keys,
            set_={**{name: table.c[name] + stmt.excluded[name] for name in added},
                  "seq": stmt.excluded.seq}), rows)

    def _execute(self, stmt: Any, rows: list[dict[str, Any]]) -> None:
        """One statement, many rows: compiled once, sent in batches."""
        for start in range(0, len(rows), WRITE_CHUNK):
            self.conn.execute(stmt, rows[start:start + WRITE_CHUNK])


def _greatest(dialect: str, left: Any, right: Any) -> Any:
    return func.greatest(left, right) if dialect == "postgresql" else func.max(left, right)
