"""The cache's table objects mirror exactly what the Alembic migrations create."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table

from bridge.cache.database import Cache
from bridge.cache.tables import metadata
from tests.postgres import Postgres


def _differences(url: str, mirror: MetaData = metadata) -> list[object]:
    cache = Cache(url)
    try:
        cache.migrate()
        with cache.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return [d for d in compare_metadata(context, mirror)
                    if not (isinstance(d, tuple) and d[0] == "remove_table"
                            and d[1].name == "alembic_version")]
    finally:
        cache.dispose()


def test_tables_equal_the_migrated_sqlite_schema(tmp_path: Path) -> None:
    assert _differences(f"sqlite:///{tmp_path / 'cache.db'}") == []


def test_tables_equal_the_migrated_postgres_schema(pg: Postgres) -> None:
    name = pg.fresh_name("amb_cache")
    pg.create_database(name)
    try:
        url = pg.url_for(name).render_as_string(hide_password=False)
        assert _differences(url) == []
    finally:
        pg.drop_database(name)


def test_a_column_the_migrations_lack_is_a_difference(tmp_path: Path) -> None:
    """The comparison can fail: a mirror with an extra table is caught."""
    drifted = MetaData()
    for table in metadata.tables.values():
        table.to_metadata(drifted)
    Table("not_migrated", drifted, Column("id", Integer, primary_key=True))
    found = _differences(f"sqlite:///{tmp_path / 'cache.db'}", drifted)
    assert [(d[0], d[1].name) for d in found if isinstance(d, tuple)] == \
        [("add_table", "not_migrated")]


@pytest.mark.parametrize("table", sorted(metadata.tables))
def test_every_table_has_a_primary_key(table: str) -> None:
    """Folding and upserts key on the primary key: every cache table needs one."""
    assert metadata.tables[table].primary_key.columns
