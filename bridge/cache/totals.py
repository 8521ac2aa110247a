"""The metric totals, held in memory and kept equal to the cache at the cost of what changed.

At start every total is read once. After that a cycle applies its own increments
(`Increments`, summed by the cache transaction) to the totals in memory once its
transaction committed, and reads from the cache only the rows another bridge sharing it
stamped with a newer change sequence (`Changes`, by index). So a cycle costs what changed,
never what the cache holds.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, tuple_

from bridge.cache.tables import (
    bridge_state,
    metric_counter,
    metric_gauge,
    metric_histogram,
    metric_histogram_bucket,
    metric_latest,
)
from bridge.metric import HistogramValue, Labels

STATE_SEQ = "totals.seq"  # the change sequence of the newest cycle that changed totals
LOOKUP_CHUNK = 500
INF = float("inf")


@dataclass(frozen=True)
class Aggregates:
    """Every family's totals as /metrics serves them, by metric name then label set."""

    counters: Mapping[str, Mapping[Labels, float]]
    gauges: Mapping[str, Mapping[Labels, float]]
    histograms: Mapping[str, Mapping[Labels, HistogramValue]]


EMPTY = Aggregates({}, {}, {})


@dataclass
class RawHistogram:
    """A histogram's increments or totals as stored: per-bucket (not cumulative) counts."""

    sum: float = 0.0
    count: float = 0.0
    buckets: dict[float, float] = field(default_factory=lambda: defaultdict(float))


@dataclass
class Increments:
    """What one cycle adds to the totals, summed in memory before it is written."""

    counters: dict[tuple[str, Labels], float] = field(default_factory=lambda: defaultdict(float))
    gauges_max: dict[tuple[str, Labels], float] = field(default_factory=dict)
    # A latest value of None: the newest run gave no usable value, the series goes absent.
    latest: dict[tuple[str, Labels], tuple[datetime, float | None]] = field(
        default_factory=dict)
    histograms: dict[tuple[str, Labels], RawHistogram] = field(
        default_factory=lambda: defaultdict(RawHistogram))

    def __bool__(self) -> bool:
        return bool(self.counters or self.gauges_max or self.latest or self.histograms)

    def observe(self, metric: str, labels: Labels, value: float,
                bounds: Sequence[float]) -> None:
        hist = self.histograms[(metric, labels)]
        hist.sum += value
        hist.count += 1
        index = bisect_left(bounds, value)
        if index < len(bounds):
            hist.buckets[bounds[index]] += 1

    def keep_max(self, metric: str, labels: Labels, value: float) -> None:
        key = (metric, labels)
        self.gauges_max[key] = max(value, self.gauges_max.get(key, value))

    def keep_latest(self, metric: str, labels: Labels, value: float | None,
                    as_of: datetime) -> None:
        key = (metric, labels)
        if key not in self.latest or self.latest[key][0] <= as_of:
            self.latest[key] = (as_of, value)


@dataclass(frozen=True)
class Changes:
    """Rows of the totals tables as another bridge left them (absolute values)."""

    seq: int  # the newest change sequence these rows cover
    counters: tuple[tuple[str, Labels, float], ...] = ()
    gauges: tuple[tuple[str, Labels, float], ...] = ()
    latest: tuple[tuple[str, Labels, datetime, float | None], ...] = ()  # None: absent
    histograms: tuple[tuple[str, Labels, RawHistogram], ...] = ()
    rows: int = 0  # read from the cache to learn them


class LabelCodec:
    """Label sets to and from their stored JSON text, each (name, value) pair kept once.

    Label sets share their pairs (every family of one DAG names the same `dag_id`), so
    the pairs are interned: memory follows the distinct names and values, not the rows.
    """

    def __init__(self) -> None:
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}

    def decode(self, text_value: str) -> Labels:
        return self.intern(tuple(sorted(json.loads(text_value).items())))

    def intern(self, labels: Labels) -> Labels:
        pairs = self._pairs
        return tuple([pairs.setdefault(pair, pair) for pair in labels])


def stored_seq(conn: Connection) -> int:
    value = conn.execute(
        select(bridge_state.c.value).where(bridge_state.c.key == STATE_SEQ)).scalar()
    return int(value) if value is not None else 0


def read_changes(conn: Connection, since: int | None, codec: LabelCodec) -> Changes:
    """The totals rows stamped after `since` (all of them when None), read by index."""
    seq = stored_seq(conn)
    if since is not None and seq <= since:
        return Changes(seq)

    def newer(table: Any, *columns: str) -> Any:
        stmt = select(table.c.metric, table.c.labels, *(table.c[c] for c in columns))
        return stmt if since is None else stmt.where(table.c.seq > since)

    rows = 0
    counters, gauges, latest = [], [], []
    for metric, labels, value in conn.execute(newer(metric_counter, "value")):
        counters.append((metric, codec.decode(labels), float(value)))
    for metric, labels, value in conn.execute(newer(metric_gauge, "value")):
        gauges.append((metric, codec.decode(labels), float(value)))
    for metric, labels, as_of, value, absent in conn.execute(
            newer(metric_latest, "as_of", "value", "absent")):
        latest.append((metric, codec.decode(labels), as_of, None if absent else float(value)))
    rows += len(counters) + len(gauges) + len(latest)
    # A histogram's changed buckets come with its changed sum and count; every bucket of
    # such a histogram is read, so its cumulative counts can be built again.
    hists: dict[tuple[str, str], RawHistogram] = {}
    for metric, labels, total, count in conn.execute(newer(metric_histogram, "sum", "count")):
        hists[(metric, labels)] = RawHistogram(float(total), float(count))
    bucket = metric_histogram_bucket.c
    if since is None:
        bucket_rows: Iterable[Any] = conn.execute(
            select(bucket.metric, bucket.labels, bucket.le, bucket.count))
    else:
        keys = list(hists)
        bucket_rows = [
            row for start in range(0, len(keys), LOOKUP_CHUNK)
            for row in conn.execute(
                select(bucket.metric, bucket.labels, bucket.le, bucket.count).where(
                    tuple_(bucket.metric, bucket.labels).in_(keys[start:start + LOOKUP_CHUNK])))]
    for metric, labels, le, count in bucket_rows:
        rows += 1
        hist = hists.get((metric, labels))
        if hist is not None:
            hist.buckets[float(le)] = float(count)
    rows += len(hists)
    return Changes(seq, tuple(counters), tuple(gauges), tuple(latest),
                   tuple((m, codec.decode(labels), h) for (m, labels), h in hists.items()),
                   rows)


class Totals:
    """Every total of the cache, in memory, in the shape /metrics serves.

    Histograms are kept as the cumulative buckets of the configured bounds (`bounds`):
    counts stored under other bounds (buckets changed since they were observed) go to the
    next configured bound at or above theirs, so every series of a family has the same
    buckets (see `cumulative`).
    """

    def __init__(self, bounds: Mapping[str, Sequence[float]]) -> None:
        self.bounds = {name: tuple(b) for name, b in bounds.items()}
        self.seq: int | None = None  # None: nothing read yet
        self.codec = LabelCodec()
        self.counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self.gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self.histograms: dict[str, dict[Labels, HistogramValue]] = defaultdict(dict)
        self._latest_as_of: dict[tuple[str, Labels], datetime] = {}
        self._bucket_pairs: dict[tuple[float, float], tuple[float, float]] = {}
        self.dags: set[str] = set()  # every dag_id a counter names

    def view(self) -> Aggregates:
        """The families as they are now (shared, not copied: read them before the next
        change)."""
        return Aggregates(self.counters, self.gauges, self.histograms)

    def load(self, conn: Connection) -> int:
        """Read what changed since the last read (everything, the first time); rows read."""
        changes = read_changes(conn, self.seq, self.codec)
        self.absorb(changes)
        return changes.rows

    def changes(self, conn: Connection) -> Changes:
        return read_changes(conn, self.seq, self.codec)

    def absorb(self, changes: Changes) -> None:
        """Take rows as stored (absolute values), e.g. written by another bridge."""
        for metric, labels, value in changes.counters:
            self.counters[metric][labels] = value
            self._see(labels)
        for metric, labels, value in changes.gauges:
            self.gauges[metric][labels] = value
        for metric, labels, as_of, latest in changes.latest:
            self._latest_as_of[(metric, labels)] = as_of
            self._set_latest(metric, labels, latest)
        for metric, labels, raw in changes.histograms:
            self.histograms[metric][labels] = self.cumulative(metric, raw)
        self.seq = changes.seq if self.seq is None else max(self.seq, changes.seq)

    def apply(self, increments: Increments, seq: int) -> None:
        """Add one committed cycle's increments, as its upserts added them to the rows."""
        intern = self.codec.intern
        for (metric, labels), amount in increments.counters.items():
            family = self.counters[metric]
            count = family.get(labels)
            if count is None:
                family[intern(labels)] = amount
                self._see(labels)
            else:
                family[labels] = count + amount
        for (metric, labels), value in increments.gauges_max.items():
            family = self.gauges[metric]
            was = family.get(labels)
            family[intern(labels) if was is None else labels] = \
                value if was is None else max(value, was)
        for (metric, labels), (as_of, latest) in increments.latest.items():
            known = self._latest_as_of.get((metric, labels))
            if known is None or known <= as_of:
                labels = intern(labels)
                self._latest_as_of[(metric, labels)] = as_of
                self._set_latest(metric, labels, latest)
        for (metric, labels), added in increments.histograms.items():
            # Increments are observed at the configured bounds, so their cumulative counts
            # add to the held ones bound by bound.
            histograms = self.histograms[metric]
            more = self.cumulative(metric, added)
            held = histograms.get(labels)
            if held is None:
                histograms[intern(labels)] = more
            else:  # an existing key keeps its (interned) object
                histograms[labels] = self._histogram(
                    [(le, a + b) for (le, a), (_, b)
                     in zip(held.buckets, more.buckets, strict=True)],
                    held.sum + more.sum, held.count + more.count)
        self.seq = seq

    def cumulative(self, metric: str, raw: RawHistogram) -> HistogramValue:
        """Cumulative counts at the configured bounds, +Inf last.

        A count stored under a bound that is no longer configured is added at the next
        configured bound at or above it (or only at +Inf): such a count stays correct for
        that bound and above, and the cumulative counts never decrease.
        """
        bounds = self.bounds.get(metric, ())
        per_bound = [0.0] * len(bounds)
        for le, count in raw.buckets.items():
            index = bisect_left(bounds, le)
            if index < len(bounds):
                per_bound[index] += count
        running = 0.0
        out = []
        for le, count in zip(bounds, per_bound, strict=True):
            running += count
            out.append((le, running))
        out.append((INF, raw.count))
        return self._histogram(out, raw.sum, raw.count)

    def _histogram(self, buckets: Iterable[tuple[float, float]], total: float,
                   count: float) -> HistogramValue:
        """A histogram value whose (bound, count) pairs are shared with every other that
        has the same: most task histograms hold few observations, so the same pairs recur
        across label sets, and a shared pair costs 8 bytes instead of 80."""
        pairs = self._bucket_pairs
        return HistogramValue(tuple([pairs.setdefault(pair, pair) for pair in buckets]),
                              total, count)

    def _set_latest(self, metric: str, labels: Labels, value: float | None) -> None:
        if value is None:
            self.gauges[metric].pop(labels, None)
        else:
            self.gauges[metric][labels] = value

    def _see(self, labels: Labels) -> None:
        for name, value in labels:
            if name == "dag_id":
                self.dags.add(value)
