"""Exercises how Airflow stores different kinds of task return values.

Used to capture real XCom rows for the metrics bridge's test fixtures; every
task is independent so one failing push does not stop the others.
Works on Airflow 2.10+ and 3.x.
"""

from __future__ import annotations

import datetime as dt

try:  # Airflow 3.x
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task


@dag(
    dag_id="xcom_shapes",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["fixtures"],
)
def xcom_shapes():
    @task(multiple_outputs=True)
    def multiple_outputs():
        return {"a": 1, "b": 2.5}

    @task
    def inferred_multiple_outputs() -> dict[str, int]:
        # A dict return annotation makes TaskFlow infer multiple_outputs=True.
        return {"x": 1, "y": 2}

    @task
    def times_ten(x: int):
        return x * 10

    @task
    def return_nan():
        return float("nan")

    @task
    def return_tuple():
        return (1, 2)

    @task
    def return_datetime():
        return dt.datetime(2026, 1, 1, 12, 30, 15, tzinfo=dt.timezone.utc)

    @task
    def return_none():
        return None

    @task(retries=1, retry_delay=dt.timedelta(seconds=0))
    def flaky(**context):
        # Fails on the first try so the run records a retry
        # (task_instance_history row) and succeeds on the second.
        if context["ti"].try_number < 2:
            raise RuntimeError("first try fails on purpose")
        return "recovered"

    @task
    def explicit_push(**context):
        context["ti"].xcom_push(key="row_count", value=42)
        return "pushed"

    multiple_outputs()
    inferred_multiple_outputs()
    times_ten.expand(x=[1, 2, 3])
    return_nan()
    return_tuple()
    return_datetime()
    return_none()
    explicit_push()
    flaky()


xcom_shapes()
