"""Time conventions: the cache stores naive UTC, Airflow returns aware datetimes."""

from __future__ import annotations

from datetime import UTC, datetime


def naive_utc_now() -> datetime:
    """Now, as the cache stores it: UTC without a time zone."""
    return datetime.now(UTC).replace(tzinfo=None)


def naive_utc(value: datetime | None) -> datetime | None:
    """An aware datetime converted to naive UTC; naive values are taken as UTC already."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def aware_utc(value: datetime) -> datetime:
    """A naive UTC datetime (from the cache or a clock) made aware, e.g. for timestamp()."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
