"""Readiness detection: `exsa-doctor wait` side by side with wait-on, wait-for-it and a curl loop.

Run: python benchmarks/bench_wait.py [--runs 7]
Each run starts the stand-in engine with a 2 s load (it binds only after loading, as exsa-engine
does), then starts one waiter after a random delay so the waiters' poll phases are randomised.
Latency = the waiter's exit - the moment the engine logged `Server listening` (microsecond UTC
timestamps). CPU = the waiter's user+system seconds (children rusage) per second of waiting.
Tools that are not installed are reported as such (see benchmarks/setup.sh).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, free_port, standin_engine

LOAD_S = 2.0


def waiters(port: int) -> dict[str, list[str] | None]:
    url = f"http://127.0.0.1:{port}"
    wait_on = REPO / "benchmarks" / "node_modules" / ".bin" / "wait-on"
    wfi = shutil.which("wait-for-it")
    exsa = [sys.executable, "-m", "exsa_doctor", "wait", "--url", url, "--timeout", "30"]
    return {
        "exsa-doctor wait": exsa,
        "wait-on (defaults)": [
            str(wait_on),
            "-t",
            "30000",
            f"http-get://127.0.0.1:{port}/v1/health",
        ]
        if wait_on.exists()
        else None,
        "wait-on --interval 50": [
            str(wait_on),
            "-t",
            "30000",
            "--interval",
            "50",
            f"http-get://127.0.0.1:{port}/v1/health",
        ]
        if wait_on.exists()
        else None,
        "wait-for-it": [wfi, "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "30"] if wfi else None,
        "until curl ...; sleep 1": [
            "bash",
            "-c",
            f"until curl -s {url}/v1/health >/dev/null; do sleep 1; done",
        ],
    }


def listening_time(log: Path, deadline: float) -> float:
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if "Server listening" in line:
                stamp = line.split()[0].rstrip("Z")
                return dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.timezone.utc).timestamp()
        time.sleep(0.01)
    raise RuntimeError("engine never logged 'Server listening'")


def one_run(
    name: str, cmd_for_port: dict[str, list[str] | None], model: Path, tmp: Path
) -> tuple[float, float]:
    port = free_port()
    cmd = waiters(port)[name]
    assert cmd is not None
    log = tmp / f"engine-{port}.log"
    with standin_engine(model, port, load_s=LOAD_S, log=log):
        time.sleep(random.uniform(0.0, 0.5))  # randomise the waiter's poll phase
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t_start = time.time()
        proc = subprocess.run(cmd, capture_output=True, timeout=60)
        t_end = time.time()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed: {proc.stderr[-300:]!r}")
        ready = listening_time(log, time.monotonic() + 5)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return (t_end - ready) * 1000.0, cpu / max(1e-6, t_end - t_start)


def cpu_rate(pid: int, after_s: float, window_s: float) -> float:
    """CPU ms per second used by the process tree of `pid` over `window_s`, measured from
    `after_s` into its life (start-up excluded). Reaped children count too: a shell loop's
    `curl`s have exited by the time they would be sampled."""
    import psutil

    tree = psutil.Process(pid)

    def total() -> float:
        cpu = 0.0
        for p in [tree, *tree.children(recursive=True)]:
            try:
                t = p.cpu_times()
                cpu += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        return cpu

    time.sleep(after_s)
    c0, t0 = total(), time.monotonic()
    time.sleep(window_s)
    c1, t1 = total(), time.monotonic()
    return (c1 - c0) / (t1 - t0) * 1000.0


def steady_cpu(name: str, model: Path, tmp: Path) -> float:
    """CPU while waiting, sampled 1.0-3.5 s into the wait on an engine that loads for 5 s."""
    port = free_port()
    cmd = waiters(port)[name]
    assert cmd is not None
    with standin_engine(model, port, load_s=5.0, log=tmp / f"cpu-{port}.log"):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return cpu_rate(proc.pid, 1.0, 2.5)
        finally:
            proc.wait(30)


def idle_cpu(name: str, seconds: float = 10.0) -> float:
    """CPU of a waiter polling a port where nothing ever listens, over `seconds` (a long
    window: psutil's CPU counters tick at 10 ms), after 2 s to let start-up pass."""
    cmd = waiters(free_port())[name]
    assert cmd is not None
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return cpu_rate(proc.pid, 2.0, seconds)
    finally:
        proc.kill()  # our own child
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    from exsa_doctor.demo.standin.ggufmake import write_gguf

    tmp = Path(tempfile.mkdtemp(prefix="exsa-wait-"))
    model = tmp / "model.gguf"
    write_gguf(model)
    print(f"engine load {LOAD_S:g} s, binds after loading; {args.runs} runs per waiter")
    names = waiters(0)
    try:
        for name, cmd in names.items():
            if cmd is None:
                print(f"{name:<26} not installed (run benchmarks/setup.sh)")
                continue
            lat, cpu = [], []
            for _ in range(args.runs):
                latency, c = one_run(name, names, model, tmp)
                lat.append(latency)
                cpu.append(c)
            steady = statistics.median(steady_cpu(name, model, tmp) for _ in range(3))
            print(
                f"{name:<26} latency median {statistics.median(lat):7.1f} ms "
                f"(min {min(lat):6.1f}, max {max(lat):6.1f})  CPU while waiting "
                f"{steady:5.1f} ms/s  (whole process incl. start-up "
                f"{statistics.median(cpu) * 1000:6.1f} ms/s)"
            )
        print("\nCPU while polling a port where nothing listens (10 s window):")
        for name, cmd in names.items():
            if cmd is not None and name != "wait-for-it":
                print(f"{name:<26} {idle_cpu(name):5.1f} ms/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
