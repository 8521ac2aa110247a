"""Loading a plain-text `pg_dump` (the committed Airflow schemas) without the psql client."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

_COPY = re.compile(r"^COPY .* FROM stdin;$")


def load_dump(conn: psycopg.Connection[Any], path: Path) -> None:
    """Execute a pg_dump plain-text file: SQL chunks as they are, COPY blocks via COPY."""
    for kind, text in _segments(path.read_text(encoding="utf-8")):
        if kind == "sql":
            if text.strip():
                conn.execute(text.encode())
        else:
            statement, _, data = text.partition("\n")
            with conn.cursor() as cur, cur.copy(statement.encode()) as copy:
                if data:
                    copy.write(data)


def _segments(dump: str) -> Iterator[tuple[str, str]]:
    chunk: list[str] = []
    lines = iter(dump.splitlines())
    for line in lines:
        if _COPY.match(line):
            yield "sql", "\n".join(chunk)
            chunk = []
            data = [line]
            for row in lines:
                if row == "\\.":
                    break
                data.append(row)
            yield "copy", "\n".join(data) + ("\n" if len(data) > 1 else "")
        elif not line.startswith("\\"):
            chunk.append(line)
    yield "sql", "\n".join(chunk)
