"""DAG-run metrics, read incrementally: what changed since the last cycle, never the history.

Each cycle (all reads in one snapshot of the metadata DB, all writes in one cache
transaction):
1. active runs come through the partial indexes on state = 'queued' / 'running';
2. runs created since the last cycle come by primary key, `id > high-water mark`; ids
   skipped below the mark (a transaction that had not committed yet) are remembered
   as gaps and looked up by key until they appear or the grace period ends;
3. runs tracked as active that no longer are have finished (or were deleted): their
   final row is read by key;
4. runs of the reconcile window (a primary-key range) that finished since the previous
   cycle are read again: a run cleared and finished again between two cycles was never
   seen active, and is found here;
5. every finished run is folded exactly once, keyed on (dag_run id, end_date), so a
   repeated cycle never double counts and a cleared-and-rerun run counts again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from bridge.airflow.rows import DagRun
from bridge.airflow.source import Reader
from bridge.cache.folds import EndKey, RunFinish
from bridge.cache.ledger import CacheTransaction
from bridge.config import Settings
from bridge.metric import Labels, MetricSpec
from bridge.timeutil import aware_utc, naive_utc

log = logging.getLogger(__name__)

FINISHED_TOTAL = MetricSpec(
    "airflow_dag_run_finished_total", "counter",
    "DAG runs that reached a final state, counted once per finish.",
    ("dag_id", "state", "run_type"))
DURATION = MetricSpec(
    "airflow_dag_run_duration_seconds", "histogram",
    "Duration of finished DAG runs, start to end.", ("dag_id", "state"))
LAST_FINISHED = MetricSpec(
    "airflow_dag_run_last_finished_timestamp_seconds", "gauge",
    "End time of the latest finished DAG run, in Unix seconds.", ("dag_id", "state"))
START_DELAY = MetricSpec(
    "airflow_dag_run_start_delay_seconds", "histogram",
    "Delay from when a DAG run was due (end of its data interval, or queued) to its start.",
    ("dag_id",))
SPECS = (FINISHED_TOTAL, DURATION, LAST_FINISHED, START_DELAY)
# The run counters every alive DAG serves from the first cycle, at 0 before its first such
# finish: increase() sees no rise on a series' first sample, so a first failure must find
# its series there already.
PRESENT_FROM_START = tuple((state, run_type) for run_type in ("scheduled", "manual")
                           for state in ("success", "failed"))


@lru_cache(maxsize=2)
def finished_at_zero(dags: frozenset[str]) -> Mapping[Labels, float]:
    """Zeros of the run counters for `dags`, under their label sets (sorted by name); the
    alive DAGs seldom change, so the last result is kept (do not change it)."""
    return {(("dag_id", dag), ("run_type", run_type), ("state", state)): 0.0
            for dag in dags for state, run_type in PRESENT_FROM_START}

STATE_HIGH_WATER = "dag_run.high_water_id"
STATE_GAP_FLOOR = "dag_run.gap_floor_id"
STATE_RECONCILE_FLOOR = "dag_run.reconcile_floor_id"
STATE_RECONCILE_FLOOR_AT = "dag_run.reconcile_floor_at"
STATE_RECONCILED_AT = "dag_run.reconciled_at"
STATE_BACKFILL_START = "dag_run.backfill_start_id"  # runs at or below were never counted
STATE_BACKFILL_DONE = "dag_run.backfill_done"  # "0" until the first start's backfill ends
MAX_GAPS = 10_000
IN_FLIGHT_IDS = 1000  # ids below the first start's newest that may not have committed yet
# End dates are written by the scheduler's clock before its commit: re-read runs that ended
# this long before the previous cycle, so neither clock skew nor a slow commit hides one.
RECONCILE_SLACK = timedelta(minutes=10)
RECONCILE_FLOOR_EVERY = timedelta(hours=1)  # how often the window's first id is looked up
MAX_PAGES_PER_CYCLE = 4  # a backfill goes on in the next cycles, a second apart


@dataclass(frozen=True)
class Backfill:
    """How far the first start's backfill got, in DAG run ids."""

    done: int
    total: int
    rate: float  # ids per second in this process, 0 before a second cycle
    remaining_s: float | None

    def __str__(self) -> str:
        eta = "" if self.remaining_s is None else f", about {self.remaining_s:.0f}s left"
        return f"{self.done:,} of {self.total:,} DAG run ids read ({self.rate:,.0f}/s{eta})"


@dataclass(frozen=True)
class DagRunDelta:
    """What this stage saw in one cycle, for the stages after it and the gauges of now."""

    active_runs: tuple[DagRun, ...]
    finished_runs: tuple[DagRun, ...]  # folded in this cycle, each for the first time
    caught_up: bool  # False while a backfill still has pages to read
    backfill: Backfill | None = None  # the first start's backfill, while it goes on

    @property
    def folded(self) -> int:
        return len(self.finished_runs)


def run_duration(run: DagRun) -> float | None:
    """Seconds from start to end, or None when the row cannot give an honest figure.

    `airflow dags test` writes start_date = logical date with no queued_at, and a run
    cannot start before it was queued: such runs would report durations of years.
    """
    start, end = run.start_date, run.end_date
    if start is None or end is None or end < start:
        return None
    if run.queued_at is not None and start < run.queued_at - timedelta(seconds=1):
        return None
    if run.queued_at is None and run.logical_date is not None and start == run.logical_date:
        return None
    return (end - start).total_seconds()


def start_delay(run: DagRun) -> float | None:
    """Seconds from when the run was due to when it started.

    A scheduled run is due at the end of its data interval (Airflow 3: `run_after`);
    other runs are due when they were queued.
    """
    scheduled = run.run_type == "scheduled"
    due = (run.run_after or run.data_interval_end) if scheduled else None
    due = due or run.queued_at
    if due is None or run.start_date is None or run.start_date < due:
        return None
    return (run.start_date - due).total_seconds()


class DagRunStage:
    """Finds the runs that finished since the last cycle and folds each exactly once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.buckets = settings.buckets(DURATION.name)
        self.delay_buckets = settings.buckets(START_DELAY.name)
        # When this process's first cycle began, and its high water then: the rate.
        self._backfill_began: tuple[float, int] | None = None

    def run(self, reader: Reader, tx: CacheTransaction, now: datetime) -> DagRunDelta:
        gaps = tx.id_gaps()
        high_water = self._high_water(reader, tx, now, gaps)
        gap_floor = int(tx.get_state(STATE_GAP_FLOOR) or 0)
        tracked = tx.tracked_run_ids()
        if self._backfill_began is None:
            self._backfill_began = (time.monotonic(), high_water)
        active = {run.id: run for run in reader.active_runs()}
        seen: set[int] = set()
        finished: list[DagRun] = []
        caught_up = False

        # 2. new runs by id, page by page; a long backfill continues next cycle.
        for _ in range(MAX_PAGES_PER_CYCLE):
            page = reader.runs_after(high_water, self.settings.batch_size)
            previous = high_water
            for run in page:
                if run.id - previous > 1 and run.id > gap_floor:
                    lowest = max(previous, gap_floor, run.id - MAX_GAPS - 1) + 1
                    for missing in range(lowest, run.id):
                        gaps.setdefault(missing, now)
                previous = run.id
                seen.add(run.id)
            finished += self._fold(tx, page, now)
            if page:
                high_water = page[-1].id
            if len(page) < self.settings.batch_size:
                caught_up = True
                break

        # ... and ids that were skipped earlier but have committed since.
        appeared = reader.runs_by_id(sorted(gaps))
        for run in appeared:
            gaps.pop(run.id, None)
            seen.add(run.id)
        finished += self._fold(tx, appeared, now)
        grace = timedelta(seconds=self.settings.id_gap_grace)
        gaps = {i: since for i, since in gaps.items() if now - since < grace}
        if len(gaps) > MAX_GAPS:
            gaps = dict(sorted(gaps.items())[-MAX_GAPS:])

        # 3. runs we knew as active that left the active set.
        left = [i for i in sorted(tracked) if i not in active and i not in seen]
        finished += self._fold(tx, reader.runs_by_id(left), now)

        # 4. runs that finished again after a clear, entirely between two cycles.
        if caught_up:
            finished += self._fold(
                tx, self._recently_finished(reader, tx, now, gaps, appeared), now)

        tx.replace_tracked_runs((r.id, r.dag_id, r.run_id, str(r.state)) for r in active.values())
        tx.replace_id_gaps(gaps)
        tx.set_state(STATE_HIGH_WATER, str(high_water))
        return DagRunDelta(tuple(active.values()), tuple(finished), caught_up,
                           self._progress(tx, high_water, caught_up))

    def _progress(self, tx: CacheTransaction, high_water: int,
                  caught_up: bool) -> Backfill | None:
        """The first start's backfill while it goes on (logged at INFO each cycle), and
        its end, written to the cache so a restart does not take it for a first start."""
        if tx.get_state(STATE_BACKFILL_DONE) != "0":
            return None
        start = int(tx.get_state(STATE_BACKFILL_START) or 0)
        newest = int(tx.get_state(STATE_GAP_FLOOR) or 0)
        now = time.monotonic()
        began_at, began_id = self._backfill_began or (now, high_water)
        if caught_up:
            tx.set_state(STATE_BACKFILL_DONE, "1")
            log.info("first start: backfill done, DAG run ids %d to %d read in %.0fs", start,
                     high_water, now - began_at)
            return None
        done, total = high_water - start, max(newest - start, high_water - start)
        rate = (high_water - began_id) / (now - began_at) if now > began_at else 0.0
        progress = Backfill(done, total, rate,
                            (total - done) / rate if rate > 0 else None)
        log.info("first start: backfill %s", progress)
        return progress

    def _recently_finished(self, reader: Reader, tx: CacheTransaction, now: datetime,
                           gaps: dict[int, datetime], appeared: list[DagRun]) -> list[DagRun]:
        """Runs of the reconcile window that ended since the previous cycle.

        The window's first id comes from a binary search over committed ids (hourly), and
        runs older than the first start's lookback are left out. Neither can see an id
        still in flight: the floor is never above an id still looked for as a gap, nor,
        until the next search, above one that appeared late, so such a run is re-read
        like the others.
        """
        floor_at = tx.get_state(STATE_RECONCILE_FLOOR_AT)
        stored = tx.get_state(STATE_RECONCILE_FLOOR)
        if stored is None or floor_at is None or \
                now - datetime.fromisoformat(floor_at) >= RECONCILE_FLOOR_EVERY:
            window = timedelta(seconds=self.settings.reconcile_window)
            floor = max(reader.first_run_id_since(aware_utc(now - window)),
                        int(tx.get_state(STATE_BACKFILL_START) or 0) + 1)
            tx.set_state(STATE_RECONCILE_FLOOR_AT, now.isoformat())
        else:
            floor = int(stored)
        floor = min([floor, *gaps, *(run.id for run in appeared)])
        tx.set_state(STATE_RECONCILE_FLOOR, str(floor))
        previous = tx.get_state(STATE_RECONCILED_AT)
        since = (datetime.fromisoformat(previous) if previous else now) - RECONCILE_SLACK
        tx.set_state(STATE_RECONCILED_AT, now.isoformat())
        return reader.runs_finished_since(floor, aware_utc(since))

    def _high_water(self, reader: Reader, tx: CacheTransaction, now: datetime,
                    gaps: dict[int, datetime]) -> int:
        """The id after which runs are new; on first start, also the ids still in flight
        below the newest one become gaps, looked for like any other."""
        stored = tx.get_state(STATE_HIGH_WATER)
        if stored is not None:
            return int(stored)
        newest = reader.max_run_id()
        low = max(0, newest - IN_FLIGHT_IDS)
        present = reader.run_ids_between(low, newest)
        for missing in range(low + 1, newest + 1):
            if missing not in present:
                gaps.setdefault(missing, now)
        lookback = self.settings.lookback
        if lookback is None:
            start = 0
        elif lookback == 0:
            start = newest
        else:
            start = reader.first_run_id_since(aware_utc(now - timedelta(seconds=lookback))) - 1
        tx.set_state(STATE_GAP_FLOOR, str(newest))
        tx.set_state(STATE_BACKFILL_START, str(start))
        tx.set_state(STATE_BACKFILL_DONE, "0")
        log.info("first start: counting DAG runs with id > %d (newest id %d, lookback %s)",
                 start, newest, "all" if lookback is None else f"{lookback:.0f}s")
        return start

    def _fold(self, tx: CacheTransaction, runs: list[DagRun], now: datetime) -> list[DagRun]:
        """Fold the finished runs among `runs`; those folded before are skipped."""
        by_id = {run.id: run for run in runs if run.finished}
        claimed = tx.claim([_finish(run, now) for run in by_id.values()])
        for fold in claimed:
            by_state: Labels = (("dag_id", fold.dag_id), ("state", fold.state))
            tx.add(FINISHED_TOTAL.name, (*by_state, ("run_type", fold.run_type)))
            if fold.duration_seconds is not None:
                tx.observe(DURATION.name, by_state, fold.duration_seconds, self.buckets)
            if fold.end_date is not None:
                tx.gauge_max(LAST_FINISHED.name, by_state, aware_utc(fold.end_date).timestamp())
            delay = start_delay(by_id[fold.dag_run_id])
            if delay is not None:
                tx.observe(START_DELAY.name, (("dag_id", fold.dag_id),), delay,
                           self.delay_buckets)
        return [by_id[fold.dag_run_id] for fold in claimed]


def _finish(run: DagRun, now: datetime) -> RunFinish:
    end = naive_utc(run.end_date)
    return RunFinish(
        dag_run_id=run.id, end_key=EndKey.of(end), dag_id=run.dag_id, run_id=run.run_id,
        run_type=run.run_type or "unknown", state=str(run.state),
        logical_date=naive_utc(run.logical_date), queued_at=naive_utc(run.queued_at),
        start_date=naive_utc(run.start_date), end_date=end,
        duration_seconds=run_duration(run), folded_at=now)
