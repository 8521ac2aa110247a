"""The vocabulary every metric shares: its spec, its labels and its values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs


@dataclass(frozen=True)
class MetricSpec:
    """A served metric family: its name, type, meaning and label names."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class HistogramValue:
    """Cumulative buckets as Prometheus wants them, +Inf last."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float


Series = Mapping[Labels, "float | HistogramValue"]  # one family's samples, by label set
