"""Totals held in memory: equal to the cache, kept so at the cost of what changed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path

import pytest

from bridge.cache.database import Cache
from bridge.cache.ledger import CacheTransaction
from bridge.cache.totals import Totals
from bridge.metric import HistogramValue, Labels

INF = float("inf")
DURATION = "airflow_task_instance_duration_seconds"
FINISHED = "airflow_task_instance_finished_total"


def labels(dag: str, task: str = "t") -> Labels:
    return (("dag_id", dag), ("state", "success"), ("task_id", task))


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Cache]:
    cache = Cache(f"sqlite:///{tmp_path / 'cache.db'}")
    cache.migrate()
    yield cache
    cache.dispose()


def cycle(cache: Cache, totals: Totals | None,
          fold: Callable[[CacheTransaction], None]) -> int:
    """One committed cycle's writes, as the refresher runs them; rows of other bridges'
    changes read back."""
    with cache.transaction() as tx:
        tx.lock()
        changes = totals.changes(tx.conn) if totals else None
        fold(tx)
    if totals is not None and changes is not None:
        totals.absorb(changes)
        if tx.seq is not None:
            totals.apply(tx.increments, tx.seq)
    return changes.rows if changes else 0


def loaded(cache: Cache, bounds: Mapping[str, tuple[float, ...]]) -> Totals:
    totals = Totals(bounds)
    cache.load(totals)
    return totals


def test_held_totals_equal_a_fresh_read_and_only_other_bridges_changes_are_read(
        cache: Cache) -> None:
    bounds = {DURATION: (10.0, 60.0)}
    one, two = loaded(cache, bounds), loaded(cache, bounds)

    def fold_many(tx: CacheTransaction) -> None:
        for dag in range(50):
            tx.add(FINISHED, labels(f"dag_{dag}"))
            tx.observe(DURATION, labels(f"dag_{dag}"), 30.0,
                       bounds[DURATION])

    assert cycle(cache, one, fold_many) == 0, "nothing changed by others yet"

    def fold_one(tx: CacheTransaction) -> None:
        tx.add(FINISHED, labels("dag_7"), 2.0)
        tx.observe(DURATION, labels("dag_7"), 5.0, bounds[DURATION])
        tx.gauge_max("airflow_dag_run_last_finished_timestamp_seconds",
                     (("state", "success"), ("dag_id", "dag_7")), 1000.0)
        tx.latest("bike_r2", (), 0.5, datetime(2026, 1, 2))
        tx.latest("bike_r2", (), 0.1, datetime(2026, 1, 1))
        tx.latest("bike_mape", (), None, datetime(2026, 1, 2))  # no usable value
        tx.latest("bike_mape", (), 0.4, datetime(2026, 1, 1))

    # The second bridge learns the first one's 50 label sets: 50 counters, 50 histograms
    # and their 50 buckets; then its own cycle, applied in memory.
    assert cycle(cache, two, fold_one) == 150
    # The first bridge reads only what the second changed, not the 150 rows it holds: a
    # counter, a gauge, two latest values, a histogram and both its buckets (10 and 60).
    assert cycle(cache, one, lambda tx: None) == 7
    fresh = loaded(cache, bounds)
    for totals in (one, two):
        assert totals.counters == fresh.counters
        assert totals.gauges == fresh.gauges
        assert totals.histograms == fresh.histograms
        assert totals.dags == {f"dag_{d}" for d in range(50)}
    assert one.counters[FINISHED][labels("dag_7")] == 3.0
    assert one.gauges["bike_r2"][()] == 0.5, "the newest as_of wins, in any order"
    assert () not in one.gauges["bike_mape"], "the newest run gave no value: absent"
    assert one.histograms[DURATION][labels("dag_7")] == HistogramValue(
        ((10.0, 1.0), (60.0, 2.0), (INF, 2.0)), 35.0, 2.0)
    assert cycle(cache, one, lambda tx: None) == 0, "an idle cycle reads nothing back"


def test_changed_bucket_bounds_serve_one_bucket_set_per_family(cache: Cache) -> None:
    """Counts stored under bounds no longer configured go to the next configured bound
    at or above theirs (or +Inf only): every series of the family has the configured
    buckets, cumulative counts never decrease, and the count stays whole."""
    old = (5.0, 30.0, 100.0)

    def observe(tx: CacheTransaction) -> None:
        for value in (1.0, 20.0, 20.0, 80.0, 500.0):
            tx.observe(DURATION, labels("a"), value, old)

    cycle(cache, None, observe)
    served = loaded(cache, {DURATION: (10.0, 60.0)}).histograms[DURATION][labels("a")]
    # 1 (stored at 5) -> 10; 20, 20 (stored at 30) -> 60; 80 (at 100) -> +Inf only.
    assert served == HistogramValue(((10.0, 1.0), (60.0, 3.0), (INF, 5.0)), 621.0, 5.0)
    wider = loaded(cache, {DURATION: (1.0, 30.0, 1000.0)}).histograms[DURATION][labels("a")]
    assert wider.buckets == ((1.0, 0.0), (30.0, 3.0), (1000.0, 4.0), (INF, 5.0))
