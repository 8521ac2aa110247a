"""Configuration: one YAML file plus environment overrides, validated at the boundary.

Everything past this module sees a frozen `Settings`; pydantic stays here. Every error
names the file, the key and what to change, and secrets never reach a message.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from bridge.definitions import MetricDefinition, load_definitions
from bridge.errors import ConfigError
from bridge.yamlfile import read_yaml

DEFAULT_CACHE_URL = "sqlite:///airflow-metrics-bridge.db"
DEFAULT_LISTEN = "127.0.0.1:9101"
DEFAULT_DAG_RUN_BUCKETS = (
    30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
)
DEFAULT_DELAY_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
DEFAULT_TASK_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                        21600.0)
# Label sets served before the cap sheds per-task families: the defaults at 2,000 DAGs x 30
# tasks (about 105,000) with room to spare; see the README's "Large installations".
DEFAULT_MAX_SERIES = 150_000
SECRET = "<secret>"
HISTOGRAM_PREFIX = "airflow_"  # histograms.<key> sets the buckets of airflow_<key>

ENV_CONFIG = "BRIDGE_CONFIG"
ENV_KEYS: dict[str, tuple[str, ...]] = {
    "BRIDGE_AIRFLOW_DB_URL": ("airflow", "url"),
    "BRIDGE_CACHE_URL": ("cache", "url"),
    "BRIDGE_LISTEN_ADDRESS": ("listen_address",),
    "BRIDGE_LOOKBACK": ("lookback",),
    "BRIDGE_REFRESH_INTERVAL": ("refresh_interval",),
    "BRIDGE_METRICS_FILE": ("metrics_file",),
    "BRIDGE_WEB_CONFIG_FILE": ("web_config_file",),
    "BRIDGE_ALLOW_WRITABLE_ROLE": ("airflow", "allow_writable_role"),
}
FILE_SUFFIX = "_FILE"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from `90`, `90s`, `5m`, `2h`, `7d`; bare numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; write it as 30s, 5m, 2h or 7d")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_lookback(value: object) -> float | None:
    """`all` means no limit (None); `0` means only what happens from now on."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return None
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Lookback = Annotated[float | None, BeforeValidator(parse_lookback)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AirflowDbModel(_Model):
    url: str | None = None
    url_file: str | None = None
    statement_timeout: Duration = 30.0
    lock_timeout: Duration = 5.0
    connect_timeout: Duration = 10.0
    application_name: str = "airflow-metrics-bridge"
    pool_size: int = Field(default=2, ge=1, le=10)
    allow_writable_role: bool = False


class CacheModel(_Model):
    url: str | None = None
    url_file: str | None = None


class HistogramsModel(_Model):
    dag_run_duration_seconds: tuple[float, ...] = DEFAULT_DAG_RUN_BUCKETS
    dag_run_start_delay_seconds: tuple[float, ...] = DEFAULT_DELAY_BUCKETS
    task_instance_duration_seconds: tuple[float, ...] = DEFAULT_TASK_BUCKETS
    task_instance_queued_seconds: tuple[float, ...] = DEFAULT_DELAY_BUCKETS


class DagsModel(_Model):
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    forget_after: Duration = 86400.0


class ConfigModel(_Model):
    airflow: AirflowDbModel = AirflowDbModel()
    cache: CacheModel = CacheModel()
    listen_address: str = DEFAULT_LISTEN
    refresh_interval: Duration = 10.0
    max_backoff: Duration = 300.0
    lookback: Lookback = 7 * 86400.0
    id_gap_grace: Duration = 600.0
    reconcile_window: Duration = 86400.0
    batch_size: int = Field(default=5000, ge=10, le=100_000)
    histograms: HistogramsModel = HistogramsModel()
    dags: DagsModel = DagsModel()
    task_id_label: bool = True
    max_series: int = Field(default=DEFAULT_MAX_SERIES, ge=100)
    task_duration_buckets_dags: tuple[str, ...] = ()
    metrics_file: str | None = None
    web_config_file: str | None = None
    xcom_max_bytes: int = Field(default=1_048_576, ge=1024)


@dataclass(frozen=True)
class Settings:
    """The validated configuration every other module receives."""

    source: str  # where the values came from, for messages
    airflow_url: URL | None
    cache_url: URL
    statement_timeout: float
    lock_timeout: float
    connect_timeout: float
    application_name: str
    pool_size: int
    allow_writable_role: bool  # serve and refresh even if the role could write
    listen_host: str
    listen_port: int
    refresh_interval: float
    max_backoff: float
    lookback: float | None
    id_gap_grace: float
    reconcile_window: float  # finished runs this recent are re-checked for re-finishes
    batch_size: int
    histogram_buckets: Mapping[str, tuple[float, ...]]  # metric name -> bucket bounds
    include_dags: tuple[str, ...]
    exclude_dags: tuple[str, ...]
    forget_after: float  # a DAG gone from the metadata DB this long is no longer served
    task_id_label: bool
    max_series: int
    task_duration_buckets_dags: tuple[str, ...]  # DAG patterns: task durations per task
    metrics_file: str | None
    web_config_file: str | None  # TLS and basic auth for /metrics, exporter-toolkit format
    xcom_max_bytes: int
    definitions: tuple[MetricDefinition, ...]

    def require_airflow_url(self) -> URL:
        if self.airflow_url is None:
            raise ConfigError(
                f"{self.source}: airflow.url: no Airflow metadata DB is configured; set "
                "BRIDGE_AIRFLOW_DB_URL (or BRIDGE_AIRFLOW_DB_URL_FILE) or `airflow.url` in the "
                "config file, e.g. postgresql://airflow_bridge@db:5432/airflow"
            )
        return self.airflow_url

    def buckets(self, metric: str) -> tuple[float, ...]:
        """Bucket bounds of one of the bridge's histograms, by metric name."""
        return self.histogram_buckets[metric]

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as it may be printed or logged."""
        return {
            "airflow": {
                "url": redact_url(self.airflow_url) if self.airflow_url else None,
                "statement_timeout": self.statement_timeout,
                "lock_timeout": self.lock_timeout,
                "connect_timeout": self.connect_timeout,
                "application_name": self.application_name,
                "pool_size": self.pool_size,
                "allow_writable_role": self.allow_writable_role,
            },
            "cache": {"url": redact_url(self.cache_url)},
            "listen_address": f"{self.listen_host}:{self.listen_port}",
            "refresh_interval": self.refresh_interval,
            "max_backoff": self.max_backoff,
            "lookback": "all" if self.lookback is None else self.lookback,
            "id_gap_grace": self.id_gap_grace,
            "reconcile_window": self.reconcile_window,
            "batch_size": self.batch_size,
            "histograms": {name.removeprefix(HISTOGRAM_PREFIX): list(bounds)
                           for name, bounds in self.histogram_buckets.items()},
            "dags": {"include": list(self.include_dags), "exclude": list(self.exclude_dags),
                     "forget_after": self.forget_after},
            "task_id_label": self.task_id_label,
            "max_series": self.max_series,
            "task_duration_buckets_dags": list(self.task_duration_buckets_dags),
            "metrics_file": self.metrics_file,
            "web_config_file": self.web_config_file,
            "xcom_max_bytes": self.xcom_max_bytes,
        }


def redact_url(url: URL | str) -> str:
    """A URL fit for logs: the password (also a `password=` query argument) is hidden."""
    parsed = url if isinstance(url, URL) else make_url(url)
    hidden = {key: "***" for key in parsed.query if "password" in key.lower()}
    if hidden:
        parsed = parsed.update_query_dict(hidden)
    return parsed.render_as_string(hide_password=True).replace("***", SECRET)


def load(path: str | os.PathLike[str] | None = None,
         environ: Mapping[str, str] | None = None,
         reserved: Collection[str] = ()) -> Settings:
    """Read the file (argument, else $BRIDGE_CONFIG, else none) and apply the environment.

    `reserved` are the metric names the bridge serves itself, which a metric file may not
    reuse (`bridge.app.load_settings` passes the catalog's).
    """
    env = os.environ if environ is None else environ
    file_name = str(path) if path is not None else env.get(ENV_CONFIG) or None
    raw: dict[str, Any] = _read_file(file_name) if file_name else {}
    source = file_name or "environment"
    from_env: dict[str, str] = {}
    for var, key_path in ENV_KEYS.items():
        value = _env_value(env, var)
        if value is not None:
            _set_path(raw, key_path, value)
            from_env[".".join(key_path)] = var if var in env else var + FILE_SUFFIX
    for section in ("airflow", "cache"):
        _resolve_url_file(raw, section, file_name)
    try:
        try:
            model = ConfigModel.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, source)) from None
        return _settings(model, source, Path(file_name).parent if file_name else None,
                         reserved)
    except ConfigError as exc:
        raise ConfigError(_blame_environment(str(exc), source, from_env)) from None


def _blame_environment(message: str, source: str, from_env: Mapping[str, str]) -> str:
    """Point at the environment variable, not the file, for values that came from it."""
    for key, var in from_env.items():
        message = message.replace(f"{source}: {key}:", f"{var} (environment, {key}):")
        message = message.replace(f"\n  {key}:", f"\n  {key} (from {var}):")
    return message


def _read_file(file_name: str) -> dict[str, Any]:
    data = read_yaml(file_name, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file_name}: the top level must be a mapping of keys, not "
                          f"{type(data).__name__}")
    return data


def _env_value(env: Mapping[str, str], var: str) -> str | None:
    if var in env and env[var] != "":
        return env[var]
    file_var = var + FILE_SUFFIX
    if env.get(file_var):
        return _read_secret(env[file_var], file_var)
    return None


def _read_secret(file_name: str, where: str) -> str:
    try:
        return Path(file_name).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read secret file {file_name}: {exc.strerror}") from None


def _set_path(raw: dict[str, Any], key_path: tuple[str, ...], value: object) -> None:
    node = raw
    for key in key_path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[key_path[-1]] = value


def _resolve_url_file(raw: dict[str, Any], section: str, file_name: str | None) -> None:
    node = raw.get(section)
    if not isinstance(node, dict) or not node.get("url_file"):
        return
    if node.get("url"):
        return  # an explicit URL (file or environment) wins over the file reference
    base = Path(file_name).parent if file_name else None
    secret = _relative_to(str(node["url_file"]), base)
    node["url"] = _read_secret(secret, f"{file_name or 'config'}: {section}.url_file")


# What to write instead, for the type errors pydantic words as a description only.
_FIXES = {
    "int_parsing": "write a whole number, e.g. 100", "int_type": "write a whole number, e.g. 100",
    "int_from_float": "write a whole number, e.g. 100",
    "float_parsing": "write a number, e.g. 2.5", "float_type": "write a number, e.g. 2.5",
    "bool_parsing": "write true or false", "bool_type": "write true or false",
    "string_type": "write text (quote it if YAML reads it as something else)",
    "dict_type": "write a mapping of keys (indented `key: value` lines)",
    "tuple_type": "write a list, e.g. [30, 60, 120]", "list_type": "write a list, e.g. [a, b]",
}


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            known = _known_keys(error["loc"][:-1])
            close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
            guess = f"did you mean `{close[0]}`? " if close else ""
            message = f"unknown key; {guess}known keys here: {', '.join(known)}"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] in _FIXES:
                message += f"; {_FIXES[error['type']]}"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] = ConfigModel
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _relative_to(name: str, base: Path | None) -> str:
    """Paths written in a config file are relative to that file."""
    if base is None or Path(name).is_absolute():
        return name
    return str(base / name)


def _settings(model: ConfigModel, source: str, base: Path | None,
              reserved: Collection[str]) -> Settings:
    airflow_url = _source_url(model.airflow.url, source) if model.airflow.url else None
    cache_url = _cache_url(model.cache.url or DEFAULT_CACHE_URL, source)
    host, port = _listen(model.listen_address, source)
    for name, buckets in model.histograms:
        if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] <= 0 or \
                not all(math.isfinite(b) for b in buckets):
            raise ConfigError(f"{source}: histograms.{name}: give positive bucket bounds in "
                              "increasing order, without duplicates")
    histograms = model.histograms
    metrics_file = _relative_to(model.metrics_file, base) if model.metrics_file else None
    if model.refresh_interval < 1:
        raise ConfigError(f"{source}: refresh_interval: must be at least 1s")
    return Settings(
        source=source,
        airflow_url=airflow_url,
        cache_url=cache_url,
        statement_timeout=model.airflow.statement_timeout,
        lock_timeout=model.airflow.lock_timeout,
        connect_timeout=model.airflow.connect_timeout,
        application_name=model.airflow.application_name,
        pool_size=model.airflow.pool_size,
        allow_writable_role=model.airflow.allow_writable_role,
        listen_host=host,
        listen_port=port,
        refresh_interval=model.refresh_interval,
        max_backoff=max(model.max_backoff, model.refresh_interval),
        lookback=model.lookback,
        id_gap_grace=model.id_gap_grace,
        reconcile_window=model.reconcile_window,
        batch_size=model.batch_size,
        histogram_buckets={HISTOGRAM_PREFIX + name: bounds for name, bounds in histograms},
        include_dags=model.dags.include,
        exclude_dags=model.dags.exclude,
        forget_after=model.dags.forget_after,
        task_id_label=model.task_id_label,
        max_series=model.max_series,
        task_duration_buckets_dags=model.task_duration_buckets_dags,
        metrics_file=metrics_file,
        web_config_file=_relative_to(model.web_config_file, base) if model.web_config_file
        else None,
        xcom_max_bytes=model.xcom_max_bytes,
        definitions=load_definitions(metrics_file, reserved) if metrics_file else (),
    )


def _parse_url(value: str, key: str, source: str) -> URL:
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError(f"{source}: {key}: not a database URL; expected e.g. "
                          "postgresql://user@host:5432/airflow") from None
    if url.host and "@" in url.host:
        raise ConfigError(f"{source}: {key}: the URL has more than one '@': percent-encode "
                          "'@' in the user name or password as %40")
    return url


def _source_url(value: str, source: str) -> URL:
    url = _parse_url(value, "airflow.url", source)
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql"):
        return url.set(drivername="postgresql+psycopg")
    raise ConfigError(
        f"{source}: airflow.url: the {backend!r} metadata database is not supported yet; "
        "point the bridge at an Airflow metadata DB on PostgreSQL (postgresql://...)"
    )


def _cache_url(value: str, source: str) -> URL:
    url = _parse_url(value, "cache.url", source)
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return url
    raise ConfigError(f"{source}: cache.url: the cache lives in SQLite (sqlite:///path.db) or "
                      f"PostgreSQL (postgresql://...), not {backend!r}")


def _listen(value: str, source: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{source}: listen_address: {value!r} is not host:port, "
                          "e.g. 127.0.0.1:9101 or 0.0.0.0:9101")
    return host.strip("[]") or "0.0.0.0", int(port)
