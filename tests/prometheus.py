"""Real tools for the server tests: a Prometheus to scrape the bridge, `openssl` for a
throw-away PKI. A missing tool skips the test, unless BRIDGE_REQUIRE_TOOLS=1, in which
case it fails."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools import free_port, missing_tool

WAIT = 60.0  # upper bound of every wait here, in seconds


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    missing_tool(f"{name} is not on PATH (Debian: apt-get install {package})")


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT,
             context: Callable[[], str] = lambda: "") -> Any:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}\n"
                f"{context()}")


# ---------------------------------------------------------------- PKI

@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for localhost/127.0.0.1 and client certificates, in
    `directory`: <name>.crt and <name>.key."""

    directory: Path

    def crt(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"


def make_pki(directory: Path) -> Pki:
    """ca (trusted), server (SAN localhost, 127.0.0.1), client (SAN prometheus.example),
    other_client (SAN other.example), both signed by ca, and stranger (self-signed)."""
    openssl = require_binary("openssl", "openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=bridge test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    leaves = {"server": ("localhost", "DNS:localhost,IP:127.0.0.1", "serverAuth"),
              "client": ("prometheus", "DNS:prometheus.example", "clientAuth"),
              "other_client": ("other", "DNS:other.example", "clientAuth")}
    for name, (cn, san, usage) in leaves.items():
        (directory / f"{name}.ext").write_text(
            f"subjectAltName={san}\nextendedKeyUsage={usage}\n"
            "basicConstraints=critical,CA:FALSE\n")
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
            "-extfile", f"{name}.ext")
    run("req", "-x509", *ec, "-keyout", "stranger.key", "-out", "stranger.crt", "-days", "2",
        "-subj", "/CN=stranger", "-addext", "subjectAltName=DNS:prometheus.example")
    return Pki(directory)


# ---------------------------------------------------------------- Prometheus

@dataclass
class Prometheus:
    url: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "--- prometheus log\n" + "\n".join(text.splitlines()[-lines:])

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                data = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            data = json.loads(exc.read())
        assert data.get("status") == "success", f"{url}: {data}"
        return data["data"]

    def targets(self) -> dict[str, dict[str, Any]]:
        """Active targets by job name."""
        return {t["labels"]["job"]: t for t in self.api("targets", state="active")
                ["activeTargets"]}

    def value(self, expr: str) -> float | None:
        result = self.api("query", query=expr)["result"]
        return float(result[0]["value"][1]) if len(result) == 1 else None


@contextmanager
def running_prometheus(directory: Path, scrape_configs: list[dict[str, Any]],
                       scrape_interval: str = "2s") -> Iterator[Prometheus]:
    """A Prometheus with these scrape jobs, ready to be queried; stopped on exit."""
    binary = require_binary("prometheus", "prometheus")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": "1s",
                   "evaluation_interval": scrape_interval},
        "scrape_configs": scrape_configs}))
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory)
    prometheus = Prometheus(f"http://127.0.0.1:{port}", popen, log)
    try:
        def ready() -> bool:
            assert popen.poll() is None, f"prometheus exited\n{prometheus.tail()}"
            with urllib.request.urlopen(prometheus.url + "/-/ready", timeout=2) as response:
                return bool(response.status == 200)

        wait_for("Prometheus to become ready", ready, context=prometheus.tail)
        yield prometheus
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=10)
