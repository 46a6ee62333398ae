"""Whole `exsa-doctor diagnose` (process start included) and `exsa-doctor --version`.

Run: python benchmarks/bench_diagnose.py [--repeat 9] [--scale]
Against the stand-in engine, healthy, generation included. With --scale, the same run again with
2,000 extra processes holding 20,000 open descriptors in all (issue: holds up on busy machines).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from benchmarks.common import (
    extra_processes,
    free_port,
    standin_engine,
    summary,
    timed,
    wait_healthy,
)


def diagnose_cmd(port: int, model: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "exsa_doctor",
        "diagnose",
        "--url",
        f"http://127.0.0.1:{port}",
        "--model",
        str(model),
        "--format",
        "json",
        "--output",
        "/dev/null",
    ]


def check(port: int, model: Path) -> None:
    out = subprocess.run(diagnose_cmd(port, model)[:-2], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(
            f"diagnose did not say healthy (exit {out.returncode}): {out.stdout[-2000:]}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--scale", action="store_true")
    args = ap.parse_args()
    from exsa_doctor.demo.standin.ggufmake import write_gguf

    tmp = Path(tempfile.mkdtemp(prefix="exsa-diag-"))
    model = tmp / "model.gguf"
    write_gguf(model)
    port = free_port()
    try:
        version = timed(
            lambda: subprocess.run(
                [sys.executable, "-m", "exsa_doctor", "--version"], capture_output=True
            ),
            args.repeat,
        )
        print(f"{'exsa-doctor --version':<44} {summary(version)}")
        with standin_engine(model, port):
            wait_healthy(port)
            check(port, model)
            cmd = diagnose_cmd(port, model)
            idle = timed(lambda: subprocess.run(cmd, capture_output=True), args.repeat)
            print(
                f"{'diagnose, healthy engine, ' + str(len(psutil.pids())) + ' processes':<44} {summary(idle)}"
            )
            if args.scale:
                t0 = time.time()
                with extra_processes(2000, open_fds=10):
                    print(f"(2,000 extra processes x 10 fds started in {time.time() - t0:.0f} s)")
                    busy = timed(lambda: subprocess.run(cmd, capture_output=True), args.repeat)
                    print(
                        f"{'diagnose, ' + str(len(psutil.pids())) + ' processes, 20k+ fds':<44} {summary(busy)}"
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
