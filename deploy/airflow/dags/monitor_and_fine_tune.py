"""Drift monitoring and conditional model fine-tuning.

detect_drift -> fine_tune_model -> evaluate_model -> decide_deployment

Simulated: every value is derived deterministically from the run's logical
date, so re-running a date always produces the same XComs.
Works on Airflow 2.10+ and 3.x.
"""

from __future__ import annotations

import datetime as dt
import random

try:  # Airflow 3.x
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task

FEATURES = [
    "temperature",
    "precipitation",
    "wind_speed",
    "hour_of_day",
    "day_of_week",
    "is_holiday",
    "counter_id",
    "lag_24h",
]
DRIFT_THRESHOLD = 0.3


def _run_date(context) -> dt.date:
    logical = context.get("logical_date")
    if logical is None:  # Airflow 3 runs without a logical date
        logical = context["dag_run"].run_after
    return logical.date()


def _rng(step: str, context) -> random.Random:
    return random.Random(f"monitor:{step}:{_run_date(context).isoformat()}")


@dag(
    dag_id="monitor_and_fine_tune",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["bike", "ml", "monitoring"],
)
def monitor_and_fine_tune():
    @task
    def detect_drift(**context):
        rng = _rng("drift", context)
        drifted = sorted(f for f in FEATURES if rng.random() < 0.35)
        share = round(len(drifted) / len(FEATURES), 4)
        return {
            "drift_detected": share >= DRIFT_THRESHOLD,
            "drift_share": share,
            "drifted_features": drifted,
            "drifted_features_count": len(drifted),
        }

    @task
    def fine_tune_model(drift: dict, **context):
        rng = _rng("train", context)
        epochs = 5 if drift["drift_detected"] else 1
        return {"epochs": epochs, "train_rows": 50_000 + rng.randint(0, 10_000)}

    @task
    def evaluate_model(drift: dict, training: dict, **context):
        rng = _rng("evaluate", context)
        r2 = round(rng.uniform(0.80, 0.92), 4)
        gain = 0.02 if drift["drift_detected"] else 0.0
        delta = round(gain + rng.uniform(-0.03, 0.01), 4)
        return {
            "r2_production": r2,
            "rmse_production": round(rng.uniform(18.0, 30.0), 3),
            "improvement_delta": delta,
        }

    @task
    def decide_deployment(evaluation: dict):
        return "deploy" if evaluation["improvement_delta"] > 0 else "skip"

    drift = detect_drift()
    training = fine_tune_model(drift)
    evaluation = evaluate_model(drift, training)
    decide_deployment(evaluation)


monitor_and_fine_tune()
