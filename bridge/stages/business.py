"""Business metrics: the numbers tasks push as XComs, and task states, as users declared.

Values are read only for DAG runs that finished in this cycle (the run's fold is the
exactly-once key), only the configured (run, task, key) XComs, by the xcom primary key.
A value that cannot be used is counted in `airflow_bridge_xcom_decode_errors_total` and
logged once; it is never served. Every value is also kept per run in `business_value`,
so its history can be queried after Airflow purged its own rows.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

from bridge.airflow import xcoms
from bridge.airflow.rows import DagRun, StoredXcom
from bridge.airflow.source import Reader
from bridge.cache.folds import BusinessValue, EndKey
from bridge.cache.ledger import CacheTransaction
from bridge.cache.tables import encode_labels
from bridge.config import Settings
from bridge.definitions import MAP_INDEX_LABEL, MetricDefinition
from bridge.metric import Labels, MetricSpec
from bridge.stages.dag_runs import DagRunDelta
from bridge.stages.task_instances import TaskInstanceDelta
from bridge.timeutil import naive_utc

log = logging.getLogger(__name__)

DECODE_ERRORS = MetricSpec(
    "airflow_bridge_xcom_decode_errors_total", "counter",
    "XCom values that could not be used for a business metric, by reason; the value was "
    "skipped, never served.", ("metric", "reason"))
SPECS = (DECODE_ERRORS,)
NOT_RUN_STATES = ("skipped", "upstream_failed", "removed")


@dataclass(frozen=True)
class BusinessDelta:
    values: int
    errors: int


class BusinessStage:
    """Folds the business values of the runs that just finished, as the metric file says."""

    def __init__(self, settings: Settings) -> None:
        self.max_bytes = settings.xcom_max_bytes
        self.xcom_metrics = [d for d in settings.definitions if d.source == "xcom"]
        self.state_metrics = [d for d in settings.definitions if d.source == "task_state"]

    def run(self, reader: Reader, tx: CacheTransaction, runs: DagRunDelta,
            tasks: TaskInstanceDelta) -> BusinessDelta:
        values = errors = 0
        for definition in self.state_metrics:
            for ti in tasks.watched:
                if (ti.dag_id, ti.task_id) == (definition.dag_id, definition.task_id):
                    label = (str(definition.value_label), str(ti.state))
                    tx.add(definition.name, tuple(sorted((*definition.labels, label))))
                    values += 1
        if not self.xcom_metrics:
            return BusinessDelta(values, errors)
        dags = {d.dag_id for d in self.xcom_metrics}
        finished = [run for run in runs.finished_runs if run.dag_id in dags]
        stored: dict[tuple[int, str, str], list[StoredXcom]] = defaultdict(list)
        if finished:
            for row in reader.xcoms([run.id for run in finished],
                                    sorted({d.task_id for d in self.xcom_metrics}),
                                    sorted({d.key for d in self.xcom_metrics}), self.max_bytes):
                stored[(row.dag_run_id, row.task_id, row.key)].append(row)
        not_run = {(ti.dag_id, ti.run_id, ti.task_id) for ti in tasks.instances
                   if ti.state in NOT_RUN_STATES}
        for run in finished:
            for definition in self.xcom_metrics:
                if definition.dag_id != run.dag_id:
                    continue
                rows = sorted(stored.get((run.id, definition.task_id, definition.key), []),
                              key=lambda row: row.map_index)
                if not rows and (run.state != "success" or
                                 (run.dag_id, run.run_id, definition.task_id) in not_run):
                    continue  # the task did not run (failed run, skipped branch): no error
                samples, failures = self._samples(definition, rows)
                for failure in failures:
                    errors += 1
                    tx.add(DECODE_ERRORS.name, (("metric", definition.name),
                                                ("reason", failure.reason)))
                    log.warning("%s: no value from %s.%s key %r of run %s: %s", definition.name,
                                run.dag_id, definition.task_id, definition.key, run.run_id,
                                failure)
                for labels, value in samples:
                    self._fold(tx, definition, run, labels, value)
                    values += 1
                if failures and not samples:
                    self._unusable(tx, definition, run)
        return BusinessDelta(values, errors)

    @staticmethod
    def _unusable(tx: CacheTransaction, definition: MetricDefinition, run: DagRun) -> None:
        """A gauge whose newest run gave no usable value goes absent until a run gives one:
        serving an older run's number as the latest would be a lie. Only a gauge whose one
        series is known without a value (no label from the value or a map index) can."""
        if definition.kind != "gauge" or definition.value_label is not None or \
                definition.mapped == "each":
            return
        as_of = naive_utc(run.end_date) or naive_utc(run.start_date) or \
            naive_utc(run.logical_date)
        if as_of is not None:
            tx.latest(definition.name, tuple(sorted(definition.labels)), None, as_of)

    def _samples(self, definition: MetricDefinition,
                 rows: list[StoredXcom],
                 ) -> tuple[list[tuple[Labels, float]], list[xcoms.XcomValueError]]:
        """(labels, value) pairs for one run, and why the values that failed did."""
        if not rows:
            return [], [xcoms.XcomValueError("missing")]
        if definition.mapped == "last":
            rows = rows[-1:]
        failures: list[xcoms.XcomValueError] = []
        samples: list[tuple[Labels, float]] = []
        for row in rows:
            try:
                value = xcoms.extract(xcoms.decode(row.value, self.max_bytes, row.size),
                                      definition.path)
                labels = list(definition.labels)
                if definition.value_label is not None:
                    labels.append((definition.value_label, xcoms.to_label(value)))
                    number = 1.0
                else:
                    number = xcoms.to_number(value)
                    if definition.kind == "counter" and number < 0:
                        raise xcoms.XcomValueError("negative")
                if definition.mapped == "each" and row.map_index >= 0:
                    labels.append((MAP_INDEX_LABEL, str(row.map_index)))
            except xcoms.XcomValueError as exc:
                failures.append(exc)
                continue
            samples.append((tuple(sorted(labels)), number))
        if definition.mapped == "each":
            return samples, failures
        summed: dict[Labels, float] = defaultdict(float)  # mapped instances add up
        for sample_labels, number in samples:
            summed[sample_labels] += number
        return list(summed.items()), failures

    @staticmethod
    def _fold(tx: CacheTransaction, definition: MetricDefinition, run: DagRun, labels: Labels,
              value: float) -> None:
        end = naive_utc(run.end_date)
        as_of = end or naive_utc(run.start_date) or naive_utc(run.logical_date)
        if definition.kind == "counter":
            tx.add(definition.name, labels, value)
        elif as_of is not None:
            tx.latest(definition.name, labels, value, as_of)
        tx.claim([BusinessValue(
            dag_run_id=run.id, end_key=EndKey.of(end), metric=definition.name,
            labels=encode_labels(labels), dag_id=run.dag_id, run_id=run.run_id,
            logical_date=naive_utc(run.logical_date), end_date=end, value=value)])
