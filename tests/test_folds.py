"""Fold records and their end key: one text form, read back as written."""

from __future__ import annotations

from datetime import datetime

import pytest

from bridge.cache.folds import BusinessValue, EndKey, Fold, Retry, RunFinish, TaskOutcome

END = datetime(2026, 3, 1, 12, 30, 5, 123456)


@pytest.mark.parametrize(("key", "text"), [
    (EndKey(None), "none"),
    (EndKey(END), "2026-03-01T12:30:05.123456"),
    (EndKey(END.replace(microsecond=0)), "2026-03-01T12:30:05"),
    (EndKey(END, "0b1c2d3e"), "2026-03-01T12:30:05.123456/0b1c2d3e"),
    (EndKey(END, "0b1c2d3e", 2), "2026-03-01T12:30:05.123456/0b1c2d3e#2"),
    (EndKey(None, "", 1), "none#1"),
])
def test_end_keys_are_stored_as_earlier_releases_wrote_them(key: EndKey, text: str) -> None:
    assert key.encode() == text
    assert EndKey.decode(text) == key
    assert len(text) <= 40, "the end_key column is varchar(40)"


def test_of_keeps_the_last_digits_of_a_task_instance_id() -> None:
    key = EndKey.of(END, "0190a6f2-9d3c-7e51-8b0a-4f1e2d3c4b5a")
    assert key == EndKey(END, "2d3c4b5a")
    assert key.without_id() == EndKey(END)
    assert EndKey.of(END, None) == EndKey(END)


def test_reopening_takes_the_next_number_of_the_same_finish_only() -> None:
    key = EndKey(END, "2d3c4b5a")
    taken = [key, EndKey(END, "2d3c4b5a", 1), EndKey(END, "2d3c4b5a", 2),
             EndKey(END, "ffffffff", 7), EndKey(None, "", 9)]
    assert key.reopen(taken) == EndKey(END, "2d3c4b5a", 3)
    assert EndKey(END).reopen([EndKey(END)]) == EndKey(END, "", 1)


def test_an_outcome_is_keyed_by_its_tables_primary_key() -> None:
    outcome = TaskOutcome(
        dag_run_id=7, task_id="load", map_index=-1, try_number=2, end_key=EndKey(END, "ab"),
        dag_id="etl", run_id="r", state="success", start_date=None, end_date=END,
        duration_seconds=None, queued_seconds=None, folded_at=END)
    assert outcome.key() == (7, "load", -1, 2, "2026-03-01T12:30:05.123456/ab")
    row = outcome.row()
    assert row["end_key"] == "2026-03-01T12:30:05.123456/ab"
    assert set(row) == {c.name for c in TaskOutcome.table.columns}
    assert outcome.try_key == (7, "load", -1, 2)


@pytest.mark.parametrize("fold", [
    RunFinish(dag_run_id=1, end_key=EndKey(END), dag_id="d", run_id="r", run_type="manual",
              state="failed", logical_date=None, queued_at=None, start_date=None,
              end_date=END, duration_seconds=None, folded_at=END),
    Retry(dag_run_id=1, task_id="t", map_index=3, try_number=1, dag_id="d", folded_at=END),
    BusinessValue(dag_run_id=1, end_key=EndKey(None), metric="m", labels="{}", dag_id="d",
                  run_id="r", logical_date=None, end_date=None, value=1.5),
], ids=lambda fold: type(fold).__name__)
def test_every_record_spells_its_key_in_primary_key_order(fold: Fold) -> None:
    row = fold.row()
    assert fold.key() == tuple(row[c.name] for c in fold.table.primary_key.columns)
