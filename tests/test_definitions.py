"""Business metric definitions: the shipped bike file, defaults, paths, located errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.definitions import MetricDefinition, format_path, load_definitions, parse_path
from bridge.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "bridge" / "metrics.yaml"
RESERVED = frozenset({"airflow_dag_runs", "bridge_custom_builtin"})

Entry = dict[str, Any]
Write = Callable[..., Path]

R2: Entry = {"name": "bike_prediction_r2", "help": "R2 of the latest run.", "type": "gauge",
             "dag_id": "daily_prediction", "task_id": "generate_predictions",
             "path": "metrics.r2"}
RECORDS: Entry = {"name": "bike_records_ingested_total", "help": "Records ingested.",
                  "type": "counter", "dag_id": "daily_fetch_bike_data",
                  "task_id": "fetch_bike_data", "path": "records_ingested"}
TRAINING: Entry = {"name": "bike_training_runs_total", "help": "Training tries by state.",
                   "type": "counter", "source": "task_state", "dag_id": "monitor_and_fine_tune",
                   "task_id": "fine_tune_model"}
DECISIONS: Entry = {"name": "bike_model_deployments_total", "help": "Decisions.",
                    "type": "counter", "dag_id": "monitor_and_fine_tune",
                    "task_id": "decide_deployment", "value_label": "decision"}


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Write:
    """Writes `bike.yaml` (entries, or raw text) and returns its path relative to the cwd."""
    monkeypatch.chdir(tmp_path)

    def _write(*entries: Entry, text: str | None = None) -> Path:
        path = Path("bike.yaml")
        body = text if text is not None else yaml.safe_dump({"metrics": list(entries)},
                                                           sort_keys=False)
        path.write_text(body, encoding="utf-8")
        return path

    return _write


def load_error(path: Path, reserved: frozenset[str] = RESERVED) -> str:
    with pytest.raises(ConfigError) as caught:
        load_definitions(path, reserved)
    return str(caught.value)


def test_shipped_bike_file() -> None:
    definitions = load_definitions(SHIPPED, RESERVED)
    shape = {(d.name, d.kind, d.label_names) for d in definitions}
    assert shape == {
        ("bike_records_ingested_total", "counter", ()),
        ("bike_predictions_generated_total", "counter", ()),
        ("bike_prediction_r2", "gauge", ()),
        ("bike_prediction_rmse", "gauge", ()),
        ("bike_prediction_mae", "gauge", ()),
        ("bike_drift_detected", "gauge", ()),
        ("bike_drift_share", "gauge", ()),
        ("bike_drifted_features_count", "gauge", ()),
        ("bike_model_r2_production", "gauge", ()),
        ("bike_model_rmse_production", "gauge", ()),
        ("bike_model_improvement_delta", "gauge", ()),
        ("bike_training_runs_total", "counter", ("status",)),
        ("bike_model_deployments_total", "counter", ("decision",)),
    }
    assert len(definitions) == 13
    by_name = {d.name: d for d in definitions}
    assert by_name["bike_prediction_r2"] == MetricDefinition(
        name="bike_prediction_r2", help="R2 score of the latest daily prediction run.",
        kind="gauge", source="xcom", dag_id="daily_prediction",
        task_id="generate_predictions", key="return_value", path=("metrics", "r2"), labels=(),
        value_label=None, mapped="last")
    training = by_name["bike_training_runs_total"]
    assert (training.source, training.dag_id, training.task_id, training.key, training.path,
            training.value_label, training.mapped) == (
        "task_state", "monitor_and_fine_tune", "fine_tune_model", "", (), "status", "sum")
    deployments = by_name["bike_model_deployments_total"]
    assert (deployments.source, deployments.task_id, deployments.key, deployments.path,
            deployments.value_label) == (
        "xcom", "decide_deployment", "return_value", (), "decision")
    assert by_name["bike_records_ingested_total"].path == ("records_ingested",)
    assert by_name["bike_drift_detected"].path == ("drift_detected",)


def test_defaults_per_kind_and_source(write: Write) -> None:
    r2, records, training, decisions = load_definitions(
        write(R2, RECORDS, TRAINING, DECISIONS), RESERVED)
    assert (r2.key, r2.mapped, r2.value_label, r2.source) == ("return_value", "last", None, "xcom")
    assert (records.key, records.mapped, records.value_label) == ("return_value", "sum", None)
    assert (training.key, training.path, training.mapped, training.value_label) == (
        "", (), "sum", "state")
    assert training.label_names == ("state",)
    assert (decisions.mapped, decisions.path, decisions.label_names) == ("sum", (), ("decision",))


def test_explicit_key_labels_and_mapped_each(write: Write) -> None:
    entry = {**R2, "key": "quality", "labels": {"stage": "prod", "model": "gbm"},
             "mapped": "each", "path": "scores[0]"}
    (definition,) = load_definitions(write(entry), RESERVED)
    assert definition.key == "quality"
    assert definition.path == ("scores", 0)
    assert definition.labels == (("model", "gbm"), ("stage", "prod"))
    assert definition.mapped == "each"
    assert definition.label_names == ("model", "stage", "map_index")
    counted = {**DECISIONS, "labels": {"team": "ml"}, "mapped": "last"}
    (definition,) = load_definitions(write(counted), RESERVED)
    assert (definition.mapped, definition.label_names) == ("last", ("team", "decision"))


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "metrics: []\n", "metrics:\n"])
def test_empty_files_define_nothing(write: Write, text: str) -> None:
    assert load_definitions(write(text=text), RESERVED) == ()


@pytest.mark.parametrize(("text", "steps"), [
    ("metrics.r2", ("metrics", "r2")),
    ("scores[0]", ("scores", 0)),
    ("a[1][2].b", ("a", 1, 2, "b")),
    ("a.b[2].c", ("a", "b", 2, "c")),
    ("[0]", (0,)),
    ("[3].name", (3, "name")),
    ("drift_share", ("drift_share",)),
    ("r-2.x:y", ("r-2", "x:y")),
    ("a.0", ("a", "0")),
])
def test_paths_parse_into_steps(text: str, steps: tuple[str | int, ...]) -> None:
    assert parse_path(text) == steps
    assert format_path(steps) == text


@pytest.mark.parametrize("text", ["", "a..b", "a.", ".a", "a[x]", "a[", "a]", "a[1]b",
                                  "a[-1]", "a b", "a.[0]", "[]", "a[1.5]"])
def test_invalid_paths_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_path(text)


ERRORS: list[tuple[str, list[Entry], str]] = [
    ("gauge_with_value_label", [RECORDS, TRAINING, {**R2, "value_label": "r2_text"}],
     "bike.yaml: metrics[2] (bike_prediction_r2).type: a gauge cannot take string values "
     "(value_label); use type: counter to count each distinct value"),
    ("invalid_name", [{**R2, "name": "bike-prediction r2"}],
     "bike.yaml: metrics[0] (bike-prediction r2).name: 'bike-prediction r2' is not a valid "
     "Prometheus metric name; use letters, digits, _ and : only, not starting with a digit, "
     "e.g. bike_prediction_r2"),
    ("name_starting_with_a_digit", [{**R2, "name": "2fast"}],
     "bike.yaml: metrics[0] (2fast).name: '2fast' is not a valid Prometheus metric name; use "
     "letters, digits, _ and : only, not starting with a digit, e.g. _2fast"),
    ("airflow_prefix", [{**R2, "name": "airflow_bike_r2"}],
     "bike.yaml: metrics[0] (airflow_bike_r2).name: names starting with airflow_ are reserved "
     "for the bridge's own metrics; start it with a prefix of your own, e.g. mypipeline_bike_r2"),
    ("built_in_name", [{**R2, "name": "bridge_custom_builtin"}],
     "bike.yaml: metrics[0] (bridge_custom_builtin).name: bridge_custom_builtin is a built-in "
     "metric of the bridge; choose another name"),
    ("counter_without_total", [{**RECORDS, "name": "bike_records_ingested"}],
     "bike.yaml: metrics[0] (bike_records_ingested).name: a counter's name must end in _total; "
     "write bike_records_ingested_total"),
    ("gauge_with_total", [{**R2, "name": "bike_prediction_r2_total"}],
     "bike.yaml: metrics[0] (bike_prediction_r2_total).name: a gauge's name must not end in "
     "_total, which marks counters; write bike_prediction_r2 or use type: counter"),
    ("empty_help", [{**R2, "help": "  "}],
     "bike.yaml: metrics[0] (bike_prediction_r2).help: must not be empty; say what the number "
     "means and its unit"),
    ("empty_dag_id", [{**R2, "dag_id": ""}],
     "bike.yaml: metrics[0] (bike_prediction_r2).dag_id: must not be empty; write the dag_id "
     "as Airflow shows it"),
    ("missing_task_id", [{k: v for k, v in R2.items() if k != "task_id"}],
     "bike.yaml: metrics[0] (bike_prediction_r2).task_id: required; add it, e.g. "
     "`task_id: fetch_bike_data`"),
    ("missing_name", [{k: v for k, v in R2.items() if k != "name"}],
     "bike.yaml: metrics[0].name: required; add it, e.g. `name: bike_records_ingested_total`"),
    ("unknown_key", [{**R2, "value_lable": "x"}],
     "bike.yaml: metrics[0] (bike_prediction_r2).value_lable: unknown key; did you mean "
     "value_label? known keys: dag_id, help, key, labels, mapped, name, path, source, task_id, "
     "type, value_label"),
    ("unknown_key_without_match", [{**R2, "zzz": 1}],
     "bike.yaml: metrics[0] (bike_prediction_r2).zzz: unknown key; known keys: dag_id, help, "
     "key, labels, mapped, name, path, source, task_id, type, value_label"),
    ("wrong_type", [{**R2, "type": "summary"}],
     "bike.yaml: metrics[0] (bike_prediction_r2).type: write 'gauge' or 'counter', not "
     "'summary'"),
    ("wrong_source", [{**R2, "source": "xcoms"}],
     "bike.yaml: metrics[0] (bike_prediction_r2).source: write 'xcom' or 'task_state', not "
     "'xcoms'"),
    ("wrong_mapped", [{**R2, "mapped": "max"}],
     "bike.yaml: metrics[0] (bike_prediction_r2).mapped: write 'sum', 'last' or 'each', not "
     "'max'"),
    ("number_as_dag_id", [{**R2, "dag_id": 42}],
     "bike.yaml: metrics[0] (bike_prediction_r2).dag_id: must be a string, not the number 42; "
     "quote it if needed"),
    ("label_value_not_a_string", [{**R2, "labels": {"stage": True}}],
     "bike.yaml: metrics[0] (bike_prediction_r2).labels.stage: must be a string, not the "
     "boolean true; quote it if needed"),
    ("labels_not_a_mapping", [{**R2, "labels": ["stage"]}],
     "bike.yaml: metrics[0] (bike_prediction_r2).labels: must be a mapping of label names to "
     "values, e.g. `labels: {pipeline: bike}`, not a list"),
    ("task_state_gauge", [{**TRAINING, "type": "gauge", "name": "bike_training_state"}],
     "bike.yaml: metrics[0] (bike_training_state).type: a task_state metric counts the task's "
     "terminal states, so it is a counter; write type: counter and a name ending in _total"),
    ("task_state_with_key", [{**TRAINING, "key": "return_value"}],
     "bike.yaml: metrics[0] (bike_training_runs_total).key: a task_state metric reads no XCom; "
     "remove key"),
    ("task_state_with_path", [{**TRAINING, "path": "epochs"}],
     "bike.yaml: metrics[0] (bike_training_runs_total).path: a task_state metric reads no "
     "XCom; remove path"),
    ("empty_key", [{**R2, "key": ""}],
     "bike.yaml: metrics[0] (bike_prediction_r2).key: must not be empty; leave key out to read "
     "return_value"),
    ("invalid_path", [{**R2, "path": "metrics..r2"}],
     "bike.yaml: metrics[0] (bike_prediction_r2).path: 'metrics..r2' is not a valid path; "
     "write keys separated by dots, with list indexes in brackets, e.g. metrics.r2, scores[0] "
     "or a.b[2].c (leave path out to take the whole value)"),
    ("invalid_label_name", [{**R2, "labels": {"1stage": "prod"}}],
     "bike.yaml: metrics[0] (bike_prediction_r2).labels.1stage: '1stage' is not a valid label "
     "name; use letters, digits and _ only, not starting with a digit"),
    ("dunder_label", [{**R2, "labels": {"__name": "x"}}],
     "bike.yaml: metrics[0] (bike_prediction_r2).labels.__name: __name: label names starting "
     "with __ are reserved by Prometheus; rename it"),
    ("le_label", [{**R2, "labels": {"le": "1"}}],
     "bike.yaml: metrics[0] (bike_prediction_r2).labels.le: le is reserved by Prometheus for "
     "histograms and summaries; choose another label name"),
    ("quantile_value_label", [{**DECISIONS, "value_label": "quantile"}],
     "bike.yaml: metrics[0] (bike_model_deployments_total).value_label: quantile is reserved "
     "by Prometheus for histograms and summaries; choose another label name"),
    ("invalid_value_label", [{**DECISIONS, "value_label": "deploy-decision"}],
     "bike.yaml: metrics[0] (bike_model_deployments_total).value_label: 'deploy-decision' is "
     "not a valid label name; use letters, digits and _ only, not starting with a digit"),
    ("static_label_is_the_value_label", [{**DECISIONS, "labels": {"decision": "x"}}],
     "bike.yaml: metrics[0] (bike_model_deployments_total).labels.decision: decision is also "
     "the value_label; remove it from labels or choose another value_label"),
    ("static_label_is_the_default_state_label", [{**TRAINING, "labels": {"state": "x"}}],
     "bike.yaml: metrics[0] (bike_training_runs_total).labels.state: state is also the "
     "value_label; remove it from labels or choose another value_label"),
    ("map_index_label_with_each", [{**R2, "mapped": "each", "labels": {"map_index": "0"}}],
     "bike.yaml: metrics[0] (bike_prediction_r2).labels.map_index: map_index is added by "
     "`mapped: each`; choose another label name"),
    ("map_index_value_label_with_each",
     [{**DECISIONS, "mapped": "each", "value_label": "map_index"}],
     "bike.yaml: metrics[0] (bike_model_deployments_total).value_label: map_index is added by "
     "`mapped: each`; choose another label name"),
    ("empty_label_value", [{**R2, "labels": {"stage": ""}}],
     "bike.yaml: metrics[0] (bike_prediction_r2).labels.stage: an empty value drops the label "
     "in Prometheus; give it a value"),
]


@pytest.mark.parametrize(("entries", "message"), [(e, m) for _, e, m in ERRORS],
                         ids=[case for case, _, _ in ERRORS])
def test_errors_are_located(write: Write, entries: list[Entry], message: str) -> None:
    assert load_error(write(*entries)) == message


def test_map_index_is_an_ordinary_label_without_each(write: Write) -> None:
    (definition,) = load_definitions(write({**R2, "labels": {"map_index": "all"}}), RESERVED)
    assert definition.label_names == ("map_index",)


@pytest.mark.parametrize(("text", "message"), [
    ("- name: x\n", "bike.yaml: the top level must be a mapping with one key, `metrics:`, "
                    "holding a list of metric definitions"),
    ("metric:\n  - name: x\n", "bike.yaml: metric: unknown key; the file holds one key, "
                               "`metrics:`, a list of metric definitions"),
    ("metrics: {name: x}\n", "bike.yaml: metrics: must be a list of metric definitions, each "
                             "starting with `- name: ...`"),
    ("metrics:\n  - bike_prediction_r2\n", "bike.yaml: metrics[0]: each entry must be a "
                                           "mapping with name, help, type, dag_id and task_id, "
                                           "not 'bike_prediction_r2'"),
])
def test_file_shape_errors(write: Write, text: str, message: str) -> None:
    assert load_error(write(text=text)) == message


def test_invalid_yaml_and_missing_file(write: Write) -> None:
    message = load_error(write(text="metrics: [\n"))
    assert message == ("bike.yaml: line 2 column 1: not valid YAML: expected the node content, "
                       "but found '<stream end>'")
    assert load_error(Path("nope.yaml")) == (
        "nope.yaml: cannot read the metrics file: No such file or directory")


def test_every_problem_of_a_file_is_reported(write: Write) -> None:
    entries = [{**R2, "name": "airflow_x"}, RECORDS, {**DECISIONS, "type": "gauge",
                                                      "name": "bike_decision"}]
    assert load_error(write(*entries)).splitlines() == [
        "bike.yaml: metrics[0] (airflow_x).name: names starting with airflow_ are reserved for "
        "the bridge's own metrics; start it with a prefix of your own, e.g. mypipeline_x",
        "bike.yaml: metrics[2] (bike_decision).type: a gauge cannot take string values "
        "(value_label); use type: counter to count each distinct value",
    ]


def test_a_shared_name_gathers_from_several_dags(write: Write) -> None:
    city = {**RECORDS, "labels": {"feed": "city"}}
    region = {**RECORDS, "dag_id": "daily_fetch_region", "labels": {"feed": "region"},
              "path": "counts[0]", "mapped": "last"}
    first, second = load_definitions(write(city, region), RESERVED)
    assert (first.name, first.labels, first.dag_id, first.mapped) == (
        "bike_records_ingested_total", (("feed", "city"),), "daily_fetch_bike_data", "sum")
    assert (second.name, second.labels, second.dag_id, second.path, second.mapped) == (
        "bike_records_ingested_total", (("feed", "region"),), "daily_fetch_region",
        ("counts", 0), "last")


AGREE = ("entries that share a name must have the same type, help and label names, and differ "
         "in a static label value")


@pytest.mark.parametrize(("second", "message"), [
    ({**RECORDS, "labels": {"feed": "city"}},
     "bike.yaml: metrics[1] (bike_records_ingested_total).labels: same static labels as "
     "metrics[0], so both would write the same series; give each entry that shares this name "
     "its own label value, e.g. `labels: {pipeline: daily_fetch_bike_data}`"),
    ({**RECORDS, "labels": {"feed": "region"}, "help": "Other text."},
     "bike.yaml: metrics[1] (bike_records_ingested_total).help: differs from the help of "
     "metrics[0], which defines bike_records_ingested_total too; " + AGREE),
    ({**RECORDS, "labels": {"source": "region"}},
     "bike.yaml: metrics[1] (bike_records_ingested_total).labels: metrics[0] gives "
     "bike_records_ingested_total the labels (feed), this entry (source); " + AGREE),
    ({**RECORDS, "labels": {"feed": "region"}, "mapped": "each"},
     "bike.yaml: metrics[1] (bike_records_ingested_total).labels: metrics[0] gives "
     "bike_records_ingested_total the labels (feed), this entry (feed, map_index); " + AGREE),
    ({**TRAINING, "name": "bike_records_ingested_total", "help": "Records ingested.",
      "labels": {"feed": "x"}},
     "bike.yaml: metrics[1] (bike_records_ingested_total).labels: metrics[0] gives "
     "bike_records_ingested_total the labels (feed), this entry (feed, state); " + AGREE),
])
def test_a_shared_name_must_agree(write: Write, second: Entry, message: str) -> None:
    first = {**RECORDS, "labels": {"feed": "city"}}
    assert load_error(write(first, second)) == message


def test_a_shared_name_without_static_labels_is_refused(write: Write) -> None:
    assert load_error(write(R2, {**R2, "dag_id": "other"})) == (
        "bike.yaml: metrics[1] (bike_prediction_r2).labels: same static labels as metrics[0], "
        "so both would write the same series; give each entry that shares this name its own "
        "label value, e.g. `labels: {pipeline: other}`")


def test_a_shared_name_cannot_change_type(write: Write) -> None:
    # The suffix rules make the type follow from the name, so they catch it first.
    gauge = {**R2, "name": "bike_x", "labels": {"a": "1"}}
    counter = {**RECORDS, "name": "bike_x", "labels": {"a": "2"}}
    assert load_error(write(gauge, counter)) == (
        "bike.yaml: metrics[1] (bike_x).name: a counter's name must end in _total; write "
        "bike_x_total")


def test_a_third_entry_is_compared_with_all_earlier_ones(write: Write) -> None:
    entries = [{**RECORDS, "labels": {"feed": f}} for f in ("a", "b", "b")]
    assert load_error(write(*entries)) == (
        "bike.yaml: metrics[2] (bike_records_ingested_total).labels: same static labels as "
        "metrics[1], so both would write the same series; give each entry that shares this "
        "name its own label value, e.g. `labels: {pipeline: daily_fetch_bike_data}`")


def test_gauge_and_counter_may_not_share_a_family(write: Write) -> None:
    gauge = {**R2, "name": "bike_records_ingested"}
    assert load_error(write(gauge, RECORDS)) == (
        "bike.yaml: metrics[1] (bike_records_ingested_total).name: bike_records_ingested_total "
        "and metrics[0] (bike_records_ingested) would share the metric family "
        "bike_records_ingested (a counter's family drops _total); rename one")


def test_reserved_names_come_from_the_caller(write: Write) -> None:
    path = write({**R2, "name": "bridge_custom_builtin"})
    (definition,) = load_definitions(path, frozenset())
    assert definition.name == "bridge_custom_builtin"


def test_definitions_are_frozen(write: Write) -> None:
    (definition,) = load_definitions(write(R2), RESERVED)
    with pytest.raises(AttributeError):
        definition.name = "other"  # type: ignore[misc]
