"""The width benchmark's measuring parts at a tiny width, so that
`python -m tests.bench_width` cannot rot and its figures count what they claim.

Only facts are checked (served totals, label sets, rows read), never timings.
"""

from __future__ import annotations

import pytest

from tests import bench_width, postgres
from tests.bench_width import HIGH_CAP, ROOT, Shape, Width

VERSION = "3.3.2"
WIDTHS = (4, 8)
ACTIVE = 2  # the same active work at both widths
LOW_CAP = 100  # the lowest max_series the config accepts


@pytest.fixture(scope="module")
def widths(pg: postgres.Postgres, airflow_templates: dict[str, str]) -> dict[int, Width]:
    return {dags: bench_width.measure_width(
        pg, airflow_templates[VERSION], VERSION,
        Shape(dags, tasks=3, active=ACTIVE, busy_runs=6), [("current", ROOT)],
        idle=2, busy=1, caps=(None, HIGH_CAP, LOW_CAP)) for dags in WIDTHS}


@pytest.mark.parametrize("dags", WIDTHS)
def test_the_fill_has_the_shape_it_claims(widths: dict[int, Width], dags: int) -> None:
    """3 tasks: a failed run has task_02 failed and task_03 upstream_failed; task_01 of
    every finished run was retried once; an active run has task_01 success, task_02
    running, task_03 queued. Every tenth run (d * 3 + n) failed, each on a DAG of its own."""
    truth = widths[dags].truth
    failed = 3 * dags // 10
    assert truth.runs == 3 * dags + ACTIVE
    assert truth.task_instances == 3 * truth.runs
    assert truth.finished_runs == 3 * dags
    assert truth.finished_task_instances == 9 * dags + ACTIVE
    assert truth.retries == 3 * dags
    assert truth.run_label_sets == dags + failed
    assert truth.task_label_sets == 3 * dags + 2 * failed
    assert truth.retry_label_sets == dags


@pytest.mark.parametrize("dags", WIDTHS)
def test_served_totals_are_exact(widths: dict[int, Width], dags: int) -> None:
    """After the first start, the restart, idle and busy cycles, /metrics at the defaults
    serves exactly what the metadata DB holds, and sheds nothing."""
    width = widths[dags]
    (side,) = width.sides
    assert side.error is None, side.error
    truth = side.truth
    assert truth is not None
    assert truth.finished_runs == width.truth.finished_runs + width.shape.busy_runs
    served = side.held[None]
    families = {name: (nonzero, total) for name, (_, nonzero, total)
                in served["families"].items()}
    assert families["airflow_dag_run_finished_total"] == (truth.run_label_sets,
                                                          truth.finished_runs)
    assert families["airflow_task_instance_finished_total"] == (truth.task_label_sets,
                                                                truth.finished_task_instances)
    assert families["airflow_task_instance_retries_total"] == (truth.retry_label_sets,
                                                               truth.retries)
    assert bench_width.mismatches(side) == []
    assert served["dropped"] == 0
    assert served["label_sets"] == side.held[HIGH_CAP]["label_sets"]
    assert side.first["cycles"] >= 1


@pytest.mark.parametrize("dags", WIDTHS)
def test_the_cap_sheds_what_is_held_and_not_served(widths: dict[int, Width], dags: int) -> None:
    (side,) = widths[dags].sides
    held = side.held[HIGH_CAP]["label_sets"]
    capped = side.held[LOW_CAP]
    assert capped["label_sets"] + capped["dropped"] == held
    if held > LOW_CAP:
        assert capped["dropped"] > 0


def _idle(widths: dict[int, Width], figure: str) -> dict[int, float | None]:
    return {dags: widths[dags].sides[0].steady["idle"][figure] for dags in WIDTHS}


def test_an_idle_cycle_reads_as_many_metadata_rows_at_both_widths(
        widths: dict[int, Width]) -> None:
    """With the same active work, an idle cycle's reads do not grow with the DAGs."""
    rows = _idle(widths, "rows")
    assert len(set(rows.values())) == 1, rows


def test_an_idle_cycle_reads_as_many_cache_rows_at_both_widths(
        widths: dict[int, Width]) -> None:
    rows = _idle(widths, "cache_rows")
    if None in rows.values():
        pytest.skip("Refresher.last_cache_rows_read is not there yet")
    assert len(set(rows.values())) == 1, rows
