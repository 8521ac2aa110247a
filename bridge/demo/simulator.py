"""The bike pipeline of deploy/airflow/dags, simulated as Airflow 3 rows, for the demo.

A time-lapse: each tick is one day of the pipeline's calendar (logical dates from
2026-01-01), and the rows change the way Airflow 3's scheduler and workers change them,
one small transaction per transition, so the bridge reads exactly what it would read from
a real deployment. Timestamps are the wall clock at the moment of the write (a run is due
when its tick starts), so durations, delays and heartbeats look live to Prometheus.
Every value comes from a random generator seeded with (seed, day): a run is reproducible.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

FIRST_DAY = date(2026, 1, 1)
FETCH, PREDICT, MONITOR = "daily_fetch_bike_data", "daily_prediction", "monitor_and_fine_tune"
DAGS: dict[str, tuple[str, ...]] = {
    FETCH: ("fetch_bike_data",),
    PREDICT: ("generate_predictions",),
    MONITOR: ("detect_drift", "fine_tune_model", "evaluate_model", "decide_deployment"),
}
TAGS: dict[str, tuple[str, ...]] = {
    FETCH: ("bike", "ingestion"), PREDICT: ("bike", "ml"), MONITOR: ("bike", "ml", "monitoring"),
}
FEATURES = ("temperature", "precipitation", "wind_speed", "hour_of_day", "day_of_week",
            "is_holiday", "counter_id", "lag_24h")
DRIFT_THRESHOLD = 0.3
RETRIES = 1  # every simulated task has retries=1, so max_tries is 1
STEPS_PER_DAY = 24  # a day's writes are spread over its tick in this many paces
HEARTBEAT_EVERY = 5.0  # seconds, Airflow's scheduler_heartbeat_sec

Say = Callable[[str], None]


@dataclass(frozen=True)
class TaskPlan:
    """One task of a run: the state each try ends in, and the XCom the last try pushes."""

    task_id: str
    tries: tuple[str, ...]  # e.g. ("success",), ("failed", "success"), ("failed", "failed")
    xcom: object = None

    @property
    def succeeded(self) -> bool:
        return self.tries[-1] == "success"


@dataclass(frozen=True)
class RunPlan:
    """One scheduled DAG run of one simulated day, decided before any row is written."""

    dag_id: str
    day: int
    tasks: tuple[TaskPlan, ...]
    summary: str

    @property
    def logical_date(self) -> datetime:
        return datetime.combine(day_date(self.day), datetime.min.time(), UTC)

    @property
    def run_id(self) -> str:
        return f"scheduled__{self.logical_date.isoformat()}"

    @property
    def state(self) -> str:
        return "success" if all(task.succeeded for task in self.tasks) else "failed"


def day_date(day: int) -> date:
    return FIRST_DAY + timedelta(days=day - 1)


def _tries(rng: random.Random, retry: float, fail: float) -> tuple[str, ...]:
    """Mostly one good try; sometimes a retry that recovers, rarely both tries failing."""
    roll = rng.random()
    if roll < fail:
        return ("failed",) * (RETRIES + 1)
    if roll < fail + retry:
        return ("failed", "success")
    return ("success",)


def _failed(tasks: tuple[TaskPlan, ...]) -> str:
    failed = next(task for task in tasks if not task.succeeded)
    skipped = [task.task_id for task in tasks[tasks.index(failed) + 1:]]
    tries = "both tries" if len(failed.tries) == 2 else f"all {len(failed.tries)} tries"
    after = f" ({', '.join(skipped)} upstream_failed)" if skipped else ""
    return f"FAILED: {failed.task_id} failed on {tries}{after}"


def plan_fetch(rng: random.Random, day: int) -> RunPlan:
    weekend = day_date(day).weekday() >= 5
    records = (8_000 + rng.randint(0, 5_000)) if weekend else (13_000 + rng.randint(0, 7_000))
    tries = _tries(rng, retry=0.08, fail=0.04)
    tasks = (TaskPlan("fetch_bike_data", tries,
                      {"records_ingested": records, "source": "city-counters"}),)
    summary = (f"success, {records:,} records" if tasks[0].succeeded else _failed(tasks))
    return RunPlan(FETCH, day, tasks, summary)


def plan_prediction(rng: random.Random, day: int) -> RunPlan:
    rmse = round(rng.uniform(15.0, 35.0), 3)
    r2 = round(min(0.95, max(0.75, 0.95 - (rmse - 15.0) * 0.01 + rng.uniform(-0.02, 0.02))), 4)
    mae = round(rmse * rng.uniform(0.7, 0.8), 3)
    tries = _tries(rng, retry=0.06, fail=0.04)
    value = {"predictions_generated": 48 * 24, "metrics": {"r2": r2, "rmse": rmse, "mae": mae}}
    tasks = (TaskPlan("generate_predictions", tries, value),)
    summary = (f"success, {48 * 24:,} predictions, r2 {r2:.3f}, rmse {rmse:.1f}"
               if tasks[0].succeeded else _failed(tasks))
    return RunPlan(PREDICT, day, tasks, summary)


def plan_monitor(rng: random.Random, day: int) -> RunPlan:
    drifted = sorted(f for f in FEATURES if rng.random() < 0.35)
    share = round(len(drifted) / len(FEATURES), 4)
    detected = share >= DRIFT_THRESHOLD
    drift = {"drift_detected": detected, "drift_share": share, "drifted_features": drifted,
             "drifted_features_count": len(drifted)}
    training = {"epochs": 5 if detected else 1, "train_rows": 50_000 + rng.randint(0, 10_000)}
    delta = round((0.02 if detected else 0.0) + rng.uniform(-0.03, 0.01), 4)
    evaluation = {"r2_production": round(rng.uniform(0.80, 0.92), 4),
                  "rmse_production": round(rng.uniform(18.0, 30.0), 3),
                  "improvement_delta": delta}
    decision = "deploy" if delta > 0 else "skip"
    tasks = (TaskPlan("detect_drift", _tries(rng, retry=0.04, fail=0.02), drift),
             TaskPlan("fine_tune_model", _tries(rng, retry=0.10, fail=0.06), training),
             TaskPlan("evaluate_model", _tries(rng, retry=0.03, fail=0.0), evaluation),
             TaskPlan("decide_deployment", ("success",), decision))
    found = (f"drift detected (share {share:.2f}, {len(drifted)} features)" if detected
             else f"no drift (share {share:.2f})")
    if all(task.succeeded for task in tasks):
        epochs = f"{training['epochs']} epoch" + ("s" if training["epochs"] > 1 else "")
        summary = (f"success: {found}, fine-tuned {epochs}, production r2 "
                   f"{evaluation['r2_production']:.3f}, delta {delta:+.3f}, decision {decision}")
    else:
        summary = _failed(tasks) + (f"; {found}" if tasks[0].succeeded else "")
    return RunPlan(MONITOR, day, tasks, summary)


def plan_day(seed: int, day: int) -> tuple[RunPlan, ...]:
    """The three scheduled runs of one day; the same (seed, day) always gives the same plan."""
    rng = random.Random(f"{seed}:{day}")
    return plan_fetch(rng, day), plan_prediction(rng, day), plan_monitor(rng, day)


@dataclass(frozen=True)
class Run:
    id: int
    dag_id: str
    run_id: str


class MetadataWriter:
    """The rows Airflow 3.3 writes, with the columns its schema requires (autocommit)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.versions: dict[str, uuid.UUID] = {}
        self.job_id = 0

    def register_dags(self, now: datetime) -> None:
        """What the DAG processor writes once it has parsed the three files."""
        with self.conn.transaction():
            self.conn.execute("INSERT INTO dag_bundle (name, active) VALUES ('dags-folder', true) "
                              "ON CONFLICT DO NOTHING")
            for dag_id, tags in TAGS.items():
                self.conn.execute(
                    "INSERT INTO dag (dag_id, is_paused, is_stale, last_parsed_time, fileloc, "
                    "relative_fileloc, bundle_name, owners, timetable_type, timetable_summary, "
                    "timetable_description, timetable_periodic, partition_mapper_info, "
                    "max_active_tasks, max_active_runs, max_consecutive_failed_dag_runs, "
                    "has_task_concurrency_limits, has_import_errors) VALUES (%s, false, false, "
                    "%s, %s, %s, 'dags-folder', 'airflow', 'CronTriggerTimetable', '0 0 * * *', "
                    "'At 00:00', true, '[]', 16, 16, 0, false, false)",
                    (dag_id, now, f"/opt/airflow/dags/{dag_id}.py", f"{dag_id}.py"))
                for tag in tags:
                    self.conn.execute("INSERT INTO dag_tag (name, dag_id) VALUES (%s, %s)",
                                      (tag, dag_id))
                version = uuid.uuid4()
                self.conn.execute(
                    "INSERT INTO dag_version (id, version_number, dag_id, bundle_name, "
                    "created_at, last_updated) VALUES (%s, 1, %s, 'dags-folder', %s, %s)",
                    (version, dag_id, now, now))
                self.versions[dag_id] = version

    def start_scheduler(self, now: datetime) -> None:
        row = self.conn.execute(
            "INSERT INTO job (state, job_type, start_date, latest_heartbeat, executor_class, "
            "hostname, unixname) VALUES ('running', 'SchedulerJob', %s, %s, 'LocalExecutor', "
            "'demo-scheduler', 'airflow') RETURNING id", (now, now)).fetchone()
        assert row is not None
        self.job_id = int(row[0])

    def heartbeat(self, now: datetime) -> None:
        self.conn.execute("UPDATE job SET latest_heartbeat = %s WHERE id = %s", (now, self.job_id))

    def stop_scheduler(self, now: datetime) -> None:
        self.conn.execute("UPDATE job SET state = 'success', end_date = %s, latest_heartbeat = %s "
                          "WHERE id = %s", (now, now, self.job_id))

    def create_run(self, plan: RunPlan, due: datetime, now: datetime) -> Run:
        """The scheduler creates a queued run and its task instances (no state, try 0)."""
        logical = plan.logical_date
        with self.conn.transaction():
            row = self.conn.execute(
                "INSERT INTO dag_run (dag_id, queued_at, logical_date, state, run_id, "
                "creating_job_id, run_type, triggered_by, conf, data_interval_start, "
                "data_interval_end, run_after, log_template_id, created_at, updated_at, "
                "created_dag_version_id) VALUES (%s, %s, %s, 'queued', %s, %s, 'scheduled', "
                "'TIMETABLE', '{}', %s, %s, %s, (SELECT max(id) FROM log_template), %s, %s, %s) "
                "RETURNING id",
                (plan.dag_id, now, logical, plan.run_id, self.job_id, logical, logical, due,
                 now, now, self.versions.get(plan.dag_id))).fetchone()
            assert row is not None
            run = Run(int(row[0]), plan.dag_id, plan.run_id)
            count = len(plan.tasks)
            for weight, task in enumerate(plan.tasks):
                self.conn.execute(
                    "INSERT INTO task_instance (id, task_id, dag_id, run_id, map_index, "
                    "try_number, max_tries, hostname, unixname, pool, pool_slots, queue, "
                    "priority_weight, operator, custom_operator_name, task_display_name, "
                    "dag_version_id, updated_at) VALUES (%s, %s, %s, %s, -1, 0, %s, '', "
                    "'airflow', 'default_pool', 1, 'default', %s, '_PythonDecoratedOperator', "
                    "'@task', %s, %s, %s)",
                    (uuid.uuid4(), task.task_id, run.dag_id, run.run_id, RETRIES, count - weight,
                     task.task_id, self.versions.get(plan.dag_id), now))
        return run

    def set_run(self, run: Run, state: str, now: datetime) -> None:
        moment = "start_date" if state == "running" else "end_date"
        self.conn.execute(f"UPDATE dag_run SET state = %s, {moment} = %s, updated_at = %s, "
                          "last_scheduling_decision = %s WHERE id = %s",
                          (state, now, now, now, run.id))

    def _ti(self, run: Run, task_id: str, sets: str, params: dict[str, object]) -> None:
        self.conn.execute(f"UPDATE task_instance SET {sets}, updated_at = %(now)s "
                          "WHERE dag_id = %(dag)s AND run_id = %(run)s AND task_id = %(task)s "
                          "AND map_index = -1",
                          {**params, "dag": run.dag_id, "run": run.run_id, "task": task_id})

    def queue_task(self, run: Run, task_id: str, now: datetime) -> None:
        """Scheduled and queued: the try number goes up; a previous try is archived first."""
        with self.conn.transaction():
            row = self.conn.execute(
                "SELECT state FROM task_instance WHERE dag_id = %s AND run_id = %s AND "
                "task_id = %s AND map_index = -1", (run.dag_id, run.run_id, task_id)).fetchone()
            if row is not None and row[0] == "up_for_retry":
                self._archive(run, task_id)
            self._ti(run, task_id, "state = 'queued', try_number = try_number + 1, "
                     "scheduled_dttm = %(now)s, queued_dttm = %(now)s, queued_by_job_id = %(job)s, "
                     "start_date = NULL, end_date = NULL, duration = NULL",
                     {"now": now, "job": self.job_id})

    def _archive(self, run: Run, task_id: str) -> None:
        """The failed try moves to task_instance_history; the next try gets a new id."""
        cols = ("task_id, dag_id, run_id, map_index, try_number, start_date, end_date, "
                "duration, max_tries, hostname, unixname, pool, pool_slots, queue, "
                "priority_weight, operator, custom_operator_name, queued_dttm, scheduled_dttm, "
                "queued_by_job_id, pid, task_display_name, dag_version_id, updated_at")
        params = {"dag": run.dag_id, "run": run.run_id, "task": task_id, "id": uuid.uuid4()}
        where = "dag_id = %(dag)s AND run_id = %(run)s AND task_id = %(task)s AND map_index = -1"
        self.conn.execute(f"INSERT INTO task_instance_history (task_instance_id, state, {cols}) "
                          f"SELECT id, 'failed', {cols} FROM task_instance WHERE {where}", params)
        self.conn.execute(f"UPDATE task_instance SET id = %(id)s WHERE {where}", params)

    def start_task(self, run: Run, task_id: str, now: datetime, pid: int) -> None:
        self._ti(run, task_id, "state = 'running', start_date = %(now)s, hostname = "
                 "'demo-worker', pid = %(pid)s", {"now": now, "pid": pid})

    def finish_task(self, run: Run, task_id: str, state: str, now: datetime) -> None:
        """success / failed / up_for_retry / upstream_failed, as TaskInstance.set_state does."""
        self._ti(run, task_id, "state = %(state)s, start_date = coalesce(start_date, %(now)s), "
                 "end_date = %(now)s, duration = extract(epoch FROM %(now)s - "
                 "coalesce(start_date, %(now)s))", {"state": state, "now": now})

    def push_xcom(self, run: Run, task_id: str, value: object, now: datetime) -> None:
        self.conn.execute(
            "INSERT INTO xcom (dag_run_id, task_id, map_index, key, dag_result, dag_id, run_id, "
            "value, timestamp) VALUES (%s, %s, -1, 'return_value', false, %s, %s, %s, %s)",
            (run.id, task_id, run.dag_id, run.run_id, Jsonb(value), now))


def _now() -> datetime:
    return datetime.now(UTC)


class Simulator:
    """Writes one simulated day per tick until `stop` is set; `say` gets one line per event."""

    def __init__(self, conn: psycopg.Connection[Any], *, seed: int, day_seconds: float,
                 say: Say, clock: Callable[[], datetime] = _now) -> None:
        self.db = MetadataWriter(conn)
        self.seed = seed
        self.day_seconds = day_seconds
        self.say = say
        self.clock = clock
        self.day = 0
        self._pid = random.Random(seed).randint(1_000, 30_000)
        self._beat = 0.0

    def setup(self) -> None:
        now = self.clock()
        self.db.register_dags(now)
        self.db.start_scheduler(now)

    def run(self, stop: threading.Event) -> None:
        self.setup()
        tick = time.monotonic()
        while not stop.is_set():
            self.day += 1
            self.simulate_day(self.day, stop)
            tick += self.day_seconds
            self._idle(stop, tick - time.monotonic())
        self.db.stop_scheduler(self.clock())

    def simulate_day(self, day: int, stop: threading.Event | None = None) -> None:
        """The day's three runs advance together, one transition each per pace."""
        due = self.clock()
        runs = [self._steps(plan, due) for plan in plan_day(self.seed, day)]
        pace = self.day_seconds / STEPS_PER_DAY
        while runs:
            self._heartbeat()
            runs = [steps for steps in runs if next(steps, None) is not None]
            if runs and stop is not None and self._idle(stop, pace):
                return

    def _idle(self, stop: threading.Event, seconds: float) -> bool:
        """Sleep, still heartbeating like a scheduler; True once `stop` is set."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            if stop.wait(min(left, HEARTBEAT_EVERY)):
                return True
            self._heartbeat()
        return stop.is_set()

    def _heartbeat(self) -> None:
        if time.monotonic() - self._beat >= min(HEARTBEAT_EVERY, self.day_seconds):
            self.db.heartbeat(self.clock())
            self._beat = time.monotonic()

    def _steps(self, plan: RunPlan, due: datetime) -> Iterator[bool]:
        """Each `yield` is one committed transition that the bridge may observe."""
        prefix = f"day {plan.day} ({day_date(plan.day).isoformat()}): {plan.dag_id}"
        run = self.db.create_run(plan, due, self.clock())
        yield True
        self.db.set_run(run, "running", self.clock())
        yield True
        failed = False
        for task in plan.tasks:
            if failed:
                self.db.finish_task(run, task.task_id, "upstream_failed", self.clock())
                continue
            yield from self._task(run, task, prefix)
            failed = not task.succeeded
        self.db.set_run(run, plan.state, self.clock())
        self.say(f"{prefix} {plan.summary}")
        yield True

    def _task(self, run: Run, task: TaskPlan, prefix: str) -> Iterator[bool]:
        for number, outcome in enumerate(task.tries, start=1):
            self.db.queue_task(run, task.task_id, self.clock())
            yield True
            self._pid += 1
            self.db.start_task(run, task.task_id, self.clock(), self._pid)
            yield True
            last = number == len(task.tries)
            state = outcome if last or outcome == "success" else "up_for_retry"
            now = self.clock()
            with self.db.conn.transaction():
                if state == "success":
                    self.db.push_xcom(run, task.task_id, task.xcom, now)
                self.db.finish_task(run, task.task_id, state, now)
            if state == "up_for_retry":
                self.say(f"{prefix}: {task.task_id} try {number} failed, up for retry")
            yield True
