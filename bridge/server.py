"""HTTP: /metrics from the collector's snapshot, health and readiness probes, a landing page.

Two parts. `make_app` is a WSGI application: it negotiates the exposition format and
the encoding among the four renderings the collector prepares at each refresh, so a
scrape costs a dictionary lookup whatever its headers say. `HttpServer` serves it over
HTTP/1.1 (keep-alive), optionally with TLS and basic auth from a web-config file.

The server is built so that no client can tie it up: one event-loop thread owns every
connection, so an idle or slow one costs a little memory and no thread; a request is
handed to a fixed pool of worker threads only once its header block is complete; every
phase has a deadline (TLS handshake and headers, keep-alive idle time, writing the
response); the number of open connections is capped, and at the cap the connection that
has waited longest without a complete request is closed to make room, so a new scrape
is always served. Dropped connections are logged, at most once a minute, with counts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gzip
import hashlib
import hmac
import io
import logging
import os
import resource
import secrets
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote, urlsplit

import bcrypt
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from bridge.collector import GZIP, OPENMETRICS, SnapshotCollector
from bridge.webconfig import TlsConfig, WebConfig

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
App = Callable[[Environ, StartResponse], Iterable[bytes]]

SERVER = "airflow-metrics-bridge"

LANDING = """<!doctype html>
<html><head><title>airflow-metrics-bridge</title></head>
<body><h1>airflow-metrics-bridge</h1>
<p>Airflow health and business metrics for Prometheus, read from the metadata DB.</p>
<ul><li><a href="metrics">/metrics</a></li><li><a href="-/healthy">/-/healthy</a></li>
<li><a href="-/ready">/-/ready</a> (200 once the first refresh succeeded; else why not)</li></ul>
<p>version {version}</p></body></html>
"""

# The collector renders these content types at each refresh, plain and with GZIP; asked
# the same way as it does, so that the keys are the same.
_TEXT_ENCODER, TEXT = choose_encoder("")
_OPENMETRICS_ENCODER, OPENMETRICS_TYPE = choose_encoder(OPENMETRICS)
OPENMETRICS_VERSIONS = ("1.0.0",)
TEXT_VERSIONS = ("0.0.4",)
ALLOWED = "GET, HEAD"


# ---------------------------------------------------------------- negotiation

def _params(part: str) -> tuple[str, dict[str, str]]:
    """`type/sub; a=1; b="2"` -> ("type/sub", {"a": "1", "b": "2"}), names lower-cased."""
    name, *rest = part.split(";")
    params = {}
    for item in rest:
        key, _, value = item.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return name.strip().lower(), params


def _q(params: dict[str, str]) -> float:
    """The q-value; a malformed one makes the range unacceptable rather than an error."""
    raw = params.get("q", "1")
    try:
        q = float(raw)
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0


def negotiate_format(accept: str) -> str:
    """OpenMetrics when the client asks for it (a version we render, or none) with a
    q-value above 0 and not below the text format's; the text format otherwise,
    including for Accept headers naming nothing we serve (as Prometheus exporters do)."""
    openmetrics = text = 0.0
    for part in accept.split(","):
        media, params = _params(part)
        q = _q(params)
        version = params.get("version")
        if media == "application/openmetrics-text":
            if version is None or version in OPENMETRICS_VERSIONS:
                openmetrics = max(openmetrics, q)
        elif media == "text/plain":
            if version is None or version in TEXT_VERSIONS:
                text = max(text, q)
        elif media in ("text/*", "*/*"):
            text = max(text, q)
    return OPENMETRICS_TYPE if openmetrics > 0 and openmetrics >= text else TEXT


def wants_gzip(accept_encoding: str) -> bool:
    """gzip when it is acceptable (by name or `*`, q above 0) and not less wanted than
    identity; identity is assumed least wanted unless it is named (or `*` names it)."""
    codings: dict[str, float] = {}
    for part in accept_encoding.split(","):
        name, params = _params(part)
        if name:
            codings[name] = max(codings.get(name, 0.0), _q(params))
    star = codings.get("*")
    gzip_q = codings.get("gzip", codings.get("x-gzip", star if star is not None else 0.0))
    identity_q = codings.get("identity", star if star is not None else 0.001)
    return gzip_q > 0 and gzip_q >= identity_q


# ---------------------------------------------------------------- the application

def make_app(collector: SnapshotCollector, not_ready: Callable[[], str | None],
             version: str) -> App:
    """The WSGI application: GET and HEAD of /metrics, /-/healthy, /-/ready and /.

    `not_ready` says why /-/ready is not 200 (None: ready)."""
    renderers: dict[str, Callable[[Collector], bytes]] = {
        TEXT: _TEXT_ENCODER, OPENMETRICS_TYPE: _OPENMETRICS_ENCODER}

    def metrics(environ: Environ, start_response: StartResponse, head: bool) -> list[bytes]:
        content_type = negotiate_format(environ.get("HTTP_ACCEPT", ""))
        headers = [("Content-Type", content_type), ("Vary", "Accept, Accept-Encoding")]
        encoder = renderers[content_type]
        if wants_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
            # The render callbacks only run before the first snapshot is published.
            body = collector.rendered(content_type + GZIP,
                                      lambda c: gzip.compress(encoder(c), compresslevel=1))
            headers.append(("Content-Encoding", "gzip"))
        else:
            body = collector.rendered(content_type, encoder)
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [] if head else [body]

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path not in ("/metrics", "/-/healthy", "/-/ready", "/"):
            return _text(start_response, "404 Not Found", "not found\n", method)
        if method not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed",
                         f"{method} is not allowed here; use GET or HEAD\n", method,
                         extra=[("Allow", ALLOWED)])
        if path == "/metrics":
            return metrics(environ, start_response, method == "HEAD")
        if path == "/-/healthy":
            return _text(start_response, "200 OK", "OK\n", method)
        if path == "/-/ready":
            why = not_ready()
            if why is None:
                return _text(start_response, "200 OK", "ready\n", method)
            return _text(start_response, "503 Service Unavailable", f"not ready: {why}\n",
                         method)
        return _text(start_response, "200 OK", LANDING.format(version=version), method,
                     "text/html")

    return app


def _text(start_response: StartResponse, status: str, body: str, method: str,
          content_type: str = "text/plain",
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", f"{content_type}; charset=utf-8"),
                            ("Content-Length", str(len(data))), *(extra or [])])
    return [] if method == "HEAD" else [data]


# ---------------------------------------------------------------- the server

@dataclass(frozen=True)
class Limits:
    """How much the server takes from clients; the defaults suit a Prometheus scraping
    every 10 s to 1 min, plus people with browsers."""

    # Threads running the application. 0 runs it on the event-loop thread: right for
    # make_app, which only hands over bytes rendered at refresh (handing each request to
    # another thread costs more than the request: see tests/bench_http.py). Give N for an
    # application that may block.
    workers: int = 0
    max_connections: int = 512      # open connections (also kept below the fd limit)
    backlog: int = 1024             # listen queue (the kernel caps it at somaxconn)
    header_timeout: float = 10.0    # connect (TLS handshake included) to a complete header
    idle_timeout: float = 75.0      # keep-alive wait for the next request (> a 1 min scrape)
    write_timeout: float = 30.0     # to hand over one response
    max_header_bytes: int = 16_384  # request line and headers

    def __post_init__(self) -> None:
        for name in ("max_connections", "backlog", "max_header_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be at least 1")
        for name in ("header_timeout", "idle_timeout", "write_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be above 0 seconds")
        if self.workers < 0:
            raise ValueError("Limits.workers must be 0 (on the event loop) or more")


_STATUS_TEXT = {400: "Bad Request", 401: "Unauthorized", 431: "Request Header Fields Too Large",
                500: "Internal Server Error", 505: "HTTP Version Not Supported"}
DROP_LOG_INTERVAL = 60.0
SWEEP_INTERVAL = 0.25  # how often deadlines are checked, in seconds


class _DropLog:
    """Counts dropped connections by reason; logs the first at once, then a summary at
    most every DROP_LOG_INTERVAL seconds, so a flood cannot flood the log."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.total: Counter[str] = Counter()
        self._last = float("-inf")

    def count(self, reason: str) -> None:
        self.counts[reason] += 1
        self.total[reason] += 1
        self.flush()

    def flush(self) -> None:
        now = time.monotonic()
        if self.counts and now - self._last >= DROP_LOG_INTERVAL:
            what = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
            log.warning("http: dropped %d connection(s): %s", sum(self.counts.values()), what)
            self.counts.clear()
            self._last = now


class _BasicAuth:
    """Checks basic auth against bcrypt hashes, at most one bcrypt at a time, off the
    event loop. A verified password is remembered as an HMAC under a key of this process
    (never the password) and compared in constant time, so a scrape costs no bcrypt;
    wrong ones are remembered too (bounded), so retrying them costs nothing either.
    An unknown user is checked against a dummy hash of the same cost: timing does not
    tell which users exist."""

    MAX_REMEMBERED_FAILURES = 1024

    def __init__(self, users: dict[str, str]) -> None:
        self._users = {user: hashed.encode() for user, hashed in users.items()}
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self._failed: dict[bytes, None] = {}
        cost = int(next(iter(users.values())).split("$")[2])
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="http-bcrypt")

    def _digest(self, user: bytes, password: bytes) -> bytes:
        return hmac.new(self._key, user + b"\0" + password, hashlib.sha256).digest()

    async def check(self, header: str | None) -> bool:
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        name = user.decode("utf-8", "replace")
        digest = self._digest(user, password)
        remembered = self._verified.get(name)
        if remembered is not None and hmac.compare_digest(remembered, digest):
            return True
        if digest in self._failed:
            return False
        hashed = self._users.get(name)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._pool, bcrypt.checkpw, password,
                                        hashed or self._dummy)
        if ok and hashed is not None:
            self._verified[name] = digest
            return True
        if len(self._failed) >= self.MAX_REMEMBERED_FAILURES:
            del self._failed[next(iter(self._failed))]
        self._failed[digest] = None
        return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _basic_credentials(header: str | None) -> tuple[bytes, bytes] | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None


class _TlsContexts:
    """The SSL context, rebuilt when the certificate, key or CA file changes (checked at
    most once a second), so rotated certificates are used without a restart. A file that
    does not load keeps the previous context, with an error logged once per change."""

    def __init__(self, config: TlsConfig) -> None:
        self.config = config
        self._stamp = self._files_stamp()
        self._context = config.context()
        self._checked = time.monotonic()

    def _files_stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self.config.files:
            try:
                st = path.stat()
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((-1, -1))
        return tuple(stamps)

    def current(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            stamp = self._files_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._context = self.config.context()
                    log.info("http: TLS certificate files changed; reloaded")
                except (ssl.SSLError, OSError) as exc:
                    log.error("http: TLS files changed but do not load (%s); still using "
                              "the previous certificate", exc)
        return self._context


class _Connection:
    """What the server tracks of one open connection: its phase and the deadline of
    that phase (checked by the server's sweeper, which aborts the connection when it
    passes: cheaper per request than a timer per phase)."""

    __slots__ = ("deadline", "expired", "phase", "transport", "waiting_since")

    def __init__(self, transport: asyncio.WriteTransport, deadline: float) -> None:
        self.transport = transport
        self.phase = "header"  # handshake, header, idle, serving or write
        self.deadline = deadline
        self.waiting_since = time.monotonic()
        self.expired: str | None = None  # why the sweeper closed it ("" for no news)

    @property
    def serving(self) -> bool:
        """A complete request is being answered (such a connection is never evicted)."""
        return self.phase in ("serving", "write")

    def enter(self, phase: str, deadline: float) -> None:
        self.phase = phase
        self.deadline = deadline


class _Close(Exception):
    """Ends a connection; `reason` (if any) is counted as a drop."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "


class HttpServer:
    """The listening socket, its event-loop thread and the worker pool.

    The socket is bound in the constructor (so `port` is known and a taken port fails
    at once); `start` serves; `stop` closes every connection and returns.
    """

    def __init__(self, host: str, port: int, app: App, web_config: WebConfig | None = None,
                 limits: Limits | None = None) -> None:
        self.app = app
        self.limits = limits = limits or Limits()
        self.web_config = web_config
        self._tls = _TlsContexts(web_config.tls) if web_config and web_config.tls else None
        users = dict(web_config.basic_auth_users) if web_config else {}
        self._auth = _BasicAuth(users) if users else None
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in (web_config.headers
                                                           if web_config else ()))
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        room = soft - 128 if soft != resource.RLIM_INFINITY else limits.max_connections
        self.max_connections = max(8, min(limits.max_connections, room))
        self.drops = _DropLog()
        self._sock = _listen(host, port, limits.backlog)
        self.port = int(self._sock.getsockname()[1])
        self.scheme = "https" if self._tls else "http"  # for log lines and URLs
        self._workers = ThreadPoolExecutor(limits.workers, thread_name_prefix="http-worker") \
            if limits.workers > 0 else None
        self._connections: dict[_Connection, None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._date = ("", 0)
        self._failure: BaseException | None = None

    # ------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(stopping.set)
            self._thread.join(timeout=10)
        if self._workers is not None:
            self._workers.shutdown(wait=False, cancel_futures=True)
        if self._auth is not None:
            self._auth.close()
        self._sock.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._handle, sock=self._sock,
                                            backlog=self.limits.backlog,
                                            limit=self.limits.max_header_bytes)
        self._started.set()
        sweeper = asyncio.create_task(self._sweep())
        await self._stopping.wait()
        server.close()
        for conn in list(self._connections):
            conn.transport.abort()
        sweeper.cancel()
        await server.wait_closed()

    async def _sweep(self) -> None:
        """Close connections whose phase outlived its deadline; flush the drop log."""
        loop = asyncio.get_running_loop()
        reasons = {
            "handshake": f"no TLS handshake within {self.limits.header_timeout:g}s",
            "header": f"no complete request header within {self.limits.header_timeout:g}s "
                      "(silent or slow client)",
            "idle": "",  # the end of an idle keep-alive is no news
            "write": f"response not taken within {self.limits.write_timeout:g}s "
                     "(client not reading)"}
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = loop.time()
            for conn in list(self._connections):
                if conn.deadline <= now and conn.phase in reasons:
                    conn.expired = reasons[conn.phase]
                    conn.transport.abort()
            self.drops.flush()

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    # ------------------------------------------------ connections

    def _admit(self, conn: _Connection) -> bool:
        """Track a new connection; at the cap, close the one that has waited longest
        without a complete request (an idle keep-alive, a silent or slow client) to make
        room, or refuse this one if every connection is being answered."""
        if len(self._connections) >= self.max_connections:
            victims = [c for c in self._connections if not c.serving]
            if not victims:
                self.drops.count("refused at max_connections (all busy)")
                return False
            victim = min(victims, key=lambda c: c.waiting_since)
            victim.expired = ""  # counted here, not again by its handler
            victim.transport.abort()
            del self._connections[victim]
            self.drops.count(f"closed to make room at max_connections={self.max_connections}")
        self._connections[conn] = None
        return True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        conn = _Connection(writer.transport, loop.time() + self.limits.header_timeout)
        if not self._admit(conn):
            writer.transport.abort()
            return
        try:
            await self._serve(conn, reader, writer)
        except _Close as close:
            if close.reason and conn.expired is None:
                self.drops.count(close.reason)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except Exception:
            log.exception("http: unexpected error on a connection")
        finally:
            self._connections.pop(conn, None)
            if conn.expired:
                self.drops.count(conn.expired)
            if conn.expired is not None:
                writer.transport.abort()
            else:
                writer.close()

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        limits = self.limits
        # drain() waits until the whole response is handed to the kernel, so the write
        # deadline covers all of it and nothing stays buffered after the last one.
        writer.transport.set_write_buffer_limits(high=0)
        if self._tls is not None:
            # Called before anything awaits, so no byte of the handshake has been read
            # into `reader` yet.
            conn.phase = "handshake"
            await self._handshake(writer)
            conn.transport = writer.transport
            writer.transport.set_write_buffer_limits(high=0)
            conn.phase = "header"
        peer = writer.get_extra_info("peername")
        start = b""
        while True:
            try:
                head = start + await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                raise _Close("closed mid-header" if start or exc.partial else None) from None
            except asyncio.LimitOverrunError:
                await self._error(conn, writer, 431)
                raise _Close(f"request header over {limits.max_header_bytes} bytes") from None
            conn.enter("serving", float("inf"))
            request = _parse(head)
            if isinstance(request, int):
                await self._error(conn, writer, request)
                raise _Close("malformed request")
            if not await self._respond(conn, request, writer, peer):
                return
            conn.enter("idle", loop.time() + limits.idle_timeout)
            conn.waiting_since = time.monotonic()
            start = await reader.read(1)
            if not start:
                return
            conn.enter("header", loop.time() + limits.header_timeout)

    async def _handshake(self, writer: asyncio.StreamWriter) -> None:
        assert self._tls is not None
        try:
            await writer.start_tls(self._tls.current())
        except ssl.SSLError as exc:
            raise _Close(f"TLS handshake failed ({exc.reason or exc.strerror})") from None
        except (ConnectionError, OSError):
            raise _Close() from None  # closed before a handshake (a TCP probe): no news
        if not self._tls.config.allows(writer.get_extra_info("peercert")):
            raise _Close("client certificate not in client_allowed_sans")

    async def _respond(self, conn: _Connection, request: _Request,
                       writer: asyncio.StreamWriter, peer: Any) -> bool:
        """Answer one request; whether the connection stays open."""
        headers = request.headers
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        if request.version == "HTTP/1.1":
            keep_alive = "close" not in tokens
        else:
            keep_alive = "keep-alive" in tokens
        # No endpoint takes a body: rather than read one, answer and close.
        length = headers.get("content-length", "0").strip()
        if "transfer-encoding" in headers or length != "0":
            if not length.isdigit():
                await self._error(conn, writer, 400)
                raise _Close("malformed request")
            keep_alive = False
        if self._stopping is not None and self._stopping.is_set():
            keep_alive = False
        if self._auth is not None and not await self._auth.check(headers.get("authorization")):
            status, response_headers, body = "401 Unauthorized", [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("WWW-Authenticate", f'Basic realm="{SERVER}", charset="UTF-8"')], \
                b"Unauthorized\n"
            response_headers.append(("Content-Length", str(len(body))))
        else:
            environ = self._environ(request, peer)
            if self._workers is None:
                status, response_headers, body = _call(self.app, environ)
            else:
                status, response_headers, body = await asyncio.get_running_loop(
                ).run_in_executor(self._workers, _call, self.app, environ)
        await self._send(conn, writer, request.version, status, response_headers,
                         b"" if request.method == "HEAD" else body, keep_alive)
        return keep_alive

    def _environ(self, request: _Request, peer: Any) -> Environ:
        split = urlsplit(request.target)
        environ: Environ = {
            "REQUEST_METHOD": request.method, "PATH_INFO": unquote(split.path, "latin-1"),
            "QUERY_STRING": split.query, "SERVER_PROTOCOL": request.version,
            "SERVER_NAME": SERVER, "SERVER_PORT": str(self.port),
            "REMOTE_ADDR": peer[0] if isinstance(peer, tuple) else "",
            "SCRIPT_NAME": "", "wsgi.url_scheme": self.scheme, "wsgi.input": io.BytesIO(),
            "wsgi.errors": io.StringIO(), "wsgi.version": (1, 0), "wsgi.multithread": True,
            "wsgi.multiprocess": False, "wsgi.run_once": False}
        for name, value in request.headers.items():
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value
            else:
                environ["HTTP_" + key] = value
        return environ

    def _http_date(self) -> str:
        now = int(time.time())
        text, second = self._date
        if second != now:
            text = formatdate(now, usegmt=True)
            self._date = (text, now)
        return text

    async def _send(self, conn: _Connection, writer: asyncio.StreamWriter, version: str,
                    status: str,
                    headers: list[tuple[str, str]], body: bytes, keep_alive: bool) -> None:
        lines = [f"HTTP/1.1 {status}\r\n", f"Date: {self._http_date()}\r\n",
                 f"Server: {SERVER}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        if not keep_alive:
            lines.append("Connection: close\r\n")
        elif version == "HTTP/1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append(self._extra)
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        if len(body) < 65536:
            writer.write(head + body)
        else:
            writer.write(head)
            writer.write(body)
        if writer.transport.get_write_buffer_size():
            conn.enter("write", asyncio.get_running_loop().time() + self.limits.write_timeout)
            await writer.drain()

    async def _error(self, conn: _Connection, writer: asyncio.StreamWriter, code: int) -> None:
        body = f"{_STATUS_TEXT[code]}\n".encode()
        with contextlib.suppress(ConnectionError):
            await self._send(conn, writer, "HTTP/1.1", f"{code} {_STATUS_TEXT[code]}",
                             [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))], body, keep_alive=False)


def _parse(head: bytes) -> _Request | int:
    """The request line and headers, or the status code of what is wrong with them."""
    lines = head.lstrip(b"\r\n")[:-4].split(b"\r\n") if head.strip() else []
    if not lines:
        return 400
    try:
        text = [line.decode("latin-1") for line in lines]
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return 400
    parts = text[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[0].isupper():
        return 400
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        return 505 if version.startswith("HTTP/") else 400
    if not target.startswith("/") and not target.startswith(("http://", "https://")) \
            and target != "*":
        return 400
    headers: dict[str, str] = {}
    for line in text[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            return 400  # includes obsolete line folding
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return _Request(method, target, version, headers)


def _call(app: App, environ: Environ) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run the WSGI application in a worker: (status, headers, body)."""
    captured: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        captured[:] = [status, headers]
        return lambda _data: None

    try:
        chunks = app(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
    except Exception:
        log.exception("http: error serving %s", environ.get("PATH_INFO"))
        body = b"Internal Server Error\n"
        return "500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8"),
                                             ("Content-Length", str(len(body)))], body
    status, headers = captured
    headers = list(headers)
    if not any(name.lower() == "content-length" for name, _ in headers):
        headers.append(("Content-Length", str(len(body))))
    return status, headers, body


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
