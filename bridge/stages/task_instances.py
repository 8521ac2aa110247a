"""Task-instance metrics: counted as each task finishes, even while its DAG run goes on.

A task instance can only change while its DAG run is active (clearing a task puts its
run back to queued), so each cycle reads the task instances of the runs that are active
now and of the runs that finished in this cycle, by the (dag_id, run_id) index. Every
terminal try is folded once, keyed on (run, task, map index, try, end date, and on 3.x the
task instance id, which a clear renews), and only once its end date is written (or its run
has finished); failed tries that were tried again come from task_instance_history, or, on
schemas without it (before 2.10), from the try number, which there counts the tries that
started.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bridge.airflow.rows import DagRun, TaskInstance
from bridge.airflow.source import Reader
from bridge.cache.folds import EndKey, Retry, TaskOutcome
from bridge.cache.ledger import CacheTransaction
from bridge.cache.tables import task_instance_finished
from bridge.config import Settings
from bridge.metric import Labels, MetricSpec
from bridge.stages.dag_runs import DagRunDelta
from bridge.timeutil import naive_utc

FINISHED_TOTAL = MetricSpec(
    "airflow_task_instance_finished_total", "counter",
    "Task instances that reached a terminal state, counted once per try.",
    ("dag_id", "task_id", "state"))
RETRIES_TOTAL = MetricSpec(
    "airflow_task_instance_retries_total", "counter",
    "Failed task tries that were tried again.", ("dag_id", "task_id"))
DURATION = MetricSpec(
    "airflow_task_instance_duration_seconds", "histogram",
    "Duration of finished task tries, start to end.", ("dag_id", "task_id", "state"))
QUEUED = MetricSpec(
    "airflow_task_instance_queued_seconds", "histogram",
    "Time task instances waited from queued to started.", ("dag_id",))
SPECS = (FINISHED_TOTAL, RETRIES_TOTAL, DURATION, QUEUED)

TERMINAL_STATES = ("success", "failed", "skipped", "upstream_failed", "removed")
OUTCOMES = ("success", "failed")  # final states of a task that ran
RUNS_PER_BATCH = 500
RESET_STATES = (None, "scheduled", "queued", "restarting")  # what a clear leaves
RETRIED_STATES = ("failed", "up_for_retry")  # a try in one of these that ran again retried


@dataclass(frozen=True)
class TaskInstanceDelta:
    """What this stage saw in one cycle, for the business stage and the gauges of now."""

    # Of the active runs and the runs that just finished, those not in a final state or
    # that did not run (skipped, upstream_failed, removed): what the gauges of now and the
    # business stage look at. The successes and failures of a backfill are not kept.
    instances: tuple[TaskInstance, ...]
    # Folded in this cycle: how many, of which DAGs, and those of the tasks that business
    # metrics count by state (a backfill folds millions: they are not all kept).
    folded: int
    dags: frozenset[str]
    watched: tuple[TaskInstance, ...]
    retries: int


def task_duration(ti: TaskInstance) -> float | None:
    if ti.start_date is not None and ti.end_date is not None and ti.end_date >= ti.start_date:
        return (ti.end_date - ti.start_date).total_seconds()
    if ti.duration is not None and ti.duration >= 0:
        return float(ti.duration)
    return None


def queued_seconds(ti: TaskInstance) -> float | None:
    if ti.queued_dttm is None or ti.start_date is None or ti.start_date < ti.queued_dttm:
        return None
    return (ti.start_date - ti.queued_dttm).total_seconds()


class TaskInstanceStage:
    """Folds every terminal try of the runs the DAG-run stage saw, and the retries."""

    def __init__(self, settings: Settings) -> None:
        self.duration_buckets = settings.buckets(DURATION.name)
        self.queued_buckets = settings.buckets(QUEUED.name)
        self.watched = frozenset((d.dag_id, d.task_id) for d in settings.definitions
                                 if d.source == "task_state")

    def run(self, reader: Reader, tx: CacheTransaction, runs: DagRunDelta,
            now: datetime) -> TaskInstanceDelta:
        by_key: dict[tuple[str, str], DagRun] = {
            (run.dag_id, run.run_id): run for run in (*runs.finished_runs, *runs.active_runs)}
        keys = sorted(by_key)
        kept: list[TaskInstance] = []
        watched: list[TaskInstance] = []
        dags: set[str] = set()
        folded = retries = 0
        # Run by run in batches, so that a backfill's memory is one batch, not the cycle.
        for start in range(0, len(keys), RUNS_PER_BATCH):
            instances = reader.task_instances(keys[start:start + RUNS_PER_BATCH])
            self._reopen_cleared(tx, instances, by_key)
            finished = self._fold_finished(tx, instances, by_key, now)
            folded += len(finished)
            dags.update(ti.dag_id for ti in finished)
            watched += [ti for ti in finished if (ti.dag_id, ti.task_id) in self.watched]
            retries += self._fold_retries(reader, tx, instances, by_key, now)
            kept += [ti for ti in instances if ti.state not in OUTCOMES]
        return TaskInstanceDelta(tuple(kept), folded, frozenset(dags), tuple(watched), retries)

    @staticmethod
    def _reopen_cleared(tx: CacheTransaction, instances: list[TaskInstance],
                        runs: dict[tuple[str, str], DagRun]) -> None:
        """Tries seen reset after their outcome was folded were cleared: their next outcome
        counts again, even when it keeps the try number and end date (upstream_failed or
        skipped again). On Airflow 2 the reset is all there is to see (clearing tasks of a
        running run leaves its clear_number at 0), so every reset try looks (one lookup by
        run for the batch; a task set upstream_failed never ran and has try 0); on 3.x
        a clear renews the task instance id, part of the fold key, and only runs that were
        ever cleared look (for outcomes folded before keys had ids)."""
        cleared = [(runs[(ti.dag_id, ti.run_id)].id, ti.task_id, ti.map_index, ti.try_number)
                   for ti in instances if ti.state in RESET_STATES
                   and (ti.ti_id is None or runs[(ti.dag_id, ti.run_id)].clear_number != 0)]
        if cleared:
            tx.reopen(task_instance_finished, cleared)

    def _fold_finished(self, tx: CacheTransaction, instances: list[TaskInstance],
                       runs: dict[tuple[str, str], DagRun], now: datetime) -> list[TaskInstance]:
        outcomes: dict[tuple[Any, ...], tuple[TaskOutcome, TaskInstance]] = {}
        for ti in instances:
            if ti.state not in TERMINAL_STATES:
                continue
            if ti.end_date is None and not runs[(ti.dag_id, ti.run_id)].finished:
                continue  # Airflow may commit a final state before its end date: wait for it
            end = naive_utc(ti.end_date)
            outcome = TaskOutcome(
                dag_run_id=runs[(ti.dag_id, ti.run_id)].id, task_id=ti.task_id,
                map_index=ti.map_index, try_number=ti.try_number,
                # 3.x gives a cleared task instance a new id: with it in the key, an outcome
                # that keeps the try number and end date after a clear still counts, even
                # when no cycle saw the task reset.
                end_key=EndKey.of(end, ti.ti_id), dag_id=ti.dag_id, run_id=ti.run_id,
                state=str(ti.state), start_date=naive_utc(ti.start_date), end_date=end,
                duration_seconds=task_duration(ti), queued_seconds=queued_seconds(ti),
                folded_at=now)
            outcomes[outcome.key()] = (outcome, ti)
        claimed = tx.claim(_not_folded_without_id(tx, [o for o, _ in outcomes.values()]))
        for fold in claimed:
            labels: Labels = (("dag_id", fold.dag_id), ("state", fold.state),
                              ("task_id", fold.task_id))
            tx.add(FINISHED_TOTAL.name, labels)
            if fold.duration_seconds is not None:
                tx.observe(DURATION.name, labels, fold.duration_seconds, self.duration_buckets)
            if fold.queued_seconds is not None:
                tx.observe(QUEUED.name, (("dag_id", fold.dag_id),), fold.queued_seconds,
                           self.queued_buckets)
        return [outcomes[fold.key()][1] for fold in claimed]

    def _fold_retries(self, reader: Reader, tx: CacheTransaction, instances: list[TaskInstance],
                      runs: dict[tuple[str, str], DagRun], now: datetime) -> int:
        if reader.schema.has_task_instance_history:
            # A failed try is a retry only once a later try exists: a try archived by a
            # clear that never ran again, or one whose run ended before it was retried, is not.
            current = {(ti.dag_id, ti.task_id, ti.run_id, ti.map_index): ti.try_number
                       for ti in instances if ti.try_number > 1}
            failed = [(f.dag_id, f.task_id, f.run_id, f.map_index, f.try_number)
                      for f in reader.failed_tries(sorted(current))
                      if f.try_number < current[(f.dag_id, f.task_id, f.run_id, f.map_index)]]
        else:
            failed = self._retried_by_try_number(tx, instances, runs)
        claimed = tx.claim([
            Retry(dag_run_id=runs[(dag_id, run_id)].id, task_id=task_id, map_index=map_index,
                  try_number=try_number, dag_id=dag_id, folded_at=now)
            for dag_id, task_id, run_id, map_index, try_number in failed])
        for fold in claimed:
            tx.add(RETRIES_TOTAL.name, (("dag_id", fold.dag_id), ("task_id", fold.task_id)))
        return len(claimed)

    @staticmethod
    def _retried_by_try_number(tx: CacheTransaction, instances: list[TaskInstance],
                               runs: dict[tuple[str, str], DagRun],
                               ) -> list[tuple[str, str, str, int, int]]:
        """Before 2.10 a try number counts the tries that started, so every earlier try ran
        again: a retry, unless a cycle folded an outcome of it that a clear re-ran (success,
        skipped, ...). That way a retry between two cycles is not missed."""
        later = {(runs[(ti.dag_id, ti.run_id)].id, ti.task_id, ti.map_index): ti
                 for ti in instances if ti.try_number > 1}
        rerun = {(run_id, task_id, map_index, try_number)
                 for run_id, task_id, map_index, try_number, state
                 in tx.recorded(task_instance_finished, sorted(later), "try_number", "state")
                 if state not in RETRIED_STATES}
        return [(ti.dag_id, ti.task_id, ti.run_id, ti.map_index, earlier)
                for key, ti in later.items() for earlier in range(1, ti.try_number)
                if (*key, earlier) not in rerun]


def _not_folded_without_id(tx: CacheTransaction,
                           outcomes: list[TaskOutcome]) -> list[TaskOutcome]:
    """Outcomes folded while keys had no task instance id (caches of earlier releases)
    were counted then: an outcome whose key without the id is recorded is left out. The
    lookup reads every key of these tries, so the outcomes folded already are left out here
    too and the claim only looks up what is new."""
    tries = sorted({o.try_key for o in outcomes if o.end_key.ti_id})
    if not tries:
        return outcomes
    folded = {(*key, EndKey.decode(end_key))
              for *key, end_key in tx.recorded(task_instance_finished, tries, "end_key")}
    return [o for o in outcomes if (*o.try_key, o.end_key) not in folded
            and (*o.try_key, o.end_key.without_id()) not in folded]
