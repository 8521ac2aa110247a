"""HTTP: /metrics from the collector's snapshot, health and readiness probes, a landing page."""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.exposition import choose_encoder

from bridge.collector import GZIP, SnapshotCollector

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

LANDING = """<!doctype html>
<html><head><title>airflow-metrics-bridge</title></head>
<body><h1>airflow-metrics-bridge</h1>
<p>Airflow health and business metrics for Prometheus, read from the metadata DB.</p>
<ul><li><a href="metrics">/metrics</a></li><li><a href="-/healthy">/-/healthy</a></li>
<li><a href="-/ready">/-/ready</a> (200 once the first refresh succeeded)</li></ul>
<p>version {version}</p></body></html>
"""


def make_app(collector: SnapshotCollector, ready: Callable[[], bool],
             version: str) -> Callable[[Environ, StartResponse], Iterable[bytes]]:

    def metrics(environ: Environ, start_response: StartResponse) -> list[bytes]:
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        headers = [("Content-Type", content_type)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = collector.rendered(content_type + GZIP,
                                      lambda c: gzip.compress(encoder(c), compresslevel=1))
            headers.append(("Content-Encoding", "gzip"))
        else:
            body = collector.rendered(content_type, encoder)
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/-/healthy":
            return _text(start_response, "200 OK", "OK\n")
        if path == "/-/ready":
            if ready():
                return _text(start_response, "200 OK", "ready\n")
            return _text(start_response, "503 Service Unavailable",
                         "not ready: no successful refresh yet\n")
        if path == "/":
            return _text(start_response, "200 OK", LANDING.format(version=version), "text/html")
        return _text(start_response, "404 Not Found", "not found\n")

    return app


def _text(start_response: StartResponse, status: str, body: str,
          content_type: str = "text/plain") -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", f"{content_type}; charset=utf-8"),
                            ("Content-Length", str(len(data)))])
    return [data]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not news."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class HttpServer:
    """The listening socket and its thread."""

    def __init__(self, host: str, port: int,
                 app: Callable[[Environ, StartResponse], Iterable[bytes]]) -> None:
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("BridgeServer", (_ThreadingServer,), {"address_family": family})
        self.httpd: WSGIServer = make_server(host, port, app, server_class, _QuietHandler)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
