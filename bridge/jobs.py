"""Refresh cycles: read the metadata DB, fold into the cache, publish a new snapshot.

A failed cycle changes nothing in the cache and keeps the last good values on
/metrics; only the health metrics move. The scheduler retries with exponential
backoff and returns to the normal interval after the first success.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.exc import SQLAlchemyError

from bridge import __version__, dag_runs, task_instances
from bridge.business import BusinessJob
from bridge.cache import Aggregates, Cache, now_utc
from bridge.collector import EMPTY, Health, Live, Snapshot, SnapshotCollector
from bridge.config import Settings
from bridge.dag_runs import DagRunCycle, DagRunJob
from bridge.source import SchemaError, Source, SourceError, first_line
from bridge.task_instances import TaskInstanceJob

log = logging.getLogger(__name__)

JOB = "metadb"  # the refresh_job label: one cycle reads the metadata DB


class Refresher:
    """Runs cycles and owns the state /metrics shows; one cycle at a time."""

    def __init__(self, settings: Settings, source: Source, cache: Cache,
                 collector: SnapshotCollector, clock: Callable[[], datetime] = now_utc) -> None:
        self.settings = settings
        self.source = source
        self.cache = cache
        self.collector = collector
        self.clock = clock
        self.dag_runs = DagRunJob(settings)
        self.task_instances = TaskInstanceJob(settings)
        self.business = BusinessJob(settings)
        self.last_cycle: DagRunCycle | None = None
        self.last_rows_read = 0
        self.failures = 0
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._refreshes: Counter[tuple[str, str]] = Counter()
        self._durations: dict[str, float] = {}
        self._last_success: dict[str, float] = {}
        self._aggregates: Aggregates = EMPTY
        self._live = Live()
        self._dropped = 0
        self._health = Health(version=__version__)

    def load_cached(self) -> None:
        """Serve the cached totals right away, before the metadata DB is reached."""
        self._aggregates = self.cache.aggregates(self._bounds())
        self._publish(metadb_up=False)

    def refresh(self) -> bool:
        """One cycle. True when it succeeded; every error is logged and counted, not raised."""
        with self._lock:
            job = JOB
            started = time.perf_counter()
            try:
                # The cache transaction and its lock come first: cycles of bridges sharing
                # a cache run one after the other, each on a metadata snapshot taken after
                # the previous one committed, so none can overwrite newer watermarks.
                with self.cache.transaction() as tx:
                    tx.lock()
                    with self.source.reading() as reader:
                        now = self.clock()
                        cycle = self.dag_runs.run(reader, tx, now)
                        tasks = self.task_instances.run(reader, tx, cycle, now)
                        business = self.business.run(reader, tx, cycle, tasks)
                        state = reader.current_state()
                        rows_read = reader.rows_read
                self._aggregates = self.cache.aggregates(self._bounds())
            except Exception as exc:  # a failed cycle must never stop the schedule
                source_down = isinstance(exc, SourceError | SchemaError)
                where = "metadata DB" if source_down else (
                    "cache" if isinstance(exc, SQLAlchemyError | OSError) else "bridge")
                self.failures += 1
                self._refreshes[(job, "error")] += 1
                self._durations[job] = time.perf_counter() - started
                log.warning("refresh %s failed (%s, attempt %d), serving the last good values: %s",
                            job, where, self.failures, first_line(exc),
                            exc_info=where == "bridge")
                self._publish(metadb_up=not source_down and self._health.metadb_up)
                return False
            elapsed = time.perf_counter() - started
            if self.failures:
                log.info("refresh %s recovered after %d failed attempts", job, self.failures)
            self.failures = 0
            self._refreshes[(job, "success")] += 1
            self._durations[job] = elapsed
            self._last_success[job] = time.time()
            self._live = Live(cycle.active, tasks.current, state)
            self.last_cycle = cycle
            self.last_rows_read = rows_read
            self._publish(metadb_up=True)
            self.ready.set()
            log.debug("refresh: %d runs and %d task tries folded, %d retries, %d business "
                      "values (%d unusable), %d rows read, %.3fs", cycle.folded,
                      len(tasks.finished), tasks.retries, business.values, business.errors,
                      rows_read, elapsed)
            return True

    def next_delay(self) -> float:
        """The normal interval, soon while a backfill continues, or exponential backoff."""
        if self.last_cycle is not None and not self.last_cycle.caught_up and not self.failures:
            return 1.0
        if not self.failures:
            return self.settings.refresh_interval
        backoff = self.settings.refresh_interval * 2 ** min(self.failures - 1, 16)
        return float(min(backoff, self.settings.max_backoff))

    def _bounds(self) -> dict[str, tuple[float, ...]]:
        settings = self.settings
        return {dag_runs.DURATION: settings.dag_run_duration_buckets,
                dag_runs.START_DELAY: settings.start_delay_buckets,
                task_instances.DURATION: settings.task_duration_buckets,
                task_instances.QUEUED: settings.task_queued_buckets}

    def _publish(self, metadb_up: bool) -> None:
        airflow_version = self._health.airflow_version
        if metadb_up:
            airflow_version = self.source.schema.airflow_version
        self._health = replace(
            self._health, airflow_version=airflow_version, metadb_up=metadb_up,
            refreshes=dict(self._refreshes), durations=dict(self._durations),
            last_success=dict(self._last_success), series_dropped=self._dropped)
        dropped = self.collector.publish(Snapshot(self._aggregates, self._live, self._health))
        if dropped:
            self._dropped += dropped
            log.warning("max_series (%d) reached: %d series left out of /metrics",
                        self.settings.max_series, dropped)


class Schedule:
    """APScheduler around a Refresher: one job, never overlapping, backoff on failure."""

    JOB_ID = "refresh"

    def __init__(self, refresher: Refresher) -> None:
        self.refresher = refresher
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self._delay = refresher.settings.refresh_interval

    def start(self) -> None:
        self.scheduler.add_job(self._tick, IntervalTrigger(seconds=self._delay), id=self.JOB_ID,
                               max_instances=1, coalesce=True,
                               next_run_time=datetime.now().astimezone())
        self.scheduler.start()

    def _tick(self) -> None:
        self.refresher.refresh()
        delay = self.refresher.next_delay()
        if delay != self._delay:
            self._delay = delay
            self.scheduler.reschedule_job(self.JOB_ID, trigger=IntervalTrigger(seconds=delay))
            log.info("next refresh in %.0fs", delay)

    def stop(self) -> None:
        """Wait for a running cycle to finish (it commits whole or not at all)."""
        self.scheduler.shutdown(wait=True)
