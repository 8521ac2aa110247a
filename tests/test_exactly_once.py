"""A seeded random model of Airflow's scheduler against the bridge, compared exactly.

A writer that follows Airflow's transitions (runs queued -> running -> finished, task
tries with retries, clears that archive every try and start new ones, clears whose
re-run finishes before the next cycle, `db clean`, bridge restarts) interleaves with
bridge cycles; an oracle counts what the counters must say. At the end every run,
task and retry counter must equal the oracle exactly: no loss, no double count.

Cases the README lists as unseeable (a finish cleared before any cycle saw it) are not
generated. CI runs a few seeds per Airflow version; a longer run:

    BRIDGE_ORACLE_SEEDS=200 python -m pytest tests/test_exactly_once.py
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import AirflowDb, BridgeFactory, BridgeUnderTest, Scrape
from tests.metadb import TaskWriter

SEEDS = range(int(os.environ.get("BRIDGE_ORACLE_SEEDS", "3")))
STEPS = 120
DAGS = ("alpha", "beta")
TASKS = ("extract", "load")


@dataclass
class Run:
    id: int
    dag_id: str
    run_id: str
    state: str = "queued"
    tasks: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(TASKS))
    seen_finished: bool = False  # a cycle ran since it last finished


@dataclass
class Oracle:
    runs: Counter[tuple[str, str]] = field(default_factory=Counter)
    tries: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    retries: Counter[tuple[str, str]] = field(default_factory=Counter)


class Model:
    """Airflow's side: writes rows as the scheduler would and keeps the expected counts."""

    def __init__(self, db: AirflowDb, rng: random.Random) -> None:
        self.af = db.writer
        self.tasks = TaskWriter(db.writer)
        self.rng = rng
        self.clock = datetime.now(UTC).replace(microsecond=0)
        self.runs: list[Run] = []
        self.expected = Oracle()

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=self.rng.randint(1, 5))
        return self.clock

    def new_run(self) -> None:
        dag_id = self.rng.choice(DAGS)
        at = self.tick()
        run_id = f"scheduled__{at.isoformat()}"
        run = Run(self.af.create_run(dag_id, logical_date=at, at=at, run_id=run_id), dag_id,
                  run_id)
        for task_id in TASKS:
            self.tasks.add(run.id, task_id)
        self.runs.append(run)

    def start(self, run: Run) -> None:
        self.af.start_run(run.id, self.tick())
        run.state = "running"

    def task_try(self, run: Run, task_id: str) -> None:
        outcome = self.rng.choice(("success", "success", "failed", "up_for_retry"))
        self.tasks.run_try(run.id, task_id, outcome, self.tick(), runs_for=1, queued_for=1)
        if outcome == "up_for_retry":  # the scheduler tries again: a retry
            self.tasks.next_try(run.id, task_id)
            self.expected.retries[(run.dag_id, task_id)] += 1
            return
        run.tasks[task_id] = outcome
        self.expected.tries[(run.dag_id, task_id, outcome)] += 1

    def finish(self, run: Run) -> None:
        state = "failed" if "failed" in run.tasks.values() else "success"
        self.af.finish_run(run.id, state, self.tick())
        run.state = state
        run.seen_finished = False
        self.expected.runs[(run.dag_id, state)] += 1

    def clear(self, run: Run) -> None:
        """`airflow tasks clear` of the whole run: every try archived, new tries scheduled."""
        self.af.clear_run(run.id, self.tick())
        for task_id, outcome in run.tasks.items():
            self.tasks.next_try(run.id, task_id)
            if outcome == "failed":  # a failed try with a later try counts as a retry
                self.expected.retries[(run.dag_id, task_id)] += 1
            run.tasks[task_id] = None
        run.state = "queued"

    def run_to_the_end(self, run: Run) -> None:
        self.start(run)
        for task_id in TASKS:
            while run.tasks[task_id] is None:
                self.task_try(run, task_id)
        self.finish(run)

    def db_clean(self) -> None:
        """Delete a finished run whose finish a cycle has seen; totals must not move."""
        gone = [r for r in self.runs if r.state != "queued" and r.state != "running"
                and r.seen_finished]
        if gone:
            run = self.rng.choice(gone)
            self.af.conn.execute("DELETE FROM task_instance WHERE dag_id = %s AND run_id = %s",
                                 (run.dag_id, run.run_id))
            self.af.conn.execute("DELETE FROM dag_run WHERE id = %s", (run.id,))
            self.runs.remove(run)

    def step(self) -> None:
        """One random scheduler action that the state of the runs allows."""
        queued = [r for r in self.runs if r.state == "queued"]
        running = [r for r in self.runs if r.state == "running"]
        finished = [r for r in self.runs if r.state in ("success", "failed") and r.seen_finished]
        choices = ["new"]
        choices += ["start"] * bool(queued) + ["try", "try", "try"] * bool(running)
        choices += ["clear", "fast_clear", "clean"] * bool(finished)
        action = self.rng.choice(choices)
        if action == "new":
            self.new_run()
        elif action == "start":
            self.start(self.rng.choice(queued))
        elif action == "try":
            run = self.rng.choice(running)
            open_tasks = [t for t, outcome in run.tasks.items() if outcome is None]
            if open_tasks:
                self.task_try(run, self.rng.choice(open_tasks))
            else:
                self.finish(run)
        elif action == "clear":
            self.clear(self.rng.choice(finished))
        elif action == "fast_clear":  # cleared and finished again before the next cycle
            run = self.rng.choice(finished)
            self.clear(run)
            self.run_to_the_end(run)
        else:
            self.db_clean()

    def cycled(self) -> None:
        for run in self.runs:
            if run.state in ("success", "failed"):
                run.seen_finished = True


def counted(scrape: Scrape) -> Oracle:
    found = Oracle()
    for labels, value in scrape.series("airflow_dag_run_finished_total").items():
        given = dict(labels)
        found.runs[(given["dag_id"], given["state"])] += int(value)
    for labels, value in scrape.series("airflow_task_instance_finished_total").items():
        given = dict(labels)
        found.tries[(given["dag_id"], given["task_id"], given["state"])] += int(value)
    for labels, value in scrape.series("airflow_task_instance_retries_total").items():
        given = dict(labels)
        found.retries[(given["dag_id"], given["task_id"])] += int(value)
    return found


def _positive(counts: Counter[tuple[str, ...]]) -> dict[tuple[str, ...], int]:
    return {key: n for key, n in counts.items() if n}


@pytest.mark.parametrize("seed", SEEDS)
def test_random_histories_are_counted_exactly_once(airflow_db: AirflowDb,
                                                  make_bridge: BridgeFactory,
                                                  seed: int) -> None:
    rng = random.Random(f"{airflow_db.version}-{seed}")
    model = Model(airflow_db, rng)
    bridge: BridgeUnderTest = make_bridge(airflow_db.url)
    cycles = 0
    for _ in range(STEPS):
        model.step()
        if rng.random() < 0.3:
            bridge.cycle()
            model.cycled()
            cycles += 1
        if rng.random() < 0.03:  # a restart on the same cache
            bridge.close()
            bridge = make_bridge(airflow_db.url)
    scrape = bridge.cycle()
    found = counted(scrape)
    expected = model.expected
    assert cycles > 10
    assert _positive(found.runs) == _positive(expected.runs), f"seed {seed}"
    assert _positive(found.tries) == _positive(expected.tries), f"seed {seed}"
    assert _positive(found.retries) == _positive(expected.retries), f"seed {seed}"
    assert counted(bridge.cycle()).runs == found.runs, "a repeated cycle adds nothing"
