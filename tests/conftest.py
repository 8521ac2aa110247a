"""Shared fixtures: a real PostgreSQL with real Airflow schemas, and the bridge under test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge import app
from tests import postgres
from tests.metadb import AirflowWriter


@pytest.fixture(scope="session")
def pg() -> Iterator[postgres.Postgres]:
    server = postgres.start()
    yield server


def pytest_sessionfinish() -> None:
    """After the last fixture: no embedded server, nor its data directory, is left behind."""
    postgres.stop_embedded()


@pytest.fixture(scope="session")
def airflow_templates(pg: postgres.Postgres) -> Iterator[dict[str, str]]:
    templates = postgres.Templates(pg)
    yield templates
    templates.drop()


@pytest.fixture(params=postgres.AIRFLOW_VERSIONS)
def airflow_version(request: pytest.FixtureRequest) -> str:
    """Every supported release: for tests whose outcome may differ between them."""
    return str(request.param)


# A test that reads no difference between Airflow releases (a role's privileges, a
# session's settings, the CLI's messages) runs on the newest one only: decorate it with
# @one_airflow. Whatever differs between releases (schema detection, the queries and their
# plans, what is counted, XComs) stays on every release.
one_airflow = pytest.mark.parametrize("airflow_version", [postgres.AIRFLOW_VERSIONS[-1]])


@dataclass
class AirflowDb:
    name: str
    version: str
    url: Any  # SQLAlchemy URL for the bridge
    writer: AirflowWriter


@pytest.fixture
def airflow_db(pg: postgres.Postgres, airflow_templates: dict[str, str],
               airflow_version: str) -> Iterator[AirflowDb]:
    name = pg.fresh_name("amb_test")
    pg.create_database(name, template=airflow_templates[airflow_version])
    writer = AirflowWriter(pg.libpq(name), airflow_version)
    yield AirflowDb(name, airflow_version, pg.url_for(name), writer)
    writer.close()
    pg.drop_database(name)


class Scrape:
    """Samples of one /metrics text, looked up by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def airflow(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Airflow samples only, without the bridge's own health."""
        return {k: v for k, v in self.samples.items() if not k[0].startswith("airflow_bridge_")}

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


class BridgeUnderTest(app.Bridge):
    """A bridge built as the CLI builds it, with a cycle that must succeed and a scrape."""

    closed: bool = False

    def cycle(self) -> Scrape:
        assert self.refresher.refresh(), "the refresh cycle failed"
        return self.scrape()

    def scrape(self) -> Scrape:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)
        return Scrape(generate_latest(registry).decode())

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.closed = True


BridgeFactory = Callable[..., BridgeUnderTest]


@pytest.fixture
def make_bridge(tmp_path: Path) -> Iterator[BridgeFactory]:
    """Build a bridge on a DB; calling it again with the same cache is a restart."""
    made: list[BridgeUnderTest] = []

    def factory(db_url: Any, cache_url: str | None = None, **overrides: Any) -> BridgeUnderTest:
        """Overrides are top-level config keys, written to a YAML file the bridge reads."""
        env = {"BRIDGE_AIRFLOW_DB_URL": db_url.render_as_string(hide_password=False),
               "BRIDGE_CACHE_URL": cache_url or f"sqlite:///{tmp_path / 'cache.db'}"}
        config_file = tmp_path / f"bridge-{len(made)}.yaml"
        config_file.write_text(yaml.safe_dump({"lookback": "all", **overrides}))
        bridge = BridgeUnderTest.build(app.load_settings(config_file, env))
        made.append(bridge)
        return bridge

    yield factory
    for bridge in made:
        bridge.close()
