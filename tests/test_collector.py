"""Snapshots to families: zeros for known DAGs, task metrics per DAG and per task, the
series cap shedding whole families."""

from __future__ import annotations

import gzip
import logging
import re
from dataclasses import replace
from datetime import datetime

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from bridge.airflow.rows import CurrentState
from bridge.app import airflow_series
from bridge.cache.totals import Aggregates
from bridge.catalog import BY_NAME, CATALOG
from bridge.collector import (
    DURATION_BY_TASK,
    FAMILY_SHED,
    GZIP,
    OPENMETRICS,
    SHED_ORDER,
    Snapshot,
    SnapshotCollector,
    View,
    build,
    build_families,
)
from bridge.config import DEFAULT_MAX_SERIES, DEFAULT_TASK_BUCKETS
from bridge.health import Health
from bridge.metric import HistogramValue, Labels, MetricSpec, Series
from bridge.stages.business import DECODE_ERRORS
from bridge.stages.current import Live
from tests.conftest import Scrape

INF = float("inf")
FINISHED = "airflow_task_instance_finished_total"
RETRIES = "airflow_task_instance_retries_total"
DURATION = "airflow_task_instance_duration_seconds"
BY_TASK = DURATION_BY_TASK.name
RUNS = "airflow_dag_run_finished_total"
HEALTH = Health(version="1.0", metadb_up=True)


def L(**labels: str) -> Labels:
    """A label set as the cache keys it: (name, value) pairs sorted by name."""
    return tuple(sorted(labels.items()))


def make_snapshot() -> Snapshot:
    counters: dict[str, dict[Labels, float]] = {
        RUNS: {L(dag_id="etl", run_type="scheduled", state="success"): 4.0,
               L(dag_id="tmp_debug", run_type="manual", state="failed"): 1.0},
        FINISHED: {L(dag_id="etl", state="success", task_id="a"): 3.0,
                   L(dag_id="etl", state="success", task_id="b"): 2.0},
    }
    hist: dict[str, dict[Labels, HistogramValue]] = {DURATION: {
        L(dag_id="etl", state="success", task_id="a"):
            HistogramValue(((10.0, 1.0), (60.0, 3.0), (INF, 3.0)), 70.0, 3.0),
        L(dag_id="etl", state="success", task_id="b"):
            HistogramValue(((10.0, 0.0), (60.0, 1.0), (INF, 2.0)), 130.0, 2.0)}}
    live = Live(active_runs={("etl", "running"): 1}, task_instances={("etl", "queued"): 2})
    return snapshot_of(Aggregates(counters, {}, hist), live)


def snapshot_of(totals: Aggregates, live: Live) -> Snapshot:
    """What the refresher publishes for these totals and gauges of now."""
    return Snapshot(airflow_series(totals, live), HEALTH)


def render(view: View, snapshot: Snapshot | None = None) -> Scrape:
    collector = SnapshotCollector(view)
    collector.publish(snapshot or make_snapshot())
    return Scrape(generate_latest(collector).decode())


def labelled(scrape: Scrape, name: str) -> set[frozenset[tuple[str, str]]]:
    return set(scrape.series(name))


def dags_of(scrape: Scrape, name: str) -> set[str]:
    return {dict(labels)["dag_id"] for labels in scrape.series(name)}


def test_known_dags_get_explicit_zero_gauges() -> None:
    scrape = render(View(30))
    assert scrape.value("airflow_dag_runs", dag_id="etl", state="running") == 1
    assert scrape.value("airflow_dag_runs", dag_id="etl", state="queued") == 0
    assert scrape.value("airflow_dag_runs", dag_id="tmp_debug", state="running") == 0
    assert scrape.value("airflow_task_instances", dag_id="etl", state="queued") == 2
    assert scrape.value("airflow_task_instances", dag_id="tmp_debug", state="running") == 0
    assert scrape.value("airflow_bridge_series_dropped") == 0


def test_excluded_dags_are_not_served() -> None:
    scrape = render(View(30, exclude_dags=("tmp_*",)))
    assert scrape.series(RUNS) == {
        frozenset({("dag_id", "etl"), ("run_type", "scheduled"), ("state", "success")}): 4}
    assert scrape.value("airflow_dag_runs", dag_id="tmp_debug", state="running") is None
    scrape = render(View(30, include_dags=("tmp_*",)))
    assert list(scrape.series(RUNS).values()) == [1]


# ---------------------------------------------------------------- task durations


def test_task_durations_are_served_per_dag_as_sum_and_count() -> None:
    """The per-task histograms the cache holds, summed over tasks, without buckets."""
    scrape = render(View(30))
    assert f"# TYPE {DURATION} summary" in scrape.text
    assert scrape.series(DURATION + "_sum") == {
        frozenset({("dag_id", "etl"), ("state", "success")}): 200}
    assert scrape.series(DURATION + "_count") == {
        frozenset({("dag_id", "etl"), ("state", "success")}): 5}
    assert scrape.series(DURATION + "_bucket") == {}
    assert f"# TYPE {BY_TASK} " not in scrape.text, "per-task buckets are opt-in"


def durations_of_two_dags() -> Snapshot:
    def hist(fast: float, slow: float) -> HistogramValue:
        return HistogramValue(((10.0, fast), (60.0, fast + slow), (INF, fast + slow)),
                              5.0 * fast + 40.0 * slow, fast + slow)

    series: dict[str, Series] = {DURATION: {
        L(dag_id="etl", state="success", task_id="a"): hist(3.0, 1.0),
        L(dag_id="etl", state="success", task_id="b"): hist(0.0, 2.0),
        L(dag_id="etl", state="failed", task_id="b"): hist(1.0, 0.0),
        L(dag_id="report", state="success", task_id="a"): hist(7.0, 0.0),
        L(dag_id="report", state="success", task_id="z"): hist(1.0, 1.0)}}
    return Snapshot(series, HEALTH)


def test_per_task_buckets_for_the_dags_the_patterns_name_only() -> None:
    snapshot = durations_of_two_dags()
    scrape = render(View(30, task_duration_buckets_dags=("et*",)), snapshot)
    assert f"# TYPE {BY_TASK} histogram" in scrape.text
    assert dags_of(scrape, BY_TASK + "_count") == {"etl"}
    for labels, value in snapshot.series[DURATION].items():
        given = dict(labels)
        if given["dag_id"] != "etl":
            continue
        assert isinstance(value, HistogramValue)
        for le, n in value.buckets:
            assert scrape.value(BY_TASK + "_bucket", **given,
                                le="+Inf" if le == INF else repr(le)) == n
        assert scrape.value(BY_TASK + "_sum", **given) == value.sum
        assert scrape.value(BY_TASK + "_count", **given) == value.count
    # Every DAG keeps its per-DAG sum and count, the opted-in DAG's included.
    assert dags_of(scrape, DURATION + "_count") == {"etl", "report"}


def test_per_dag_sum_and_count_are_the_sums_over_tasks_exactly() -> None:
    snapshot = durations_of_two_dags()
    scrape = render(View(30, task_duration_buckets_dags=("*",)), snapshot)
    for dag_id in ("etl", "report"):
        for state in ("success", "failed"):
            per_task = [v for k, v in snapshot.series[DURATION].items()
                        if isinstance(v, HistogramValue)
                        and dict(k)["dag_id"] == dag_id and dict(k)["state"] == state]
            total = scrape.value(DURATION + "_count", dag_id=dag_id, state=state)
            if not per_task:
                assert total is None
                continue
            assert total == sum(v.count for v in per_task)
            assert scrape.value(DURATION + "_sum", dag_id=dag_id, state=state) == \
                sum(v.sum for v in per_task)
            by_task = [scrape.value(BY_TASK + "_count", dag_id=dag_id, state=state,
                                    task_id=dict(k)["task_id"])
                       for k in snapshot.series[DURATION]
                       if dict(k)["dag_id"] == dag_id and dict(k)["state"] == state]
            assert sum(n or 0 for n in by_task) == total
    assert scrape.value(DURATION + "_sum", dag_id="etl", state="success") == \
        (5 * 3 + 40) + 40 * 2  # a: 3 fast, 1 slow; b: 2 slow


def test_without_task_id_labels_series_are_summed() -> None:
    scrape = render(View(30, task_id_label=False, task_duration_buckets_dags=("*",)))
    assert scrape.series(FINISHED) == {frozenset({("dag_id", "etl"), ("state", "success")}): 5}
    labels = {"dag_id": "etl", "state": "success"}
    assert scrape.value(DURATION + "_sum", **labels) == 200
    assert scrape.value(DURATION + "_count", **labels) == 5
    assert f"# TYPE {BY_TASK} " not in scrape.text, "task_id_label: false: no task_id at all"
    assert FAMILY_SHED.name + "{" not in scrape.text, "nothing left that the cap may shed"


# ---------------------------------------------------------------- the series cap


ROWS = MetricSpec("bikes_rows_loaded", "gauge", "Rows loaded.", ("dag_id",))
ROWS_BY_TASK = MetricSpec("bikes_rows_by_task", "gauge", "Rows per task.", ("dag_id", "task_id"))
BYTES_BY_TASK = MetricSpec("bikes_bytes_by_task", "counter", "Bytes.", ("dag_id", "task_id"))


def capped_snapshot() -> Snapshot:
    """Series whose label sets are counted below, without zeros of now.

    Always served: 2 run counters, 1 per-DAG duration, 1 business gauge without task_id.
    Sheddable: 5 finished (1 summed), 2 retries (1 summed), 5 per-task durations of etl
    (when opted in), 3 rows by task (1 summed), 4 bytes by task (1 summed).
    """
    tasks = "abcde"
    bounds = ((10.0, 1.0), (INF, 1.0))
    series: dict[str, Series] = {
        RUNS: {L(dag_id="etl", run_type="scheduled", state="success"): 4.0,
               L(dag_id="tmp_debug", run_type="manual", state="failed"): 1.0},
        FINISHED: {L(dag_id="etl", state="success", task_id=t): 1.0 for t in tasks},
        RETRIES: {L(dag_id="etl", task_id=t): 1.0 for t in "ab"},
        DURATION: {L(dag_id="etl", state="success", task_id=t): HistogramValue(bounds, 5.0, 1.0)
                   for t in tasks},
        ROWS.name: {L(dag_id="etl"): 120.0},
        ROWS_BY_TASK.name: {L(dag_id="etl", task_id=t): 10.0 * i for i, t in enumerate("xyz")},
        BYTES_BY_TASK.name: {L(dag_id="etl", task_id=t): 2.0 for t in "pqrs"},
    }
    return Snapshot(series, HEALTH)


def capped(max_series: int) -> View:
    return View(30, max_series=max_series, task_duration_buckets_dags=("etl",),
                business=(ROWS, ROWS_BY_TASK, BYTES_BY_TASK))


# 4 always served, 19 sheddable, and the bridge's own: up, dropped, build info and one
# family_shed series per sheddable family (5).
HELD = 4 + 19 + 3 + 5


@pytest.mark.parametrize(("max_series", "shed", "dropped"), [
    (HELD, [], 0),
    (HELD - 1, [BY_TASK], 5),
    (HELD - 5, [BY_TASK], 5),
    (HELD - 6, [BY_TASK, FINISHED], 9),
    (HELD - 10, [BY_TASK, FINISHED, RETRIES], 10),
    (HELD - 11, [BY_TASK, FINISHED, RETRIES, BYTES_BY_TASK.name], 13),
    (HELD - 13, [BY_TASK, FINISHED, RETRIES, BYTES_BY_TASK.name], 13),
    (HELD - 14, [BY_TASK, FINISHED, RETRIES, BYTES_BY_TASK.name, ROWS_BY_TASK.name], 15),
    (100, [], 0),
    (1, [BY_TASK, FINISHED, RETRIES, BYTES_BY_TASK.name, ROWS_BY_TASK.name], 15),
])
def test_series_cap_sheds_whole_families_in_the_declared_order(
        max_series: int, shed: list[str], dropped: int) -> None:
    """Per-task buckets go first, then the per-task counters, then other per-task families,
    the largest first; each as a whole, only as many as it takes."""
    built = build(capped_snapshot(), capped(max_series))
    assert list(built.shed) == shed
    assert built.dropped == dropped
    assert list(SHED_ORDER) == [BY_TASK, FINISHED, RETRIES]
    scrape = render(capped(max_series), capped_snapshot())
    assert scrape.value("airflow_bridge_series_dropped") == dropped
    flags = {dict(k)["metric"]: v for k, v in scrape.series(FAMILY_SHED.name).items()}
    assert flags == {name: float(name in shed) for name in
                     (BY_TASK, FINISHED, RETRIES, ROWS_BY_TASK.name, BYTES_BY_TASK.name)}
    served = len([k for k in scrape.airflow() if not k[0].endswith(("_bucket", "_sum"))])
    assert served == HELD - 8 - dropped, "label sets served and left out add up to those held"


def test_a_shed_per_task_family_is_served_summed_per_dag() -> None:
    scrape = render(capped(HELD - 10), capped_snapshot())
    assert scrape.series(FINISHED) == {frozenset({("dag_id", "etl"), ("state", "success")}): 5}
    assert scrape.series(RETRIES) == {frozenset({("dag_id", "etl")}): 2}
    assert "Summed over tasks" in scrape.text.split(f"# HELP {FINISHED} ")[1].split("\n")[0]
    assert scrape.series(BY_TASK + "_count") == {}, "a per-task only family is left out"
    assert len(scrape.series(ROWS_BY_TASK.name)) == 3, "not shed: kept whole"
    assert scrape.value(DURATION + "_count", dag_id="etl", state="success") == 5
    assert scrape.value("bikes_rows_loaded", dag_id="etl") == 120


def test_series_cap_never_cuts_bridge_health_or_per_dag_families() -> None:
    scrape = render(capped(1), capped_snapshot())
    assert scrape.value("airflow_bridge_metadb_up") == 1
    assert scrape.value("airflow_bridge_series_dropped") == 15
    assert scrape.value("airflow_bridge_build_info", version="1.0",
                        airflow_version="unknown") == 1
    assert len(scrape.series(RUNS)) == 2
    assert scrape.value("bikes_rows_loaded", dag_id="etl") == 120
    # Every family is still there, for every DAG it had, summed per DAG where shed.
    assert scrape.value(FINISHED, dag_id="etl", state="success") == 5
    assert scrape.value("bikes_rows_by_task", dag_id="etl") == 30
    assert scrape.value("bikes_bytes_by_task_total", dag_id="etl") == 8


def wide_snapshot(dags: int, tasks: int = 3) -> Snapshot:
    """`dags` DAGs whose names sort in another order than they were made."""
    names = [f"dag_{(i * 7) % dags:02}" for i in range(dags)]
    series: dict[str, Series] = {
        FINISHED: {L(dag_id=d, state="success", task_id=f"t{t}"): float(t + 1)
                   for d in names for t in range(tasks)},
        RUNS: {L(dag_id=d, run_type="scheduled", state="success"): 1.0 for d in names}}
    return Snapshot(series, HEALTH)


def test_the_cap_never_serves_some_dags_of_a_family() -> None:
    """One label set too many: the whole family is served summed per DAG, for every DAG;
    never the DAGs that sort first with task_id and the others without."""
    snapshot = wide_snapshot(30)
    own = 3 + 2  # up, dropped, build info; family_shed of finished and retries
    full = 30 + 90 + own
    scrape = render(View(30, max_series=full - 1), snapshot)
    finished = scrape.series(FINISHED)
    assert {dict(k)["dag_id"] for k in finished} == {f"dag_{i:02}" for i in range(30)}
    assert all("task_id" not in dict(k) for k in finished)
    assert set(finished.values()) == {6.0}
    assert scrape.value("airflow_bridge_series_dropped") == 90 - 30
    scrape = render(View(30, max_series=full), snapshot)
    assert len(scrape.series(FINISHED)) == 90
    assert scrape.value("airflow_bridge_series_dropped") == 0


def test_excluded_dags_do_not_cause_partial_families() -> None:
    """The cap counts what is served after the DAG patterns: with a third of the DAGs
    excluded the family fits whole; below that it is served summed for every DAG left."""
    snapshot = wide_snapshot(30)
    view = View(30, exclude_dags=("dag_1*",), max_series=20 + 60 + 5)
    scrape = render(view, snapshot)
    served = {dict(k)["dag_id"] for k in scrape.series(FINISHED)}
    assert served == {f"dag_{i:02}" for i in range(30)} - {f"dag_{i}" for i in range(10, 20)}
    assert len(scrape.series(FINISHED)) == 60
    assert scrape.value("airflow_bridge_series_dropped") == 0
    scrape = render(View(30, exclude_dags=("dag_1*",), max_series=20 + 60 + 4), snapshot)
    finished = scrape.series(FINISHED)
    assert {dict(k)["dag_id"] for k in finished} == served
    assert len(finished) == 20 and all("task_id" not in dict(k) for k in finished)
    assert scrape.value("airflow_bridge_series_dropped") == 40


def test_without_task_id_labels_everything_fits_and_nothing_is_shed() -> None:
    """task_id_label: false alone: the summed families are per DAG, so the cap never
    sheds them, and what would not fit with task_id fits without."""
    snapshot = wide_snapshot(30)
    view = View(30, task_id_label=False, max_series=30 + 30 + 3)
    built = build(snapshot, view)
    assert (built.dropped, built.shed) == (0, ())
    scrape = render(view, snapshot)
    assert len(scrape.series(FINISHED)) == 30
    assert scrape.value("airflow_bridge_series_dropped") == 0
    assert build(snapshot, replace(view, max_series=10)).dropped == 0, \
        "over the cap: still not shed"


def test_series_dropped_is_a_gauge_of_the_current_snapshot() -> None:
    collector = SnapshotCollector(capped(HELD - 6))
    assert collector.publish(capped_snapshot()) == 9
    assert collector.publish(capped_snapshot()) == 9
    assert Scrape(generate_latest(collector).decode()).value(
        "airflow_bridge_series_dropped") == 9, "not added up over snapshots"
    assert collector.publish(make_snapshot()) == 0
    assert Scrape(generate_latest(collector).decode()).value(
        "airflow_bridge_series_dropped") == 0


def test_shed_families_are_logged_by_name_once_each_time_they_change(
        caplog: pytest.LogCaptureFixture) -> None:
    collector = SnapshotCollector(capped(HELD - 6))
    with caplog.at_level(logging.INFO, logger="bridge.collector"):
        collector.publish(capped_snapshot())
        collector.publish(capped_snapshot())
        collector.publish(make_snapshot())
        collector.publish(make_snapshot())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0] == (
        f"max_series ({HELD - 6}) reached: 9 series left out by shedding whole families, in "
        f"this order: {BY_TASK} (left out); {FINISHED} (summed per DAG, without task_id)")
    assert caplog.records[0].levelno == logging.WARNING
    assert messages[1] == f"max_series ({HELD - 6}): every family is served in full again"


def test_help_says_the_refresh_interval() -> None:
    text = render(View(45)).text
    assert "# HELP airflow_dag_runs DAG runs queued or running now. Refreshed every 45s by " \
           "airflow-metrics-bridge." in text


def test_series_cached_under_other_labels_are_not_served() -> None:
    snapshot = make_snapshot()
    series = dict(snapshot.series)
    series[RUNS] = {**series[RUNS], L(dag_id="etl", state="success"): 9.0}  # older labels
    scrape = render(View(30), Snapshot(series, snapshot.health))
    assert len(scrape.series(RUNS)) == 2


# ---------------------------------------------------------------- defaults at width


def width_snapshot(dags: int, tasks: int = 30) -> Snapshot:
    """An Airflow shaped like the width benchmark's (tests/bench_width.py), without a
    database: 3 finished runs per DAG, every tenth failed (its second-to-last task failed,
    its last upstream_failed), every fifteenth task skipped, every tenth retried once,
    one running run on every tenth DAG; every DAG alive, with a tag."""
    def hist(bounds: tuple[float, ...], value: float, n: float) -> HistogramValue:
        return HistogramValue(tuple((b, n if value <= b else 0.0) for b in (*bounds, INF)),
                              value * n, n)

    counters: dict[str, dict[Labels, float]] = {RUNS: {}, FINISHED: {}, RETRIES: {}}
    gauges: dict[str, dict[Labels, float]] = {
        "airflow_dag_run_last_finished_timestamp_seconds": {}}
    histograms: dict[str, dict[Labels, HistogramValue]] = {
        "airflow_dag_run_duration_seconds": {}, "airflow_dag_run_start_delay_seconds": {},
        DURATION: {}, "airflow_task_instance_queued_seconds": {}}
    names = [f"dag_{d:05}" for d in range(dags)]
    for d, dag in enumerate(names):
        failed = 1 if d % 10 < 3 else 0  # 3 runs per DAG, every tenth run failed
        for state, n in (("success", 3 - failed), ("failed", failed)):
            if not n:
                continue
            counters[RUNS][L(dag_id=dag, run_type="scheduled", state=state)] = n
            gauges["airflow_dag_run_last_finished_timestamp_seconds"][
                L(dag_id=dag, state=state)] = 1.8e9
            histograms["airflow_dag_run_duration_seconds"][L(dag_id=dag, state=state)] = \
                hist((30.0, 60.0, 300.0, 900.0, 3600.0), 900.0, n)
        histograms["airflow_dag_run_start_delay_seconds"][L(dag_id=dag)] = \
            hist((1.0, 5.0, 60.0), 2.0, 3)
        histograms["airflow_task_instance_queued_seconds"][L(dag_id=dag)] = \
            hist((1.0, 5.0, 60.0), 1.0, 3 * tasks)
        for t in range(1, tasks + 1):
            task = f"task_{t:02}"
            states = {"skipped": 3} if t % 15 == 0 else {"success": 3}
            if failed and t == tasks - 1:
                states = {"success": 2, "failed": 1}
            if failed and t == tasks:
                states = {"success": 2, "upstream_failed": 1}
            for state, n in states.items():
                labels = L(dag_id=dag, state=state, task_id=task)
                counters[FINISHED][labels] = n
                histograms[DURATION][labels] = hist(DEFAULT_TASK_BUCKETS, 60.0, n)
            if t % 10 == 1:
                counters[RETRIES][L(dag_id=dag, task_id=task)] = 3
    state = CurrentState(
        pools={"default_pool": (128, False)}, pool_usage={("default_pool", "running"): 3},
        heartbeats={job: datetime(2026, 11, 1) for job in
                    ("SchedulerJob", "TriggererJob", "DagProcessorJob")},
        paused=dict.fromkeys(names, False), import_errors=0,
        owners=dict.fromkeys(names, "airflow"), tags=dict.fromkeys(names, ("width",)))
    live = Live(active_runs={(dag, "running"): 1 for dag in names[::10]},
                task_instances={(dag, "running"): 2 for dag in names[::10]}, state=state)
    health = Health(version="1.0", metadb_up=True, refreshes={("metadb", "success"): 3},
                    durations={"metadb": 0.2}, last_success={"metadb": 1.8e9})
    series = airflow_series(Aggregates(counters, gauges, histograms), live)
    series[DECODE_ERRORS.name] = {L(metric="rows", reason="not_numeric"): 1.0}
    return Snapshot(series, health)


def read_families() -> dict[str, set[str]]:
    """The served families each shipped alert rule and dashboard panel reads, by where."""
    from tests.test_monitoring import dashboard_exprs, metric_names, recorded_names, rules

    reads: dict[str, set[str]] = {}
    exprs = [(r.get("alert") or r["record"], str(r["expr"])) for r in rules()] + \
        dashboard_exprs()
    for where, expr in exprs:
        for name in metric_names(expr) - recorded_names() - {"up"}:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            family = base if base in BY_NAME else name
            if family in BY_NAME:  # not the business metrics of the example pipeline
                reads.setdefault(family, set()).add(where)
    return reads


def test_the_defaults_at_2000_dags_serve_every_family_alerts_and_panels_read() -> None:
    """2,000 DAGs x 30 tasks at the defaults: nothing dropped, and every family a shipped
    alert rule or dashboard panel reads is served for every DAG (its label sets by DAG,
    for the families with a dag_id)."""
    dags = 2000
    snapshot = width_snapshot(dags)
    collector = SnapshotCollector(View(10))
    assert collector.publish(snapshot) == 0
    built = build(snapshot, View(10))
    assert built.shed == ()
    served = {f.name: f for f in built.families}
    reads = read_families()
    assert FINISHED in reads and DURATION in reads and RETRIES in reads
    every = {f"dag_{d:05}" for d in range(dags)}
    for name, where in sorted(reads.items()):
        family = served.get(name) or served.get(name.removesuffix("_total"))
        assert family is not None and family.samples, (name, where)
        if "dag_id" in BY_NAME[name].labels:
            dag_ids = {s.labels["dag_id"] for s in family.samples}
            assert dag_ids == every, (name, where, len(dag_ids))
    # Per-task counters served whole; task durations per DAG only.
    assert len({tuple(s.labels.items()) for s in served[FINISHED[:-6]].samples}) == \
        len(snapshot.series[FINISHED])
    assert "task_id" not in served[DURATION].samples[0].labels
    label_sets = sum(len({tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                          for s in f.samples}) for f in built.families)
    assert label_sets < DEFAULT_MAX_SERIES * 3 // 4, label_sets
    body = collector.rendered(choose_encoder("")[1] + GZIP, lambda _: b"")
    assert 0 < len(body) < 1_000_000


def test_the_defaults_at_5000_dags_keep_every_alert_input() -> None:
    """At 5,000 DAGs the default cap sheds the per-task counters whole (summed per DAG),
    and every family an alert reads is still served for every DAG."""
    dags = 5000
    snapshot = width_snapshot(dags)
    built = build(snapshot, View(10))
    assert FINISHED in built.shed and BY_TASK not in built.shed
    served = {f.name: f for f in built.families}
    from tests.test_monitoring import metric_names, recorded_names, rules

    every = {f"dag_{d:05}" for d in range(dags)}
    for rule in rules():
        for name in metric_names(str(rule["expr"])) - recorded_names() - {"up"}:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base not in BY_NAME or "dag_id" not in BY_NAME[base].labels:
                continue
            family = served.get(base) or served[base.removesuffix("_total")]
            assert {s.labels["dag_id"] for s in family.samples} == every, (rule, base)


# ---------------------------------------------------------------- publishing


def test_published_bytes_are_prometheus_clients_in_both_formats() -> None:
    """What scrapes get (the encoder's bytes) equals prometheus_client's rendering of the
    same families, plain and gzipped, refresh after refresh."""
    collector = SnapshotCollector(View(30, task_duration_buckets_dags=("*",)))
    snapshot = make_snapshot()
    for _ in range(2):
        collector.publish(snapshot)
        for accept in ("", OPENMETRICS):
            encoder, content_type = choose_encoder(accept)
            expected = encoder(collector)
            assert collector.rendered(content_type, encoder) == expected
            assert gzip.decompress(collector.rendered(content_type + GZIP, encoder)) == expected
        series = dict(snapshot.series)
        series[RUNS] = {L(dag_id="etl", run_type="scheduled", state="success"): 5.0}
        snapshot = Snapshot(series, snapshot.health)


def test_refreshes_reuse_unchanged_families_and_show_every_change() -> None:
    """A collector keeps what it built; each refresh still serves exactly what a new
    collector would, including a change made in place to a dict published before."""
    view = View(30, max_series=17)  # 18 held: the per-task counter is served summed
    collector = SnapshotCollector(view)
    first = make_snapshot()
    collector.publish(first)
    before = {f.name: f for f in collector.collect()}

    series = {name: dict(values) for name, values in first.series.items()}
    runs = series[RUNS]
    runs[L(dag_id="etl", run_type="scheduled", state="success")] = 5.0
    changed = Snapshot(series, first.health)
    collector.publish(changed)
    after = {f.name: f for f in collector.collect()}
    assert after["airflow_task_instance_finished"] is before["airflow_task_instance_finished"]
    assert after[DURATION] is before[DURATION]
    assert after["airflow_dag_run_finished"] is not before["airflow_dag_run_finished"]
    assert generate_latest(collector) == generate_latest(_fresh(view, changed))

    runs[L(dag_id="etl", run_type="scheduled", state="success")] = 6.0
    dropped = collector.publish(changed)  # the same dict, changed in place since published
    scrape = Scrape(generate_latest(collector).decode())
    assert scrape.value(RUNS, dag_id="etl", run_type="scheduled", state="success") == 6
    assert generate_latest(collector) == generate_latest(_fresh(view, changed))
    assert dropped == SnapshotCollector(view).publish(changed) == 1, "the cap still applies"

    tasks = series[FINISHED]
    tasks[L(dag_id="etl", state="success", task_id="b")] = 9.0
    before = {f.name: f for f in _fresh(View(30), changed).collect()}
    wide = SnapshotCollector(View(30))
    wide.publish(first)
    kept = {f.name: f for f in wide.collect()}["airflow_task_instance_finished"].samples
    wide.publish(changed)  # one value of the family changed, its label sets stayed
    samples = {f.name: f for f in wide.collect()}["airflow_task_instance_finished"].samples
    assert [s.value for s in samples] == [3.0, 9.0]
    assert samples[0] is kept[0] and samples[1] is not kept[1], "the unchanged sample stays"
    assert generate_latest(wide) == generate_latest(_fresh(View(30), changed))
    assert before["airflow_task_instance_finished"].samples == samples

    wider = View(30, max_series=100)
    collector.view = wider  # a new view: nothing built for the old one is reused
    collector.publish(changed)
    assert generate_latest(collector) == generate_latest(_fresh(wider, changed))


def test_summed_families_keep_their_unchanged_samples() -> None:
    """A family served summed per DAG, whose label sets stayed, keeps the samples of the
    DAGs whose sums did not change."""
    snapshot = wide_snapshot(4)
    view = View(30, task_id_label=False)
    collector = SnapshotCollector(view)
    collector.publish(snapshot)
    kept = {f.name: f for f in collector.collect()}["airflow_task_instance_finished"].samples
    series = {name: dict(values) for name, values in snapshot.series.items()}
    series[FINISHED][L(dag_id="dag_01", state="success", task_id="t0")] += 1.0
    collector.publish(Snapshot(series, snapshot.health))
    samples = {f.name: f for f in collector.collect()}["airflow_task_instance_finished"].samples
    assert [s.value for s in samples] == [6.0, 7.0, 6.0, 6.0]
    assert [a is b for a, b in zip(samples, kept, strict=True)] == [True, False, True, True]


def test_task_duration_summaries_keep_their_unchanged_samples() -> None:
    snapshot = durations_of_two_dags()
    collector = SnapshotCollector(View(30))
    collector.publish(snapshot)
    kept = {f.name: f for f in collector.collect()}[DURATION].samples
    series = {name: dict(values) for name, values in snapshot.series.items()}
    series[DURATION][L(dag_id="report", state="success", task_id="z")] = \
        HistogramValue(((INF, 3.0),), 100.0, 3.0)
    changed = Snapshot(series, snapshot.health)
    collector.publish(changed)
    samples = {f.name: f for f in collector.collect()}[DURATION].samples
    assert [(s.name[len(DURATION):], s.labels["dag_id"], s.value) for s in samples] == [
        ("_count", "etl", 1.0), ("_sum", "etl", 5.0), ("_count", "etl", 6.0),
        ("_sum", "etl", 135.0), ("_count", "report", 10.0), ("_sum", "report", 135.0)]
    assert [a is b for a, b in zip(samples, kept, strict=True)] == [True] * 4 + [False] * 2
    assert generate_latest(collector) == generate_latest(_fresh(View(30), changed))


def _fresh(view: View, snapshot: Snapshot) -> SnapshotCollector:
    collector = SnapshotCollector(view)
    collector.publish(snapshot)
    return collector


def test_samples_are_those_add_metric_would_make_labels_in_the_family_order() -> None:
    """Families are filled without add_metric; each sample must still be the one it makes,
    label names in the family's order (the exposition writes them in that order)."""
    specs = {spec.name: spec for spec in (*CATALOG, FAMILY_SHED)}
    for family in build_families(make_snapshot(), View(30))[0]:
        if family.type not in ("counter", "gauge"):
            continue
        kind = CounterMetricFamily if family.type == "counter" else GaugeMetricFamily
        spec = specs.get(family.name) or specs[family.name + "_total"]
        names = list(spec.labels)  # task_id kept: View(30) serves it
        reference = kind(family.name, family.documentation, labels=names)
        for sample in family.samples:
            reference.add_metric([sample.labels[n] for n in names], sample.value)
        assert [(s.name, list(s.labels.items()), s.value) for s in family.samples] == \
            [(s.name, list(s.labels.items()), s.value) for s in reference.samples]
    runs = next(f for f in build_families(make_snapshot(), View(30))[0]
                if f.name == "airflow_dag_run_finished")
    assert list(runs.samples[0].labels) == ["dag_id", "state", "run_type"], "not sorted"


def test_every_refresh_serves_what_a_new_collector_would() -> None:
    """Refresh after refresh, values changing in place or in new dicts, label sets coming
    and going, under views that merge task_id, serve per-task buckets or cap the series."""
    views = (View(30), View(30, task_id_label=False), View(30, max_series=16),
             View(30, exclude_dags=("tmp_*",)), View(30, task_duration_buckets_dags=("*",)),
             View(30, max_series=18, task_duration_buckets_dags=("etl",)))
    for view in views:
        collector = SnapshotCollector(view)
        first = make_snapshot()
        series = {name: dict(values) for name, values in first.series.items()}
        tasks = series[FINISHED]
        durations = series[DURATION]
        for step in range(6):
            key = L(dag_id="etl" if step % 2 else "tmp_debug", state="success",
                    task_id="ab"[step % 2])
            if step == 3:
                del tasks[key]
            else:
                tasks[key] = tasks.get(key, 0.0) + step
            durations[key] = HistogramValue(((10.0, step), (INF, step + 1.0)), step * 3.0,
                                            step + 1.0)
            snapshot = Snapshot(series, first.health)
            assert collector.publish(snapshot) == SnapshotCollector(view).publish(snapshot)
            assert generate_latest(collector) == generate_latest(_fresh(view, snapshot)), \
                (view, step)


def test_view_of_settings_carries_the_cardinality_controls() -> None:
    from bridge import config

    settings = config.load(None, {})
    view = View.of(settings)
    assert (view.max_series, view.task_id_label, view.task_duration_buckets_dags) == \
        (DEFAULT_MAX_SERIES, True, ())
    assert view.interval == settings.refresh_interval


def test_new_family_names_follow_the_conventions() -> None:
    """The families the collector adds are named and described like the catalog's."""
    for spec in (DURATION_BY_TASK, FAMILY_SHED):
        assert spec.name.startswith("airflow_") and spec.help.endswith(".")
        assert spec.name not in BY_NAME
    assert DURATION_BY_TASK.name.endswith("_seconds")
    assert FAMILY_SHED.name.startswith("airflow_bridge_")


def test_sums_redone_for_a_change_are_those_a_new_collector_adds_up() -> None:
    """Float sums do not depend on the order label sets come in, so a memo that adds up
    again only the changed DAG serves the very bytes a new collector would."""
    def durations(order: list[int], extra: float) -> Snapshot:
        values = {L(dag_id=f"d{i % 3}", state="success", task_id=f"t{i}"):
                  HistogramValue(((INF, 1.0),), 0.1 * (i + 1) + (extra if i == 4 else 0.0), 1.0)
                  for i in order}
        return Snapshot({DURATION: values, FINISHED: {
            L(dag_id=f"d{i % 3}", state="success", task_id=f"t{i}"): 0.1 * i for i in order}},
            HEALTH)

    view = View(30, task_id_label=False)
    collector = SnapshotCollector(view)
    collector.publish(durations(list(range(12)), 0.0))
    for extra in (0.7, 1e-9, 3.3):
        changed = durations(list(reversed(range(12))), extra)
        collector.publish(changed)
        assert generate_latest(collector) == generate_latest(_fresh(view, changed))


def test_new_label_sets_are_put_in_place_and_the_other_samples_kept() -> None:
    """A task's first failure adds a label set: the families it adds to are not rebuilt,
    the new series go where a new collector would put them."""
    snapshot = wide_snapshot(6)
    series = {name: dict(values) for name, values in snapshot.series.items()}
    series[DURATION] = {k: HistogramValue(((INF, v),), 2.5 * v, v)
                        for k, v in series[FINISHED].items()}
    for view in (View(30), View(30, task_id_label=False),
                 View(30, task_duration_buckets_dags=("dag_0[2-4]",))):
        collector = SnapshotCollector(view)
        collector.publish(Snapshot(series, HEALTH))
        kept = {f.name: list(f.samples) for f in collector.collect()}
        grown = {name: dict(values) for name, values in series.items()}
        for dag in ("dag_03", "dag_05"):
            new = L(dag_id=dag, state="failed", task_id="t1")
            grown[FINISHED][new] = 1.0
            grown[DURATION][new] = HistogramValue(((INF, 1.0),), 7.0, 1.0)
        grown[FINISHED][L(dag_id="dag_00", state="success", task_id="t0")] = 5.0
        changed = Snapshot(grown, HEALTH)
        collector.publish(changed)
        assert generate_latest(collector) == generate_latest(_fresh(view, changed)), view
        now = {f.name: f.samples for f in collector.collect()}
        for name in ("airflow_task_instance_finished", DURATION):
            same = [s for s in now[name] if any(s is k for k in kept[name])]
            assert len(same) >= len(kept[name]) - 2, (view, name)


def test_histograms_keep_the_samples_of_unchanged_label_sets() -> None:
    """A run finishing on one DAG rebuilds that DAG's buckets, not every DAG's."""
    runs = "airflow_dag_run_duration_seconds"
    def hist(n: float) -> HistogramValue:
        return HistogramValue(((60.0, n), (600.0, n + 1.0), (INF, n + 2.0)), 30.0 * n, n + 2.0)

    series: dict[str, Series] = {runs: {L(dag_id=f"d{i}", state="success"): hist(i)
                                        for i in range(4)}}
    view = View(30)
    collector = SnapshotCollector(view)
    collector.publish(Snapshot(series, HEALTH))
    kept = {f.name: f for f in collector.collect()}[runs].samples
    grown = {runs: {**series[runs], L(dag_id="d1", state="success"): hist(9.0),
                    L(dag_id="d10", state="failed"): hist(1.0)}}
    changed = Snapshot(grown, HEALTH)
    collector.publish(changed)
    samples = {f.name: f for f in collector.collect()}[runs].samples
    assert generate_latest(collector) == generate_latest(_fresh(view, changed))
    reused = [any(s is k for k in kept) for s in samples]
    assert len(samples) == 5 * 5  # d0, d1 (changed), d10 (new), d2, d3: 3 buckets, count, sum
    assert reused == [True] * 5 + [False] * 10 + [True] * 10, reused
