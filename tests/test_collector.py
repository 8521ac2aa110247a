"""Snapshots to families: zeros for known DAGs, cardinality controls, the series cap."""

from __future__ import annotations

from prometheus_client import generate_latest

from bridge.app import airflow_series
from bridge.cache.totals import Aggregates
from bridge.collector import Snapshot, SnapshotCollector, View, build_families
from bridge.health import Health
from bridge.metric import HistogramValue
from bridge.stages.current import Live
from tests.conftest import Scrape

INF = float("inf")


def make_snapshot() -> Snapshot:
    finished = "airflow_task_instance_finished_total"
    counters = {
        "airflow_dag_run_finished_total": {
            (("dag_id", "etl"), ("run_type", "scheduled"), ("state", "success")): 4.0,
            (("dag_id", "tmp_debug"), ("run_type", "manual"), ("state", "failed")): 1.0},
        finished: {
            (("dag_id", "etl"), ("state", "success"), ("task_id", "a")): 3.0,
            (("dag_id", "etl"), ("state", "success"), ("task_id", "b")): 2.0},
    }
    hist = {"airflow_task_instance_duration_seconds": {
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
    assert scrape.value("airflow_bridge_series_dropped_total") == 0


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


def test_series_cap_drops_airflow_series_never_bridge_health() -> None:
    view = View(30, max_series=12)
    families, dropped = build_families(make_snapshot(), view)
    served = sum(len({tuple(sorted(s.labels.items())) for s in f.samples
                      if not s.name.endswith(("_bucket", "_sum", "_count"))} |
                     {tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                      for s in f.samples if s.name.endswith("_count")})
                 for f in families)
    assert served == 12
    # 22 Airflow series (2 run counters, 2 task counters, 2 histograms, 2 DAGs x 2 run
    # states, 2 DAGs x 6 task states); 3 health series (up, dropped, build info) always stay.
    assert dropped == 22 - (12 - 3)
    scrape = render(view)
    assert scrape.value("airflow_bridge_metadb_up") == 1
    assert scrape.value("airflow_bridge_series_dropped_total") == dropped
    assert scrape.value("airflow_bridge_build_info", version="1.0",
                        airflow_version="unknown") == 1


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
