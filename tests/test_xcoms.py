"""Decoding stored XCom values: real Airflow 2.10.5 / 3.3.2 rows, then hostile ones.

The real values are copied from tests/fixtures/airflow/capture-2.10.5.sql (`xcom.value`
bytea, as the `\\x...` hex of the dump; psycopg returns it as `bytes`) and
capture-3.3.2.sql (`xcom.value` jsonb; psycopg returns it parsed, in jsonb key order).
Each is cited as dag_id / task_id / map_index / key of the 2026-01-01 run.
"""

from __future__ import annotations

import json
import math
import pickle
from typing import Any

import pytest

from bridge.airflow.xcoms import (
    REASONS,
    XcomValueError,
    decode,
    extract,
    to_label,
    to_number,
    unwrap,
)

LIMIT = 65536

# capture-2.10.5.sql, xcom rows of the 2026-01-01 runs (bytea hex as dumped)
V2_FETCH = bytes.fromhex(  # daily_fetch_bike_data / fetch_bike_data / -1 / return_value
    "7b227265636f7264735f696e676573746564223a2031343334302c2022736f75726365223a2022636974"
    "792d636f756e74657273227d")
V2_PREDICT = bytes.fromhex(  # daily_prediction / generate_predictions / -1 / return_value
    "7b2270726564696374696f6e735f67656e657261746564223a20313135322c20226d657472696373223a"
    "207b227232223a20302e383839372c2022726d7365223a2032312e3630332c20226d6165223a2031352e"
    "3630337d7d")
V2_DRIFT = bytes.fromhex(  # monitor_and_fine_tune / detect_drift / -1 / return_value
    "7b2264726966745f6465746563746564223a20747275652c202264726966745f7368617265223a20302e"
    "3337352c2022647269667465645f6665617475726573223a205b22636f756e7465725f6964222c20226c"
    "61675f323468222c202270726563697069746174696f6e225d2c2022647269667465645f666561747572"
    "65735f636f756e74223a20337d")
V2_EVALUATE = bytes.fromhex(  # monitor_and_fine_tune / evaluate_model / -1 / return_value
    "7b2272325f70726f64756374696f6e223a20302e383630322c2022726d73655f70726f64756374696f6e"
    "223a2032332e3935342c2022696d70726f76656d656e745f64656c7461223a20302e303232327d")
V2_DECIDE = bytes.fromhex("226465706c6f7922")  # monitor_and_fine_tune / decide_deployment
V2_DATETIME = bytes.fromhex(  # xcom_shapes / return_datetime / -1 / return_value
    "7b225f5f636c6173736e616d655f5f223a20226461746574696d652e6461746574696d65222c20225f5f"
    "76657273696f6e5f5f223a20322c20225f5f646174615f5f223a207b2274696d657374616d70223a2031"
    "3736373237303631352e302c2022747a223a207b225f5f636c6173736e616d655f5f223a20226275696c"
    "74696e732e7475706c65222c20225f5f76657273696f6e5f5f223a20312c20225f5f646174615f5f223a"
    "205b22555443222c202270656e64756c756d2e747a2e74696d657a6f6e652e466978656454696d657a6f"
    "6e65222c20312c20747275655d7d7d7d")
V2_TUPLE = bytes.fromhex(  # xcom_shapes / return_tuple / -1 / return_value
    "7b225f5f636c6173736e616d655f5f223a20226275696c74696e732e7475706c65222c20225f5f766572"
    "73696f6e5f5f223a20312c20225f5f646174615f5f223a205b312c20325d7d")
V2_NAN = bytes.fromhex("4e614e")  # xcom_shapes / return_nan / -1 / return_value: NaN
V2_MULTIPLE = {  # xcom_shapes / multiple_outputs / -1 / each key
    "a": bytes.fromhex("31"),
    "b": bytes.fromhex("322e35"),
    "return_value": bytes.fromhex("7b2261223a20312c202262223a20322e357d"),
}
V2_TIMES_TEN = {  # xcom_shapes / times_ten / map_index / return_value
    0: bytes.fromhex("3130"), 1: bytes.fromhex("3230"), 2: bytes.fromhex("3330")}
V2_ROW_COUNT = bytes.fromhex("3432")  # xcom_shapes / explicit_push / -1 / row_count

# capture-3.3.2.sql, the same rows as psycopg returns the jsonb
V3_FETCH = {"source": "city-counters", "records_ingested": 14340}
V3_PREDICT = {"metrics": {"r2": 0.8897, "mae": 15.603, "rmse": 21.603},
              "predictions_generated": 1152}
V3_DRIFT = {"drift_share": 0.375, "drift_detected": True,
            "drifted_features": ["counter_id", "lag_24h", "precipitation"],
            "drifted_features_count": 3}
V3_EVALUATE = {"r2_production": 0.8602, "rmse_production": 23.954, "improvement_delta": 0.0222}
V3_DECIDE = "deploy"
V3_DATETIME = {"__data__": {"tz": {"__data__": ["UTC", "pendulum.tz.timezone.FixedTimezone", 1,
                                                True],
                                   "__version__": 1, "__classname__": "builtins.tuple"},
                            "timestamp": 1767270615.0},
               "__version__": 2, "__classname__": "datetime.datetime"}
V3_TUPLE = {"__data__": [1, 2], "__version__": 1, "__classname__": "builtins.tuple"}
V3_MULTIPLE: dict[str, Any] = {"a": 1, "b": 2.5, "return_value": {"a": 1, "b": 2.5}}
V3_TIMES_TEN = {0: 10, 1: 20, 2: 30}
V3_ROW_COUNT = 42

DATETIME_DATA = {"timestamp": 1767270615.0,
                 "tz": ["UTC", "pendulum.tz.timezone.FixedTimezone", 1, True]}


def reason(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(XcomValueError) as caught:
        call(*args, **kwargs)
    return caught.value.reason


def test_airflow_2_bike_values() -> None:
    fetch = decode(V2_FETCH, LIMIT)
    assert fetch == {"records_ingested": 14340, "source": "city-counters"}
    assert to_number(extract(fetch, ("records_ingested",))) == 14340.0
    predict = decode(V2_PREDICT, LIMIT)
    assert [to_number(extract(predict, ("metrics", k))) for k in ("r2", "rmse", "mae")] == [
        0.8897, 21.603, 15.603]
    assert to_number(extract(predict, ("predictions_generated",))) == 1152.0
    drift = decode(V2_DRIFT, LIMIT)
    assert to_number(extract(drift, ("drift_detected",))) == 1.0
    assert to_number(extract(drift, ("drift_share",))) == 0.375
    assert to_number(extract(drift, ("drifted_features_count",))) == 3.0
    assert extract(drift, ("drifted_features", 2)) == "precipitation"
    evaluate = decode(V2_EVALUATE, LIMIT)
    assert to_number(extract(evaluate, ("improvement_delta",))) == 0.0222
    assert to_label(decode(V2_DECIDE, LIMIT)) == "deploy"


def test_airflow_3_bike_values() -> None:
    fetch = decode(V3_FETCH, LIMIT, size=54)
    assert to_number(extract(fetch, ("records_ingested",))) == 14340.0
    predict = decode(V3_PREDICT, LIMIT)
    assert [to_number(extract(predict, ("metrics", k))) for k in ("r2", "rmse", "mae")] == [
        0.8897, 21.603, 15.603]
    drift = decode(V3_DRIFT, LIMIT)
    assert to_number(extract(drift, ("drift_detected",))) == 1.0
    assert to_number(extract(drift, ("drifted_features_count",))) == 3.0
    assert to_number(extract(decode(V3_EVALUATE, LIMIT), ("r2_production",))) == 0.8602
    assert to_label(decode(V3_DECIDE, LIMIT, size=8)) == "deploy"


@pytest.mark.parametrize(("v2", "v3"), [
    (V2_FETCH, V3_FETCH), (V2_PREDICT, V3_PREDICT), (V2_DRIFT, V3_DRIFT),
    (V2_EVALUATE, V3_EVALUATE), (V2_DECIDE, V3_DECIDE), (V2_DATETIME, V3_DATETIME),
    (V2_TUPLE, V3_TUPLE), (V2_ROW_COUNT, V3_ROW_COUNT),
])
def test_both_versions_decode_to_the_same_value(v2: bytes, v3: object) -> None:
    assert decode(v2, LIMIT) == decode(v3, LIMIT)
    assert decode(memoryview(v2), LIMIT) == decode(v3, LIMIT)


def test_wrapped_tuple_and_datetime_are_unwrapped() -> None:
    assert decode(V2_TUPLE, LIMIT) == [1, 2]
    assert decode(V3_TUPLE, LIMIT) == [1, 2]
    assert decode(V2_DATETIME, LIMIT) == DATETIME_DATA
    assert decode(V3_DATETIME, LIMIT) == DATETIME_DATA
    assert to_number(extract(decode(V3_DATETIME, LIMIT), ("timestamp",))) == 1767270615.0


def test_multiple_outputs_rows_and_their_return_value() -> None:
    for key, stored in V2_MULTIPLE.items():
        assert decode(stored, LIMIT) == V3_MULTIPLE[key]
    assert to_number(decode(V2_MULTIPLE["b"], LIMIT)) == 2.5
    assert to_number(extract(decode(V3_MULTIPLE["return_value"], LIMIT), ("b",))) == 2.5
    assert to_number(decode(V2_ROW_COUNT, LIMIT)) == 42.0


def test_mapped_rows_decode_one_by_one() -> None:
    assert {i: to_number(decode(v, LIMIT)) for i, v in V2_TIMES_TEN.items()} == {
        0: 10.0, 1: 20.0, 2: 30.0}
    assert {i: to_number(decode(v, LIMIT)) for i, v in V3_TIMES_TEN.items()} == {
        0: 10.0, 1: 20.0, 2: 30.0}


def test_airflow_2_nan_decodes_but_is_not_a_sample() -> None:
    value = decode(V2_NAN, LIMIT)
    assert isinstance(value, float) and math.isnan(value)
    assert reason(to_number, value) == "not_finite"
    inf = decode(b'{"loss": Infinity, "gain": -Infinity}', LIMIT)
    assert reason(to_number, extract(inf, ("loss",))) == "not_finite"
    assert reason(to_number, extract(inf, ("gain",))) == "not_finite"


def test_nested_wrappers_inside_plain_values() -> None:
    stored = json.dumps({"scores": {"__classname__": "builtins.tuple", "__version__": 1,
                                    "__data__": [0.5, {"__classname__": "builtins.set",
                                                       "__version__": 1, "__data__": [7]}]},
                         "plain": {"__data__": 1, "other": 2}}).encode()
    assert decode(stored, LIMIT) == {"scores": [0.5, [7]], "plain": {"__data__": 1, "other": 2}}
    assert unwrap({"__classname__": 3, "__data__": 1}) == {"__classname__": 3, "__data__": 1}
    assert unwrap({"__classname__": "x.Y", "__data__": None}) is None


def test_pickles_are_refused_without_loading() -> None:
    stored = pickle.dumps({"a": 1})  # made here, never loaded
    assert stored[0] == 0x80
    assert reason(decode, stored, LIMIT) == "pickled"
    assert reason(decode, memoryview(stored), LIMIT) == "pickled"
    assert reason(decode, pickle.dumps({"a": 1}, protocol=0), LIMIT) == "invalid_json"


@pytest.mark.parametrize(("stored", "why"), [
    (b"\xff\xfe{}", "invalid_utf8"),
    (b'"caf\xe9"', "invalid_utf8"),
    (b"", "invalid_json"),
    (b"{'a': 1}", "invalid_json"),
    (b'{"a": 1', "invalid_json"),
    (b"nan", "invalid_json"),
    (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
    (b"[" * 101 + b"]" * 101, "too_deep"),
    (b'\xef\xbb\xbf"bom"', "invalid_json"),
], ids=["bad_start", "latin1", "empty", "python_repr", "truncated", "lowercase_nan",
        "deep_nesting", "past_max_depth", "bom"])
def test_undecodable_bytes(stored: bytes, why: str) -> None:
    assert reason(decode, stored, 1_000_000) == why


def test_depth_limit_is_exact_and_parsed_values_are_checked_too() -> None:
    assert decode(b"[" * 100 + b"]" * 100, 1_000_000) is not None
    nested: list[object] = []
    for _ in range(200):
        nested = [nested]
    assert reason(decode, nested, 1_000_000) == "too_deep"


def test_integers_longer_than_a_float_are_not_finite_and_spare_their_neighbours() -> None:
    assert reason(lambda: to_number(decode(b"9" * 5000, LIMIT))) == "not_finite"
    assert reason(lambda: to_number(decode(b"-" + b"9" * 500, LIMIT))) == "not_finite"
    value = decode(b'{"n": 7, "big": 1' + b"0" * 5000 + b"}", LIMIT)
    assert to_number(extract(value, ["n"])) == 7.0
    assert to_number(decode(b"1" + b"0" * 300, LIMIT)) == 1e300


def test_ten_megabytes_are_refused_by_size_before_decoding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parsing(*_: object, **__: object) -> object:
        raise AssertionError("a value over the limit was parsed")

    monkeypatch.setattr(json, "loads", no_parsing)  # the module bridge.xcoms parses with
    huge = b'"' + b"a" * 10_000_000 + b'"'
    assert reason(decode, huge, LIMIT) == "too_large"
    assert reason(decode, memoryview(huge), LIMIT) == "too_large"
    assert reason(decode, b"\x80" + huge, LIMIT) == "too_large"
    assert reason(decode, {"a": "x"}, LIMIT, size=10_000_002) == "too_large"
    assert reason(decode, None, LIMIT, size=10_000_002) == "too_large"


def test_size_limit_is_inclusive() -> None:
    assert decode(b'"' + b"a" * 8 + b'"', 10) == "a" * 8
    assert reason(decode, b'"' + b"a" * 9 + b'"', 10) == "too_large"
    assert decode("deploy", 8, size=8) == "deploy"
    assert reason(decode, "deploy", 7, size=8) == "too_large"


def test_null_is_missing_and_odd_types_are_refused() -> None:
    assert reason(decode, None, LIMIT) == "missing"
    assert reason(decode, None, LIMIT, size=0) == "missing"
    assert reason(decode, b"null", LIMIT) == "missing", "a JSON null: nothing was pushed"
    assert reason(decode, b" null ", LIMIT) == "missing"
    assert reason(decode, object(), LIMIT) == "invalid_json"
    assert reason(decode, (1, 2), LIMIT) == "invalid_json"


def test_plain_values_pass_through() -> None:
    assert decode("skip", LIMIT) == "skip"
    assert decode(b'"skip"', LIMIT) == "skip"
    assert decode(True, LIMIT) is True
    assert decode(b"false", LIMIT) is False
    assert decode(0, LIMIT) == 0
    assert decode(bytearray(b"[1, [2, 3]]"), LIMIT) == [1, [2, 3]]


NESTED = decode(b'{"runs": [{"scores": [0.1, [0.2, 0.3]]}, {"scores": []}], "n": null}', LIMIT)


@pytest.mark.parametrize(("path", "found"), [
    ((), NESTED),
    (("runs", 0, "scores", 0), 0.1),
    (("runs", 0, "scores", 1, 1), 0.3),
    (("runs", 1, "scores"), []),
    (("n",), None),
])
def test_extract_follows_keys_and_indexes(path: tuple[str | int, ...], found: object) -> None:
    assert extract(NESTED, path) == found


@pytest.mark.parametrize("path", [
    ("missing",), ("runs", 2), ("runs", -1), ("runs", "0"), ("runs", 1, "scores", 0),
    ("n", "x"), ("runs", 0, "scores", 0, 0), (0,), ("runs", True),
])
def test_extract_reports_paths_that_are_not_there(path: tuple[str | int, ...]) -> None:
    assert reason(extract, NESTED, path) == "path_not_found"


def test_extract_message_names_the_step() -> None:
    with pytest.raises(XcomValueError) as caught:
        extract({"metrics": {"r2": 1}}, ("metrics", "rmse"))
    assert str(caught.value) == "path_not_found: step 2 ('rmse') of the path finds an object"


@pytest.mark.parametrize(("value", "number"), [
    (True, 1.0), (False, 0.0), (0, 0.0), (-7, -7.0), (2.5, 2.5), (10**20, 1e20),
    ("42", 42.0), (" 3.5\n", 3.5), ("-0.25", -0.25), ("+1e3", 1000.0), (".5", 0.5),
    ("1.", 1.0), ("1E-2", 0.01),
])
def test_numbers(value: object, number: float) -> None:
    assert to_number(value) == number


@pytest.mark.parametrize(("value", "why"), [
    (float("nan"), "not_finite"), (float("inf"), "not_finite"), (float("-inf"), "not_finite"),
    (10**400, "not_finite"), ("nan", "not_finite"), ("-Infinity", "not_finite"),
    (" INF ", "not_finite"), ("1e999", "not_finite"),
    ("", "not_numeric"), ("  ", "not_numeric"), ("deploy", "not_numeric"),
    ("1_000", "not_numeric"), ("0x10", "not_numeric"), ("١٢", "not_numeric"),
    ("1,5", "not_numeric"), ("12 kg", "not_numeric"),
    (None, "not_numeric"), ([1], "not_numeric"), ({"a": 1}, "not_numeric"),
])
def test_values_that_are_not_samples(value: object, why: str) -> None:
    assert reason(to_number, value) == why


@pytest.mark.parametrize(("value", "label"), [
    ("deploy", "deploy"), ("  skip\n", "skip"), (True, "true"), (False, "false"),
    (3, "3"), (-1, "-1"), ("ü" * 128, "ü" * 128), ("a b/c", "a b/c"),
])
def test_labels(value: object, label: str) -> None:
    assert to_label(value) == label


@pytest.mark.parametrize("value", [
    "", "   ", "x" * 129, "\ud800", 1.5, float("nan"), None, [], {"a": "b"},
], ids=["empty", "blank", "too_long", "lone_surrogate", "float", "nan", "null", "list", "dict"])
def test_values_that_are_not_labels(value: object) -> None:
    assert reason(to_label, value) == "not_a_string"


def test_label_length_is_configurable() -> None:
    assert to_label("abcd", max_length=4) == "abcd"
    assert reason(to_label, "abcde", max_length=4) == "not_a_string"
    assert reason(to_label, 12345, max_length=4) == "not_a_string"
    assert reason(to_label, 10**5000) == "not_a_string"  # more digits than str() converts


def test_reasons_are_fixed_label_values() -> None:
    assert REASONS == ("missing", "too_large", "pickled", "invalid_utf8", "invalid_json",
                       "too_deep", "path_not_found", "not_numeric", "not_finite", "not_a_string",
                       "negative")
    assert str(XcomValueError("missing")) == "missing"
    with pytest.raises(ValueError):
        XcomValueError("bogus")  # type: ignore[arg-type]
