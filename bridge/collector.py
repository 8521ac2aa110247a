"""/metrics from memory: metric families are built and rendered once per refresh.

A scrape hands over the rendered bytes of the latest snapshot; it never touches a
database. Cardinality controls (DAG include/exclude patterns, no task_id label, a cap on
series that sheds per-task families only) apply here, when a snapshot is built, so the
cache always keeps everything.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from operator import itemgetter
from typing import Any, cast

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from bridge import health as bridge_health
from bridge.catalog import AIRFLOW, BRIDGE
from bridge.config import Settings
from bridge.exposition import Encoder
from bridge.health import Health
from bridge.metric import HistogramValue, Labels, MetricSpec, Series


@dataclass(frozen=True)
class Snapshot:
    """The last good data plus current health: everything a scrape will see."""

    series: Mapping[str, Series]  # Airflow and business families' samples, by metric name
    health: Health


@dataclass(frozen=True)
class View:
    """How a snapshot is shown: refresh cadence for HELP, and the cardinality controls."""

    interval: float
    include_dags: tuple[str, ...] = ("*",)
    exclude_dags: tuple[str, ...] = ()
    task_id_label: bool = True
    max_series: int = 20_000
    business: tuple[MetricSpec, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> View:
        business = {d.name: MetricSpec(d.name, d.kind, d.help, d.label_names)
                    for d in settings.definitions}
        return cls(settings.refresh_interval, settings.include_dags, settings.exclude_dags,
                   settings.task_id_label, settings.max_series, tuple(business.values()))

    def shows_dag(self, dag_id: str) -> bool:
        return any(fnmatchcase(dag_id, p) for p in self.include_dags) and \
            not any(fnmatchcase(dag_id, p) for p in self.exclude_dags)


OPENMETRICS = "application/openmetrics-text; version=1.0.0"
GZIP = ";gzip"


@dataclass(frozen=True)
class _Prepared:
    """One family's samples as they would be served, before the cap."""

    spec: MetricSpec
    label_names: tuple[str, ...]
    series: tuple[tuple[Labels, float | HistogramValue], ...]  # sorted by labels

    @property
    def per_task(self) -> bool:
        """Only per-task families grow with the DAGs' code; the cap sheds nothing else."""
        return "task_id" in self.spec.labels


def _prepare(spec: MetricSpec, series: Series, view: View) -> _Prepared:
    label_names = spec.labels
    # Series cached under an earlier definition with other labels are not served.
    names = tuple(sorted(label_names))
    series = {k: v for k, v in series.items() if tuple(map(_first, k)) == names}
    if "dag_id" in label_names:
        shown: dict[str, bool] = {}  # a few DAGs carry many series: match each DAG once
        for labels in series:
            dag_id = dict(labels)["dag_id"]
            if dag_id not in shown:
                shown[dag_id] = view.shows_dag(dag_id)
        series = {k: v for k, v in series.items() if shown[dict(k)["dag_id"]]}
    if "task_id" in label_names and not view.task_id_label:
        label_names = tuple(n for n in label_names if n != "task_id")
        series = _without_task_id(series)
    return _Prepared(spec, label_names, tuple(sorted(series.items())))


def _kept(families: list[_Prepared], room: int) -> list[int]:
    """How many series of each family stay under the cap.

    Only per-task families give way, the largest first (ties by name), each down to
    nothing before the next is touched; the rest is always served, even past the cap.
    """
    kept = [len(f.series) for f in families]
    excess = sum(kept) - room
    for i in sorted((i for i, f in enumerate(families) if f.per_task),
                    key=lambda i: (-kept[i], families[i].spec.name)):
        if excess <= 0:
            break
        cut = min(kept[i], excess)
        kept[i] -= cut
        excess -= cut
    return kept


def _family(prepared: _Prepared, kept: int, interval: float) -> Metric:
    """The family with its first `kept` label sets (in label order: a stable cut)."""
    spec = prepared.spec
    kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
             "histogram": HistogramMetricFamily}
    help_text = f"{spec.help} Refreshed every {interval:g}s by airflow-metrics-bridge."
    family: Any = kinds[spec.kind](spec.name, help_text, labels=prepared.label_names)
    rows = prepared.series[:kept]
    if spec.kind == "histogram":
        for labels, value in rows:
            given = dict(labels)
            assert isinstance(value, HistogramValue)
            family.add_metric([given[name] for name in prepared.label_names],
                              [(_le(le), n) for le, n in value.buckets], value.sum)
    elif rows:
        # What add_metric appends, without its per-sample overhead: every label set has
        # exactly the family's names (see _prepare), sorted; samples list them in the
        # family's order.
        sample_name = family.name + "_total" if spec.kind == "counter" else family.name
        in_order = sorted(prepared.label_names)
        position = [in_order.index(name) for name in prepared.label_names]
        pick: Callable[[Labels], Any] = itemgetter(*position) if position != sorted(position) \
            else _same
        family.samples.extend([Sample(sample_name, dict(pick(labels)), cast(float, value))
                               for labels, value in rows])
    built: Metric = family
    return built


def _first(pair: tuple[str, str]) -> str:
    return pair[0]


def _same(labels: Labels) -> Labels:
    return labels


def _without_task_id(series: Series) -> Series:
    merged: dict[Labels, float | HistogramValue] = {}
    for labels, value in series.items():
        key = tuple(pair for pair in labels if pair[0] != "task_id")
        merged[key] = _merge(merged.get(key), value)
    return merged


def _merge(left: Any, right: Any) -> Any:
    if left is None:
        return right
    if isinstance(right, HistogramValue):
        counts: dict[float, float] = defaultdict(float)
        for le, n in (*left.buckets, *right.buckets):
            counts[le] += n
        return HistogramValue(tuple(sorted(counts.items())), left.sum + right.sum,
                              left.count + right.count)
    return left + right


@dataclass
class _Built:
    """A family as built from one input, reused while the input stays equal."""

    source: dict[Labels, float | HistogramValue]  # a copy: the caller may change its own
    prepared: _Prepared
    family: Metric | None = None
    kept: int = -1
    before: _Built | None = None  # built from the same label sets with other values


class Memo:
    """What the last refresh built, per family, for one view: most families do not change
    between refreshes, and comparing a family's series costs far less than rebuilding it
    (the encoder then finds the very same samples and keeps their bytes). A family whose
    label sets stayed and some values changed keeps the samples of the others."""

    def __init__(self) -> None:
        self._built: dict[str, _Built] = {}
        self._view: View | None = None

    def prepare(self, spec: MetricSpec, series: Series, view: View) -> _Prepared:
        if view != self._view:
            self._built.clear()
            self._view = view
        built = self._built.get(spec.name)
        if built is not None and built.prepared.spec == spec:
            if built.source == series:
                return built.prepared
            merged = "task_id" in spec.labels and not view.task_id_label
            if not merged and built.source.keys() == series.keys():
                # The same label sets, so the same ones are shown, in the same order.
                old = built.prepared
                prepared = _Prepared(spec, old.label_names,
                                     tuple([(k, series[k]) for k, _ in old.series]))
                built.before = None  # keep one generation only
                self._built[spec.name] = _Built(dict(series), prepared, before=built)
                return prepared
        self._built[spec.name] = _Built(dict(series), _prepare(spec, series, view))
        return self._built[spec.name].prepared

    def family(self, prepared: _Prepared, kept: int, interval: float) -> Metric:
        built = self._built.get(prepared.spec.name)
        if built is None or built.prepared is not prepared:  # not prepared by this memo
            return _family(prepared, kept, interval)
        if built.family is None or built.kept != kept:
            before = built.before
            if before is not None and before.family is not None and before.kept == kept \
                    and prepared.spec.kind != "histogram":
                built.family = _refilled(before.family, before.prepared, prepared, kept)
            else:
                built.family = _family(prepared, kept, interval)
            built.kept = kept
        return built.family


def _refilled(family: Metric, old: _Prepared, new: _Prepared, kept: int) -> Metric:
    """A counter or gauge family like `family` (built from `old`) with the values of
    `new`, which has the same label sets in the same order: unchanged samples are kept."""
    refilled = Metric(family.name, family.documentation, family.type, family.unit)
    refilled.samples = [
        sample if before == after else sample._replace(value=cast(float, after))
        for sample, (_, before), (_, after)
        in zip(family.samples, old.series[:kept], new.series[:kept], strict=True)]
    return refilled


def build_families(snapshot: Snapshot, view: View,
                   memo: Memo | None = None) -> tuple[list[Metric], int]:
    """Families in catalog order (the bridge's own first), and how many series the cap
    left out. The bridge's own families count against the cap but are never cut; of the
    rest only the per-task families are (see `_kept`): pool slots, heartbeats, DAG flags,
    import errors and business metrics without a task_id label always stay. A `memo`
    kept between calls with the same view reuses the families whose series are equal."""
    memo = memo or Memo()
    sources = snapshot.series
    airflow = [memo.prepare(spec, sources.get(spec.name, {}), view)
               for spec in (*AIRFLOW, *view.business)]
    placeholder = bridge_health.series(snapshot.health, 0)
    reserve = sum(len(_prepare(spec, placeholder.get(spec.name) or sources.get(spec.name, {}),
                               view).series) for spec in BRIDGE)
    kept = _kept(airflow, view.max_series - reserve)
    dropped = sum(len(f.series) for f in airflow) - sum(kept)
    health = bridge_health.series(snapshot.health, dropped)
    own = [_prepare(spec, health.get(spec.name) or sources.get(spec.name, {}), view)
           for spec in BRIDGE]
    return ([_family(f, len(f.series), view.interval) for f in own]
            + [memo.family(f, n, view.interval) for f, n in zip(airflow, kept, strict=True)],
            dropped)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class SnapshotCollector(Collector):
    """Serves the families of the latest published snapshot.

    The rendered exposition of a snapshot is kept per format, so repeated scrapes
    between two refreshes cost a dictionary lookup.
    """

    def __init__(self, view: View) -> None:
        self.view = view
        self._lock = threading.Lock()
        self._families: tuple[Metric, ...] = ()
        self._rendered: dict[str, bytes] = {}
        self._encoder = Encoder()  # keeps what it rendered last, to reuse what is unchanged
        self._memo = Memo()  # likewise for the families built from the snapshot

    def publish(self, snapshot: Snapshot) -> int:
        """Make `snapshot` what scrapes see; returns the number of series left out.

        Both exposition formats, plain and gzipped, are rendered here by the encoder, in
        the refresh thread, so that a scrape only hands over bytes.
        """
        families, dropped = build_families(snapshot, self.view, self._memo)
        frozen = tuple(families)
        out = self._encoder.render(frozen)
        text_type, openmetrics_type = (choose_encoder(a)[1] for a in ("", OPENMETRICS))
        rendered = {text_type: out.text, text_type + GZIP: out.text_gzip,
                    openmetrics_type: out.openmetrics,
                    openmetrics_type + GZIP: out.openmetrics_gzip}
        with self._lock:
            self._families = frozen
            self._rendered = rendered
        return dropped

    def rendered(self, key: str, render: Callable[[Collector], bytes]) -> bytes:
        """The snapshot rendered by `render`, computed once per snapshot and `key`."""
        with self._lock:
            cached = self._rendered.get(key)
            families = self._families
            cache = self._rendered
        if cached is None:
            cached = render(_Frozen(families))
            with self._lock:
                cache[key] = cached
        return cached

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families: Iterable[Metric] = self._families
        yield from families


class _Frozen(Collector):
    def __init__(self, families: tuple[Metric, ...]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families
