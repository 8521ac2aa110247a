"""The running bridge: its parts wired together, the refresh cycle and its schedule.

A cycle reads the metadata DB, folds what changed into the cache and publishes a new
snapshot. A failed cycle changes nothing in the cache and keeps the last good values on
/metrics; only the health metrics move. The schedule retries with exponential backoff
and returns to the normal interval after the first success. The CLI, the demo and the
tests all build the bridge with `Bridge.build`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Self

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.exc import SQLAlchemyError

from bridge import __version__, config
from bridge.airflow.source import Source
from bridge.cache.database import Cache
from bridge.cache.totals import EMPTY, Aggregates
from bridge.catalog import BY_NAME, HISTOGRAMS
from bridge.collector import Snapshot, SnapshotCollector, View
from bridge.config import Settings
from bridge.errors import SchemaError, SourceError, first_line
from bridge.health import REFRESH_JOB, Health
from bridge.metric import Series
from bridge.server import HttpServer, make_app
from bridge.stages import current
from bridge.stages.business import BusinessStage
from bridge.stages.current import Live
from bridge.stages.dag_runs import DagRunDelta, DagRunStage
from bridge.stages.task_instances import TaskInstanceStage
from bridge.timeutil import naive_utc_now

log = logging.getLogger(__name__)


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """The configuration, with the catalog's names reserved against the metric file."""
    return config.load(path, environ, reserved=BY_NAME)


class Refresher:
    """Runs cycles and owns the state /metrics shows; one cycle at a time."""

    def __init__(self, settings: Settings, source: Source, cache: Cache,
                 collector: SnapshotCollector,
                 clock: Callable[[], datetime] = naive_utc_now) -> None:
        self.settings = settings
        self.source = source
        self.cache = cache
        self.collector = collector
        self.clock = clock
        self.dag_runs = DagRunStage(settings)
        self.task_instances = TaskInstanceStage(settings)
        self.business = BusinessStage(settings)
        self.last_cycle: DagRunDelta | None = None
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
        self._aggregates = self.cache.aggregates(self._bounds)
        self._publish(metadb_up=False)

    def refresh(self) -> bool:
        """One cycle. True when it succeeded; every error is logged and counted, not raised."""
        with self._lock:
            job = REFRESH_JOB
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
                self._aggregates = self.cache.aggregates(self._bounds)
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
            self._live = current.live(cycle, tasks, state)
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

    @property
    def _bounds(self) -> dict[str, tuple[float, ...]]:
        return {spec.name: self.settings.buckets(spec.name) for spec in HISTOGRAMS}

    def _publish(self, metadb_up: bool) -> None:
        airflow_version = self._health.airflow_version
        if metadb_up:
            airflow_version = self.source.schema.airflow_version
        self._health = replace(
            self._health, airflow_version=airflow_version, metadb_up=metadb_up,
            refreshes=dict(self._refreshes), durations=dict(self._durations),
            last_success=dict(self._last_success), series_dropped=self._dropped)
        series = airflow_series(self._aggregates, self._live)
        dropped = self.collector.publish(Snapshot(series, self._health))
        if dropped:
            self._dropped += dropped
            log.warning("max_series (%d) reached: %d series left out of /metrics",
                        self.settings.max_series, dropped)


def airflow_series(totals: Aggregates, now: Live) -> dict[str, Series]:
    """Every Airflow and business family's samples: the cache's totals and the gauges of
    now, with zeros for every DAG the totals know."""
    known = {dict(labels).get("dag_id", "") for family in totals.counters.values()
             for labels in family} - {""}
    return {**totals.counters, **totals.gauges, **totals.histograms,
            **current.series(now, known)}


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


@dataclass
class Bridge:
    """The parts of one running bridge, built the same way by the CLI, the demo and tests."""

    settings: Settings
    cache: Cache
    source: Source
    collector: SnapshotCollector
    refresher: Refresher

    @classmethod
    def build(cls, settings: Settings) -> Self:
        """Migrate the cache and serve its totals at once, before the metadata DB is read."""
        settings.require_airflow_url()
        cache = Cache(settings.cache_url)
        cache.migrate()
        source = Source(settings)
        collector = SnapshotCollector(View.of(settings))
        refresher = Refresher(settings, source, cache, collector)
        refresher.load_cached()
        return cls(settings, cache, source, collector, refresher)

    def close(self) -> None:
        self.source.dispose()
        self.cache.dispose()


@contextmanager
def running(settings: Settings) -> Iterator[Bridge]:
    bridge = Bridge.build(settings)
    try:
        yield bridge
    finally:
        bridge.close()


def serve(settings: Settings, stop: threading.Event,
          started: Callable[[int], None] | None = None) -> None:
    """Refresh on a schedule and serve HTTP until `stop` is set; `started` gets the port."""
    log.info("airflow-metrics-bridge %s, config: %s", __version__, settings.redacted())
    with running(settings) as bridge:
        server = HttpServer(settings.listen_host, settings.listen_port,
                            make_app(bridge.collector, bridge.refresher.ready.is_set,
                                     __version__))
        server.start()
        log.info("serving http://%s:%d/metrics", settings.listen_host, server.port)
        if started is not None:
            started(server.port)
        schedule = Schedule(bridge.refresher)
        schedule.start()
        stop.wait()
        schedule.stop()
        server.stop()
    log.info("stopped")
