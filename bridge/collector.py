"""/metrics from memory: metric families are built and rendered once per refresh.

A scrape hands over the rendered bytes of the latest snapshot; it never touches a
database. What is served is decided here, when a snapshot is built, so the cache always
keeps everything (per-task histograms included):

- DAG include/exclude patterns;
- task durations per DAG, as `_sum` and `_count` (a summary without quantiles): their
  buckets summed over tasks cost more than every other per-DAG family together at width.
  Per-task durations with every bucket are opt-in, for the DAGs that
  `task_duration_buckets_dags` names, in a family of their own;
- the per-task counters keep their `task_id` label, unless `task_id_label: false`;
- a cap on series (`max_series`) that sheds whole families in a declared order, least
  useful first: a per-task family loses its `task_id` label (summed per DAG, as
  `task_id_label: false` serves it, so every per-DAG query and alert keeps its input),
  a family that only exists per task is left out.
"""

from __future__ import annotations

import logging
import threading
from bisect import insort
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from itertools import compress
from math import fsum
from operator import itemgetter, not_
from typing import Any, Literal, cast

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from bridge import health as bridge_health
from bridge.catalog import AIRFLOW, BRIDGE
from bridge.config import DEFAULT_MAX_SERIES, Settings
from bridge.exposition import Encoder
from bridge.health import Health
from bridge.metric import HistogramValue, Labels, MetricSpec, Series
from bridge.stages.task_instances import DURATION, FINISHED_TOTAL, RETRIES_TOTAL

log = logging.getLogger(__name__)

TASK_ID = "task_id"
DURATION_BY_TASK = MetricSpec(
    "airflow_task_instance_duration_by_task_seconds", "histogram",
    "Duration of finished task tries, start to end, per task, with every bucket; only for "
    "the DAGs task_duration_buckets_dags names.", ("dag_id", "task_id", "state"))
FAMILY_SHED = MetricSpec(
    "airflow_bridge_family_shed", "gauge",
    "1 if the max_series cap sheds this family now (a per-task family is then served "
    "summed per DAG, without task_id; a per-task only family not at all), else 0.",
    ("metric",))
# Families the cap sheds, least useful first; other per-task families (business metrics
# with a task_id label) follow, the largest first.
SHED_ORDER = (DURATION_BY_TASK.name, FINISHED_TOTAL.name, RETRIES_TOTAL.name)
_BY_TASK = {DURATION.name: DURATION_BY_TASK}  # per-task histograms: their bucketed family
_SUMMED = " Summed over tasks (no task_id label)."
_MEAN = " Summed over tasks (no task_id label), without buckets: _sum and _count."


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
    max_series: int = DEFAULT_MAX_SERIES
    business: tuple[MetricSpec, ...] = ()
    task_duration_buckets_dags: tuple[str, ...] = ()  # DAG patterns: per-task buckets

    @classmethod
    def of(cls, settings: Settings) -> View:
        business = {d.name: MetricSpec(d.name, d.kind, d.help, d.label_names)
                    for d in settings.definitions}
        return cls(settings.refresh_interval, include_dags=settings.include_dags,
                   exclude_dags=settings.exclude_dags, task_id_label=settings.task_id_label,
                   max_series=settings.max_series, business=tuple(business.values()),
                   task_duration_buckets_dags=settings.task_duration_buckets_dags)

    def shows_dag(self, dag_id: str) -> bool:
        return any(fnmatchcase(dag_id, p) for p in self.include_dags) and \
            not any(fnmatchcase(dag_id, p) for p in self.exclude_dags)

    def task_buckets(self, dag_id: str) -> bool:
        """Whether the DAG's task durations are served per task, with every bucket."""
        return any(fnmatchcase(dag_id, p) for p in self.task_duration_buckets_dags)


OPENMETRICS = "application/openmetrics-text; version=1.0.0"
GZIP = ";gzip"

Value = float | HistogramValue
Groups = dict[Labels, list[Labels]]  # a summed label set -> the cached ones it adds up

Kind = Literal["counter", "gauge", "histogram", "summary"]  # as served
# How a served family comes from its cached one: its label sets as they are; summed over
# task_id; a histogram's _sum and _count summed over task_id; per task, of the DAGs whose
# task buckets are served.
Shape = Literal["as_is", "summed", "mean", "by_task"]
# What the cap may do to it: nothing; serve it summed over task_id; leave it out.
Shedding = Literal["never", "collapse", "remove"]


@dataclass(frozen=True)
class _Plan:
    """One served family: the cached family it comes from, how, and what the cap may do."""

    source: MetricSpec
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]  # served label names, in the order samples list them
    shape: Shape = "as_is"
    shedding: Shedding = "never"

    @classmethod
    def of(cls, spec: MetricSpec) -> _Plan:
        return cls(spec, spec.name, spec.kind, spec.help, spec.labels)

    def collapsed(self) -> _Plan:
        """The family as served once the cap sheds its task_id label."""
        return replace(self, help=self.help + _SUMMED, labels=_without(self.labels),
                       shape="summed", shedding="never")


def _plans(view: View) -> tuple[_Plan, ...]:
    """Every served Airflow and business family, in catalog order."""
    plans: list[_Plan] = []
    for spec in (*AIRFLOW, *view.business):
        plan = _Plan.of(spec)
        if TASK_ID not in spec.labels:
            plans.append(plan)
        elif spec.kind == "histogram":
            plans.append(replace(plan, kind="summary", help=spec.help + _MEAN,
                                 labels=_without(spec.labels), shape="mean"))
            by_task = _BY_TASK.get(spec.name)
            if by_task is not None and view.task_id_label and view.task_duration_buckets_dags:
                plans.append(replace(plan, name=by_task.name, help=by_task.help,
                                     labels=by_task.labels, shape="by_task",
                                     shedding="remove"))
        elif view.task_id_label:
            plans.append(replace(plan, shedding="collapse"))
        else:
            plans.append(plan.collapsed())
    return tuple(plans)


def _without(labels: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n for n in labels if n != TASK_ID)


@dataclass(frozen=True)
class _Prepared:
    """One family's samples as they would be served."""

    plan: _Plan
    series: tuple[tuple[Labels, Value], ...]  # sorted by labels


def _select(spec: MetricSpec, series: Series, view: View,
            dags: Callable[[str], bool] | None = None) -> dict[Labels, Value]:
    """The label sets of `spec`'s label names (series cached under an earlier definition
    with other labels are not served), of the DAGs `view` shows (and `dags` takes)."""
    names = tuple(sorted(spec.labels))
    rows = {k: v for k, v in series.items() if tuple(map(_first, k)) == names}
    if "dag_id" not in names:
        return rows
    dag_of = itemgetter(names.index("dag_id"))
    shown: dict[str, bool] = {}  # a few DAGs carry many series: match each DAG once
    for labels in rows:
        dag_id = dag_of(labels)[1]
        if dag_id not in shown:
            shown[dag_id] = view.shows_dag(dag_id) and (dags is None or dags(dag_id))
    return {k: v for k, v in rows.items() if shown[dag_of(k)[1]]}


def _prepare(plan: _Plan, series: Series, view: View) -> tuple[_Prepared, Groups | None]:
    """The family `plan` serves from `series`; for one summed over task_id, also which
    cached label sets each served one adds up (to redo only the sums that changed)."""
    if plan.shape == "by_task":
        rows = _select(plan.source, series, view, view.task_buckets)
    else:
        rows = _select(plan.source, series, view)
    if plan.shape not in ("summed", "mean"):
        return _Prepared(plan, tuple(sorted(rows.items()))), None
    groups: Groups = {}
    for labels in rows:
        groups.setdefault(_summed_key(labels), []).append(labels)
    summed = {key: _total(plan.shape, [rows[k] for k in members])
              for key, members in groups.items()}
    return _Prepared(plan, tuple(sorted(summed.items()))), groups


def _total(shape: Shape, values: list[Value]) -> Value:
    """Values added up, in any order to the same result (fsum rounds once): a memo that
    redoes one sum serves what a new collector would. `mean` keeps a histogram's sum and
    count only."""
    first = values[0]
    if not isinstance(first, HistogramValue):
        return fsum(cast(list[float], values))
    hists = cast(list[HistogramValue], values)
    total_sum, count = fsum(h.sum for h in hists), fsum(h.count for h in hists)
    if shape == "mean":
        return HistogramValue((), total_sum, count)
    buckets: dict[float, list[float]] = defaultdict(list)
    for h in hists:
        for le, n in h.buckets:
            buckets[le].append(n)
    return HistogramValue(tuple(sorted((le, fsum(ns)) for le, ns in buckets.items())),
                          total_sum, count)


_LABELS = itemgetter(0)  # of a (labels, value) row

_KINDS: dict[Kind, Any] = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                           "histogram": HistogramMetricFamily, "summary": SummaryMetricFamily}


def _family(prepared: _Prepared, interval: float) -> Metric:
    plan = prepared.plan
    help_text = f"{plan.help} Refreshed every {interval:g}s by airflow-metrics-bridge."
    family: Any = _KINDS[plan.kind](plan.name, help_text, labels=plan.labels)
    rows = prepared.series
    if plan.kind == "histogram":
        for labels, value in rows:
            given = dict(labels)
            assert isinstance(value, HistogramValue)
            family.add_metric([given[name] for name in plan.labels],
                              [(_le(le), n) for le, n in value.buckets], value.sum)
    elif plan.kind == "summary":
        for labels, value in rows:
            given = dict(labels)
            assert isinstance(value, HistogramValue)
            family.add_metric([given[name] for name in plan.labels], value.count, value.sum)
    elif rows:
        # What add_metric appends, without its per-sample overhead: every label set has
        # exactly the family's names (see _select), sorted; samples list them in the
        # family's order.
        sample_name = family.name + "_total" if plan.kind == "counter" else family.name
        pick = _picker(plan.labels)
        family.samples.extend([Sample(sample_name, dict(pick(labels)), cast(float, value))
                               for labels, value in rows])
    built: Metric = family
    return built


def _first(pair: tuple[str, str]) -> str:
    return pair[0]


def _same(labels: Labels) -> Labels:
    return labels


@dataclass
class _Built:
    """A family as built from one input, reused while the input stays equal."""

    source: dict[Labels, Value]  # a copy: the caller may change its own
    prepared: _Prepared
    groups: Groups | None = None  # of a family summed over task_id (see _prepare)
    family: Metric | None = None
    before: _Built | None = None  # built from the same label sets with other values


class Memo:
    """What the last refresh built, per served family, for one view: most families do not
    change between refreshes, and comparing a family's series costs far less than
    rebuilding it (the encoder then finds the very same samples and keeps their bytes). A
    family whose label sets stayed and some values changed keeps the samples of the
    others."""

    def __init__(self) -> None:
        self._built: dict[_Plan, _Built] = {}
        self._view: View | None = None
        self._used: set[_Plan] = set()

    def begin(self, view: View) -> None:
        if view != self._view:
            self._built.clear()
            self._view = view
        self._used = set()

    def end(self) -> None:
        """Forget the families this refresh did not serve (a plan the cap left)."""
        for plan in [p for p in self._built if p not in self._used]:
            del self._built[plan]

    def prepare(self, plan: _Plan, series: Series, view: View) -> _Prepared:
        self._used.add(plan)
        built = self._built.get(plan)
        if built is not None:
            if built.source == series:
                return built.prepared
            if built.source.keys() == series.keys():
                # The same label sets, so the same ones are served, in the same order.
                old, groups = built.prepared, built.groups
                if plan.shape == "as_is":
                    prepared = _Prepared(plan, _with_values(old, series))
                elif groups is not None:
                    prepared = _resummed(old, groups, built.source, series)
                else:
                    prepared, groups = _prepare(plan, series, view)
                built.before, built.source, built.groups = None, {}, None  # only its family
                self._built[plan] = _Built(dict(series), prepared, groups, before=built)
                return prepared
            added = series.keys() - built.source.keys()
            if len(built.source) + len(added) == len(series) and len(added) <= len(series) // 4:
                # New label sets only (a task's first failure): put them in their place.
                prepared, groups = _extended(plan, built, series, added, view)
                built.before, built.source, built.groups = None, {}, None
                self._built[plan] = _Built(dict(series), prepared, groups, before=built)
                return prepared
        prepared, groups = _prepare(plan, series, view)
        self._built[plan] = _Built(dict(series), prepared, groups)
        return prepared

    def family(self, prepared: _Prepared, interval: float) -> Metric:
        built = self._built.get(prepared.plan)
        if built is None or built.prepared is not prepared:  # not prepared by this memo
            return _family(prepared, interval)
        if built.family is None:
            before = built.before
            if before is not None and before.family is not None:
                built.family = _refilled(before.family, before.prepared, prepared)
            else:
                built.family = _family(prepared, interval)
            built.before = None  # what the family did not keep of it is garbage now
        return built.family


def _resummed(old: _Prepared, groups: Groups, before: Mapping[Labels, Value],
              series: Series) -> _Prepared:
    """`old`, a family summed over task_id from `before`, redone for `series`, which has the
    same label sets: only the sums with a changed value among theirs are added up again."""
    changed = {_summed_key(k) for k, v in series.items()
               if before[k] is not v and before[k] != v}
    changed &= groups.keys()  # of the label sets served
    if not changed:
        return old
    rows = list(old.series)
    for i, (key, _) in enumerate(rows):
        if key in changed:
            rows[i] = (key, _total(old.plan.shape, [series[k] for k in groups[key]]))
    return _Prepared(old.plan, tuple(rows))


def _extended(plan: _Plan, built: _Built, series: Series, added: Iterable[Labels],
              view: View) -> tuple[_Prepared, Groups | None]:
    """What `built` serves, redone for `series`: its label sets and the `added` ones, put
    in their sorted places; of a family summed over task_id, only the sums that changed
    or are new are added up."""
    old, before = built.prepared, built.source
    dags = view.task_buckets if plan.shape == "by_task" else None
    fresh = _select(plan.source, {k: series[k] for k in added}, view, dags)
    by_labels = itemgetter(0)
    if built.groups is None:
        rows = list(_with_values(old, series))
        for row in sorted(fresh.items()):
            insort(rows, row, key=by_labels)
        return _Prepared(plan, tuple(rows)), None
    groups = dict(built.groups)  # the lists it holds are replaced, never changed
    changed = {_summed_key(k) for k, v in before.items()
               if series[k] is not v and series[k] != v}
    for labels in fresh:
        key = _summed_key(labels)
        groups[key] = [*groups.get(key, ()), labels]
        changed.add(key)
    rows = list(old.series)
    where = {key: i for i, (key, _) in enumerate(rows)}
    new: list[tuple[Labels, Value]] = []
    for key in changed & groups.keys():
        row = (key, _total(plan.shape, [series[k] for k in groups[key]]))
        if key in where:
            rows[where[key]] = row
        else:
            new.append(row)
    for row in sorted(new):
        insort(rows, row, key=by_labels)
    return _Prepared(plan, tuple(rows)), groups


def _with_values(old: _Prepared, series: Series) -> tuple[tuple[Labels, Value], ...]:
    """`old`'s label sets, in its order, with their values in `series`."""
    keys = list(map(_LABELS, old.series))
    return tuple(zip(keys, map(series.__getitem__, keys), strict=True))


def _summed_key(labels: Labels) -> Labels:
    return tuple([p for p in labels if p[0] != TASK_ID])


def _refilled(family: Metric, old: _Prepared, new: _Prepared) -> Metric:
    """A family like `family` (built from `old`) with the values of `new`, which has the
    label sets of `old`, and maybe more, in the same order: the samples of label sets
    whose value stayed are kept, the others made as add_metric makes them."""
    refilled = Metric(family.name, family.documentation, family.type, family.unit)
    make = _row_samples(new.plan, family.name)
    if family.type not in ("counter", "gauge"):
        refilled.samples = _rows_refilled(family.samples, old, new, make)
        return refilled
    known = set(map(_LABELS, old.series))
    fresh = list(compress(range(len(new.series)), map(not_, map(known.__contains__,
                                                              map(_LABELS, new.series)))))
    out: list[Sample] = []
    done = start = 0  # old label sets and new ones gone through
    for end in (*fresh, len(new.series)):  # known label sets up to a new one (or the end)
        out += [sample if before == after else sample._replace(value=cast(float, after))
                for sample, (_, before), (_, after) in zip(
                    family.samples[done:end - start + done], old.series[done:end - start + done],
                    new.series[start:end], strict=True)]
        done += end - start
        if end < len(new.series):
            out += make(*new.series[end])
        start = end + 1
    assert done == len(old.series), "new label sets only"
    refilled.samples = out
    return refilled


def _rows_refilled(samples: list[Sample], old: _Prepared, new: _Prepared,
                   make: Callable[[Labels, Value], list[Sample]]) -> list[Sample]:
    """Samples of a summary or histogram family, several per label set (as many as
    add_metric made for its value in `old`), kept where the value stayed."""
    out: list[Sample] = []
    rows = iter(old.series)
    pending = next(rows, None)
    at = 0
    for labels, after in new.series:
        if pending is None or pending[0] != labels:
            out += make(labels, after)  # a new label set
            continue
        width = _width(pending[1])
        out += samples[at:at + width] if pending[1] == after else make(labels, after)
        at += width
        pending = next(rows, None)
    assert pending is None and at == len(samples), "new label sets only"
    return out


def _width(value: Value) -> int:
    """Samples add_metric makes for one label set of a summary or histogram."""
    assert isinstance(value, HistogramValue)
    if not value.buckets:
        return 2  # a summary: _count, _sum
    return len(value.buckets) + (2 if value.buckets[0][0] >= 0 else 0)


def _row_samples(plan: _Plan, name: str) -> Callable[[Labels, Value], list[Sample]]:
    """How one served label set becomes its samples, as add_metric makes them (label
    names in the family's order)."""
    if plan.kind in ("summary", "histogram"):
        def several(labels: Labels, value: Value) -> list[Sample]:
            scratch = _Prepared(plan, ((labels, value),))
            return list(_family(scratch, 0.0).samples)
        return several
    sample_name = name + "_total" if plan.kind == "counter" else name
    pick = _picker(plan.labels)

    def one(labels: Labels, value: Value) -> list[Sample]:
        return [Sample(sample_name, dict(pick(labels)), cast(float, value))]
    return one


def _picker(labels: tuple[str, ...]) -> Callable[[Labels], Any]:
    """From a label set sorted by name, its pairs in the family's order."""
    in_order = sorted(labels)
    position = [in_order.index(name) for name in labels]
    return itemgetter(*position) if position != sorted(position) else _same


@dataclass(frozen=True)
class Families:
    """A snapshot's families as served, and what the cap left out of them."""

    families: list[Metric]
    dropped: int  # series left out: label sets held minus label sets served
    shed: tuple[str, ...] = ()  # families the cap shed, in shedding order
    collapsed: frozenset[str] = field(default_factory=frozenset)  # of those, served summed
    over: int = 0  # series still past the cap once everything sheddable was shed


def build(snapshot: Snapshot, view: View, memo: Memo | None = None) -> Families:
    """Families in catalog order (the bridge's own first), and what the cap shed.

    The cap counts label sets (a histogram's or summary's once), the bridge's own
    included. Past it, the per-task families are shed whole, in `SHED_ORDER` then the
    largest first, until the rest fits; the others (per-DAG families, pool slots,
    heartbeats, business metrics without a task_id label) are always served, even past
    the cap. A `memo` kept between calls with the same view reuses the families whose
    series are equal.
    """
    memo = memo or Memo()
    memo.begin(view)
    sources = snapshot.series
    plans = _plans(view)
    prepared: list[_Prepared | None] = [
        memo.prepare(p, sources.get(p.source.name, {}), view) for p in plans]
    sheddable = sorted((i for i, p in enumerate(plans) if p.shedding != "never"),
                       key=lambda i: _shed_rank(plans[i], prepared[i]))
    placeholder = bridge_health.series(snapshot.health, 0)
    own_size = len(sheddable) + sum(
        len(_select(spec, placeholder.get(spec.name) or sources.get(spec.name, {}), view))
        for spec in BRIDGE)
    held = own_size + sum(len(p.series) for p in prepared if p is not None)
    total, shed, collapsed = held, [], set()
    for i in sheddable:
        if total <= view.max_series:
            break
        plan, full = plans[i], prepared[i]
        assert full is not None
        if plan.shedding == "remove":
            served = None
        else:
            served = memo.prepare(plan.collapsed(), sources.get(plan.source.name, {}), view)
            collapsed.add(plan.name)
        saved = len(full.series) - (len(served.series) if served is not None else 0)
        if saved <= 0:
            collapsed.discard(plan.name)
            continue  # nothing to gain: served as it is
        total -= saved
        prepared[i] = served
        shed.append(plan.name)
    memo.end()
    dropped = held - total
    health = bridge_health.series(snapshot.health, dropped)
    own = [_prepare(_Plan.of(spec), health.get(spec.name) or sources.get(spec.name, {}),
                    view)[0] for spec in BRIDGE]
    flags = _Prepared(_Plan.of(FAMILY_SHED), tuple(sorted(
        ((("metric", plans[i].name),), 1.0 if plans[i].name in shed else 0.0)
        for i in sheddable)))
    families = [_family(f, view.interval) for f in (*own, flags)] + \
        [memo.family(f, view.interval) for f in prepared if f is not None]
    return Families(families, dropped, tuple(shed), frozenset(collapsed),
                    max(0, total - view.max_series))


def _shed_rank(plan: _Plan, prepared: _Prepared | None) -> tuple[int, int, str]:
    size = len(prepared.series) if prepared is not None else 0
    rank = SHED_ORDER.index(plan.name) if plan.name in SHED_ORDER else len(SHED_ORDER)
    return rank, -size, plan.name


def build_families(snapshot: Snapshot, view: View,
                   memo: Memo | None = None) -> tuple[list[Metric], int]:
    """Families in catalog order (the bridge's own first), and how many series the cap
    left out (see `build`)."""
    built = build(snapshot, view, memo)
    return built.families, built.dropped


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
        self._shed: tuple[str, ...] = ()  # what the last snapshot shed, logged on change

    def publish(self, snapshot: Snapshot) -> int:
        """Make `snapshot` what scrapes see; returns the number of series left out.

        Both exposition formats, plain and gzipped, are rendered here by the encoder, in
        the refresh thread, so that a scrape only hands over bytes.
        """
        built = build(snapshot, self.view, self._memo)
        self._log_shed(built)
        frozen = tuple(built.families)
        out = self._encoder.render(frozen)
        text_type, openmetrics_type = (choose_encoder(a)[1] for a in ("", OPENMETRICS))
        rendered = {text_type: out.text, text_type + GZIP: out.text_gzip,
                    openmetrics_type: out.openmetrics,
                    openmetrics_type + GZIP: out.openmetrics_gzip}
        with self._lock:
            self._families = frozen
            self._rendered = rendered
        return built.dropped

    def _log_shed(self, built: Families) -> None:
        """Says which families the cap sheds, once each time that changes."""
        if built.shed == self._shed:
            return
        self._shed = built.shed
        cap = self.view.max_series
        if not built.shed:
            log.info("max_series (%d): every family is served in full again", cap)
            return
        how = [name + (" (summed per DAG, without task_id)" if name in built.collapsed
                       else " (left out)") for name in built.shed]
        log.warning("max_series (%d) reached: %d series left out by shedding whole families, "
                    "in this order: %s%s", cap, built.dropped, "; ".join(how),
                    f"; the families always served still exceed it by {built.over}"
                    if built.over else "")

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
