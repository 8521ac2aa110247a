"""Business metrics end to end: real captured XComs, hostile values, mapped tasks."""

from __future__ import annotations

import math
import pickle
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from bridge.app import load_settings
from bridge.demo.dump import load_dump
from bridge.errors import ConfigError
from tests.conftest import AirflowDb, BridgeFactory, Scrape
from tests.metadb import T0, TaskWriter, push_xcom
from tests.postgres import CAPTURED_VERSIONS, FIXTURES

BIKE_METRICS = Path(__file__).parent.parent / "deploy" / "bridge" / "metrics.yaml"
ERRORS = "airflow_bridge_xcom_decode_errors_total"

BIKE_EXPECTED = {
    ("bike_records_ingested_total", ()): 14340 + 17121 + 10634,
    ("bike_predictions_generated_total", ()): 3 * 1152,
    ("bike_prediction_r2", ()): 0.8249,
    ("bike_prediction_rmse", ()): 30.293,
    ("bike_prediction_mae", ()): 23.794,
    ("bike_drift_detected", ()): 1,
    ("bike_drift_share", ()): 0.375,
    ("bike_drifted_features_count", ()): 3,
    ("bike_model_r2_production", ()): 0.8405,
    ("bike_model_rmse_production", ()): 20.628,
    ("bike_model_improvement_delta", ()): -0.0053,
    ("bike_training_runs_total", (("status", "success"),)): 3,
    ("bike_model_deployments_total", (("decision", "deploy"),)): 2,
    ("bike_model_deployments_total", (("decision", "skip"),)): 1,
}


def bike_samples(scrape: Scrape) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(name, tuple(sorted(labels))): value
            for (name, labels), value in scrape.samples.items() if name.startswith("bike_")}


@pytest.mark.parametrize("airflow_version", CAPTURED_VERSIONS)
def test_bike_metrics_from_xcoms_captured_from_real_airflow(
        airflow_db: AirflowDb, make_bridge: BridgeFactory) -> None:
    load_dump(airflow_db.writer.conn, FIXTURES / f"capture-{airflow_db.version}.sql")
    bridge = make_bridge(airflow_db.url, metrics_file=str(BIKE_METRICS))
    scrape = bridge.cycle()
    assert bike_samples(scrape) == BIKE_EXPECTED
    assert scrape.series(ERRORS) == {}
    print("\n" + "\n".join(line for line in scrape.text.splitlines()
                           if line.startswith("bike_")))
    assert bike_samples(bridge.cycle()) == BIKE_EXPECTED
    bridge.close()
    restarted = make_bridge(airflow_db.url, metrics_file=str(BIKE_METRICS))
    assert bike_samples(restarted.scrape()) == BIKE_EXPECTED, "served from the cache at start"
    assert bike_samples(restarted.cycle()) == BIKE_EXPECTED


def definitions(tmp_path: Path, *entries: dict[str, object]) -> str:
    path = tmp_path / "metrics.yaml"
    path.write_text(yaml.safe_dump({"metrics": [
        {"help": "test metric", "dag_id": "pipe", **entry} for entry in entries]}))
    return str(path)


def finished_run(db: AirflowDb, tasks: TaskWriter, task_ids: list[str], day: int = 0,
                 mapped: dict[str, int] | None = None) -> int:
    run = db.writer.create_run("pipe", logical_date=T0 + timedelta(days=day))
    db.writer.start_run(run, T0 + timedelta(days=day, minutes=1))
    for task_id in task_ids:
        for index in range((mapped or {}).get(task_id, 0)) or [-1]:
            tasks.add(run, task_id, map_index=index)
            tasks.run_try(run, task_id, "success", T0 + timedelta(days=day, minutes=2),
                          map_index=index)
    db.writer.finish_run(run, "success", T0 + timedelta(days=day, minutes=30))
    return run


def test_gauge_goes_absent_from_a_run_with_an_unusable_value_until_a_usable_one(
        airflow_db: AirflowDb, make_bridge: BridgeFactory, tmp_path: Path) -> None:
    """The newest run's value or nothing: a gauge never presents an older run's number as
    the latest. A failed run that pushed nothing is not a value, and leaves the last one."""
    tasks = TaskWriter(airflow_db.writer)
    metrics = definitions(tmp_path, {"name": "mape", "type": "gauge", "task_id": "evaluate",
                                     "path": "mape"})
    bridge = make_bridge(airflow_db.url, metrics_file=metrics)
    day = iter(range(10))

    def run(value: object | None, state: str = "success") -> Scrape:
        if state == "success":
            push_xcom(tasks, finished_run(airflow_db, tasks, ["evaluate"], day=next(day)),
                      "evaluate", value)
        else:
            airflow_db.writer.complete_run("pipe", logical_date=T0 + timedelta(days=next(day)),
                                           state=state)
        return bridge.cycle()

    assert run({"mape": 0.2}).value("mape") == 0.2
    unusable = run({"mape": "nan"})
    assert unusable.value("mape") is None
    assert unusable.series(ERRORS) == {
        frozenset({("metric", "mape"), ("reason", "not_finite")}): 1.0}
    assert run(None, state="failed").value("mape") is None, "still absent"
    bridge.close()
    bridge = make_bridge(airflow_db.url, metrics_file=metrics)  # the same cache
    assert bridge.scrape().value("mape") is None, "absent after a restart too"
    assert run({"mape": 0.3}).value("mape") == 0.3
    assert run(None, state="failed").value("mape") == 0.3, "nothing pushed: the last value"
    report = bridge.cache.engine.connect().exec_driver_sql(
        "SELECT metric, value FROM report_latest_business_values").fetchall()
    assert [tuple(row) for row in report] == [("mape", 0.3)]


def test_hostile_values_are_counted_and_never_served(airflow_db: AirflowDb,
                                                     make_bridge: BridgeFactory,
                                                     tmp_path: Path) -> None:
    tasks = TaskWriter(airflow_db.writer)
    v3 = airflow_db.version.startswith("3.")
    cases: dict[str, tuple[object, bytes | None, str | None]] = {
        # task_id: (JSON value, raw 2.x bytes or None, expected error reason or None)
        "good": ({"n": 5}, None, None),
        "huge": ({"n": 1, "pad": "x" * 10_000_000}, None, "too_large"),
        "text": ({"n": "lots"}, None, "not_numeric"),
        "numeric_text": ({"n": " 12.5 "}, None, None),
        "null": ({"n": None}, None, "not_numeric"),
        "nested": ({"n": [[1, 2], [3]]}, None, "not_numeric"),
        "no_path": ({"m": 1}, None, "path_not_found"),
        "boolean": ({"n": True}, None, None),
        "negative": ({"n": -4}, None, "negative"),
        # Any DAG author can push these; the driver must never be the one to parse them.
        "deep": (None, b'{"n": ' + b"[" * 3000 + b"]" * 3000 + b"}", "too_deep"),
        "long_int": (None, b'{"n": 1' + b"0" * 5000 + b"}", "not_finite"),
        "long_int_beside": (None, b'{"n": 3, "x": 1' + b"0" * 5000 + b"}", None),
        # A JSON null pushed as the whole value: nothing was pushed, on every version.
        "whole_null": (None, b"null", "missing"),
    }
    if not v3:  # bytea can hold anything; jsonb cannot hold these
        cases.update({
            "pickled": (None, pickle.dumps({"n": 1}), "pickled"),
            "bad_utf8": (None, b'{"n": "\xff\xfe"}', "invalid_utf8"),
            "nan": (None, b'{"n": NaN}', "not_finite"),
        })
    entries = [{"name": f"{task_id}_total", "type": "counter", "task_id": task_id,
                "path": "n"} for task_id in cases]
    entries.append({"name": "gone_total", "type": "counter", "task_id": "removed_task"})
    run = finished_run(airflow_db, tasks, list(cases))
    for task_id, (value, raw, _) in cases.items():
        push_xcom(tasks, run, task_id, value, raw=raw)
    bridge = make_bridge(airflow_db.url, metrics_file=definitions(tmp_path, *entries))
    scrape = bridge.cycle()
    expected_errors = {frozenset({("metric", f"{t}_total"), ("reason", reason)}): 1.0
                       for t, (_, _, reason) in cases.items() if reason}
    expected_errors[frozenset({("metric", "gone_total"), ("reason", "missing")})] = 1.0
    assert scrape.series(ERRORS) == expected_errors
    served = {name: value for (name, labels), value in scrape.samples.items()
              if name.endswith("_total") and not name.startswith("airflow")}
    assert served == {"good_total": 5, "numeric_text_total": 12.5, "boolean_total": 1,
                      "long_int_beside_total": 3}
    assert not any(math.isnan(v) for v in scrape.samples.values())
    assert bridge.cycle().series(ERRORS) == expected_errors, "counted once per finished run"
    failed = airflow_db.writer.complete_run("pipe", logical_date=T0 + timedelta(days=3),
                                            state="failed")
    assert failed
    assert bridge.cycle().series(ERRORS) == expected_errors, \
        "a failed run's tasks may not have pushed: no 'missing' errors for it"


def test_counters_sum_gauges_take_the_latest_run_and_mapped_tasks_combine(
        airflow_db: AirflowDb, make_bridge: BridgeFactory, tmp_path: Path) -> None:
    tasks = TaskWriter(airflow_db.writer)
    metrics = definitions(
        tmp_path,
        {"name": "rows_total", "type": "counter", "task_id": "load", "path": "rows",
         "labels": {"team": "data"}},
        {"name": "score", "type": "gauge", "task_id": "load", "path": "metrics.scores[1]"},
        {"name": "parts_total", "type": "counter", "task_id": "part"},
        {"name": "last_part", "type": "gauge", "task_id": "part"},
        {"name": "each_part", "type": "gauge", "task_id": "part", "mapped": "each"},
        {"name": "status_total", "type": "counter", "task_id": "decide",
         "value_label": "status"},
        {"name": "load_states_total", "type": "counter", "source": "task_state",
         "task_id": "load"},
    )
    bridge = make_bridge(airflow_db.url, metrics_file=metrics)
    later = finished_run(airflow_db, tasks, ["load", "part", "decide"], day=1,
                         mapped={"part": 3})
    earlier = finished_run(airflow_db, tasks, ["load", "part", "decide"], day=0,
                           mapped={"part": 2})
    for run, rows, score, decision, parts in ((later, 10, 0.9, "skip", (1, 2, 3)),
                                              (earlier, 7, 0.5, "deploy", (4, 5))):
        push_xcom(tasks, run, "load", {"rows": rows, "metrics": {"scores": [0, score]}})
        push_xcom(tasks, run, "decide", decision)
        for index, part in enumerate(parts):
            push_xcom(tasks, run, "part", part, map_index=index)
    scrape = bridge.cycle()
    assert scrape.value("rows_total", team="data") == 17
    assert scrape.value("score") == 0.9, "the run that ended last, not the one read last"
    assert scrape.value("parts_total") == 1 + 2 + 3 + 4 + 5
    assert scrape.value("last_part") == 3
    assert scrape.series("each_part") == {frozenset({("map_index", "0")}): 1,
                                          frozenset({("map_index", "1")}): 2,
                                          frozenset({("map_index", "2")}): 3}
    assert scrape.value("status_total", status="skip") == 1
    assert scrape.value("status_total", status="deploy") == 1
    assert scrape.value("load_states_total", state="success") == 2
    assert scrape.series(ERRORS) == {}
    history = bridge.cache.engine.connect().exec_driver_sql(
        "SELECT metric, labels, value FROM business_value WHERE metric = 'rows_total' "
        "ORDER BY end_date").fetchall()
    assert [tuple(row) for row in history] == [("rows_total", '{"team":"data"}', 7.0),
                                               ("rows_total", '{"team":"data"}', 10.0)]


@pytest.mark.parametrize("name", ["airflow_dag_runs", "airflow_custom_total"])
def test_clash_with_builtin_metrics_is_a_config_error(tmp_path: Path, name: str) -> None:
    path = definitions(tmp_path, {"name": name, "type": "gauge", "task_id": "t"})
    with pytest.raises(ConfigError, match=name):
        load_settings(None, {"BRIDGE_METRICS_FILE": path})


def test_skipped_task_is_not_a_missing_value_and_mapped_strings_add_up(
        airflow_db: AirflowDb, make_bridge: BridgeFactory, tmp_path: Path) -> None:
    tasks = TaskWriter(airflow_db.writer)
    metrics = definitions(
        tmp_path,
        {"name": "branch_total", "type": "counter", "task_id": "maybe"},
        {"name": "verdict_total", "type": "counter", "task_id": "judge",
         "value_label": "verdict"})
    bridge = make_bridge(airflow_db.url, metrics_file=metrics)
    run = finished_run(airflow_db, tasks, ["judge"], mapped={"judge": 3})
    tasks.add(run, "maybe")
    tasks.set(run, "maybe", "skipped", T0 + timedelta(minutes=3))
    for index in range(3):
        push_xcom(tasks, run, "judge", "ok", map_index=index)
    scrape = bridge.cycle()
    assert scrape.series(ERRORS) == {}, "a skipped branch pushed nothing, and that is fine"
    assert scrape.value("verdict_total", verdict="ok") == 3
    history = bridge.cache.engine.connect().exec_driver_sql(
        "SELECT labels, value FROM business_value WHERE metric = 'verdict_total'").fetchall()
    assert [tuple(row) for row in history] == [('{"verdict":"ok"}', 3.0)], \
        "the per-run history agrees with the counter"
