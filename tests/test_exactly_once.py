"""A seeded random model of Airflow's scheduler against the bridge, compared exactly.

Every run follows one DAG, extract >> score (mapped, 1-3 indexes) >> branch >>
[left >> publish, right] >> report (report: none_failed_min_one_success, the rest
all_success). A writer that follows Airflow's transitions (runs queued -> running ->
finished; tries with retries; upstream_failed and skipped tasks that never run; the
branch's skipped side; clears of whole runs or of their failed tasks, after which
Airflow keeps the try number and end date of a task the scheduler sets upstream_failed
again; re-runs that finish before the next cycle; runs whose ids commit out of order on a
second connection; `db clean`) interleaves with bridge cycles, cycles of a second bridge
sharing the cache, bridge restarts, cycles killed part-way and PostgreSQL restarts. An
oracle counts what the counters must say; at the end every run, task and retry counter
must equal it exactly: no loss, no double count. After every cycle, the totals the bridge
holds in memory must equal those a bridge starting on the same cache would read.

Cases the README lists as unseeable are not generated: a finish cleared before any cycle
saw it, and (on 2.x, where a cleared task instance keeps its row id) an outcome that keeps
the try number and end date of the task's previous one before any cycle saw the task
reset; on 3.x the clear gives it a new id, and such outcomes are generated. CI runs a few
seeds per Airflow version; a longer run:

    BRIDGE_ORACLE_SEEDS=40 python -m pytest tests/test_exactly_once.py
"""

from __future__ import annotations

import os
import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from sqlalchemy import event

from bridge.cache.totals import Totals
from tests.conftest import AirflowDb, BridgeFactory, BridgeUnderTest, Scrape
from tests.metadb import AirflowWriter, TaskWriter
from tests.postgres import Postgres

SEEDS = range(int(os.environ.get("BRIDGE_ORACLE_SEEDS", "3")))
STEPS = 120
DAGS = ("alpha", "beta")
UPSTREAM: dict[str, tuple[str, ...]] = {
    "extract": (), "score": ("extract",), "branch": ("score",), "left": ("branch",),
    "right": ("branch",), "publish": ("left",), "report": ("publish", "right")}
MAPPED = "score"
BRANCH, BRANCHES = "branch", ("left", "right")
ONE_SUCCESS = frozenset({"report"})  # trigger rule none_failed_min_one_success
TERMINAL = frozenset({"success", "failed", "skipped", "upstream_failed"})
FAILED = frozenset({"failed", "upstream_failed"})
RETRIED = frozenset({"failed", "up_for_retry"})  # archived states that make a retry
MAX_TRIES = 3
REFRESHES = "airflow_bridge_refresh_total"
K = TypeVar("K")


@dataclass
class Ti:
    """One task instance as the model knows its row."""

    task_id: str
    map_index: int
    state: str | None = None
    try_number: int = 0  # 2.7+: 0 until the first try is scheduled (2.10+) or started
    end: datetime | None = None  # end_date as stored: a clear leaves it
    last_outcome: tuple[int, datetime, int] | None = None  # (try, end, id) of its latest
    generation: int = 0  # 3.x: a clear gives the task instance a new id
    reset_seen: bool = False  # a successful cycle saw it reset since that outcome
    archived: dict[int, str] = field(default_factory=dict)  # history: try -> state
    outcomes: dict[int, set[str]] = field(default_factory=dict)  # try -> states it ended in


@dataclass
class Run:
    id: int
    dag_id: str
    run_id: str
    tis: dict[tuple[str, int], Ti] = field(default_factory=dict)
    state: str = "queued"
    seen_finished: bool = False  # a cycle ran since it last finished
    pending: bool = False  # inserted on the second connection, not committed yet


@dataclass
class Oracle:
    runs: Counter[tuple[str, str]] = field(default_factory=Counter)
    tries: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    retries: Counter[tuple[str, str]] = field(default_factory=Counter)


class Model:
    """Airflow's side: writes rows as the scheduler would and keeps the expected counts."""

    def __init__(self, db: AirflowDb, rng: random.Random) -> None:
        self.af = db.writer
        self.version = db.version
        self.rng = rng
        row = self.af.conn.execute(
            "SELECT to_regclass('task_instance_history') IS NOT NULL").fetchone()
        # 2.10+: tries archived in task_instance_history, try_number raised when scheduled.
        self.history = bool(row and row[0])
        self.new_ids = db.version.startswith("3.")  # a cleared task instance gets a new id
        self.clock = datetime.now(UTC).replace(microsecond=0)
        self.runs: list[Run] = []
        self.expected = Oracle()
        self.slow: AirflowWriter | None = None  # a second scheduler in a long transaction
        self.events: Counter[str] = Counter()  # what a history exercised, for its report

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=self.rng.randint(1, 5))
        return self.clock

    def writer(self, run: Run) -> AirflowWriter:
        if run.pending:
            assert self.slow is not None
            return self.slow
        return self.af

    def _set(self, run: Run, ti: Ti, sets: str, **params: Any) -> None:
        self.writer(run).conn.execute(
            f"UPDATE task_instance SET {sets} WHERE dag_id = %(d)s AND run_id = %(r)s "
            "AND task_id = %(t)s AND map_index = %(m)s",
            {"d": run.dag_id, "r": run.run_id, "t": ti.task_id, "m": ti.map_index, **params})

    # -- runs ---------------------------------------------------------------------------
    def new_run(self, pending: bool = False) -> Run:
        """A queued run with its task instances, created as the scheduler does (try 0)."""
        at = self.tick()
        run_id = f"scheduled__{at.isoformat()}"
        dag_id = self.rng.choice(DAGS)
        run = Run(0, dag_id, run_id, pending=pending)
        af = self.writer(run)
        run.id = af.create_run(dag_id, logical_date=at, at=at, run_id=run_id)
        tasks = TaskWriter(af)
        for task_id in UPSTREAM:
            indexes = range(self.rng.randint(1, 3)) if task_id == MAPPED else (-1,)
            for index in indexes:
                tasks.add(run.id, task_id, map_index=index, state=None)
                run.tis[(task_id, index)] = Ti(task_id, index)
        af.conn.execute("UPDATE task_instance SET try_number = 0 WHERE dag_id = %s AND "
                        "run_id = %s", (dag_id, run_id))
        self.runs.append(run)
        return run

    def start(self, run: Run) -> None:
        self.writer(run).start_run(run.id, self.tick())
        run.state = "running"

    def finish(self, run: Run) -> None:
        state = "failed" if any(ti.state in FAILED for ti in run.tis.values()) else "success"
        self.writer(run).finish_run(run.id, state, self.tick())
        run.state = state
        run.seen_finished = False
        self.expected.runs[(run.dag_id, state)] += 1

    def clear(self, run: Run, only_failed: bool = False) -> None:
        """`airflow tasks clear` (or "clear failed") of a finished run: each cleared try is
        archived and set to no state; try number, start and end date stay as they were."""
        at = self.tick()
        self.af.clear_run(run.id, at)
        for ti in run.tis.values():
            if only_failed and ti.state not in FAILED:
                continue
            self._archive(run, ti)
            if self.new_ids:
                self._set(run, ti, "state = NULL, id = %(id)s, updated_at = %(at)s", at=at,
                          id=uuid.UUID(int=self.rng.getrandbits(128)))
                ti.generation += 1
            else:
                self._set(run, ti, "state = NULL, updated_at = %(at)s", at=at)
            ti.state = None
        run.state = "queued"

    def run_to_the_end(self, run: Run) -> None:
        """Start and advance a run until it finishes, or until only an outcome that is
        unseeable before a cycle is left (it then goes on after one)."""
        self.start(run)
        while run.state == "running" and self.advance(run):
            pass

    def db_clean(self) -> None:
        """Delete a finished run whose finish a cycle has seen; totals must not move."""
        gone = [r for r in self.runs if r.state in ("success", "failed") and r.seen_finished]
        if gone:
            run = self.rng.choice(gone)
            self.af.conn.execute("DELETE FROM task_instance WHERE dag_id = %s AND run_id = %s",
                                 (run.dag_id, run.run_id))
            self.af.conn.execute("DELETE FROM dag_run WHERE id = %s", (run.id,))
            self.runs.remove(run)

    # -- task instances -----------------------------------------------------------------
    def _outcome(self, run: Run, ti: Ti, state: str, end: datetime) -> None:
        again = ti.last_outcome == (ti.try_number, end, ti.generation)  # needs a reset seen
        self.events[f"{state} (same try and end)" if again else state] += 1
        ti.state, ti.end = state, end
        ti.last_outcome, ti.reset_seen = (ti.try_number, end, ti.generation), False
        ti.outcomes.setdefault(ti.try_number, set()).add(state)
        self.expected.tries[(run.dag_id, ti.task_id, state)] += 1

    def _archive(self, run: Run, ti: Ti) -> None:
        """TaskInstanceHistory.record_ti: the current try, once per try number."""
        if self.history and ti.try_number not in ti.archived:
            TaskWriter(self.writer(run)).archive_try(run.id, ti.task_id, map_index=ti.map_index)
            ti.archived[ti.try_number] = str(ti.state)

    def _next_try(self, run: Run, ti: Ti) -> None:
        """try_number + 1: the try before it was retried if it failed (2.10+: as archived in
        task_instance_history; before: if it started and never ended other than failed)."""
        if self.history:
            retried = ti.archived.get(ti.try_number) in RETRIED
        else:
            retried = ti.try_number >= 1 and not ti.outcomes.get(ti.try_number, set()) - RETRIED
        if retried:
            self.events["retry"] += 1
            self.expected.retries[(run.dag_id, ti.task_id)] += 1
        ti.try_number += 1
        self._set(run, ti, "try_number = try_number + 1")

    def schedule(self, run: Run, ti: Ti) -> None:
        self._set(run, ti, "state = 'scheduled'")
        ti.state = "scheduled"
        if self.history:  # 2.10+ raises try_number here (DagRun.schedule_tis)
            self._next_try(run, ti)

    def run_try(self, run: Run, ti: Ti) -> None:
        """queued -> running -> an outcome; a branch that succeeds skips the other side."""
        if not self.history:  # before 2.10, try_number went up when the try started
            self._next_try(run, ti)
        outcome = self.rng.choices(("success", "failed", "up_for_retry"), (6, 1, 2))[0]
        if outcome == "up_for_retry" and ti.try_number >= MAX_TRIES:
            outcome = "failed"
        end = TaskWriter(self.writer(run)).run_try(run.id, ti.task_id, outcome, self.tick(),
                                                   map_index=ti.map_index, queued_for=1,
                                                   runs_for=1)
        self.clock = max(self.clock, end)
        if outcome == "up_for_retry":
            ti.state, ti.end = outcome, end
            self._archive(run, ti)
            return
        if ti.task_id == BRANCH and outcome == "success":  # SkipMixin: start = end = now
            skipped = run.tis[(self.rng.choice(BRANCHES), -1)]
            assert skipped.state is None
            self._set(run, skipped, "state = 'skipped', start_date = %(at)s, "
                      "end_date = %(at)s, duration = 0, updated_at = %(at)s", at=end)
            self._outcome(run, skipped, "skipped", end)
        self._outcome(run, ti, outcome, end)

    def set_by_scheduler(self, run: Run, ti: Ti, state: str) -> None:
        """TaskInstance.set_state from a trigger rule: no try, dates kept where set."""
        at = self.tick()
        self._set(run, ti, "state = %(s)s, start_date = coalesce(start_date, %(at)s), "
                  "end_date = coalesce(end_date, %(at)s), updated_at = %(at)s, duration = "
                  "extract(epoch FROM coalesce(end_date, %(at)s) - coalesce(start_date, %(at)s))",
                  s=state, at=at)
        self._outcome(run, ti, state, ti.end or at)

    def verdict(self, run: Run, ti: Ti) -> str | None:
        """What the scheduler does with an undecided task once its upstream has finished:
        'schedule' it, or set the state it gets without running; None while upstream runs."""
        upstream = [u for u in run.tis.values() if u.task_id in UPSTREAM[ti.task_id]]
        if any(u.state not in TERMINAL for u in upstream):
            return None
        states = {u.state for u in upstream}
        if states & FAILED:
            return "upstream_failed"
        if ti.task_id in ONE_SUCCESS:
            return "skipped" if states == {"skipped"} else "schedule"
        return "skipped" if "skipped" in states else "schedule"

    @staticmethod
    def seeable(ti: Ti) -> bool:
        """A state set without a try keeps try number and end date: when that and the row
        id (3.x) are those of the task's latest outcome, it counts only if a cycle saw the
        task reset since."""
        return ti.end is None or (ti.try_number, ti.end, ti.generation) != ti.last_outcome \
            or ti.reset_seen

    def moves(self, run: Run) -> list[tuple[str, Ti | None]]:
        if all(ti.state in TERMINAL for ti in run.tis.values()):
            return [("finish", None)]
        moves: list[tuple[str, Ti | None]] = []
        for ti in run.tis.values():
            if ti.state is None:
                verdict = self.verdict(run, ti)
                if verdict == "schedule" or (verdict is not None and self.seeable(ti)):
                    moves.append(("decide", ti))
            elif ti.state == "scheduled":
                moves.append(("try", ti))
            elif ti.state == "up_for_retry":
                moves.append(("retry", ti))
        return moves

    def advance(self, run: Run) -> bool:
        """One scheduler decision or task try in a running run; False when it must wait."""
        moves = self.moves(run)
        if not moves:
            return False
        kind, ti = self.rng.choice(moves)
        if ti is None:
            self.finish(run)
        elif kind == "try":
            self.run_try(run, ti)
        elif kind == "retry":
            self.schedule(run, ti)
        else:
            verdict = self.verdict(run, ti)
            if verdict == "schedule":
                self.schedule(run, ti)
            else:
                assert verdict is not None
                self.set_by_scheduler(run, ti, verdict)
        return True

    # -- a second scheduler whose run commits after later ids ---------------------------
    def slow_begin(self) -> None:
        """A run (and its tasks) inserted in a transaction left open: its id is taken, the
        row is invisible, and runs created after it commit first."""
        self.slow = AirflowWriter(self.af.conn.info.dsn, self.version)
        self.slow.conn.autocommit = False
        self.new_run(pending=True)

    def slow_commit(self) -> None:
        """The late transaction commits, its run still queued or already finished."""
        assert self.slow is not None
        run = next(r for r in self.runs if r.pending)
        if self.rng.random() < 0.5:
            self.run_to_the_end(run)
        self.slow.conn.commit()
        self.slow.close()
        self.slow = None
        run.pending = False
        self.events[f"late commit {run.state}"] += 1

    def lose_slow(self) -> None:
        """Its connection was terminated: the transaction rolled back, the id never shows."""
        if self.slow is not None:
            self.events["late transaction lost"] += 1
            self.runs = [r for r in self.runs if not r.pending]
            self.slow.close()
            self.slow = None

    def step(self) -> None:
        """One random scheduler action that the state of the runs allows."""
        live = [r for r in self.runs if not r.pending]
        queued = [r for r in live if r.state == "queued"]
        movable = [r for r in live if r.state == "running" and self.moves(r)]
        finished = [r for r in live if r.state in ("success", "failed") and r.seen_finished]
        choices = ["new", "slow_commit" if self.slow else "slow_begin"]
        choices += ["start"] * bool(queued) + ["advance"] * 5 * bool(movable)
        choices += ["clear", "fast_clear", "clean"] * bool(finished)
        choices += ["clear_failed"] * any(r.state == "failed" for r in finished)
        action = self.rng.choice(choices)
        self.events[action] += 1
        if action == "new":
            self.new_run()
        elif action == "slow_begin":
            self.slow_begin()
        elif action == "slow_commit":
            self.slow_commit()
        elif action == "start":
            self.start(self.rng.choice(queued))
        elif action == "advance":
            self.advance(self.rng.choice(movable))
        elif action == "clear":
            self.clear(self.rng.choice(finished))
        elif action == "clear_failed":
            self.clear(self.rng.choice([r for r in finished if r.state == "failed"]), True)
        elif action == "fast_clear":  # cleared and finished again before the next cycle
            run = self.rng.choice(finished)
            self.clear(run, only_failed=run.state == "failed" and self.rng.random() < 0.5)
            self.run_to_the_end(run)
        else:
            self.db_clean()

    def cycled(self) -> None:
        """A cycle succeeded: it saw every committed run and the tasks of the active ones."""
        for run in self.runs:
            if run.pending:
                continue
            if run.state in ("success", "failed"):
                run.seen_finished = True
                continue
            for ti in run.tis.values():
                if ti.state in (None, "scheduled"):
                    ti.reset_seen = True


class SimulatedKill(Exception):
    """SIGKILL of the bridge where no real fault can be caused: inside a SQLite cache
    transaction, which rolls back as it would if the process died before its commit."""


class Harness:
    """The bridge under test, its restarts, and its cycles killed part-way.

    A killed cycle dies at its k-th statement (or at its cache commit): the backend about
    to run it is terminated with pg_terminate_backend first, a real fault, on the Airflow
    DB or a PostgreSQL cache; on a SQLite cache the statement raises SimulatedKill.
    """

    def __init__(self, make_bridge: BridgeFactory, db: AirflowDb, admin: psycopg.Connection[Any],
                 cache_url: str | None, cache_db: str | None) -> None:
        self.make_bridge = make_bridge
        self.db = db
        self.admin = admin
        self.cache_url = cache_url
        self.cache_db = cache_db
        self.cycles = 0
        self.events: Counter[str] = Counter()
        self.statements = 10  # of the latest cycle that was not killed, up to its commit
        self.count = 0
        self.counting = False
        self.kill_at: int | None = None
        self.bridge = self.start()

    def start(self) -> BridgeUnderTest:
        """A new bridge process on the same cache."""
        self.bridge = self.make_bridge(self.db.url, cache_url=self.cache_url)
        self.errors = 0  # failed cycles of this process, as its health counts them
        event.listen(self.bridge.source.engine, "before_cursor_execute", self._airflow_statement)
        event.listen(self.bridge.cache.engine, "before_cursor_execute", self._cache_statement)
        event.listen(self.bridge.cache.engine, "commit", self._cache_commit)
        return self.bridge

    def restart(self) -> None:
        self.bridge.close()
        self.start()

    def refresh(self, kill_at: int | None = None) -> bool:
        """One cycle, killed at its `kill_at`-th statement if given; True if it succeeded."""
        self.count, self.kill_at, self.counting = 0, kill_at, True
        try:
            ok = self.bridge.refresher.refresh()
        finally:
            self.counting, self.kill_at = False, None
        self.cycles += 1
        if not ok:
            self.errors += 1
        elif kill_at is None:
            self.statements = self.count
        return ok

    def killed_cycle(self, rng: random.Random) -> None:
        """A cycle that dies part-way must leave the cache's totals, and the bridge's,
        as they were."""
        # The held totals may lag the cache by a replica's cycle until this bridge's next.
        before = in_cache(self.bridge), held(self.bridge), self.bridge.scrape().airflow()
        assert not self.refresh(kill_at=rng.randint(1, self.statements + 1)), "not killed"
        after = in_cache(self.bridge), held(self.bridge), self.bridge.scrape().airflow()
        assert after == before, "a killed cycle changed the totals"

    def replica_cycle(self) -> None:
        """A second bridge sharing the cache runs a cycle: what it folds reaches this
        bridge's totals through the cache's change sequence, not by folding it again."""
        other = self.make_bridge(self.db.url, cache_url=self.cache_url)
        try:
            assert other.refresher.refresh(), "the replica's cycle failed"
        finally:
            other.close()
        self.events["replica cycle"] += 1

    def postgres_restart(self, model: Model) -> None:
        """What clients see of a restart: every connection to the Airflow DB (and to the
        cache DB on the same server) terminated, the writer's own aside."""
        names = [self.db.name, *([self.cache_db] if self.cache_db else [])]
        self.admin.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                           "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()", (names,))
        model.lose_slow()
        self.events["postgres restart"] += 1

    def _terminate(self, pid: int) -> None:
        self.admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))

    def _due(self) -> bool:
        if not self.counting:
            return False
        self.count += 1
        if self.kill_at is not None and self.count >= self.kill_at:
            self.kill_at = None
            return True
        return False

    def _kill_cache(self, dbapi_connection: Any, where: str) -> None:
        self.events[f"killed at {where}"] += 1
        if self.cache_db is None:
            raise SimulatedKill("the bridge died inside its cache transaction")
        self._terminate(dbapi_connection.info.backend_pid)

    def _airflow_statement(self, conn: Any, cursor: Any, *_: Any) -> None:
        if self._due():
            self.events["killed at an Airflow read"] += 1
            self._terminate(cursor.connection.info.backend_pid)

    def _cache_statement(self, conn: Any, cursor: Any, *_: Any) -> None:
        if self._due():
            self._kill_cache(cursor.connection, "a cache statement")

    def _cache_commit(self, conn: Any) -> None:
        """The cache commit ends what a kill may hit; a kill not hit yet hits it."""
        if self.counting:
            self.counting = False
            if self.kill_at is not None:
                self.kill_at = None
                self._kill_cache(conn.connection.dbapi_connection, "the cache commit")


Plain = tuple[dict[str, dict[Any, Any]], ...]


def _plain(totals: Totals) -> Plain:
    return tuple({metric: dict(family) for metric, family in families.items() if family}
                 for families in (totals.counters, totals.gauges, totals.histograms))


def held(bridge: BridgeUnderTest) -> Plain:
    """The totals the bridge holds in memory and serves."""
    return _plain(bridge.refresher.totals)


def in_cache(bridge: BridgeUnderTest) -> Plain:
    """The totals as a bridge starting now on the same cache would read them."""
    fresh = Totals(bridge.refresher.totals.bounds)
    bridge.cache.load(fresh)
    return _plain(fresh)


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


def _positive(counts: Counter[K]) -> dict[K, int]:
    return {key: n for key, n in counts.items() if n}


def _over(found: Oracle, expected: Oracle) -> list[str]:
    """Counts above what happened so far: a double count, whenever it happens."""
    return [f"{name} {key}: {n} > {getattr(expected, name)[key]}"
            for name in ("runs", "tries", "retries")
            for key, n in getattr(found, name).items() if n > getattr(expected, name)[key]]


@pytest.mark.parametrize("seed", SEEDS)
def test_random_histories_are_counted_exactly_once(
        airflow_db: AirflowDb, make_bridge: BridgeFactory, pg: Postgres, seed: int,
        record_property: Callable[[str, object], None]) -> None:
    rng = random.Random(f"{airflow_db.version}-{seed}")
    model = Model(airflow_db, rng)
    cache_db = pg.fresh_name("amb_cache") if rng.random() < 0.5 else None
    cache_url = None
    if cache_db:
        pg.create_database(cache_db)
        cache_url = pg.url_for(cache_db).render_as_string(hide_password=False)
    harness = Harness(make_bridge, airflow_db, airflow_db.writer.conn, cache_url, cache_db)
    try:
        for step in range(STEPS):
            model.step()
            chance = rng.random()
            if chance < 0.22:
                assert harness.refresh(), f"cycle after step {step}"
                model.cycled()
                over = _over(counted(harness.bridge.scrape()), model.expected)
                assert not over, f"seed {seed}, step {step}: {over}"
                assert held(harness.bridge) == in_cache(harness.bridge), \
                    f"seed {seed}, step {step}: the held totals differ from the cache's"
            elif chance < 0.25:
                harness.replica_cycle()
                model.cycled()
            elif chance < 0.27:
                harness.killed_cycle(rng)
            elif chance < 0.29:
                harness.postgres_restart(model)
                if not harness.refresh():  # the first cycle may fail, the next recovers
                    harness.events["failed after a restart"] += 1
                    assert harness.refresh(), "no recovery after a PostgreSQL restart"
                model.cycled()
            if rng.random() < 0.03:
                harness.restart()
        if model.slow is not None:
            model.slow_commit()
        assert harness.refresh()
        model.cycled()
        scrape = harness.bridge.scrape()
        found, expected = counted(scrape), model.expected
        record_property("cycles", harness.cycles)
        record_property("events", dict(model.events + harness.events))
        assert harness.cycles > 10
        assert _positive(found.runs) == _positive(expected.runs), f"seed {seed}"
        assert _positive(found.tries) == _positive(expected.tries), f"seed {seed}"
        assert _positive(found.retries) == _positive(expected.retries), f"seed {seed}"
        assert (scrape.value(REFRESHES, refresh_job="metadb", outcome="error") or 0) == \
            harness.errors
        assert scrape.value("airflow_bridge_metadb_up") == 1
        assert harness.refresh()
        assert counted(harness.bridge.scrape()) == found, "a repeated cycle adds nothing"
    finally:
        harness.bridge.close()
        model.lose_slow()
        if cache_db:
            pg.drop_database(cache_db)
