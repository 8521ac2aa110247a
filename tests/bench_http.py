"""Load test of the HTTP server: /metrics of ~10,000 series under 50 keep-alive connections.

    python -m tests.bench_http                       # 10,000 series, 50 connections, 10 s
    python -m tests.bench_http --series 2000 --seconds 5

The server runs in this process with a published snapshot; the load comes from `wrk` when
it is installed (Debian: apt-get install wrk), else from a threaded client in a separate
process. Each run reports requests/s, p50 and p99 latency, and errors (timeouts, non-200),
with and without gzip. Figures only; correctness is in tests/test_server.py.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from bridge.collector import Snapshot, SnapshotCollector, View
from bridge.health import Health
from bridge.server import HttpServer, Limits, make_app

WRK_TIMEOUT = "10s"  # wrk leaves requests slower than its timeout out of its latency figures


@dataclass(frozen=True)
class Result:
    label: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: str
    body_bytes: int

    def line(self) -> str:
        return (f"{self.label:<28} {self.requests_per_s:>9,.0f} req/s   p50 {self.p50_ms:7.2f} ms"
                f"   p99 {self.p99_ms:7.2f} ms   body {self.body_bytes:>9,} B   {self.errors}")


def counters(series: int) -> dict[str, dict[Any, float]]:
    """`series` per-task counter series, 100 tasks per DAG."""
    per_dag = 100
    return {"airflow_task_instance_finished_total": {
        (("dag_id", f"dag_{i // per_dag}"), ("state", "success"), ("task_id", f"task_{i}")):
            float(i) for i in range(series)}}


def collector_with(series: int) -> SnapshotCollector:
    """A collector holding a snapshot of `series` per-task counter series."""
    collector = SnapshotCollector(View(10, max_series=series + 1000))
    collector.publish(Snapshot(counters(series), Health(version="bench", metadb_up=True)))
    return collector


def _body_size(port: int, gzip: bool) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if gzip else {})
        return len(conn.getresponse().read())
    finally:
        conn.close()


_WRK_LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk(url: str, connections: int, seconds: float, gzip: bool) -> tuple[float, float,
                                                                           float, str]:
    wrk = shutil.which("wrk")
    assert wrk is not None
    args = [wrk, "-t", "2", "-c", str(connections), "-d", f"{seconds:g}s", "--latency",
            "--timeout", WRK_TIMEOUT]
    if gzip:
        args += ["-H", "Accept-Encoding: gzip"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = {q: float(v) * _UNITS[u] for q, v, u in _WRK_LATENCY.findall(out)}
    errors = []
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        errors.append("socket errors: " + socket_errors.group(1).strip())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors.append(f"non-2xx: {non_2xx.group(1)}")
    return rate, latency["50"], latency["99"], "; ".join(errors) or "no errors"


def _client_main(url_host: str, port: int, connections: int, seconds: float,
                 gzip: bool) -> None:
    """The fallback load generator (run in its own process): one keep-alive connection per
    thread, requests back to back; prints JSON figures."""
    latencies: list[list[float]] = [[] for _ in range(connections)]
    failures = [0] * connections
    deadline = time.monotonic() + seconds
    headers = {"Accept-Encoding": "gzip"} if gzip else {}

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection(url_host, port, timeout=10)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                conn.request("GET", "/metrics", headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(url_host, port, timeout=10)
            if ok:
                latencies[i].append(time.perf_counter() - started)
            else:
                failures[i] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    flat = sorted(x for xs in latencies for x in xs)
    print(json.dumps({"rate": len(flat) / elapsed, "p50": flat[len(flat) // 2] * 1000,
                      "p99": flat[int(len(flat) * 0.99)] * 1000, "failures": sum(failures)}))


def _python_client(port: int, connections: int, seconds: float,
                   gzip: bool) -> tuple[float, float, float, str]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench_http", "--client", str(port), "--connections",
         str(connections), "--seconds", str(seconds), *(["--gzip"] if gzip else [])],
        capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    data = json.loads(out)
    return data["rate"], data["p50"], data["p99"], f"failed requests: {data['failures']}"


def run(series: int = 10_000, connections: int = 50, seconds: float = 10) -> list[str]:
    """Requests/s and p50/p99 latency of /metrics, with and without gzip; the application
    on the event-loop thread (the default) and, for comparison, in a pool of 4 workers."""
    collector = collector_with(series)
    tool = "wrk" if shutil.which("wrk") else "python client"
    lines = [f"/metrics of {series:,} series, {connections} keep-alive connections, "
             f"{seconds:g} s each, load from {tool}"]
    for workers in (0, 4):
        server = HttpServer("127.0.0.1", 0, make_app(collector, lambda: None, "bench"),
                            limits=Limits(workers=workers))
        server.start()
        try:
            for gzip in (True, False):
                url = f"http://127.0.0.1:{server.port}/metrics"
                if tool == "wrk":
                    rate, p50, p99, errors = _wrk(url, connections, seconds, gzip)
                else:
                    rate, p50, p99, errors = _python_client(server.port, connections,
                                                            seconds, gzip)
                label = ("gzip" if gzip else "identity") + \
                    (f", {workers} workers" if workers else ", on the loop")
                lines.append(Result(label, rate, p50, p99, errors,
                                    _body_size(server.port, gzip)).line())
                time.sleep(1)  # let the previous run's connections close
        finally:
            server.stop()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--gzip", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        _client_main("127.0.0.1", args.client, args.connections, args.seconds, args.gzip)
        return
    for line in run(args.series, args.connections, args.seconds):
        print(line)


if __name__ == "__main__":
    main()
