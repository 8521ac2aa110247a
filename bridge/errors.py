"""The errors the bridge tells apart: a user's configuration, the metadata DB, its schema.

Kept apart from the modules that raise them so that any module can raise or catch them
without importing the others.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration problem a user can act on: where, which key, what to do."""


class SchemaError(Exception):
    """The database does not look like an Airflow metadata DB the bridge can read."""


class SourceError(Exception):
    """The metadata DB could not be read (down, slow, refused); the cycle is abandoned."""


def first_line(exc: BaseException) -> str:
    """The driver's message without SQL text or parameters (which may be long)."""
    text_value = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text_value[0] if text_value else type(exc).__name__
