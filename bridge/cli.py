"""Command line: serve | refresh --once | migrate | check | report | demo."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from types import FrameType

from prometheus_client import generate_latest
from sqlalchemy.exc import SQLAlchemyError

from bridge import __version__, app, config, report
from bridge.airflow.privileges import FIX, inspect_role
from bridge.airflow.source import Source
from bridge.cache.database import Cache
from bridge.demo import demo
from bridge.errors import ConfigError, SchemaError, SourceError, first_line

log = logging.getLogger("bridge")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = app.load_settings(args.config)
        return int(args.func(args, settings))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airflow-metrics-bridge",
        description="Serve Airflow metrics to Prometheus from the metadata DB, read-only.")
    parser.add_argument("--version", action="version", version=__version__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE",
                        help="YAML config file (default: $BRIDGE_CONFIG, else defaults "
                             "plus environment)")
    common.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", parents=[common], help="refresh on a schedule and "
                                "serve /metrics")
    serve.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                       help="TLS and basic auth for /metrics, in the web-config format of "
                            "Prometheus exporters (the setting web_config_file)")
    serve.add_argument("--allow-writable-role", action="store_true",
                       help="run even if the metadata DB role could write (it is logged)")
    serve.set_defaults(func=cmd_serve)
    refresh = commands.add_parser("refresh", parents=[common], help="run the refresh jobs")
    refresh.add_argument("--once", action="store_true", required=True,
                         help="run every job once and exit")
    refresh.add_argument("--print", action="store_true", dest="print_metrics",
                         help="print the resulting /metrics text to stdout")
    refresh.add_argument("--allow-writable-role", action="store_true",
                         help="run even if the metadata DB role could write (it is logged)")
    refresh.set_defaults(func=cmd_refresh)
    migrate = commands.add_parser("migrate", parents=[common], help="create or upgrade the "
                                  "cache schema")
    migrate.set_defaults(func=cmd_migrate)
    check = commands.add_parser("check", parents=[common], help="validate the config and both "
                                "databases, then exit")
    check.set_defaults(func=cmd_check)
    report_parser = commands.add_parser("report", parents=[common], help="reports from the "
                                        "cache alone: DAG runs per day, business metrics")
    report.add_arguments(report_parser)
    report_parser.set_defaults(func=cmd_report)
    demo_parser = commands.add_parser("demo", help="start a live demo: embedded PostgreSQL "
                                      "with a simulated bike pipeline, and the bridge")
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(func=cmd_demo)
    return parser


def _role_policy(args: argparse.Namespace, settings: config.Settings) -> config.Settings:
    """`--allow-writable-role` is the setting airflow.allow_writable_role, for one run."""
    if args.allow_writable_role:
        return replace(settings, allow_writable_role=True)
    return settings


def cmd_serve(args: argparse.Namespace, settings: config.Settings) -> int:
    """Refuses (exit 1) once it sees that the role could write, unless allowed."""
    settings = _role_policy(args, settings)
    if args.web_config_file:
        settings = replace(settings, web_config_file=args.web_config_file)
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping after the current cycle", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return EXIT_OK if app.serve(settings, stop) else EXIT_FAILED


def cmd_refresh(args: argparse.Namespace, settings: config.Settings) -> int:
    settings = _role_policy(args, settings)
    with app.running(settings, check_role=True) as bridge:
        ok = bridge.refresher.refresh()
        if args.print_metrics:
            sys.stdout.write(generate_latest(bridge.collector).decode())
    return EXIT_OK if ok else EXIT_FAILED


def cmd_migrate(_args: argparse.Namespace, settings: config.Settings) -> int:
    cache = Cache(settings.cache_url)
    cache.migrate()
    print(f"cache {config.redact_url(settings.cache_url)} is at revision {cache.revision()}")
    cache.dispose()
    return EXIT_OK


def cmd_check(_args: argparse.Namespace, settings: config.Settings) -> int:
    """Every problem is printed with what to do; exit non-zero if there is any."""
    problems = 0
    # Config errors (exit 2) come before anything is called OK.
    url = settings.require_airflow_url()
    app.load_web_config(settings)
    print(f"config: OK ({settings.source})")
    cache = Cache(settings.cache_url)
    cache_url = config.redact_url(settings.cache_url)
    try:
        revision = cache.revision()
        print(f"cache: {cache_url} reachable, schema revision {revision or 'none'}"
              + ("" if revision else " (run `airflow-metrics-bridge migrate`, or `serve` "
                 "migrates on start)"))
    except SQLAlchemyError as exc:
        problems += 1
        print(f"cache: {cache_url} NOT reachable: {first_line(exc)}")
    finally:
        cache.dispose()

    source = Source(settings)
    airflow_url = config.redact_url(url)
    try:
        # Detection and the privilege questions run like a cycle's reads: in a read-only
        # transaction, after the statement and lock timeouts are set.
        with source.reading() as reader:
            schema = reader.schema
            print(f"airflow: {airflow_url} reachable, Airflow {schema.airflow_version} "
                  f"(schema revision {schema.revision})")
            access = inspect_role(reader.conn)
        if access.read_only:
            print(f"airflow: role {access.role!r} is read-only (every relation of schema "
                  f"{access.schema!r} checked): OK")
        else:
            problems += 1
            print(f"airflow: DANGER: the bridge's role {access.role!r} can write to the "
                  "metadata DB:")
            for problem in access.problems:
                print(f"  - {problem}")
            print(f"  {FIX}")
    except (SQLAlchemyError, SourceError) as exc:
        problems += 1
        print(f"airflow: {airflow_url} NOT reachable: {first_line(exc)}")
    except SchemaError as exc:
        problems += 1
        print(f"airflow: {airflow_url}: {exc}")
    finally:
        source.dispose()
    print("check: OK" if not problems else f"check: {problems} problem(s)")
    return EXIT_OK if not problems else EXIT_FAILED


def cmd_report(args: argparse.Namespace, settings: config.Settings) -> int:
    return report.run(args, settings.cache_url, sys.stdout, datetime.now(UTC))


def cmd_demo(args: argparse.Namespace, _settings: config.Settings) -> int:
    return demo.run(args)


if __name__ == "__main__":
    sys.exit(main())
