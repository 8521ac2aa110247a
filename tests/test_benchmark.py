"""The benchmark's parts at a tiny size, so that `python -m tests.benchmark` cannot rot.

Only facts are checked (what each figure counted), never timings.
"""

from __future__ import annotations

import pytest

from tests import benchmark, postgres

TASK_INSTANCES = 2000
DAGS = 2  # 250 hourly runs each: more than the 168 of the 7-day window


def test_figures_count_what_they_claim(pg: postgres.Postgres,
                                       airflow_templates: dict[str, str],
                                       airflow_version: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    figures = benchmark.measure(pg, airflow_templates[airflow_version], airflow_version,
                                TASK_INSTANCES, repeat=1, dags=DAGS)

    runs_per_dag = TASK_INSTANCES // benchmark.TASKS_PER_RUN // DAGS
    assert figures.runs == DAGS * runs_per_dag
    assert figures.task_instances == TASK_INSTANCES
    # The fill writes one run per DAG and hour: the newest 7 * 24 of each are in the window.
    in_window = DAGS * min(runs_per_dag, 7 * 24)
    assert figures.window_runs == in_window < figures.runs
    assert figures.window_task_instances == in_window * benchmark.TASKS_PER_RUN
    assert figures.full_rows == figures.runs * (1 + benchmark.TASKS_PER_RUN)
    # The floor replays exactly the statements of a real cycle, and fetches what it read.
    assert figures.statements > 0
    assert figures.replayed == figures.statements
    assert figures.floor_rows >= figures.rows_read > 0

    benchmark.report([figures], airflow_version, repeat=1)
    assert f"{TASK_INSTANCES:,}" in capsys.readouterr().out


def test_peak_rss_of_a_fresh_process(capsys: pytest.CaptureFixture[str]) -> None:
    """Each figure is a process of its own: holding 20,000 series shows, over the idle
    process, at least their bare label strings (a process that reported the parent's
    peak would show nothing)."""
    idle = benchmark.peak_rss_kib(0)
    held = benchmark.peak_rss_kib(20_000)
    assert held - idle > 20_000 * 60 / 1024, (idle, held)
    benchmark.report_rss((100,))
    assert "100 series" in capsys.readouterr().out


def test_publishing_serves_every_series_with_its_last_value() -> None:
    published = benchmark.publishing(100, repeat=3)
    lines = [line for line in published.body.decode().splitlines()
             if line.startswith("airflow_task_instance_finished_total{")]
    assert len(lines) == 100
    total = sum(float(line.rsplit(" ", 1)[1]) for line in lines)
    assert total == sum(range(100)) + 3 * 10, "three refreshes of 10 increments each"
