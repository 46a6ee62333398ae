"""Fixtures for the robustness tests: processes stopped by PID, free ports, world-readable dirs.

Every process a robustness test starts goes through `procs` (a `Procs`), which stops it by PID
in teardown even when the test fails: SIGTERM, a grace period, SIGKILL. A process started
indirectly (double-forked, or launched by the program under test) is registered with its PID and
creation time, and is only signalled while that identity still holds, so a reused PID is never hit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

# Generous bounds: two cores shared with other test runs; these are waits, not speed claims.
START_TIMEOUT_S = 20.0
STOP_GRACE_S = 3.0


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """True when a TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `check` until it holds; fail the test with `what` when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def alive(pid: int, create_time: float | None = None) -> bool:
    """The process exists, is not a zombie, and (when given) has this creation time."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class Procs:
    """The processes one test started, stopped by PID in teardown."""

    popens: list[subprocess.Popen[Any]] = field(default_factory=list)
    # (pid, create_time) of processes started indirectly
    adopted: list[tuple[int, float]] = field(default_factory=list)

    def start(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(list(argv), **kwargs)
        self.popens.append(proc)
        return proc

    def adopt(self, pid: int) -> None:
        """Register a process this test caused to exist but did not spawn directly."""
        with contextlib.suppress(psutil.Error):
            self.adopted.append((pid, psutil.Process(pid).create_time()))

    def stop_all(self) -> list[str]:
        """Stop everything; return descriptions of processes that would not go away."""
        for proc in self.popens:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for pid, created in self.adopted:
            if alive(pid, created):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.popens:
            try:
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=STOP_GRACE_S)
        for pid, created in self.adopted:
            while alive(pid, created) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(pid, created):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        left = [f"PID {p.pid} {p.args!r}" for p in self.popens if p.poll() is None]
        end = time.monotonic() + STOP_GRACE_S
        for pid, created in self.adopted:
            while alive(pid, created) and time.monotonic() < end:
                time.sleep(0.05)
            if alive(pid, created):
                left.append(f"PID {pid} (adopted)")
        return left


@pytest.fixture
def procs() -> Iterator[Procs]:
    keeper = Procs()
    try:
        yield keeper
    finally:
        left = keeper.stop_all()
    assert not left, f"processes still alive after teardown: {left}"


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A fresh directory under /tmp that every user can read (mode 0755).

    pytest's own `tmp_path` lives under a 0700 directory of root, which `nobody` cannot enter.
    """
    path = Path(tempfile.mkdtemp(prefix="exsa-robust-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
