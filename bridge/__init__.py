"""airflow-metrics-bridge: Airflow metadata DB → Prometheus, read-only and incremental."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("airflow-metrics-bridge")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"
