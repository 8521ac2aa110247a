"""The metric totals as /metrics needs them, read from the cache in one go after a cycle."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, select

from bridge.cache.tables import (
    decode_labels,
    metric_counter,
    metric_gauge,
    metric_histogram,
    metric_histogram_bucket,
    metric_latest,
)
from bridge.metric import HistogramValue, Labels


@dataclass(frozen=True)
class Aggregates:
    """Everything the cache holds for /metrics, read in one go after a cycle."""

    counters: dict[str, dict[Labels, float]]
    gauges: dict[str, dict[Labels, float]]
    histograms: dict[str, dict[Labels, HistogramValue]]




EMPTY = Aggregates({}, {}, {})


def read_totals(conn: Connection, bounds: Mapping[str, Sequence[float]]) -> Aggregates:
    """Read every total; histograms get all configured bounds even where empty."""
    counters: dict[str, dict[Labels, float]] = defaultdict(dict)
    gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
    histograms: dict[str, dict[Labels, HistogramValue]] = defaultdict(dict)
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
