"""Snapshots to families: zeros for known DAGs, cardinality controls, the series cap."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bridge.airflow.rows import CurrentState
from bridge.app import airflow_series
from bridge.cache.totals import Aggregates
from bridge.catalog import BY_NAME
from bridge.collector import Snapshot, SnapshotCollector, View, build_families
from bridge.health import Health
from bridge.metric import HistogramValue, Labels, MetricSpec
from bridge.stages.current import Live
from tests.conftest import Scrape

INF = float("inf")


def make_snapshot() -> Snapshot:
    finished = "airflow_task_instance_finished_total"
    counters: dict[str, dict[Labels, float]] = {
        "airflow_dag_run_finished_total": {
            (("dag_id", "etl"), ("run_type", "scheduled"), ("state", "success")): 4.0,
            (("dag_id", "tmp_debug"), ("run_type", "manual"), ("state", "failed")): 1.0},
        finished: {
            (("dag_id", "etl"), ("state", "success"), ("task_id", "a")): 3.0,
            (("dag_id", "etl"), ("state", "success"), ("task_id", "b")): 2.0},
    }
    hist: dict[str, dict[Labels, HistogramValue]] = {"airflow_task_instance_duration_seconds": {
        (("dag_id", "etl"), ("state", "success"), ("task_id", "a")):
            HistogramValue(((10.0, 1.0), (60.0, 3.0), (INF, 3.0)), 70.0, 3.0),
        (("dag_id", "etl"), ("state", "success"), ("task_id", "b")):
            HistogramValue(((10.0, 0.0), (60.0, 1.0), (INF, 2.0)), 130.0, 2.0)}}
    live = Live(active_runs={("etl", "running"): 1}, task_instances={("etl", "queued"): 2})
    return snapshot_of(Aggregates(counters, {}, hist), live)


def snapshot_of(totals: Aggregates, live: Live) -> Snapshot:
    """What the refresher publishes for these totals and gauges of now."""
    return Snapshot(airflow_series(totals, live), Health(version="1.0", metadb_up=True))


def render(view: View, snapshot: Snapshot | None = None) -> Scrape:
    collector = SnapshotCollector(view)
    collector.publish(snapshot or make_snapshot())
    return Scrape(generate_latest(collector).decode())


def test_known_dags_get_explicit_zero_gauges() -> None:
    scrape = render(View(30))
    assert scrape.value("airflow_dag_runs", dag_id="etl", state="running") == 1
    assert scrape.value("airflow_dag_runs", dag_id="etl", state="queued") == 0
    assert scrape.value("airflow_dag_runs", dag_id="tmp_debug", state="running") == 0
    assert scrape.value("airflow_task_instances", dag_id="etl", state="queued") == 2
    assert scrape.value("airflow_task_instances", dag_id="tmp_debug", state="deferred") == 0
    assert scrape.value("airflow_bridge_series_dropped") == 0


def test_excluded_dags_are_not_served() -> None:
    scrape = render(View(30, exclude_dags=("tmp_*",)))
    assert scrape.series("airflow_dag_run_finished_total") == {
        frozenset({("dag_id", "etl"), ("run_type", "scheduled"), ("state", "success")}): 4}
    assert scrape.value("airflow_dag_runs", dag_id="tmp_debug", state="running") is None
    scrape = render(View(30, include_dags=("tmp_*",)))
    assert list(scrape.series("airflow_dag_run_finished_total").values()) == [1]


def test_without_task_id_labels_series_are_summed() -> None:
    scrape = render(View(30, task_id_label=False))
    assert scrape.series("airflow_task_instance_finished_total") == {
        frozenset({("dag_id", "etl"), ("state", "success")}): 5}
    labels = {"dag_id": "etl", "state": "success"}
    assert scrape.value("airflow_task_instance_duration_seconds_bucket", le="10.0",
                        **labels) == 1
    assert scrape.value("airflow_task_instance_duration_seconds_bucket", le="60.0",
                        **labels) == 4
    assert scrape.value("airflow_task_instance_duration_seconds_bucket", le="+Inf",
                        **labels) == 5
    assert scrape.value("airflow_task_instance_duration_seconds_sum", **labels) == 200
    assert scrape.value("airflow_task_instance_duration_seconds_count", **labels) == 5


def test_series_cap_never_cuts_bridge_health() -> None:
    view = View(30, max_series=12)
    families, dropped = build_families(make_snapshot(), view)
    served = {f.name: len({tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                           for s in f.samples}) for f in families}
    # 22 Airflow series: 2 run counters, 2 task counters, 2 task histograms, 2 DAGs x 2
    # run states, 2 DAGs x 6 task states. Only the 4 per-task series may go: the other 16
    # stay even past the cap, and so do the 3 health series (up, dropped, build info).
    assert dropped == 4
    assert served["airflow_task_instance_finished"] == 0  # the family name, without _total
    assert served["airflow_task_instance_duration_seconds"] == 0
    assert served["airflow_dag_runs"] == 4 and served["airflow_task_instances"] == 12
    scrape = render(view)
    assert scrape.value("airflow_bridge_metadb_up") == 1
    assert scrape.value("airflow_bridge_series_dropped") == 4
    assert scrape.value("airflow_bridge_build_info", version="1.0",
                        airflow_version="unknown") == 1


ROWS = MetricSpec("bikes_rows_loaded", "gauge", "Rows loaded.", ("dag_id",))


def capped_snapshot() -> Snapshot:
    """42 Airflow and business series, 12 of them per task, plus 3 health series."""
    def task(t: str) -> Labels:
        return (("dag_id", "etl"), ("state", "success"), ("task_id", t))

    tasks = "abcde"
    bounds = ((10.0, 1.0), (INF, 1.0))
    counters: dict[str, dict[Labels, float]] = {
        "airflow_dag_run_finished_total": {
            (("dag_id", "etl"), ("run_type", "scheduled"), ("state", "success")): 4.0,
            (("dag_id", "tmp_debug"), ("run_type", "manual"), ("state", "failed")): 1.0},
        "airflow_task_instance_finished_total": {task(t): 1.0 for t in tasks},
        "airflow_task_instance_retries_total": {
            (("dag_id", "etl"), ("task_id", t)): 1.0 for t in "ab"}}
    hist: dict[str, dict[Labels, HistogramValue]] = {"airflow_task_instance_duration_seconds": {
        task(t): HistogramValue(bounds, 5.0, 1.0) for t in tasks}}
    gauges: dict[str, dict[Labels, float]] = {ROWS.name: {(("dag_id", "etl"),): 120.0}}
    state = CurrentState(pools={"default_pool": (128, False)}, pool_usage={},
                         heartbeats={"SchedulerJob": datetime(2026, 11, 1)},
                         paused={"etl": False, "tmp_debug": True}, import_errors=1)
    return snapshot_of(Aggregates(counters, gauges, hist), Live(state=state))


def served_labels(scrape: Scrape, name: str) -> set[frozenset[tuple[str, str]]]:
    return set(scrape.series(name))


def test_series_cap_sheds_the_largest_per_task_families_first() -> None:
    # 30 small series (2 run counters, 4 active-run and 12 task-instance gauges, 5 pool
    # slots, 1 heartbeat, 2 paused, 1 import errors, 2 DAG info, 1 business) and 12
    # per-task ones (5 finished, 5 duration histograms, 2 retries); 3 health series; the
    # cap leaves room for 45 - 6 = 39: the 6 go from the two largest per-task families,
    # equal in size, by name: all 5 durations, then the last finished counter in label
    # order.
    view = View(30, max_series=39, business=(ROWS,))
    scrape = render(view, capped_snapshot())
    assert scrape.value("airflow_bridge_series_dropped") == 6
    assert served_labels(scrape, "airflow_task_instance_duration_seconds_count") == set()
    assert served_labels(scrape, "airflow_task_instance_finished_total") == {
        frozenset({("dag_id", "etl"), ("state", "success"), ("task_id", t)}) for t in "abcd"}
    assert len(served_labels(scrape, "airflow_task_instance_retries_total")) == 2
    assert len(served_labels(scrape, "airflow_pool_slots")) == 5
    assert scrape.value("airflow_job_last_heartbeat_timestamp_seconds",
                        job_type="SchedulerJob") == datetime(2026, 11, 1).timestamp()
    assert scrape.value("airflow_dag_paused", dag_id="tmp_debug") == 1
    assert scrape.value("airflow_dag_import_errors") == 1
    assert scrape.value("bikes_rows_loaded", dag_id="etl") == 120
    assert len(served_labels(scrape, "airflow_task_instances")) == 12


def test_series_cap_keeps_the_small_families_even_past_the_cap() -> None:
    scrape = render(View(30, max_series=10, business=(ROWS,)), capped_snapshot())
    assert scrape.value("airflow_bridge_series_dropped") == 12
    assert len(scrape.airflow()) == 30  # the samples of the 30 small series
    assert scrape.value("bikes_rows_loaded", dag_id="etl") == 120


def test_series_dropped_is_a_gauge_of_the_current_snapshot() -> None:
    collector = SnapshotCollector(View(30, max_series=39, business=(ROWS,)))
    assert collector.publish(capped_snapshot()) == 6
    assert collector.publish(capped_snapshot()) == 6
    assert Scrape(generate_latest(collector).decode()).value(
        "airflow_bridge_series_dropped") == 6, "not added up over snapshots"
    assert collector.publish(make_snapshot()) == 0
    assert Scrape(generate_latest(collector).decode()).value(
        "airflow_bridge_series_dropped") == 0


def test_help_says_the_refresh_interval() -> None:
    text = render(View(45)).text
    assert "# HELP airflow_dag_runs DAG runs queued or running now. Refreshed every 45s by " \
           "airflow-metrics-bridge." in text


def test_series_cached_under_other_labels_are_not_served() -> None:
    snapshot = make_snapshot()
    series = dict(snapshot.series)
    series["airflow_dag_run_finished_total"] = {
        **series["airflow_dag_run_finished_total"],
        (("dag_id", "etl"), ("state", "success")): 9.0}  # an older label set
    scrape = render(View(30), Snapshot(series, snapshot.health))
    assert len(scrape.series("airflow_dag_run_finished_total")) == 2


def test_published_bytes_are_prometheus_clients_in_both_formats() -> None:
    """What scrapes get (the encoder's bytes) equals prometheus_client's rendering of the
    same families, plain and gzipped, refresh after refresh."""
    import gzip

    from prometheus_client.exposition import choose_encoder

    from bridge.collector import GZIP, OPENMETRICS

    collector = SnapshotCollector(View(30))
    snapshot = make_snapshot()
    for _ in range(2):
        collector.publish(snapshot)
        for accept in ("", OPENMETRICS):
            encoder, content_type = choose_encoder(accept)
            expected = encoder(collector)
            assert collector.rendered(content_type, encoder) == expected
            assert gzip.decompress(collector.rendered(content_type + GZIP, encoder)) == expected
        series = dict(snapshot.series)
        series["airflow_dag_run_finished_total"] = {
            (("dag_id", "etl"), ("run_type", "scheduled"), ("state", "success")): 5.0}
        snapshot = Snapshot(series, snapshot.health)


def test_refreshes_reuse_unchanged_families_and_show_every_change() -> None:
    """A collector keeps what it built; each refresh still serves exactly what a new
    collector would, including a change made in place to a dict published before."""
    view = View(30, max_series=7)
    collector = SnapshotCollector(view)
    first = make_snapshot()
    collector.publish(first)
    before = {f.name: f for f in collector.collect()}

    series = {name: dict(values) for name, values in first.series.items()}
    runs = series["airflow_dag_run_finished_total"]
    runs[(("dag_id", "etl"), ("run_type", "scheduled"), ("state", "success"))] = 5.0
    changed = Snapshot(series, first.health)
    collector.publish(changed)
    after = {f.name: f for f in collector.collect()}
    assert after["airflow_task_instance_finished"] is before["airflow_task_instance_finished"]
    assert after["airflow_dag_run_finished"] is not before["airflow_dag_run_finished"]
    assert generate_latest(collector) == generate_latest(_fresh(view, changed))

    runs[(("dag_id", "etl"), ("run_type", "scheduled"), ("state", "success"))] = 6.0
    dropped = collector.publish(changed)  # the same dict, changed in place since published
    scrape = Scrape(generate_latest(collector).decode())
    assert scrape.value("airflow_dag_run_finished_total", dag_id="etl", run_type="scheduled",
                        state="success") == 6
    assert generate_latest(collector) == generate_latest(_fresh(view, changed))
    assert dropped == SnapshotCollector(view).publish(changed) == 4, "the cap still applies"

    tasks = series["airflow_task_instance_finished_total"]
    tasks[(("dag_id", "etl"), ("state", "success"), ("task_id", "b"))] = 9.0
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


def _fresh(view: View, snapshot: Snapshot) -> SnapshotCollector:
    collector = SnapshotCollector(view)
    collector.publish(snapshot)
    return collector


def test_samples_are_those_add_metric_would_make_labels_in_the_family_order() -> None:
    """Families are filled without add_metric; each sample must still be the one it makes,
    label names in the family's order (the exposition writes them in that order)."""
    for family in build_families(make_snapshot(), View(30))[0]:
        if family.type not in ("counter", "gauge"):
            continue
        kind = CounterMetricFamily if family.type == "counter" else GaugeMetricFamily
        spec = BY_NAME.get(family.name) or BY_NAME[family.name + "_total"]
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
    and going, under views that merge task_id or cap the series."""
    views = (View(30), View(30, task_id_label=False), View(30, max_series=8),
             View(30, exclude_dags=("tmp_*",)))
    for view in views:
        collector = SnapshotCollector(view)
        first = make_snapshot()
        series = {name: dict(values) for name, values in first.series.items()}
        tasks = series["airflow_task_instance_finished_total"]
        for step in range(6):
            key = (("dag_id", "etl" if step % 2 else "tmp_debug"), ("state", "success"),
                   ("task_id", "ab"[step % 2]))
            if step == 3:
                del tasks[key]
            else:
                tasks[key] = tasks.get(key, 0.0) + step
            snapshot = Snapshot(series, first.health)
            assert collector.publish(snapshot) == SnapshotCollector(view).publish(snapshot)
            assert generate_latest(collector) == generate_latest(_fresh(view, snapshot)), \
                (view, step)
