"""Benchmark: rendering both exposition formats, plain and gzipped, once per refresh.

    python -m tests.bench_render            # 10 000 series
    python -m tests.bench_render 50000

Workloads of `series` series, the families rebuilt for every refresh as the collector
rebuilds them:

- one family: the per-task counter alone (`airflow_task_instance_finished_total`, as
  `tests.benchmark` times it), built by `build_families`; a steady refresh changes 5% of
  its series, or 10 of them (a few tasks finished since the last refresh);
- many families: 200 families of counters, gauges and histograms (10 buckets); a steady
  refresh changes 5% of the families (a twentieth of the series of each).

For each: prometheus_client's two encoders plus `gzip.compress(level 1)` of each (what
`SnapshotCollector.publish` does), and `bridge.exposition.Encoder` from cold (a new
encoder) and in steady state; gzip alone; bytes. Every figure is the minimum over several
runs (time.perf_counter), each run right after its families are built as in a refresh,
garbage collection left on. Figures only; correctness is in tests/test_exposition.py.
"""

from __future__ import annotations

import gzip
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from bridge.collector import OPENMETRICS, Snapshot, View, build_families
from bridge.exposition import Encoder
from bridge.health import Health
from bridge.metric import HistogramValue, Labels

CHANGED = 0.05  # of the series (one family) or of the families (many), per refresh
BOUNDS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
FAMILIES = 200


class _Families(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


@dataclass(frozen=True)
class Workload:
    """Families for refresh after refresh: `build(k)` differs from `build(k - 1)` as a
    steady refresh does; `build(0)` is the first."""

    name: str
    build: Callable[[int], list[Metric]]
    changed: str = f"{CHANGED:.0%} changed"


def one_family(series: int, changed: int | None = None) -> Workload:
    """`changed` series change per refresh (default: CHANGED of them)."""
    changed = int(series * CHANGED) if changed is None else changed
    view = View(10, max_series=series + 1000)
    values: dict[Labels, float | HistogramValue] = {
        (("dag_id", f"dag_{i // 100}"), ("state", "success"), ("task_id", f"task_{i}")):
            float(i) for i in range(series)}
    keys = list(values)
    rng = random.Random(1)

    def build(refresh: int) -> list[Metric]:
        if refresh:
            for key in rng.sample(keys, changed):
                values[key] = float(values[key]) + 1  # type: ignore[arg-type]
        health = Health(version="bench", metadb_up=True)
        families, _ = build_families(
            Snapshot({"airflow_task_instance_finished_total": values}, health), view)
        return families

    return Workload(f"one family, {series:,} series", build, f"{changed:,} series changed")


def many_families(series: int) -> Workload:
    per_family = max(1, series // FAMILIES)
    rng = random.Random(2)
    kinds = ["counter", "gauge", "counter", "gauge", "histogram"] * (FAMILIES // 5)
    state: list[list[float]] = [[float(rng.randint(0, 10**6)) for _ in range(per_family)]
                                for _ in kinds]

    def build(refresh: int) -> list[Metric]:
        if refresh:
            for f in rng.sample(range(len(kinds)), int(len(kinds) * CHANGED)):
                for i in rng.sample(range(per_family), max(1, per_family // 20)):
                    state[f][i] += 1
        families: list[Metric] = []
        for f, kind in enumerate(kinds):
            name = f"bench_{kind}_{f}"
            help_text = f"Family {f}. Refreshed every 10s by airflow-metrics-bridge."
            labels = ["dag_id", "task_id"]
            if kind == "histogram":
                histogram = HistogramMetricFamily(name, help_text, labels=labels)
                for i, value in enumerate(state[f]):
                    count, buckets = 0.0, []
                    for b, bound in enumerate(BOUNDS):
                        count += (value // (b + 1)) % 7
                        buckets.append((repr(bound), count))
                    buckets.append(("+Inf", count + 1))
                    histogram.add_metric([f"dag_{i // 10}", f"task_{i}"], buckets,
                                         value * 1.5)
                families.append(histogram)
                continue
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                name, help_text, labels=labels)
            for i, value in enumerate(state[f]):
                family.add_metric([f"dag_{i // 10}", f"task_{i}"], value)
            families.append(family)
        return families

    return Workload(f"{FAMILIES} families, {series:,} series", build,
                    f"{CHANGED:.0%} of families changed")


def _min_ms(prepare: Callable[[int], list[Metric]], action: Callable[[list[Metric]], object],
            runs: int, first: int = 0) -> float:
    """Minimum of `runs` timings of `action`, each on families prepared (untimed). The
    families of the run before are freed untimed too, as freeing them is not rendering
    (the collector frees them when it swaps in the new ones)."""
    best = float("inf")
    held: list[Metric] = []
    for k in range(first, first + runs):
        families = prepare(k)
        started = time.perf_counter()
        action(families)
        best = min(best, time.perf_counter() - started)
        held = families
    del held
    return best * 1000


def _prometheus_client(families: Sequence[Metric]) -> dict[str, bytes]:
    """What SnapshotCollector.publish renders today."""
    rendered = {}
    for accept in ("", OPENMETRICS):
        encoder, content_type = choose_encoder(accept)
        body = encoder(_Families(families))
        rendered[content_type] = body
        rendered[content_type + ";gzip"] = gzip.compress(body, compresslevel=1)
    return rendered


def bench(workload: Workload, runs: int) -> list[str]:
    base = workload.build(0)
    samples = sum(len(f.samples) for f in base)
    text_encoder, _ = choose_encoder("")
    om_encoder, _ = choose_encoder(OPENMETRICS)
    text, om = text_encoder(_Families(base)), om_encoder(_Families(base))

    def fresh(k: int) -> list[Metric]:
        """The current families, built anew: a refresh renders what it just built."""
        return workload.build(0)

    few = max(3, runs // 2)
    reference_ms = _min_ms(fresh, _prometheus_client, few)
    text_ms = _min_ms(fresh, lambda f: text_encoder(_Families(f)), few)
    om_ms = _min_ms(fresh, lambda f: om_encoder(_Families(f)), few)
    gzip_ms = _min_ms(fresh, lambda f: (gzip.compress(text, compresslevel=1),
                                        gzip.compress(om, compresslevel=1)), runs)
    cold_ms = _min_ms(fresh, lambda f: Encoder().render(f), runs)
    encoder = Encoder()
    rendered = encoder.render(base)
    unchanged_ms = _min_ms(fresh, encoder.render, runs)
    steady_ms = _min_ms(workload.build, encoder.render, runs, first=1)
    build_ms = _min_ms(fresh, lambda f: workload.build(0), few)
    steady = encoder.render(workload.build(runs + 1))
    assert rendered.text == text and rendered.openmetrics == om  # as the tests check
    return [
        f"{workload.name} ({len(base)} families, {samples:,} samples):",
        f"  prometheus_client, both formats + gzip: {reference_ms:7.1f} ms "
        f"(text {text_ms:.1f}, OpenMetrics {om_ms:.1f}, gzip of both {gzip_ms:.1f})",
        f"  Encoder, cold (new encoder):             {cold_ms:7.1f} ms "
        f"({reference_ms / cold_ms:.0f}x faster)",
        f"  Encoder, steady ({workload.changed}):".ljust(42) + f"{steady_ms:7.1f} ms "
        f"({reference_ms / steady_ms:.0f}x faster)",
        f"  Encoder, nothing changed:                {unchanged_ms:7.1f} ms",
        f"  bytes: text {len(text):,} (gzip {len(gzip.compress(text, 1)):,}, "
        f"encoder's gzip {len(steady.text_gzip):,}); OpenMetrics {len(om):,} "
        f"(gzip {len(gzip.compress(om, 1)):,}, encoder's {len(steady.openmetrics_gzip):,})",
        f"  (building the families, not part of rendering: {build_ms:.1f} ms)",
    ]


def run(series: int = 10_000, runs: int = 20) -> list[str]:
    """Printable lines: each workload at `series` series."""
    lines = [f"Rendering both exposition formats, plain and gzipped; min of {runs} runs"]
    for workload in (one_family(series), one_family(series, 10), many_families(series)):
        lines.extend(bench(workload, runs))
    return lines


def main() -> None:
    series = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    for line in run(series):
        print(line, flush=True)


if __name__ == "__main__":
    main()
