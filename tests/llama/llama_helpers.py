"""Helpers for the llama-server tests: free ports, polling with a deadline, stopping by PID.

Kept out of conftest.py so test modules can import them by a name no other directory uses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago on `host` (bind port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def poll(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Wait until `check()` is true, up to `timeout_s`; fail with `what` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}", pytrace=False)
        time.sleep(interval_s)


def stop_pid(proc: subprocess.Popen[Any]) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL; always reaped."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclass
class LlamaServer:
    """One engine process a test started (llama-server, or llama-cpp-python's server with
    `name` and `ready_path` set), with its log file."""

    proc: subprocess.Popen[bytes]
    port: int
    model: Path
    log: Path
    argv: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    name: str = "llama-server"
    ready_path: str = "/health"  # the route that answers 200 once the model is loaded
    wait_s: float = 60.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def health(self) -> tuple[int, bytes] | None:
        """GET the readiness route: (status, body), or None when nothing answers."""
        try:
            r = httpx.get(self.url + self.ready_path, timeout=2.0)
        except httpx.HTTPError:
            return None
        return r.status_code, r.content

    def wait_ready(self, timeout_s: float | None = None) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                tail = self.log_text()[-3000:]
                pytest.fail(f"{self.name} exited {self.proc.returncode}:\n{tail}")
            answer = self.health()
            return answer is not None and answer[0] == 200

        what = f"{self.name} on port {self.port} to answer {self.ready_path} 200"
        poll(ready, timeout_s or self.wait_s, what, 0.1)

    def wait_exit(self, timeout_s: float | None = None) -> int:
        poll(lambda: self.proc.poll() is not None, timeout_s or self.wait_s, f"{self.name} to exit")
        return int(self.proc.returncode)


@dataclass
class Squatter:
    """A plain Python process that listens on a port so nobody else can bind it."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid


def squatters() -> Iterator[Callable[[int], Squatter]]:
    """A fixture body: a factory of foreign listeners on ports, stopped by PID afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> Squatter:
        proc = subprocess.Popen(
            [sys.executable, "-c", SQUAT_SCRIPT, str(port)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if b"listening" not in line:
            pytest.fail(f"the squatter did not start: {line!r}")
        return Squatter(proc=proc, port=port)

    try:
        yield start
    finally:
        for proc in procs:
            stop_pid(proc)
            if proc.stdout is not None:
                proc.stdout.close()


SQUAT_SCRIPT = (
    "import socket, sys, time\n"
    "s = socket.socket()\n"
    "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
    "s.listen(8)\n"
    "print('listening', flush=True)\n"
    "time.sleep(600)\n"
)
