"""The running bridge: its parts wired together, the refresh cycle and its schedule.

A cycle reads the metadata DB, folds what changed into the cache and publishes a new
snapshot. A failed cycle changes nothing in the cache and keeps the last good values on
/metrics; only the health metrics move. The schedule retries with exponential backoff
and returns to the normal interval after the first success. The CLI, the demo and the
tests all build the bridge with `Bridge.build`.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Self

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from bridge import __version__, config, webconfig
from bridge.airflow.privileges import WritableRoleError, inspect_role
from bridge.airflow.source import Source
from bridge.cache.database import Cache
from bridge.cache.totals import Aggregates, Totals
from bridge.catalog import BY_NAME, HISTOGRAMS
from bridge.collector import Snapshot, SnapshotCollector, View
from bridge.config import Settings
from bridge.errors import SchemaError, SourceError, first_line
from bridge.health import REFRESH_JOB, Health
from bridge.metric import Series
from bridge.server import HttpServer, make_app
from bridge.stages import current, dag_runs
from bridge.stages.business import BusinessStage
from bridge.stages.current import Live
from bridge.stages.dag_runs import STATE_BACKFILL_DONE, DagRunDelta, DagRunStage
from bridge.stages.task_instances import TaskInstanceStage
from bridge.timeutil import naive_utc_now
from bridge.webconfig import WebConfig

log = logging.getLogger(__name__)


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """The configuration, with the catalog's names reserved against the metric file."""
    return config.load(path, environ, reserved=BY_NAME)


class Refresher:
    """Runs cycles and owns the state /metrics shows; one cycle at a time.

    With `check_role`, the first cycle that reaches the metadata DB asks, in its read-only
    transaction and before anything else, whether the role could write; unless the
    settings allow it, that cycle and every later one refuse (`refused` says why) and
    `on_refused` is called once.
    """

    def __init__(self, settings: Settings, source: Source, cache: Cache,
                 collector: SnapshotCollector,
                 clock: Callable[[], datetime] = naive_utc_now, check_role: bool = False) -> None:
        self.settings = settings
        self.source = source
        self.cache = cache
        self.collector = collector
        self.clock = clock
        self.dag_runs = DagRunStage(settings)
        self.task_instances = TaskInstanceStage(settings)
        self.business = BusinessStage(settings)
        self.last_cycle: DagRunDelta | None = None
        # The first start's backfill: while it goes on, the Airflow families are held back
        # (a counter that appeared page by page would read as fresh events to increase()).
        self.backfilling = False
        self._last_failed = ""  # where the last failed cycle failed
        self.last_rows_read = 0
        self.last_cache_rows_read = 0  # rows of totals another bridge changed, read back
        self.failures = 0
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._refreshes: Counter[tuple[str, str]] = Counter()
        self._durations: dict[str, float] = {}
        self._last_success: dict[str, float] = {}
        self.totals = Totals(self._bounds)
        self._live = Live()
        self._health = Health(version=__version__)
        self._role_checked = not check_role
        self.refused: WritableRoleError | None = None
        self.on_refused: Callable[[], None] | None = None
        # When each DAG was last seen alive in the metadata DB (or active, or finishing);
        # DAGs of the cache not seen for `dags.forget_after` are no longer served.
        self._last_seen: dict[str, datetime] = {}
        self._forgotten: frozenset[str] = frozenset()

    def load_cached(self) -> None:
        """Serve the cached totals right away, before the metadata DB is reached (unless a
        first start's backfill was cut short: it goes on first)."""
        with self.cache.transaction() as tx:
            self.backfilling = tx.get_state(STATE_BACKFILL_DONE) == "0"
        self.last_cache_rows_read = self.cache.load(self.totals)
        gc.freeze()
        self._see((), self.clock())  # in memory only: after a restart every DAG starts seen
        self._publish(metadb_up=False)

    def refresh(self) -> bool:
        """One cycle. True when it succeeded; every error is logged and counted, not raised."""
        with self._lock:
            job = REFRESH_JOB
            started = time.perf_counter()
            try:
                if self.refused is not None:
                    raise self.refused
                # The cache transaction and its lock come first: cycles of bridges sharing
                # a cache run one after the other, each on a metadata snapshot taken after
                # the previous one committed, so none can overwrite newer watermarks.
                with self.cache.transaction() as tx:
                    tx.lock()
                    # What bridges sharing the cache changed since this one last read it:
                    # under the lock, so nothing changes between this read and the commit.
                    changes = self.totals.changes(tx.conn)
                    with self.source.reading() as reader:
                        if not self._role_checked:
                            self._check_role(reader.conn)
                        now = self.clock()
                        cycle = self.dag_runs.run(reader, tx, now)
                        tasks = self.task_instances.run(reader, tx, cycle, now)
                        business = self.business.run(reader, tx, cycle, tasks)
                        state = reader.current_state(self._live.state)
                        rows_read = reader.rows_read
                # Committed: the totals in memory take the same increments as the rows.
                self.totals.absorb(changes)
                if tx.seq is not None:
                    self.totals.apply(tx.increments, tx.seq)
            except WritableRoleError as exc:
                self._refuse(exc)
                self._refreshes[(job, "error")] += 1
                self._durations[job] = time.perf_counter() - started
                self._publish(metadb_up=self._health.metadb_up)
                return False
            except Exception as exc:  # a failed cycle must never stop the schedule
                source_down = isinstance(exc, SourceError | SchemaError)
                where = "metadata DB" if source_down else (
                    "cache" if isinstance(exc, SQLAlchemyError | OSError) else "bridge")
                self.failures += 1
                self._last_failed = where
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
            self._see({*state.paused, *(r.dag_id for r in cycle.finished_runs),
                       *tasks.dags,
                       *(d for d, _ in self._live.active_runs),
                       *(d for d, _ in self._live.task_instances)}, now)
            self._forget(now)
            self.last_cycle = cycle
            self.last_rows_read = rows_read
            self.last_cache_rows_read = changes.rows
            self.backfilling = cycle.backfill is not None
            self._publish(metadb_up=True)
            # The totals and rendered bodies are millions of long-lived objects, none in a
            # reference cycle: left to the collector, every full collection would walk them
            # all (a few hundred ms at thousands of DAGs). Frozen, it walks only what is new.
            gc.freeze()
            if not self.backfilling:
                self.ready.set()
            log.debug("refresh: %d runs and %d task tries folded, %d retries, %d business "
                      "values (%d unusable), %d rows read, %.3fs", cycle.folded,
                      tasks.folded, tasks.retries, business.values, business.errors,
                      rows_read, elapsed)
            return True

    def not_ready(self) -> str | None:
        """Why /-/ready is not 200 yet; None once a refresh succeeded after any backfill."""
        if self.refused is not None:
            return "the metadata DB role can write (see the log)"
        if self.ready.is_set():
            return None
        cycle = self.last_cycle
        if cycle is not None and cycle.backfill is not None:
            return f"first start: backfilling the history, {cycle.backfill}"
        if self.failures:
            return f"no successful refresh yet ({self.failures} failed, the last in the " \
                f"{self._last_failed}; see the log)"
        return "no successful refresh yet"

    def _check_role(self, conn: Connection) -> None:
        """Refuse (raise) or warn when the role could write; asked once per process."""
        try:
            access = inspect_role(conn)
        except SQLAlchemyError as exc:
            raise SourceError(first_line(exc)) from exc
        if access.read_only:
            log.info("metadata DB role %r is read-only", access.role)
        elif self.settings.allow_writable_role:
            log.warning("%s; running anyway (allow_writable_role)", access.why())
        else:
            raise WritableRoleError(access)
        self._role_checked = True

    def _refuse(self, exc: WritableRoleError) -> None:
        first = self.refused is None
        self.refused = exc
        if first:
            log.error("refusing to read the metadata DB: %s", exc)
            if self.on_refused is not None:
                self.on_refused()

    def _see(self, dags: Iterable[str], now: datetime) -> None:
        """Mark `dags` seen now; DAGs the totals know but this process never saw start now."""
        for dag in dags:
            self._last_seen[dag] = now
        for dag in self.totals.dags:
            self._last_seen.setdefault(dag, now)

    def _forget(self, now: datetime) -> None:
        """Stop serving DAGs unseen for longer than `forget_after` (their totals stay)."""
        horizon = now - timedelta(seconds=self.settings.forget_after)
        forgotten = frozenset(d for d, seen in self._last_seen.items() if seen < horizon)
        if forgotten != self._forgotten:
            gone, back = sorted(forgotten - self._forgotten), sorted(self._forgotten - forgotten)
            if gone:
                log.info("no longer serving %d DAG(s) gone from the metadata DB for over %gs: "
                         "%s", len(gone), self.settings.forget_after, ", ".join(gone[:20]))
            if back:
                log.info("serving %d DAG(s) again: %s", len(back), ", ".join(back[:20]))
        self._forgotten = forgotten

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
            last_success=dict(self._last_success))
        series = {} if self.backfilling else airflow_series(
            self.totals.view(), self._live, self._forgotten, self.totals.dags)
        # The collector logs, once per change, which families the cap sheds.
        self.collector.publish(Snapshot(series, self._health))


def airflow_series(totals: Aggregates, now: Live, forgotten: frozenset[str] = frozenset(),
                   dags: Iterable[str] | None = None) -> dict[str, Series]:
    """Every Airflow and business family's samples: the cache's totals and the gauges of
    now, with zeros for every DAG the totals know (`dags`, else the counters' DAGs) and
    run counters at zero for every alive DAG, except the `forgotten` DAGs."""
    if dags is None:
        dags = {dict(labels).get("dag_id", "") for family in totals.counters.values()
                for labels in family} - {""}
    known = set(dags) - forgotten
    series: dict[str, Series] = {**totals.counters, **totals.gauges, **totals.histograms,
                                 **current.series(now, known)}
    if now.state is not None:
        alive = frozenset(now.state.paused.keys() - forgotten)
        series[dag_runs.FINISHED_TOTAL.name] = {
            **dag_runs.finished_at_zero(alive),
            **totals.counters.get(dag_runs.FINISHED_TOTAL.name, {})}
    if not forgotten:
        return series
    return {name: {labels: value for labels, value in family.items()
                   if not any(k == "dag_id" and v in forgotten for k, v in labels)}
            for name, family in series.items()}


class Schedule:
    """APScheduler around a Refresher: one job, never overlapping, backoff on failure."""

    JOB_ID = "refresh"

    def __init__(self, refresher: Refresher) -> None:
        self.refresher = refresher
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self._delay = refresher.settings.refresh_interval
        self._stopping = threading.Event()
        self._ticking = threading.Lock()  # held while a cycle and its rescheduling run

    def start(self) -> None:
        self.scheduler.add_job(self._tick, IntervalTrigger(seconds=self._delay), id=self.JOB_ID,
                               max_instances=1, coalesce=True,
                               next_run_time=datetime.now().astimezone())
        self.scheduler.start()

    def _tick(self) -> None:
        with self._ticking:
            self.refresher.refresh()
            if self.refresher.refused is not None or self._stopping.is_set():
                return  # the bridge is stopping: nothing to reschedule
            delay = self.refresher.next_delay()
            if delay != self._delay:
                self._delay = delay
                self.scheduler.reschedule_job(self.JOB_ID,
                                              trigger=IntervalTrigger(seconds=delay))
                log.info("next refresh in %.0fs", delay)

    def stop(self) -> None:
        """Wait for a running cycle to finish (it commits whole or not at all).

        The scheduler is shut down without waiting: waiting, it holds its job store lock
        until the job ends, and a cycle that ends by rescheduling itself (a retry delay
        after a failure) would wait for that lock for ever. This waits for the cycle itself.
        """
        self._stopping.set()
        self.scheduler.shutdown(wait=False)
        with self._ticking:
            pass


@dataclass
class Bridge:
    """The parts of one running bridge, built the same way by the CLI, the demo and tests."""

    settings: Settings
    cache: Cache
    source: Source
    collector: SnapshotCollector
    refresher: Refresher

    @classmethod
    def build(cls, settings: Settings, check_role: bool = False) -> Self:
        """Migrate the cache and serve its totals at once, before the metadata DB is read.

        `check_role`: refuse to read with a role that could write (see `Refresher`).
        """
        settings.require_airflow_url()
        cache = Cache(settings.cache_url)
        cache.migrate()
        source = Source(settings)
        collector = SnapshotCollector(View.of(settings))
        refresher = Refresher(settings, source, cache, collector, check_role=check_role)
        refresher.load_cached()
        return cls(settings, cache, source, collector, refresher)

    def close(self) -> None:
        self.source.dispose()
        self.cache.dispose()


@contextmanager
def running(settings: Settings, check_role: bool = False) -> Iterator[Bridge]:
    bridge = Bridge.build(settings, check_role)
    try:
        yield bridge
    finally:
        bridge.close()


def load_web_config(settings: Settings) -> WebConfig | None:
    """The web-config file's TLS and basic auth, checked (certificates load) before use."""
    if settings.web_config_file is None:
        return None
    return webconfig.load(Path(settings.web_config_file))


def serve(settings: Settings, stop: threading.Event,
          started: Callable[[int], None] | None = None) -> bool:
    """Refresh on a schedule and serve HTTP until `stop` is set; `started` gets the port.

    False when it stopped by itself because the metadata DB role could write and
    `allow_writable_role` is not set (the reason is logged).
    """
    log.info("airflow-metrics-bridge %s, config: %s", __version__, settings.redacted())
    web_config = load_web_config(settings)
    with running(settings, check_role=True) as bridge:
        bridge.refresher.on_refused = stop.set
        server = HttpServer(settings.listen_host, settings.listen_port,
                            make_app(bridge.collector, bridge.refresher.not_ready,
                                     __version__), web_config)
        server.start()
        log.info("serving %s://%s:%d/metrics%s", server.scheme, settings.listen_host,
                 server.port, " (basic auth)" if web_config and web_config.basic_auth_users else "")
        if started is not None:
            started(server.port)
        schedule = Schedule(bridge.refresher)
        schedule.start()
        stop.wait()
        schedule.stop()
        server.stop()
        refused = bridge.refresher.refused
    log.info("stopped" if refused is None else "stopped: the metadata DB role can write")
    return refused is None
