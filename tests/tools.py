"""What tests that drive external tools share: a missing tool, a command that must succeed,
a free port, this process's peak RSS."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]


def missing_tool(message: str) -> NoReturn:
    """Skip locally; fail where BRIDGE_REQUIRE_TOOLS=1 (CI) makes the tool mandatory."""
    if os.environ.get("BRIDGE_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{message} and BRIDGE_REQUIRE_TOOLS=1")
    pytest.skip(f"{message} (set BRIDGE_REQUIRE_TOOLS=1 to make this a failure)")


def run(cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run a command that must succeed; its output is the failure message otherwise."""
    try:
        return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True,
                              timeout=120)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"`{' '.join(cmd)}` exited {exc.returncode}\n"
                    f"--- stdout\n{exc.stdout}\n--- stderr\n{exc.stderr}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_kib() -> int:
    """This process's peak RSS in KiB: VmHWM on Linux, where `ru_maxrss` keeps the peak of
    the parent across fork and exec (it would report the benchmark's own peak)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return next(int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmHWM:"))
