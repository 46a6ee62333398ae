"""Shared helpers for the benchmarks: timing, extra processes, a stand-in engine, reporting.

Benchmarks print figures; they never assert on speed. Every process they start is stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(fn: Callable[[], object], repeat: int, warmup: int = 2) -> list[float]:
    """Wall seconds of `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return f"median {statistics.median(ms):7.1f} ms  p90 {p90:7.1f} ms  (n={len(ms)})"


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


@contextlib.contextmanager
def extra_processes(count: int, open_fds: int = 0) -> Iterator[list[int]]:
    """`count` idle processes (each holding `open_fds` descriptors), stopped by PID afterwards."""
    code = (
        "import os,sys,time\n"
        f"fds=[os.open('/dev/null', os.O_RDONLY) for _ in range({open_fds})]\n"
        "sys.stdout.write('r'); sys.stdout.flush(); time.sleep(3600)\n"
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if open_fds == 0:
            for _ in range(count):
                procs.append(subprocess.Popen(["sleep", "3600"]))
        else:
            for _ in range(count):
                procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE))
            for p in procs:
                assert p.stdout is not None
                p.stdout.read(1)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            p.wait()


@contextlib.contextmanager
def standin_engine(
    model: Path, port: int, load_s: float = 0.0, mode: str = "ok", log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "MODEL_PATH": str(model),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "EXSA_STANDIN_MODE": mode,
        "EXSA_STANDIN_LOAD_S": str(load_s),
    }
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "exsa_doctor.demo.standin"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if log and not isinstance(out, int):
            out.close()


def wait_healthy(port: int, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=0.5)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"engine on {port} not healthy after {timeout} s")
