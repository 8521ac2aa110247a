"""Reports and report views over a cache seeded with known rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Date, DateTime, Engine, Float, inspect, text
from sqlalchemy.engine import URL, make_url

from bridge import report
from bridge.cache.database import Cache, migrations_path
from bridge.cache.tables import (
    business_value,
    dag_run_finished,
    metric_counter,
    metric_latest,
    task_instance_finished,
)
from tests.postgres import Postgres

NOW = datetime(2026, 11, 10, 12, 0)
D = datetime(2026, 11, 8)  # the first day of the seeded week
VIEWS = {"report_dag_runs", "report_daily_dag_runs", "report_task_instances",
         "report_business_values", "report_latest_business_values"}


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return D + timedelta(days=day, hours=hour, minutes=minute, seconds=second)


# (id, dag_id, run_id, state, start, end, honest duration?)
RUNS: list[tuple[int, str, str, str, datetime | None, datetime | None, bool]] = [
    (1, "etl_orders", "run_1", "success", at(0, 1), at(0, 1, 2), True),          # 120 s
    (2, "etl_orders", "run_2", "failed", at(0, 2), at(0, 2, 5), True),           # 300 s
    (3, "etl_orders", "run_3", "success", at(0, 3), at(0, 3, 1, 30), True),      # 90 s
    (4, "etl_orders", "run_4", "success", at(1, 1), at(1, 1, 1), True),          # 60 s
    (5, "etl_orders", "run_5", "success", at(1, 5), at(1, 5, 10), False),        # dags test
    (6, "etl_users", "run_6", "failed", at(1, 8), at(1, 8, 0, 30), True),        # 30 s
    (7, "reporting", "run_7", "success", at(1, 23, 50), at(2, 0), True),         # 600 s, next day
    (8, "etl_orders", "run_8", "success", at(-38, 1), at(-38, 1, 0, 45), True),  # 2026-10-01
    (9, "etl_orders", "run_9", "failed", at(1, 10), None, False),                # no end date
    (10, "reporting", "run_10", "success", at(0, 6), at(0, 6, 5), False),        # dags test
]
END = {run_id: end for _, _, run_id, _, _, end, _ in RUNS if end is not None}


def seed(cache: Cache) -> None:
    runs = [{"dag_run_id": i, "end_key": end.isoformat() if end else "none", "dag_id": dag,
             "run_id": run_id, "run_type": "scheduled", "state": state,
             "logical_date": start and start.replace(minute=0, second=0),
             "queued_at": start, "start_date": start, "end_date": end,
             "duration_seconds": (end - start).total_seconds() if honest and end and start
             else None, "folded_at": NOW}
            for i, dag, run_id, state, start, end, honest in RUNS]
    tasks = [{"dag_run_id": 1, "task_id": "extract", "map_index": -1, "try_number": 1,
              "end_key": at(0, 1, 1).isoformat(), "dag_id": "etl_orders", "run_id": "run_1",
              "state": "success", "start_date": at(0, 1), "end_date": at(0, 1, 1),
              "duration_seconds": 60.0, "queued_seconds": 2.5, "folded_at": NOW},
             {"dag_run_id": 6, "task_id": "load", "map_index": 0, "try_number": 2,
              "end_key": at(1, 8, 0, 30).isoformat(), "dag_id": "etl_users", "run_id": "run_6",
              "state": "failed", "start_date": at(1, 8), "end_date": at(1, 8, 0, 30),
              "duration_seconds": 30.0, "queued_seconds": None, "folded_at": NOW}]
    values = [("orders_total", '{"region":"eu"}', "etl_orders", run_id, value)
              for run_id, value in (("run_1", 10.0), ("run_3", 5.0), ("run_4", 7.0),
                                    ("run_8", 100.0))]
    values += [("backlog", "{}", "etl_orders", "run_1", 42.0),
               ("backlog", "{}", "etl_orders", "run_4", 17.0),
               ("users_active", '{"plan":"pro"}', "etl_users", "run_6", 1234.5)]
    ids = {run_id: i for i, _, run_id, *_ in RUNS}
    with cache.engine.begin() as conn:
        conn.execute(dag_run_finished.insert(), runs)
        conn.execute(task_instance_finished.insert(), tasks)
        conn.execute(business_value.insert(), [
            {"dag_run_id": ids[run_id], "end_key": END[run_id].isoformat(), "metric": metric,
             "labels": labels, "dag_id": dag, "run_id": run_id,
             "logical_date": END[run_id].replace(minute=0, second=0), "end_date": END[run_id],
             "value": value} for metric, labels, dag, run_id, value in values])
        conn.execute(metric_latest.insert(), [
            {"metric": "backlog", "labels": "{}", "as_of": END["run_4"], "value": 17.0},
            {"metric": "users_active", "labels": '{"plan":"pro"}', "as_of": END["run_6"],
             "value": 1234.5}])
        conn.execute(metric_counter.insert(), [
            {"metric": "orders_total", "labels": '{"region":"eu"}', "value": 122.0},
            # not business values: an Airflow counter, and a task-state counter
            {"metric": "airflow_dag_run_finished_total",
             "labels": '{"dag_id":"etl_orders","run_type":"scheduled","state":"success"}',
             "value": 6.0},
            {"metric": "deploys_total", "labels": '{"state":"success"}', "value": 3.0}])


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Cache]:
    seeded = Cache(f"sqlite:///{tmp_path / 'cache.db'}")
    seeded.migrate()
    seed(seeded)
    yield seeded
    seeded.dispose()


def report_text(url: URL | str, *argv: str) -> str:
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    out = io.StringIO()
    assert report.run(parser.parse_args(argv), make_url(url), out, NOW) == 0
    return out.getvalue()


DAGS_TABLE = """\
day         dag_id      runs  failed  success_rate  p50_seconds  p95_seconds
2026-11-08  etl_orders     3       1         0.667          120          282
2026-11-08  reporting      1       0             1            -            -
2026-11-09  etl_orders     2       0             1           60           60
2026-11-09  etl_users      1       1             0           30           30
2026-11-10  reporting      1       0             1          600          600
"""
DAGS_CSV = """\
day,dag_id,runs,failed,success_rate,p50_seconds,p95_seconds
2026-11-08,etl_orders,3,1,0.667,120,282
2026-11-08,reporting,1,0,1,,
2026-11-09,etl_orders,2,0,1,60,60
2026-11-09,etl_users,1,1,0,30,30
2026-11-10,reporting,1,0,1,600,600
"""
DAGS_JSON = """\
[
  {
    "day": "2026-11-08",
    "dag_id": "etl_orders",
    "runs": 3,
    "failed": 1,
    "success_rate": 0.667,
    "p50_seconds": 120.0,
    "p95_seconds": 282.0
  },
  {
    "day": "2026-11-08",
    "dag_id": "reporting",
    "runs": 1,
    "failed": 0,
    "success_rate": 1.0,
    "p50_seconds": null,
    "p95_seconds": null
  },
  {
    "day": "2026-11-09",
    "dag_id": "etl_orders",
    "runs": 2,
    "failed": 0,
    "success_rate": 1.0,
    "p50_seconds": 60.0,
    "p95_seconds": 60.0
  },
  {
    "day": "2026-11-09",
    "dag_id": "etl_users",
    "runs": 1,
    "failed": 1,
    "success_rate": 0.0,
    "p50_seconds": 30.0,
    "p95_seconds": 30.0
  },
  {
    "day": "2026-11-10",
    "dag_id": "reporting",
    "runs": 1,
    "failed": 0,
    "success_rate": 1.0,
    "p50_seconds": 600.0,
    "p95_seconds": 600.0
  }
]
"""
LATEST_TABLE = """\
metric        labels      value  kind     as_of                 dag_id
backlog       -              17  gauge    2026-11-09T01:01:00Z  etl_orders
orders_total  region=eu     122  counter  2026-11-09T01:01:00Z  etl_orders
users_active  plan=pro   1234.5  gauge    2026-11-09T08:00:30Z  etl_users
"""
LATEST_CSV = """\
metric,labels,value,kind,as_of,dag_id
backlog,,17,gauge,2026-11-09T01:01:00Z,etl_orders
orders_total,region=eu,122,counter,2026-11-09T01:01:00Z,etl_orders
users_active,plan=pro,1234.5,gauge,2026-11-09T08:00:30Z,etl_users
"""
LATEST_JSON = """\
[
  {
    "metric": "backlog",
    "labels": {},
    "value": 17.0,
    "kind": "gauge",
    "as_of": "2026-11-09T01:01:00Z",
    "dag_id": "etl_orders"
  },
  {
    "metric": "orders_total",
    "labels": {
      "region": "eu"
    },
    "value": 122.0,
    "kind": "counter",
    "as_of": "2026-11-09T01:01:00Z",
    "dag_id": "etl_orders"
  },
  {
    "metric": "users_active",
    "labels": {
      "plan": "pro"
    },
    "value": 1234.5,
    "kind": "gauge",
    "as_of": "2026-11-09T08:00:30Z",
    "dag_id": "etl_users"
  }
]
"""
HISTORY_TABLE = """\
metric        labels     dag_id      run_id  logical_date          end_date               value
backlog       -          etl_orders  run_1   2026-11-08T01:00:00Z  2026-11-08T01:02:00Z      42
backlog       -          etl_orders  run_4   2026-11-09T01:00:00Z  2026-11-09T01:01:00Z      17
orders_total  region=eu  etl_orders  run_1   2026-11-08T01:00:00Z  2026-11-08T01:02:00Z      10
orders_total  region=eu  etl_orders  run_3   2026-11-08T03:00:00Z  2026-11-08T03:01:30Z       5
orders_total  region=eu  etl_orders  run_4   2026-11-09T01:00:00Z  2026-11-09T01:01:00Z       7
users_active  plan=pro   etl_users   run_6   2026-11-09T08:00:00Z  2026-11-09T08:00:30Z  1234.5
"""
HISTORY_CSV = """\
metric,labels,dag_id,run_id,logical_date,end_date,value
backlog,,etl_orders,run_1,2026-11-08T01:00:00Z,2026-11-08T01:02:00Z,42
backlog,,etl_orders,run_4,2026-11-09T01:00:00Z,2026-11-09T01:01:00Z,17
orders_total,region=eu,etl_orders,run_1,2026-11-08T01:00:00Z,2026-11-08T01:02:00Z,10
orders_total,region=eu,etl_orders,run_3,2026-11-08T03:00:00Z,2026-11-08T03:01:30Z,5
orders_total,region=eu,etl_orders,run_4,2026-11-09T01:00:00Z,2026-11-09T01:01:00Z,7
users_active,plan=pro,etl_users,run_6,2026-11-09T08:00:00Z,2026-11-09T08:00:30Z,1234.5
"""
HISTORY_JSON = """\
[
  {
    "metric": "backlog",
    "labels": {},
    "dag_id": "etl_orders",
    "run_id": "run_1",
    "logical_date": "2026-11-08T01:00:00Z",
    "end_date": "2026-11-08T01:02:00Z",
    "value": 42.0
  },
  {
    "metric": "backlog",
    "labels": {},
    "dag_id": "etl_orders",
    "run_id": "run_4",
    "logical_date": "2026-11-09T01:00:00Z",
    "end_date": "2026-11-09T01:01:00Z",
    "value": 17.0
  },
  {
    "metric": "orders_total",
    "labels": {
      "region": "eu"
    },
    "dag_id": "etl_orders",
    "run_id": "run_1",
    "logical_date": "2026-11-08T01:00:00Z",
    "end_date": "2026-11-08T01:02:00Z",
    "value": 10.0
  },
  {
    "metric": "orders_total",
    "labels": {
      "region": "eu"
    },
    "dag_id": "etl_orders",
    "run_id": "run_3",
    "logical_date": "2026-11-08T03:00:00Z",
    "end_date": "2026-11-08T03:01:30Z",
    "value": 5.0
  },
  {
    "metric": "orders_total",
    "labels": {
      "region": "eu"
    },
    "dag_id": "etl_orders",
    "run_id": "run_4",
    "logical_date": "2026-11-09T01:00:00Z",
    "end_date": "2026-11-09T01:01:00Z",
    "value": 7.0
  },
  {
    "metric": "users_active",
    "labels": {
      "plan": "pro"
    },
    "dag_id": "etl_users",
    "run_id": "run_6",
    "logical_date": "2026-11-09T08:00:00Z",
    "end_date": "2026-11-09T08:00:30Z",
    "value": 1234.5
  }
]
"""
EXPECTED_TEXT = {
    ("dags",): DAGS_TABLE,
    ("dags", "--format", "csv"): DAGS_CSV,
    ("dags", "--format", "json"): DAGS_JSON,
    ("business",): LATEST_TABLE,
    ("business", "--format", "csv"): LATEST_CSV,
    ("business", "--format", "json"): LATEST_JSON,
    ("business", "--history"): HISTORY_TABLE,
    ("business", "--history", "--format", "csv"): HISTORY_CSV,
    ("business", "--history", "--format", "json"): HISTORY_JSON,
}


@pytest.mark.parametrize("argv", list(EXPECTED_TEXT))
def test_report_formats(cache: Cache, argv: tuple[str, ...]) -> None:
    output = report_text(cache.url, *argv)
    assert output == EXPECTED_TEXT[argv]
    if "json" in argv:
        assert len(json.loads(output)) == output.count("\n  {")


def test_dags_filtered_by_dag_globs_and_names(cache: Cache) -> None:
    assert report_text(cache.url, "dags", "--dag", "etl_*") == """\
day         dag_id      runs  failed  success_rate  p50_seconds  p95_seconds
2026-11-08  etl_orders     3       1         0.667          120          282
2026-11-09  etl_orders     2       0             1           60           60
2026-11-09  etl_users      1       1             0           30           30
"""
    assert report_text(cache.url, "dags", "--dag", "reporting", "--dag", "etl_users",
                       "--format", "csv") == """\
day,dag_id,runs,failed,success_rate,p50_seconds,p95_seconds
2026-11-08,reporting,1,0,1,,
2026-11-09,etl_users,1,1,0,30,30
2026-11-10,reporting,1,0,1,600,600
"""


def test_dags_since_date_duration_and_timestamp(cache: Cache) -> None:
    assert report_text(cache.url, "dags", "--since", "2026-11-09", "--format", "csv") == """\
day,dag_id,runs,failed,success_rate,p50_seconds,p95_seconds
2026-11-09,etl_orders,2,0,1,60,60
2026-11-09,etl_users,1,1,0,30,30
2026-11-10,reporting,1,0,1,600,600
"""
    assert report_text(cache.url, "dags", "--since", "60d", "--dag", "etl_orders") == """\
day         dag_id      runs  failed  success_rate  p50_seconds  p95_seconds
2026-10-01  etl_orders     1       0             1           45           45
2026-11-08  etl_orders     3       1         0.667          120          282
2026-11-09  etl_orders     2       0             1           60           60
"""
    assert report_text(cache.url, "dags", "--since", "0", "--format", "json") == "[]\n"
    # 06:00 in UTC+1 is 05:00 UTC: of 2026-11-09 only run_5 (no honest duration) is left
    assert report_text(cache.url, "dags", "--since", "2026-11-09T06:00:00+01:00",
                       "--dag", "etl_orders", "--format", "csv") == """\
day,dag_id,runs,failed,success_rate,p50_seconds,p95_seconds
2026-11-09,etl_orders,1,0,1,,
"""


def test_business_filtered_by_dag_and_since(cache: Cache) -> None:
    assert report_text(cache.url, "business", "--dag", "etl_users", "--format", "csv") == """\
metric,labels,value,kind,as_of,dag_id
users_active,plan=pro,1234.5,gauge,2026-11-09T08:00:30Z,etl_users
"""
    assert report_text(cache.url, "business", "--since", "2026-11-09T06:00",
                       "--format", "csv") == """\
metric,labels,value,kind,as_of,dag_id
users_active,plan=pro,1234.5,gauge,2026-11-09T08:00:30Z,etl_users
"""
    assert report_text(cache.url, "business", "--history", "--dag", "etl_o*",
                       "--since", "2026-11-09", "--format", "csv") == """\
metric,labels,dag_id,run_id,logical_date,end_date,value
backlog,,etl_orders,run_4,2026-11-09T01:00:00Z,2026-11-09T01:01:00Z,17
orders_total,region=eu,etl_orders,run_4,2026-11-09T01:00:00Z,2026-11-09T01:01:00Z,7
"""
    history = report_text(cache.url, "business", "--history", "--since", "60d",
                          "--dag", "etl_orders", "--format", "csv")
    assert "orders_total,region=eu,etl_orders,run_8,2026-10-01T01:00:00Z," \
           "2026-10-01T01:00:45Z,100\n" in history


@pytest.mark.parametrize(("what", "header"), [
    (("dags",), "day,dag_id,runs,failed,success_rate,p50_seconds,p95_seconds"),
    (("business",), "metric,labels,value,kind,as_of,dag_id"),
    (("business", "--history"), "metric,labels,dag_id,run_id,logical_date,end_date,value"),
])
def test_empty_result_is_header_or_empty_list(cache: Cache, what: tuple[str, ...],
                                              header: str) -> None:
    assert report_text(cache.url, *what, "--dag", "no_such_*", "--format", "csv") == header + "\n"
    assert report_text(cache.url, *what, "--dag", "no_such_*", "--format", "json") == "[]\n"
    table = report_text(cache.url, *what, "--dag", "no_such_*")
    assert table.split() == header.split(",") and table.count("\n") == 1


def test_usage_and_cache_problems(tmp_path: Path, cache: Cache,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    out = io.StringIO()
    assert report.run(parser.parse_args(["dags", "--history"]), make_url(cache.url), out,
                      NOW) == 2
    assert "--history applies to the business report" in capsys.readouterr().err
    missing = tmp_path / "nowhere.db"
    assert report.run(parser.parse_args(["dags"]), make_url(f"sqlite:///{missing}"), out,
                      NOW) == 1
    assert f"no cache database at {missing}" in capsys.readouterr().err
    assert not missing.exists(), "a report must not create an empty cache"
    empty = tmp_path / "empty.db"
    empty.touch()
    assert report.run(parser.parse_args(["business"]), make_url(f"sqlite:///{empty}"), out,
                      NOW) == 1
    assert "airflow-metrics-bridge migrate" in capsys.readouterr().err
    assert out.getvalue() == ""
    with pytest.raises(SystemExit):
        parser.parse_args(["dags", "--since", "last week"])
    assert "neither a date such as 2026-11-01 nor a duration" in capsys.readouterr().err


def test_percentile_interpolates_like_percentile_cont() -> None:
    assert report.percentile([], 0.5) is None
    assert report.percentile([7.0], 0.95) == 7.0
    assert report.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert report.percentile([1.0, 2.0, 3.0, 4.0], 0.95) == 3.85
    assert report.percentile([90.0, 120.0, 300.0], 0.95) == 282.0


# -- the views -----------------------------------------------------------------------------

def view_rows(engine: Engine, sql: str, **types: Any) -> list[tuple[Any, ...]]:
    """Rows typed alike on both databases (SQLite hands dates back as text)."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql).columns(**types))]


def by_day(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return (row[0], row[1] is None, row[1] or date.min)


def check_views(engine: Engine) -> None:
    dag_runs = view_rows(engine, "SELECT run_id, dag_id, run_type, state, end_date, "
                         "duration_seconds, day FROM report_dag_runs ORDER BY dag_id, run_id",
                         end_date=DateTime, day=Date)
    assert [(r[0], r[5], r[6]) for r in dag_runs] == [
        ("run_1", 120.0, date(2026, 11, 8)), ("run_2", 300.0, date(2026, 11, 8)),
        ("run_3", 90.0, date(2026, 11, 8)), ("run_4", 60.0, date(2026, 11, 9)),
        ("run_5", None, date(2026, 11, 9)), ("run_8", 45.0, date(2026, 10, 1)),
        ("run_9", None, None), ("run_6", 30.0, date(2026, 11, 9)),
        ("run_10", None, date(2026, 11, 8)), ("run_7", 600.0, date(2026, 11, 10))]
    assert dag_runs[-1][1:5] == ("reporting", "scheduled", "success", at(2, 0))

    daily = view_rows(engine, "SELECT dag_id, day, runs, failed, succeeded, success_rate, "
                      "avg_duration_seconds FROM report_daily_dag_runs",
                      day=Date, success_rate=Float, avg_duration_seconds=Float)
    assert sorted(daily, key=by_day) == [
        ("etl_orders", date(2026, 10, 1), 1, 0, 1, 1.0, 45.0),
        ("etl_orders", date(2026, 11, 8), 3, 1, 2, 2 / 3, 170.0),
        ("etl_orders", date(2026, 11, 9), 2, 0, 2, 1.0, 60.0),
        ("etl_orders", None, 1, 1, 0, 0.0, None),
        ("etl_users", date(2026, 11, 9), 1, 1, 0, 0.0, 30.0),
        ("reporting", date(2026, 11, 8), 1, 0, 1, 1.0, None),
        ("reporting", date(2026, 11, 10), 1, 0, 1, 1.0, 600.0)]

    assert view_rows(engine, "SELECT dag_id, run_id, task_id, map_index, try_number, state, "
                     "start_date, end_date, duration_seconds, queued_seconds, day "
                     "FROM report_task_instances ORDER BY dag_id",
                     start_date=DateTime, end_date=DateTime, day=Date) == [
        ("etl_orders", "run_1", "extract", -1, 1, "success", at(0, 1), at(0, 1, 1), 60.0, 2.5,
         date(2026, 11, 8)),
        ("etl_users", "run_6", "load", 0, 2, "failed", at(1, 8), at(1, 8, 0, 30), 30.0, None,
         date(2026, 11, 9))]

    values = view_rows(engine, "SELECT metric, labels, dag_id, run_id, logical_date, end_date, "
                       "value FROM report_business_values ORDER BY metric, end_date",
                       logical_date=DateTime, end_date=DateTime)
    assert len(values) == 7
    assert values[0] == ("backlog", "{}", "etl_orders", "run_1", at(0, 1), at(0, 1, 2),
                         42.0)
    assert [(v[0], v[3], v[6]) for v in values[2:]] == [
        ("orders_total", "run_8", 100.0), ("orders_total", "run_1", 10.0),
        ("orders_total", "run_3", 5.0), ("orders_total", "run_4", 7.0),
        ("users_active", "run_6", 1234.5)]

    assert view_rows(engine, "SELECT metric, labels, value, kind, as_of "
                     "FROM report_latest_business_values ORDER BY metric, labels",
                     as_of=DateTime) == [
        ("backlog", "{}", 17.0, "gauge", at(1, 1, 1)),
        ("orders_total", '{"region":"eu"}', 122.0, "counter", at(1, 1, 1)),
        ("users_active", '{"plan":"pro"}', 1234.5, "gauge", at(1, 8, 0, 30))]


def alembic(cache: Cache, action: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    with cache.engine.begin() as conn:
        config.attributes["connection"] = conn
        getattr(command, action)(config, revision)


def check_downgrade_and_upgrade(cache: Cache) -> None:
    assert set(inspect(cache.engine).get_view_names()) >= VIEWS
    alembic(cache, "downgrade", "0003")
    assert cache.revision() == "0003"
    assert not set(inspect(cache.engine).get_view_names()) & VIEWS
    cache.migrate()
    assert cache.revision() == "0005"
    check_views(cache.engine)


def test_views_on_sqlite(cache: Cache) -> None:
    assert cache.revision() == "0005"
    check_views(cache.engine)
    check_downgrade_and_upgrade(cache)


def test_postgres_views_and_reports_match_sqlite(pg: Postgres) -> None:
    name = pg.fresh_name("amb_report")
    pg.create_database(name)
    cache = Cache(pg.url_for(name))
    try:
        cache.migrate()
        seed(cache)
        check_views(cache.engine)
        for argv, expected in EXPECTED_TEXT.items():
            assert report_text(pg.url_for(name), *argv) == expected, argv
        with cache.engine.connect() as conn:
            p95 = conn.execute(text(
                "SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_seconds) "
                "FROM report_dag_runs WHERE dag_id = 'etl_orders' AND day = '2026-11-08'"
            )).scalar()
        assert p95 == pytest.approx(282.0)
        check_downgrade_and_upgrade(cache)
    finally:
        cache.dispose()
        pg.drop_database(name)
