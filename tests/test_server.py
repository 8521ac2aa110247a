"""The HTTP server as clients meet it: negotiation, methods, keep-alive, clients that
hold connections or never finish a request, TLS (with client certificates), basic auth,
the web-config file, and a real Prometheus scraping over TLS with basic auth."""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from bridge.collector import GZIP, OPENMETRICS, Snapshot, SnapshotCollector, View
from bridge.health import Health
from bridge.server import (
    OPENMETRICS_TYPE,
    TEXT,
    HttpServer,
    Limits,
    make_app,
    negotiate_format,
    wants_gzip,
)
from bridge.webconfig import WebConfig, WebConfigError, load
from tests.prometheus import Pki, make_pki, running_prometheus, wait_for

PASSWORD = "correct horse battery staple"
RENDERED_KEYS = {TEXT, OPENMETRICS_TYPE, TEXT + GZIP, OPENMETRICS_TYPE + GZIP}


# ---------------------------------------------------------------- fixtures

def snapshot(series: int = 0) -> Snapshot:
    counters: dict[str, Any] = {"airflow_dag_run_finished_total": {
        (("dag_id", "etl"), ("run_type", "scheduled"), ("state", "success")): 4.0}}
    if series:
        counters["airflow_task_instance_finished_total"] = {
            (("dag_id", f"dag_{i // 100}"), ("state", "success"), ("task_id", f"t{i}")):
                float(i) for i in range(series)}
    return Snapshot(counters, Health(version="1.0", metadb_up=True))


class StrictCollector(SnapshotCollector):
    """Records the keys asked for; fails the test if anything is rendered on demand."""

    def __init__(self, view: View) -> None:
        super().__init__(view)
        self.asked: list[str] = []

    def rendered(self, key: str, render: Callable[[Any], bytes]) -> bytes:
        self.asked.append(key)

        def on_demand(_collector: Any) -> bytes:
            raise AssertionError(f"{key!r} rendered on demand")

        return super().rendered(key, on_demand)


def published(series: int = 0) -> StrictCollector:
    collector = StrictCollector(View(interval=10, max_series=series + 1000))
    collector.publish(snapshot(series))
    return collector


class Servers:
    """Starts servers for a test and stops them after it."""

    def __init__(self) -> None:
        self.started: list[HttpServer] = []

    def __call__(self, collector: SnapshotCollector | None = None, *,
                 web_config: WebConfig | None = None, limits: Limits | None = None,
                 app: Any = None) -> HttpServer:
        app = app or make_app(collector or published(), lambda: None, "9.9.9")
        server = HttpServer("127.0.0.1", 0, app, web_config, limits)
        server.start()
        self.started.append(server)
        return server


@pytest.fixture
def serve() -> Iterator[Servers]:
    servers = Servers()
    yield servers
    for server in servers.started:
        server.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki") / "certs")


def get(port: int, path: str = "/metrics", method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def is_closed_by_server(sock: socket.socket) -> bool:
    """True if the server closed (EOF or reset), False if the connection is still open
    with nothing to read."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


def wait_connections(server: HttpServer, n: int) -> None:
    wait_for(f"{n} open connections", lambda: server.open_connections == n)


def expected(key: str, collector: SnapshotCollector) -> bytes:
    """What the collector pre-rendered under `key`, rendered here independently."""
    accept = OPENMETRICS if key.startswith("application/openmetrics-text") else ""
    registry = CollectorRegistry()
    registry.register(collector)
    encoder, _ = choose_encoder(accept)
    return encoder(registry)


# ---------------------------------------------------------------- negotiation

PROMETHEUS_2 = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROMETHEUS_3 = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
                "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;"
                "escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1")


@pytest.mark.parametrize(("accept", "served"), [
    ("", TEXT),
    ("*/*", TEXT),
    ("application/json", TEXT),
    ("text/plain", TEXT),
    ("application/openmetrics-text", OPENMETRICS_TYPE),
    ("application/openmetrics-text; version=1.0.0", OPENMETRICS_TYPE),
    ('Application/OpenMetrics-Text; Version="1.0.0"', OPENMETRICS_TYPE),
    ("application/openmetrics-text; version=0.0.1", TEXT),
    ("application/openmetrics-text; version=abc", TEXT),
    ("application/openmetrics-text; version=1.0.0; q=0", TEXT),
    ("application/openmetrics-text; q=abc", TEXT),
    ("application/openmetrics-text; q=7", TEXT),
    ("text/plain, application/openmetrics-text; q=0.5", TEXT),
    ("text/plain; q=0.5, application/openmetrics-text", OPENMETRICS_TYPE),
    ("text/plain; version=9.9.9, application/openmetrics-text; q=0.1", OPENMETRICS_TYPE),
    (PROMETHEUS_2, OPENMETRICS_TYPE),
    (PROMETHEUS_3, OPENMETRICS_TYPE),
    (";;=;,,, ;q=;version", TEXT),
])
def test_format_negotiation(accept: str, served: str) -> None:
    assert negotiate_format(accept) == served


@pytest.mark.parametrize(("accept_encoding", "gzipped"), [
    ("", False),
    ("gzip", True),
    ("GZIP", True),
    ("x-gzip", True),
    ("gzip;q=0", False),
    ("gzip; q=0.000", False),
    ("gzip;q=nonsense", False),
    ("*", True),
    ("*;q=0", False),
    ("*, gzip;q=0", False),
    ("identity", False),
    ("deflate, br", False),
    ("br, gzip;q=0.8", True),
    ("gzip;q=0.5, identity", False),
    ("gzip, identity;q=0.5", True),
    ("identity;q=0, *", True),
])
def test_encoding_negotiation(accept_encoding: str, gzipped: bool) -> None:
    assert wants_gzip(accept_encoding) is gzipped


def test_only_the_prerendered_formats_are_served(serve: Servers) -> None:
    collector = published()
    server = serve(collector)
    accepts = [f"application/openmetrics-text; version={v}" for v in
               ("1.0.0", "0.0.1", "abc", "2", "", "1.0.0;escaping=values")]
    accepts += ["text/plain;version=0.0.5", PROMETHEUS_3, "*/*;q=0.2", "x/y;q=1"] * 3
    bodies: dict[tuple[str, str], bytes] = {}
    for accept in accepts:
        for encoding in ("gzip", "gzip;q=0", "*", "identity"):
            status, headers, body = get(server.port, headers={"Accept": accept,
                                                              "Accept-Encoding": encoding})
            assert status == 200
            assert headers["Vary"] == "Accept, Accept-Encoding"
            content_type = headers["Content-Type"]
            assert content_type in (TEXT, OPENMETRICS_TYPE)
            if headers.get("Content-Encoding") == "gzip":
                assert encoding in ("gzip", "*")
                body = gzip.decompress(body)
            else:
                assert "Content-Encoding" not in headers
                assert encoding in ("gzip;q=0", "identity")
            assert int(headers["Content-Length"]) > 0
            bodies[(content_type, headers.get("Content-Encoding", ""))] = body
    assert set(collector.asked) == RENDERED_KEYS
    assert bodies[(TEXT, "")] == bodies[(TEXT, "gzip")] == expected(TEXT, collector)
    assert bodies[(OPENMETRICS_TYPE, "")] == bodies[(OPENMETRICS_TYPE, "gzip")] == \
        expected(OPENMETRICS_TYPE, collector)
    assert bodies[(OPENMETRICS_TYPE, "")].endswith(b"# EOF\n")


def test_head_has_the_headers_of_get_and_no_body(serve: Servers) -> None:
    server = serve()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for path in ("/metrics", "/-/healthy", "/-/ready", "/"):
        for encoding in ("gzip", "identity"):
            conn.request("HEAD", path, headers={"Accept-Encoding": encoding})
            head = conn.getresponse()
            assert head.read() == b""
            # The same connection then carries a GET: a stray body would corrupt it.
            conn.request("GET", path, headers={"Accept-Encoding": encoding})
            response = conn.getresponse()
            body = response.read()
            assert head.status == response.status == 200
            without_date = {k: v for k, v in head.getheaders() if k != "Date"}
            assert without_date == {k: v for k, v in response.getheaders() if k != "Date"}
            assert int(without_date["Content-Length"]) == len(body) > 0
    conn.close()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
def test_other_methods_get_405_with_allow(serve: Servers, method: str) -> None:
    server = serve()
    for path in ("/metrics", "/-/ready", "/"):
        status, headers, body = get(server.port, path, method=method)
        assert (status, headers["Allow"]) == (405, "GET, HEAD")
        assert body == f"{method} is not allowed here; use GET or HEAD\n".encode()
    assert get(server.port, "/nope", method=method)[0] == 404


def test_server_header_names_no_python(serve: Servers) -> None:
    server = serve()
    for path in ("/metrics", "/nope"):
        assert get(server.port, path)[1]["Server"] == "airflow-metrics-bridge"


def test_paths_and_readiness(serve: Servers) -> None:
    ready = threading.Event()
    server = serve(app=make_app(published(), lambda: None if ready.is_set() else "busy",
                                "9.9.9"))
    assert get(server.port, "/-/healthy")[::2] == (200, b"OK\n")
    assert get(server.port, "/-/ready")[::2] == (503, b"not ready: busy\n")
    ready.set()
    assert get(server.port, "/-/ready")[::2] == (200, b"ready\n")
    status, headers, body = get(server.port, "/")
    assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert b"version 9.9.9" in body
    assert get(server.port, "/metrics?x=1")[0] == 200
    assert get(server.port, "/nope")[::2] == (404, b"not found\n")


# ---------------------------------------------------------------- HTTP/1.1 on the wire

def test_keep_alive_serves_many_requests_on_one_connection(serve: Servers) -> None:
    server = serve()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.connect()
    sock = conn.sock
    for _ in range(20):
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Connection") is None  # HTTP/1.1: persistent by default
        response.read()
    assert conn.sock is sock  # never reconnected
    assert server.open_connections == 1
    conn.close()


def test_pipelined_requests_are_answered_in_order(serve: Servers) -> None:
    server = serve()
    with connect(server.port) as sock:
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_until_closed(sock)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3} [^\r]*)\r\n", data)
    assert statuses == [b"200 OK", b"404 Not Found", b"200 OK"]
    assert data.endswith(b"\r\n\r\nready\n")
    assert data.count(b"Connection: close") == 1


def test_http_1_0_closes_unless_asked_to_keep_alive(serve: Servers) -> None:
    server = serve()
    with connect(server.port) as sock:
        sock.sendall(b"GET /-/healthy HTTP/1.0\r\n\r\n")
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in data
    with connect(server.port) as sock:
        sock.sendall(b"GET /-/healthy HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        head = b""
        while not head.endswith(b"OK\n"):
            head += sock.recv(4096)
        assert b"Connection: keep-alive\r\n" in head
        sock.sendall(b"GET /-/healthy HTTP/1.0\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GARBAGE\r\n\r\n", b"400 Bad Request"),
    (b"GET /metrics\r\n\r\n", b"400 Bad Request"),
    (b"get /metrics HTTP/1.1\r\n\r\n", b"400 Bad Request"),
    (b"GET /metrics HTTP/1.1\r\nNo colon here\r\n\r\n", b"400 Bad Request"),
    (b"GET /metrics HTTP/1.1\r\nX: a\r\n  folded\r\n\r\n", b"400 Bad Request"),
    (b"GET /metrics HTTP/1.1\r\nContent-Length: lots\r\n\r\n", b"400 Bad Request"),
    (b"GET /metrics HTTP/2.0\r\n\r\n", b"505 HTTP Version Not Supported"),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
     b"431 Request Header Fields Too Large"),
])
def test_malformed_requests_get_an_error_and_are_closed(serve: Servers, request_bytes: bytes,
                                                        status: bytes) -> None:
    server = serve()
    with connect(server.port) as sock:
        sock.sendall(request_bytes)
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 " + status + b"\r\n")
    assert b"Connection: close\r\n" in data
    assert get(server.port)[0] == 200  # and the server carries on


def test_a_request_with_a_body_is_answered_then_closed(serve: Servers) -> None:
    server = serve()
    with connect(server.port) as sock:
        sock.sendall(b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                     b"GET /metrics HTTP/1.1\r\n\r\n")
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert data.count(b"HTTP/1.1 ") == 1  # the body was never parsed as a request


# ---------------------------------------------------------------- holding the server up

@pytest.mark.parametrize("workers", [0, 2])
def test_a_scrape_succeeds_past_many_idle_and_slow_connections(serve: Servers,
                                                               workers: int) -> None:
    collector = published()
    server = serve(collector, limits=Limits(workers=workers))
    idle = [connect(server.port) for _ in range(60)]
    slow = [connect(server.port) for _ in range(60)]
    for sock in slow:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/pl")
    wait_connections(server, 120)
    status, _, body = get(server.port)
    assert (status, body) == (200, expected(TEXT, collector))
    assert not any(is_closed_by_server(sock) for sock in idle + slow)
    for sock in idle + slow:
        sock.close()


def test_at_the_connection_cap_the_longest_waiting_one_makes_room(
        serve: Servers, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.server")
    server = serve(limits=Limits(max_connections=10))
    held = []
    for _ in range(10):
        held.append(connect(server.port))
        wait_connections(server, len(held))
    assert get(server.port)[0] == 200
    assert [is_closed_by_server(sock) for sock in held] == [True] + [False] * 9
    wait_connections(server, 9)
    held.append(connect(server.port))
    wait_connections(server, 10)
    assert get(server.port)[0] == 200
    assert [is_closed_by_server(sock) for sock in held] == [True, True] + [False] * 9
    assert dict(server.drops.total) == {"closed to make room at max_connections=10": 2}
    assert "dropped 1 connection(s): 1 closed to make room at max_connections=10" in caplog.text
    for sock in held:
        sock.close()


def test_when_every_connection_is_busy_a_new_one_is_refused_at_once(serve: Servers) -> None:
    release = threading.Event()

    def blocking_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        release.wait(30)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done\n"]

    server = serve(app=blocking_app, limits=Limits(workers=1, max_connections=8))
    busy = [connect(server.port) for _ in range(8)]
    for sock in busy:
        sock.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    wait_connections(server, 8)
    wait_for("8 requests being served", lambda: all(
        c.serving for c in server._connections))
    with connect(server.port) as refused:
        refused.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            assert refused.recv(1) == b""
    assert server.drops.total["refused at max_connections (all busy)"] == 1
    release.set()
    for sock in busy:
        assert read_until_closed(sock).endswith(b"\r\n\r\ndone\n")
        sock.close()


def test_a_slowloris_is_cut_off_after_the_header_timeout(
        serve: Servers, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.server")
    server = serve(limits=Limits(header_timeout=1.0))
    request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slow\r\n\r\n"
    sent = 0
    with connect(server.port) as sock:
        try:
            for byte in request:
                sock.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.1)  # each byte well within any per-read timeout
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert is_closed_by_server(sock) or sent < len(request)
    assert sent < len(request)
    wait_for("the drop to be counted", lambda: server.drops.total)
    reason = "no complete request header within 1s (silent or slow client)"
    assert dict(server.drops.total) == {reason: 1}
    assert f"dropped 1 connection(s): 1 {reason}" in caplog.text
    assert get(server.port)[0] == 200


def test_a_silent_connection_is_closed_after_the_header_timeout(serve: Servers) -> None:
    server = serve(limits=Limits(header_timeout=1.0))
    with connect(server.port) as sock:
        assert read_until_closed(sock) == b""
    wait_for("the drop to be counted", lambda: server.drops.total)
    assert dict(server.drops.total) == {
        "no complete request header within 1s (silent or slow client)": 1}


def test_an_idle_keep_alive_is_closed_quietly_after_the_idle_timeout(serve: Servers) -> None:
    server = serve(limits=Limits(idle_timeout=1.0))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/-/healthy")
    assert conn.getresponse().read() == b"OK\n"
    assert conn.sock is not None
    assert conn.sock.recv(1) == b""  # the server closed it
    conn.close()
    assert dict(server.drops.total) == {}
    wait_connections(server, 0)


def test_a_client_that_does_not_read_is_dropped_after_the_write_timeout(
        serve: Servers) -> None:
    body = b"x" * (64 << 20)  # far more than any kernel socket buffer holds

    def big(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    server = serve(app=big, limits=Limits(write_timeout=1.0))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for("the write timeout", lambda: server.drops.total)
    assert dict(server.drops.total) == {
        "response not taken within 1s (client not reading)": 1}
    received = 0
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    sock.close()
    assert received < len(body)
    wait_connections(server, 0)


def test_the_listen_backlog_holds_connections_until_the_server_starts() -> None:
    server = HttpServer("127.0.0.1", 0, make_app(published(), lambda: None, "9.9.9"))
    try:
        waiting = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
                   for _ in range(200)]
        server.start()
        waiting[-1].sendall(b"GET /-/healthy HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert read_until_closed(waiting[-1]).endswith(b"\r\n\r\nOK\n")
        for sock in waiting:
            sock.close()
    finally:
        server.stop()


# ---------------------------------------------------------------- web-config file

def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def write_config(directory: Path, content: dict[str, Any] | str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "web.yml"
    path.write_text(content if isinstance(content, str) else
                    yaml.safe_dump(content, sort_keys=False))
    return path


def tls_section(pki: Pki, **extra: Any) -> dict[str, Any]:
    """Paths relative to a web.yml written next to the certs directory."""
    return {"cert_file": "certs/server.crt", "key_file": "certs/server.key", **extra}


def test_load_resolves_paths_against_the_file(pki: Pki) -> None:
    hashed = bcrypt_hash(PASSWORD)
    path = write_config(pki.directory.parent, {
        "tls_server_config": tls_section(
            pki, client_auth_type="RequireAndVerifyClientCert",
            client_ca_file="certs/ca.crt", client_allowed_sans=["prometheus.example"],
            min_version="TLS13", cipher_suites=["TLS_AES_128_GCM_SHA256"],
            prefer_server_cipher_suites=False),
        "basic_auth_users": {"prometheus": hashed},
        "http_server_config": {"http2": False,
                               "headers": {"X-Frame-Options": "deny",
                                           "Strict-Transport-Security": "max-age=3600"}}})
    config = load(path)
    assert config.tls is not None
    assert (config.tls.cert_file, config.tls.key_file, config.tls.client_ca_file) == (
        pki.crt("server"), pki.key("server"), pki.crt("ca"))
    assert (config.tls.client_auth_type, config.tls.client_allowed_sans,
            config.tls.min_version, config.tls.max_version, config.tls.cipher_suites,
            config.tls.prefer_server_cipher_suites) == (
        "RequireAndVerifyClientCert", ("prometheus.example",), "TLS13", "TLS13",
        ("TLS_AES_128_GCM_SHA256",), False)
    assert dict(config.basic_auth_users) == {"prometheus": hashed}
    assert config.headers == (("X-Frame-Options", "deny"),
                              ("Strict-Transport-Security", "max-age=3600"))
    assert hashed not in repr(config)
    assert load(write_config(pki.directory.parent / "empty", "")) == WebConfig(
        pki.directory.parent / "empty" / "web.yml")


BAD_CONFIGS: list[tuple[dict[str, Any] | str, str, str]] = [
    # (content, key named in the message, what the message must also say)
    ({"tls_config": {}}, "tls_config", "unknown key; the keys here are tls_server_config"),
    ({"tls_server_config": {"cert_file": "certs/server.crt", "key_file": "certs/server.key",
                            "certfile": "x"}}, "tls_server_config.certfile", "unknown key"),
    ({"rate_limit": {"interval": "1s"}}, "rate_limit", "remove it"),
    ({"tls_server_config": {"cert": "PEM", "key": "PEM"}}, "tls_server_config.cert",
     "set cert_file"),
    ({"tls_server_config": {"cert_file": "certs/server.crt"}}, "tls_server_config.key_file",
     "missing"),
    ({"tls_server_config": {"cert_file": "certs/nope.crt", "key_file": "certs/server.key"}},
     "tls_server_config.cert_file", "nope.crt is not a readable file (paths are relative to "
                                    "the web-config file)"),
    ({"tls_server_config": {"cert_file": "certs/server.crt", "key_file": "certs/client.key"}},
     "tls_server_config.cert_file", "key_file is the private key of cert_file"),
    ({"tls_server_config": {"cert_file": "certs/server.crt", "key_file": "certs/server.key",
                            "client_auth_type": "RequireAnyClientCert",
                            "client_ca_file": "certs/ca.crt"}},
     "tls_server_config.client_auth_type", "use RequireAndVerifyClientCert"),
    ({"tls_server_config": {"cert_file": "certs/server.crt", "key_file": "certs/server.key",
                            "client_auth_type": "Sometimes"}},
     "tls_server_config.client_auth_type", "is not one of NoClientCert"),
    ({"tls_server_config": {"cert_file": "certs/server.crt", "key_file": "certs/server.key",
                            "client_ca_file": "certs/ca.crt"}},
     "tls_server_config.client_ca_file", "set client_auth_type: RequireAndVerifyClientCert"),
    ({"tls_server_config": {"cert_file": "certs/server.crt", "key_file": "certs/server.key",
                            "client_auth_type": "RequireAndVerifyClientCert"}},
     "tls_server_config.client_ca_file", "missing"),
    ({"tls_server_config": {"cert_file": "certs/server.crt", "key_file": "certs/server.key",
                            "client_allowed_sans": ["x"]}},
     "tls_server_config.client_allowed_sans", "needs client_auth_type"),
    ({"tls_server_config": {"cert_file": "certs/server.crt", "key_file": "certs/server.key",
                            "min_version": "TLS14"}},
     "tls_server_config.min_version", "is not one of TLS10, TLS11, TLS12, TLS13"),
    ({"tls_server_config": {"cert_file": "certs/server.crt", "key_file": "certs/server.key",
                            "min_version": "TLS13", "max_version": "TLS12"}},
     "tls_server_config.min_version", "above max_version"),
    ({"tls_server_config": {"cert_file": "certs/server.crt", "key_file": "certs/server.key",
                            "cipher_suites": ["TLS_RSA_WITH_RC4_128_SHA"]}},
     "tls_server_config.cipher_suites", "unknown cipher suite"),
    ({"tls_server_config": {"cert_file": "certs/server.crt", "key_file": "certs/server.key",
                            "curve_preferences": ["X25519"]}},
     "tls_server_config.curve_preferences", "remove"),
    ({"basic_auth_users": {"prometheus": "hunter2"}}, "basic_auth_users.prometheus",
     "is not a bcrypt hash"),
    ({"basic_auth_users": ["prometheus"]}, "basic_auth_users", "mapping"),
    ({"http_server_config": {"headers": {"X-Powered-By": "me"}}},
     "http_server_config.headers.X-Powered-By", "cannot be set"),
    ({"http_server_config": {"headers": {"X-Frame-Options": "allow"}}},
     "http_server_config.headers.X-Frame-Options", "is not one of deny, sameorigin"),
    ({"http_server_config": {"http3": True}}, "http_server_config.http3", "unknown key"),
    ("tls_server_config: [unclosed\n", "line 2 column 1", "not valid YAML"),
    ("- a list\n", "must be a mapping", "tls_server_config"),
]


@pytest.mark.parametrize(("content", "key", "says"), BAD_CONFIGS,
                         ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD_CONFIGS)])
def test_load_refuses_with_file_key_and_fix(pki: Pki, tmp_path: Path,
                                            content: dict[str, Any] | str, key: str,
                                            says: str) -> None:
    directory = tmp_path / "conf"
    (directory / "certs").mkdir(parents=True)
    for name in ("server.crt", "server.key", "client.key", "ca.crt"):
        (directory / "certs" / name).write_bytes((pki.directory / name).read_bytes())
    path = write_config(directory, content)
    with pytest.raises(WebConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:")
    assert key in message and says in message, message
    assert "hunter2" not in message
    assert isinstance(caught.value, ValueError)


# ---------------------------------------------------------------- TLS and basic auth

def tls_config(pki: Pki, tls: dict[str, Any] | None = None, **top: Any) -> WebConfig:
    """A web config serving the PKI's server certificate, from a file in a directory of
    its own next to the certificates (so the paths in it are relative: ../certs/...)."""
    section = {k: f"../certs/{Path(v).name}" if k.endswith("_file") else v
               for k, v in tls_section(pki, **(tls or {})).items()}
    directory = pki.directory.parent / f"config{time.monotonic_ns()}"
    return load(write_config(directory, {"tls_server_config": section, **top}))


def client_context(pki: Pki, cert: str | None = None,
                   maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.crt("ca"))
    if cert:
        ctx.load_cert_chain(pki.crt(cert), pki.key(cert))
    if maximum:
        ctx.maximum_version = maximum
    return ctx


def tls_get(port: int, ctx: ssl.SSLContext, path: str = "/metrics",
            headers: dict[str, str] | None = None,
            host: str = "localhost") -> tuple[int, dict[str, str], bytes, Any]:
    """(status, headers, body, the TLS socket's cipher()) over a verified TLS connection
    to `host` (a name in the server certificate) at 127.0.0.1."""
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                server_hostname=host)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        assert isinstance(conn.sock, ssl.SSLSocket)
        return response.status, dict(response.getheaders()), response.read(), \
            conn.sock.cipher()
    finally:
        conn.close()


def auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_tls_serves_verified_clients_and_refuses_plain_http(serve: Servers, pki: Pki) -> None:
    collector = published()
    server = serve(collector, web_config=tls_config(pki))
    status, _, body, _ = tls_get(server.port, client_context(pki))
    assert (status, body) == (200, expected(TEXT, collector))
    # IP address SAN, gzip, keep-alive over TLS
    conn = http.client.HTTPSConnection("127.0.0.1", server.port,
                                       context=client_context(pki), timeout=10)
    for _ in range(3):
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        response = conn.getresponse()
        assert gzip.decompress(response.read()) == expected(TEXT, collector)
    conn.close()
    with pytest.raises((http.client.HTTPException, OSError)):
        get(server.port)
    wait_for("the failed handshake to be counted", lambda: server.drops.total)
    assert dict(server.drops.total) == {"TLS handshake failed (HTTP_REQUEST)": 1}
    # A TCP probe (connect, close) is no news.
    connect(server.port).close()
    wait_connections(server, 0)
    assert dict(server.drops.total) == {"TLS handshake failed (HTTP_REQUEST)": 1}


def test_tls_versions_and_cipher_suites_are_enforced(serve: Servers, pki: Pki) -> None:
    only13 = serve(web_config=tls_config(pki, tls={"min_version": "TLS13"}))
    with pytest.raises(ssl.SSLError):
        tls_get(only13.port, client_context(pki, maximum=ssl.TLSVersion.TLSv1_2))
    assert tls_get(only13.port, client_context(pki))[0] == 200
    one_suite = serve(web_config=tls_config(pki, tls={
        "max_version": "TLS12", "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"]}))
    cipher = tls_get(one_suite.port, client_context(pki))[3]
    assert cipher[:2] == ("ECDHE-ECDSA-AES256-GCM-SHA384", "TLSv1.2")


def test_mtls_requires_a_client_certificate_from_the_ca(serve: Servers, pki: Pki) -> None:
    server = serve(web_config=tls_config(pki, tls={
        "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "ca.crt"}))
    assert tls_get(server.port, client_context(pki, "client"))[0] == 200
    assert tls_get(server.port, client_context(pki, "other_client"))[0] == 200
    for refused in (None, "stranger"):
        with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
            tls_get(server.port, client_context(pki, refused))
    assert tls_get(server.port, client_context(pki, "client"))[0] == 200


def test_client_allowed_sans_admits_only_listed_names(serve: Servers, pki: Pki) -> None:
    server = serve(web_config=tls_config(pki, tls={
        "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "ca.crt",
        "client_allowed_sans": ["prometheus.example"]}))
    assert tls_get(server.port, client_context(pki, "client"))[0] == 200
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        tls_get(server.port, client_context(pki, "other_client"))
    assert server.drops.total["client certificate not in client_allowed_sans"] == 1


def test_basic_auth_on_every_path_checked_once_per_password(
        serve: Servers, pki: Pki, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    checks: list[bytes] = []
    real_checkpw = bcrypt.checkpw

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        checks.append(password)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting_checkpw)
    collector = published()
    config = tls_config(pki, basic_auth_users={"prometheus": bcrypt_hash(PASSWORD)},
                        http_server_config={"headers": {"X-Content-Type-Options": "nosniff"}})
    server = serve(collector, web_config=config)
    ctx = client_context(pki)
    for path in ("/metrics", "/-/healthy", "/-/ready", "/", "/nope"):
        for headers in ({}, auth("prometheus", "wrong"), auth("nobody", PASSWORD),
                        {"Authorization": "Basic !!!notbase64"},
                        {"Authorization": "Bearer abc"},
                        {"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()}):
            status, response_headers, body, _ = tls_get(server.port, ctx, path, headers)
            assert (status, body) == (401, b"Unauthorized\n")
            assert response_headers["WWW-Authenticate"].startswith("Basic ")
            assert response_headers["X-Content-Type-Options"] == "nosniff"
    # Two bcrypt checks so far: the wrong password and the unknown user (against a dummy
    # hash), each once although each was tried on five paths.
    assert checks == [b"wrong", PASSWORD.encode()]
    for _ in range(5):
        status, headers, body, _ = tls_get(server.port, ctx, "/metrics",
                                           auth("prometheus", PASSWORD))
        assert (status, body) == (200, expected(TEXT, collector))
        assert headers["X-Content-Type-Options"] == "nosniff"
    assert checks == [b"wrong", PASSWORD.encode(), PASSWORD.encode()]
    assert tls_get(server.port, ctx, "/metrics", auth("prometheus", PASSWORD + "!"))[0] == 401
    assert len(checks) == 4
    assert PASSWORD not in caplog.text and "wrong" not in caplog.text


def test_basic_auth_without_tls(serve: Servers, tmp_path: Path) -> None:
    config = load(write_config(tmp_path, {"basic_auth_users": {"p": bcrypt_hash(PASSWORD)}}))
    server = serve(web_config=config)
    assert get(server.port)[0] == 401
    assert get(server.port, headers=auth("p", PASSWORD))[0] == 200


def test_rotated_certificate_files_are_picked_up(serve: Servers, pki: Pki,
                                                 tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("server.crt", "server.key"):
        (certs / name).write_bytes((pki.directory / name).read_bytes())
    config = load(write_config(tmp_path, {"tls_server_config": tls_section(pki)}))
    server = serve(web_config=config)
    ctx = client_context(pki)
    assert tls_get(server.port, ctx)[0] == 200
    # A certificate the client does not trust replaces the served one.
    (certs / "server.crt").write_bytes(pki.crt("stranger").read_bytes())
    (certs / "server.key").write_bytes(pki.key("stranger").read_bytes())

    def refused() -> bool:
        try:
            tls_get(server.port, ctx)
        except ssl.SSLCertVerificationError:
            return True
        return False

    wait_for("the new certificate to be served", refused)


# ---------------------------------------------------------------- a real Prometheus

def test_prometheus_scrapes_over_mtls_with_basic_auth(serve: Servers, pki: Pki,
                                                      tmp_path: Path) -> None:
    config = tls_config(pki, tls={"client_auth_type": "RequireAndVerifyClientCert",
                                  "client_ca_file": "ca.crt"},
                        basic_auth_users={"prometheus": bcrypt_hash(PASSWORD)})
    server = serve(web_config=config)
    (tmp_path / "password").write_text(PASSWORD)
    (tmp_path / "wrong").write_text("wrong")
    target = f"localhost:{server.port}"

    def job(name: str, password_file: str) -> dict[str, Any]:
        return {"job_name": name, "scheme": "https",
                "static_configs": [{"targets": [target]}],
                "tls_config": {"ca_file": str(pki.crt("ca")),
                               "cert_file": str(pki.crt("client")),
                               "key_file": str(pki.key("client"))},
                "basic_auth": {"username": "prometheus",
                               "password_file": str(tmp_path / password_file)}}

    with running_prometheus(tmp_path / "prometheus",
                            [job("bridge", "password"), job("intruder", "wrong")]) as prom:
        def scraped() -> dict[str, dict[str, Any]] | None:
            targets = prom.targets()
            done = all(targets.get(j, {}).get("health") in ("up", "down")
                       for j in ("bridge", "intruder"))
            return targets if done and targets["bridge"]["health"] == "up" else None

        targets = wait_for("both targets scraped", scraped, context=prom.tail)
        assert targets["intruder"]["health"] == "down"
        assert "401" in targets["intruder"]["lastError"]
        assert prom.value('up{job="bridge"}') == 1
        assert prom.value('up{job="intruder"}') == 0
        assert prom.value('airflow_dag_run_finished_total{job="bridge",dag_id="etl"}') == 4
        assert prom.value('airflow_bridge_metadb_up{job="bridge"}') == 1
