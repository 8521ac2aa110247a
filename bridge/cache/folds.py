"""What a cycle folds into the cache exactly once: typed records, keyed as their table is.

Each record is one row of a ledger table; `CacheTransaction.claim` records those whose
primary key is new and returns them, so a repeated cycle never counts one twice. The end
key, which tells two finishes of one run or try apart, is written and read here only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from functools import cached_property
from typing import Any, ClassVar, Protocol, TypeVar

from sqlalchemy import Table

from bridge.cache.tables import (
    business_value,
    dag_run_finished,
    task_instance_finished,
    task_instance_retry,
)

ID_DIGITS = 8  # of a 3.x task instance id in an end key: date (26) + "/" + 8 + "#n" <= 40


@dataclass(frozen=True)
class EndKey:
    """A finish's identity within its run or try: its end date; on 3.x the last digits of
    the task instance id, which a clear renews; and how often it was reopened.

    Stored as `<ISO end date or none>[/<id digits>][#<n>]`. A cleared task that ends
    again keeps its try number and end date, so its folded key is renamed with `#<n>`
    (`reopened`): its count stays, and the plain key is free to be claimed again.
    """

    end: datetime | None
    ti_id: str = ""
    reopened: int = 0

    @classmethod
    def of(cls, end: datetime | None, ti_id: str | None = None) -> EndKey:
        return cls(end, (ti_id or "")[-ID_DIGITS:])

    def encode(self) -> str:
        return self.text

    @cached_property
    def text(self) -> str:
        """The stored form, built once: keys are compared many times per cycle."""
        text = self.end.isoformat() if self.end is not None else "none"
        if self.ti_id:
            text += "/" + self.ti_id
        return f"{text}#{self.reopened}" if self.reopened else text

    @classmethod
    def decode(cls, text: str) -> EndKey:
        base, _, reopened = text.partition("#")
        plain, _, ti_id = base.partition("/")
        end = None if plain == "none" else datetime.fromisoformat(plain)
        return cls(end, ti_id, int(reopened) if reopened else 0)

    def without_id(self) -> EndKey:
        """The key as releases before task instance ids were part of it wrote it."""
        return EndKey(self.end, "", self.reopened)

    def reopen(self, taken: Iterable[EndKey]) -> EndKey:
        """This key renamed with the next reopening number not `taken` by its kin."""
        used = [k.reopened for k in taken if (k.end, k.ti_id) == (self.end, self.ti_id)]
        return EndKey(self.end, self.ti_id, max(used, default=0) + 1)


class Fold(Protocol):
    """A record some ledger table keys by its primary key."""

    table: ClassVar[Table]

    def key(self) -> tuple[Any, ...]: ...

    def row(self) -> dict[str, Any]: ...


F = TypeVar("F", bound=Fold)


class _Row:
    """The row of a record: its fields by column name, the end key as stored. Each
    record spells out its primary key (`key`), in the table's column order."""

    table: ClassVar[Table]

    def row(self) -> dict[str, Any]:
        return {f.name: _stored(getattr(self, f.name))
                for f in fields(self)}  # type: ignore[arg-type]



def _stored(value: Any) -> Any:
    return value.encode() if isinstance(value, EndKey) else value


@dataclass(frozen=True)
class RunFinish(_Row):
    """A DAG run's finish: counted once per (run, end key)."""

    table: ClassVar[Table] = dag_run_finished
    dag_run_id: int
    end_key: EndKey
    dag_id: str
    run_id: str
    run_type: str
    state: str
    logical_date: datetime | None
    queued_at: datetime | None
    start_date: datetime | None
    end_date: datetime | None
    duration_seconds: float | None
    folded_at: datetime

    def key(self) -> tuple[int, str]:
        return (self.dag_run_id, self.end_key.text)


@dataclass(frozen=True)
class TaskOutcome(_Row):
    """A task try's outcome: counted once per (run, task, map index, try, end key)."""

    table: ClassVar[Table] = task_instance_finished
    dag_run_id: int
    task_id: str
    map_index: int
    try_number: int
    end_key: EndKey
    dag_id: str
    run_id: str
    state: str
    start_date: datetime | None
    end_date: datetime | None
    duration_seconds: float | None
    queued_seconds: float | None
    folded_at: datetime

    def key(self) -> tuple[int, str, int, int, str]:
        return (self.dag_run_id, self.task_id, self.map_index, self.try_number,
                self.end_key.text)

    @property
    def try_key(self) -> tuple[int, str, int, int]:
        return (self.dag_run_id, self.task_id, self.map_index, self.try_number)


@dataclass(frozen=True)
class Retry(_Row):
    """A failed try that was tried again: counted once per try."""

    table: ClassVar[Table] = task_instance_retry
    dag_run_id: int
    task_id: str
    map_index: int
    try_number: int
    dag_id: str
    folded_at: datetime

    def key(self) -> tuple[int, str, int, int]:
        return (self.dag_run_id, self.task_id, self.map_index, self.try_number)


@dataclass(frozen=True)
class BusinessValue(_Row):
    """A business metric's value from one finished run, kept for reports."""

    table: ClassVar[Table] = business_value
    dag_run_id: int
    end_key: EndKey
    metric: str
    labels: str  # as stored (see tables.encode_labels)
    dag_id: str
    run_id: str
    logical_date: datetime | None
    end_date: datetime | None
    value: float

    def key(self) -> tuple[int, str, str, str]:
        return (self.dag_run_id, self.end_key.text, self.metric, self.labels)
