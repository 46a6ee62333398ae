"""Runs every benchmark in sequence and prints their figures (about 5 minutes on 2 cores).

Run: python benchmarks/run_all.py [--scale]
First time: bash benchmarks/setup.sh (wait-on, wait-for-it, lsof, ss). Use the interpreter of a
plain `pip install .` venv to measure what users get (a development environment with extra
packages, such as pydantic, makes typer import more).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", action="store_true", help="also 2,000 extra processes (slow)")
    args = ap.parse_args()
    vm = psutil.virtual_memory()
    print(
        f"machine: {platform.platform()}, {psutil.cpu_count()} cores, "
        f"{vm.total / 2**30:.0f} GiB, {len(psutil.pids())} processes, "
        f"Python {platform.python_version()} ({sys.executable})"
    )
    runs = [
        ["bench_lookups.py", "--extra", "300", "--repeat", "15"],
        ["bench_diagnose.py", "--repeat", "11", *(["--scale"] if args.scale else [])],
        ["bench_wait.py", "--runs", "9"],
        # this interpreter only; `--venv before=REV --venv after=HEAD` compares revisions
        ["bench_startup.py", "--repeat", "7"],
    ]
    for argv in runs:
        print(f"\n== {' '.join(argv)}", flush=True)
        subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], check=False)


if __name__ == "__main__":
    main()
