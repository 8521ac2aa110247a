"""Configuration: file plus environment, located errors, secrets from files, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge import config
from bridge.errors import ConfigError


def test_defaults_with_only_the_airflow_url() -> None:
    settings = config.load(None, {"BRIDGE_AIRFLOW_DB_URL": "postgresql://b@db/airflow"})
    assert settings.airflow_url is not None
    assert settings.airflow_url.drivername == "postgresql+psycopg"
    assert str(settings.cache_url) == "sqlite:///airflow-metrics-bridge.db"
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 9101)
    assert settings.lookback == 7 * 86400
    assert settings.refresh_interval == 10


def test_dags_are_forgotten_after_a_day_and_writable_roles_refused_by_default(
        tmp_path: Path) -> None:
    url = {"BRIDGE_AIRFLOW_DB_URL": "postgresql://b@db/airflow"}
    settings = config.load(None, url)
    assert settings.forget_after == 86400
    assert settings.allow_writable_role is False
    path = tmp_path / "bridge.yaml"
    path.write_text("dags:\n  forget_after: 90m\nairflow:\n  allow_writable_role: true\n")
    settings = config.load(path, url)
    assert (settings.forget_after, settings.allow_writable_role) == (5400, True)
    assert settings.redacted()["dags"]["forget_after"] == 5400
    assert settings.redacted()["airflow"]["allow_writable_role"] is True
    assert config.load(None, {**url, "BRIDGE_ALLOW_WRITABLE_ROLE": "true"}).allow_writable_role
    assert not config.load(None, {**url, "BRIDGE_ALLOW_WRITABLE_ROLE": "false"}) \
        .allow_writable_role


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("listen_address: 127.0.0.1:9200\nlookback: 2d\n"
                    "airflow:\n  url: postgresql://file@db/airflow\n")
    settings = config.load(path, {"BRIDGE_LISTEN_ADDRESS": "0.0.0.0:9101",
                                  "BRIDGE_LOOKBACK": "all", "BRIDGE_CONFIG": "/nonexistent"})
    assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 9101)
    assert settings.lookback is None
    assert settings.airflow_url is not None and settings.airflow_url.username == "file"


def test_config_file_from_environment_and_secret_files(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("postgresql://bridge:s3cret@db:5432/airflow\n")
    path = tmp_path / "bridge.yaml"
    path.write_text("cache:\n  url_file: url\n")  # relative to the config file
    settings = config.load(None, {"BRIDGE_CONFIG": str(path),
                                  "BRIDGE_AIRFLOW_DB_URL_FILE": str(secret)})
    assert settings.airflow_url is not None and settings.airflow_url.password == "s3cret"
    assert settings.cache_url.password == "s3cret"
    shown = str(settings.redacted())
    assert "s3cret" not in shown
    assert "bridge:<secret>@db:5432/airflow" in shown


@pytest.mark.parametrize(("text", "message"), [
    ("lookbak: 7d\n", "lookbak: unknown key; did you mean `lookback`? known keys here: airflow, "
                      "batch_size"),
    ("airflow:\n  pool: 3\n", "airflow.pool: unknown key; did you mean `pool_size`? known "
                              "keys here: allow_writable_role, application_name"),
    ("dags:\n  forget_after: soon\n", "dags.forget_after: 'soon' is not a duration"),
    ("airflow:\n  allow_writable_role: maybe\n", "airflow.allow_writable_role: Input should "
                                                 "be a valid boolean"),
    ("refresh_interval: soon\n", "refresh_interval: 'soon' is not a duration"),
    ("listen_address: localhost\n", "listen_address: 'localhost' is not host:port"),
    ("airflow:\n  url: mysql://x@h/db\n", "airflow.url: the 'mysql' metadata database is not "
                                          "supported yet"),
    ("cache:\n  url: redis://h\n", "cache.url: the cache lives in SQLite"),
    ("histograms:\n  dag_run_duration_seconds: [60, 30]\n", "increasing order"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("a: [\n", "not valid YAML"),
    ("airflow:\n  url: postgresql://u:p@ss@db/airflow\n", "percent-encode '@'"),
    ("airflow:\n  url: postgresql://u@db:port/airflow\n", "airflow.url: not a database URL"),
    ("histograms:\n  dag_run_duration_seconds: [1, .inf]\n", "increasing order"),
])
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load(path, {})
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_secrets_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("airflow:\n  url: postgresql://bridge:S3cretPw@db/airflow: x\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path, {})
    assert "S3cretPw" not in str(caught.value)
    assert "line 2 column" in str(caught.value)
    shown = config.redact_url("postgresql://u@db/a?sslpassword=k3y&password=pw&sslmode=require")
    assert "k3y" not in shown and "pw" not in shown and "sslmode=require" in shown


def test_errors_in_environment_values_name_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("lookback: 2d\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path, {"BRIDGE_LISTEN_ADDRESS": "nowhere"})
    assert str(caught.value) == ("BRIDGE_LISTEN_ADDRESS (environment, listen_address): "
                                 "'nowhere' is not host:port, e.g. 127.0.0.1:9101 or 0.0.0.0:9101")
    with pytest.raises(ConfigError) as caught:
        config.load(path, {"BRIDGE_REFRESH_INTERVAL": "soon"})
    assert "refresh_interval (from BRIDGE_REFRESH_INTERVAL): 'soon' is not a duration" \
        in str(caught.value)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the config file"):
        config.load(tmp_path / "nope.yaml", {})
    with pytest.raises(ConfigError, match="BRIDGE_AIRFLOW_DB_URL_FILE: cannot read "
                                                 "secret file"):
        config.load(None, {"BRIDGE_AIRFLOW_DB_URL_FILE": str(tmp_path / "none")})


def test_no_airflow_url_says_how_to_set_one() -> None:
    settings = config.load(None, {})
    with pytest.raises(ConfigError, match="set BRIDGE_AIRFLOW_DB_URL"):
        settings.require_airflow_url()


def test_durations() -> None:
    assert [config.parse_duration(v) for v in (90, "90s", "5m", "2h", "7d", "1w", "250ms")] == \
        [90, 90, 300, 7200, 604800, 604800, 0.25]
    assert config.parse_lookback("all") is None
    assert config.parse_lookback("0") == 0


def test_errors_suggest_the_key_meant_and_what_to_write(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("refresh_intervall: 5s\nairflow:\n  pool_sise: 3\nmax_series: lots\n"
                    "task_id_label: maybe\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path, {})
    message = str(caught.value)
    assert "refresh_intervall: unknown key; did you mean `refresh_interval`?" in message
    assert "airflow.pool_sise: unknown key; did you mean `pool_size`?" in message
    assert "max_series: " in message and "write a whole number, e.g. 100" in message
    assert "task_id_label: " in message and "write true or false" in message
    path.write_text("xyzzy: 1\n")
    with pytest.raises(ConfigError, match="xyzzy: unknown key; known keys here") as far:
        config.load(path, {})
    assert "did you mean" not in str(far.value)


def test_cardinality_defaults_and_per_task_duration_buckets(tmp_path: Path) -> None:
    """Defaults sized for wide Airflows; per-task duration buckets are opt-in by pattern."""
    settings = config.load(None, {})
    assert (settings.max_series, settings.task_id_label) == (150_000, True)
    assert settings.task_duration_buckets_dags == ()
    path = tmp_path / "bridge.yaml"
    path.write_text("task_duration_buckets_dags: [etl_*, report]\nmax_series: 5000\n")
    settings = config.load(path, {})
    assert settings.task_duration_buckets_dags == ("etl_*", "report")
    assert settings.max_series == 5000
    assert settings.redacted()["task_duration_buckets_dags"] == ["etl_*", "report"]
    path.write_text("task_duration_buckets_dags: etl_*\n")
    with pytest.raises(ConfigError, match=r"task_duration_buckets_dags: .*write a list"):
        config.load(path, {})
