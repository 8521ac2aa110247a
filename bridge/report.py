"""Ad-hoc reports over the cache, for people who would rather read a table than PromQL.

Reports read only the bridge's cache database (never the Airflow metadata DB) and never
write to it, so they can run next to `serve` at any time and keep working after Airflow
purged its own rows. Everything is computed in Python from plain SELECTs, so SQLite and
PostgreSQL caches give the same output.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TextIO

from sqlalchemy import Connection, Table, create_engine, func, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from bridge.cache.tables import (
    business_value,
    dag_run_finished,
    decode_labels,
    metric_counter,
    metric_latest,
)
from bridge.config import parse_duration, redact_url
from bridge.errors import first_line

REPORTS = ("dags", "business")
FORMATS = ("table", "csv", "json")
DEFAULT_SINCE = timedelta(days=7)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DAG_COLUMNS = ("day", "dag_id", "runs", "failed", "success_rate", "p50_seconds", "p95_seconds")
LATEST_COLUMNS = ("metric", "labels", "value", "kind", "as_of", "dag_id")
HISTORY_COLUMNS = ("metric", "labels", "dag_id", "run_id", "logical_date", "end_date", "value")

Cell = str | int | float | date | datetime | Mapping[str, str] | None
Since = datetime | timedelta


@dataclass(frozen=True)
class Report:
    """Named columns and rows of cells, rendered the same way by every format."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=REPORTS,
                        help="dags: daily runs, failures, success rate, p50/p95 duration per "
                             "DAG; business: latest business metric values")
    parser.add_argument("--since", type=parse_since, metavar="DATE|DURATION",
                        help="only runs that ended since a UTC date (2026-11-01) or that long "
                             "ago (7d); default 7d, and no limit for latest business values")
    parser.add_argument("--dag", action="append", default=[], metavar="DAG_ID",
                        help="only these DAGs; repeatable, globs such as 'etl_*' allowed")
    parser.add_argument("--history", action="store_true",
                        help="business: one row per run from the per-run history instead of "
                             "the latest values")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="table (default), csv, or json (a list of objects)")


def parse_since(text: str) -> Since:
    """A moment (a date means UTC midnight) or a duration back from the report's `now`."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            return timedelta(seconds=parse_duration(text))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither a date such as 2026-11-01 nor a duration such as 7d"
            ) from None
    return _naive_utc(moment)


def run(args: argparse.Namespace, cache_url: URL, out: TextIO, now: datetime) -> int:
    """Print one report; 1 if the cache cannot be read, 2 for options that do not fit."""
    if args.history and args.what != "business":
        print("report: --history applies to the business report only", file=sys.stderr)
        return EXIT_USAGE
    problem = _missing_sqlite_file(cache_url)
    if problem:
        print(f"report: {problem}", file=sys.stderr)
        return EXIT_FAILED
    now = _naive_utc(now)
    since: Since | None = args.since
    start = _start(DEFAULT_SINCE if since is None else since, now)
    engine = create_engine(cache_url)
    try:
        with engine.connect() as conn:
            if args.what == "dags":
                report = dags_report(conn, start, args.dag)
            elif args.history:
                report = business_history(conn, start, args.dag)
            else:
                report = business_latest(conn, None if since is None else start, args.dag)
    except SQLAlchemyError as exc:
        print(f"report: cannot read the cache {redact_url(cache_url)}: {first_line(exc)} "
              "(is it migrated? `airflow-metrics-bridge migrate`)", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
    out.write(render(report, args.format))
    return EXIT_OK


# -- reports ------------------------------------------------------------------------------

def dags_report(conn: Connection, start: datetime, patterns: Sequence[str]) -> Report:
    """Per UTC day and DAG; percentiles interpolate linearly, as `percentile_cont` does."""
    runs = dag_run_finished.c
    query = (select(runs.dag_id, runs.end_date, runs.state, runs.duration_seconds)
             .where(runs.end_date >= start))
    if patterns:
        dags = _matching(conn, dag_run_finished, patterns)
        if not dags:
            return Report(DAG_COLUMNS, ())
        query = query.where(runs.dag_id.in_(dags))
    groups: dict[tuple[date, str], list[tuple[str, float | None]]] = defaultdict(list)
    for dag_id, end, state, duration in conn.execute(query):
        groups[(end.date(), dag_id)].append((state, duration))
    rows: list[tuple[Cell, ...]] = []
    for (day, dag_id), finished in sorted(groups.items()):
        durations = sorted(d for _, d in finished if d is not None)
        succeeded = sum(1 for state, _ in finished if state == "success")
        rows.append((day, dag_id, len(finished),
                     sum(1 for state, _ in finished if state == "failed"),
                     round(succeeded / len(finished), 3), percentile(durations, 0.5),
                     percentile(durations, 0.95)))
    return Report(DAG_COLUMNS, tuple(rows))


def business_latest(conn: Connection, start: datetime | None,
                    patterns: Sequence[str]) -> Report:
    """Gauges as last seen and counters as running totals, of series with per-run values.

    A series' `as_of` is its gauge's time, or for a counter the end of the newest run that
    added to it; `dag_id` is the DAG of that newest run.
    """
    bv = business_value.c
    newest: dict[tuple[str, str], tuple[datetime | None, str]] = {}
    dags_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for metric, labels, dag_id, end in conn.execute(
            select(bv.metric, bv.labels, bv.dag_id, func.max(bv.end_date))
            .group_by(bv.metric, bv.labels, bv.dag_id)):
        dags_of[(metric, labels)].add(dag_id)
        if (metric, labels) not in newest or _later(end, newest[(metric, labels)][0]):
            newest[(metric, labels)] = (end, dag_id)
    metrics = {metric for metric, _ in newest}
    latest = metric_latest.c
    series: list[tuple[str, str, float, str, datetime | None]] = [
        (metric, labels, value, "gauge", as_of) for metric, labels, as_of, value in
        conn.execute(select(latest.metric, latest.labels, latest.as_of, latest.value)
                     .where(~latest.absent))]
    counter = metric_counter.c
    for metric, labels, value in conn.execute(
            select(counter.metric, counter.labels, counter.value)):
        if metric in metrics:
            as_of = newest[(metric, labels)][0] if (metric, labels) in newest else None
            series.append((metric, labels, value, "counter", as_of))
    rows: list[tuple[Cell, ...]] = []
    for metric, labels, value, kind, as_of in sorted(series, key=lambda s: (s[0], s[1])):
        key = (metric, labels)
        if patterns and not any(_matches(dag, patterns) for dag in dags_of.get(key, ())):
            continue
        if start is not None and (as_of is None or as_of < start):
            continue
        rows.append((metric, _labels(labels), value, kind, as_of,
                     newest[key][1] if key in newest else None))
    return Report(LATEST_COLUMNS, tuple(rows))


def business_history(conn: Connection, start: datetime, patterns: Sequence[str]) -> Report:
    """One row per run and series, oldest first within a series.

    Sorted here rather than in SQL, so PostgreSQL collations cannot change the order.
    """
    bv = business_value.c
    query = (select(bv.metric, bv.labels, bv.dag_id, bv.run_id, bv.logical_date, bv.end_date,
                    bv.value)
             .where(bv.end_date >= start))
    if patterns:
        dags = _matching(conn, business_value, patterns)
        if not dags:
            return Report(HISTORY_COLUMNS, ())
        query = query.where(bv.dag_id.in_(dags))
    found = sorted(conn.execute(query), key=lambda row: (row.metric, row.labels, row.end_date,
                                                         row.run_id))
    rows = tuple((metric, _labels(labels), dag_id, run_id, logical, end, value)
                 for metric, labels, dag_id, run_id, logical, end, value in found)
    return Report(HISTORY_COLUMNS, rows)


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks, as PostgreSQL's `percentile_cont`.

    Rounded to microseconds, the resolution of the timestamps durations come from, so that
    float noise (281.99999999999997) does not reach the output.
    """
    if not ordered:
        return None
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (position - low), 6)


# -- rendering ----------------------------------------------------------------------------

def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        objects = [{name: _json_cell(cell) for name, cell in zip(report.columns, row,
                                                                  strict=True)}
                   for row in report.rows]
        return json.dumps(objects, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(report.columns)
        writer.writerows([_csv_cell(cell) for cell in row] for row in report.rows)
        return buffer.getvalue()
    return _table(report)


def _table(report: Report) -> str:
    """Plain aligned columns; numbers right-aligned, empty cells shown as `-`."""
    cells = [[_table_cell(cell) for cell in row] for row in report.rows]
    numeric = [bool(report.rows) and all(isinstance(row[i], int | float) or row[i] is None
                                         for row in report.rows)
               for i in range(len(report.columns))]
    widths = [max([len(name), *(len(row[i]) for row in cells)])
              for i, name in enumerate(report.columns)]
    lines = []
    for row in [list(report.columns), *cells]:
        parts = [text.rjust(width) if right else text.ljust(width)
                 for text, width, right in zip(row, widths, numeric, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def _table_cell(cell: Cell) -> str:
    if cell is None or (isinstance(cell, Mapping) and not cell):
        return "-"
    if isinstance(cell, float):
        text = f"{cell:.6g}"  # significant digits: a -0.0053 delta must not read -0.005
        return "0" if text == "-0" else text
    return _csv_cell(cell)


def _csv_cell(cell: Cell) -> str:
    if cell is None:
        return ""
    if isinstance(cell, datetime):
        return _timestamp(cell)
    if isinstance(cell, date):
        return cell.isoformat()
    if isinstance(cell, float):
        return str(int(cell)) if cell.is_integer() and abs(cell) < 1e15 else repr(cell)
    if isinstance(cell, Mapping):
        return ",".join(f"{name}={value}" for name, value in cell.items())
    return str(cell)


def _json_cell(cell: Cell) -> object:
    if isinstance(cell, datetime):
        return _timestamp(cell)
    if isinstance(cell, date):
        return cell.isoformat()
    if isinstance(cell, float) and not math.isfinite(cell):
        return None
    if isinstance(cell, Mapping):
        return dict(cell)
    return cell


# -- helpers ------------------------------------------------------------------------------

def _timestamp(moment: datetime) -> str:
    """Cache timestamps are naive UTC; say so with `Z`."""
    return _naive_utc(moment).isoformat() + "Z"


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _start(since: Since, now: datetime) -> datetime:
    return now - since if isinstance(since, timedelta) else since


def _labels(text: str) -> dict[str, str]:
    return dict(decode_labels(text))


def _later(candidate: datetime | None, current: datetime | None) -> bool:
    return candidate is not None and (current is None or candidate > current)


def _matches(dag_id: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(dag_id, pattern) for pattern in patterns)


def _matching(conn: Connection, table: Table, patterns: Sequence[str]) -> list[str]:
    """DAG ids of the table that match a pattern, so the main query can use the index."""
    dag_ids = conn.execute(select(table.c.dag_id).distinct()).scalars()
    return sorted(dag_id for dag_id in dag_ids if _matches(dag_id, patterns))


def _missing_sqlite_file(url: URL) -> str | None:
    """Connecting to a missing SQLite file would create an empty cache; refuse instead."""
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or Path(database).exists():
        return None
    return f"no cache database at {database} (check cache.url / BRIDGE_CACHE_URL)"
