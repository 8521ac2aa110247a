"""Daily ingestion of bike counter data.

Simulated: the number of ingested records is derived deterministically from
the run's logical date, so re-running a date always produces the same XCom.
Works on Airflow 2.10+ and 3.x.
"""

from __future__ import annotations

import datetime as dt
import random

try:  # Airflow 3.x
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task


def _run_date(context) -> dt.date:
    logical = context.get("logical_date")
    if logical is None:  # Airflow 3 runs without a logical date
        logical = context["dag_run"].run_after
    return logical.date()


@dag(
    dag_id="daily_fetch_bike_data",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["bike", "ingestion"],
)
def daily_fetch_bike_data():
    @task
    def fetch_bike_data(**context):
        day = _run_date(context)
        rng = random.Random(f"fetch:{day.isoformat()}")
        weekend = day.weekday() >= 5
        base = 9_000 if weekend else 14_000
        return {"records_ingested": base + rng.randint(0, 4_000), "source": "city-counters"}

    fetch_bike_data()


daily_fetch_bike_data()
