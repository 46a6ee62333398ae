"""Start-up side by side: `--version`, `diagnose` (healthy engine; nothing at the target while
another engine runs), import costs, installed size; one column per interpreter.

Run:
  python benchmarks/bench_startup.py --venv before=REV --venv after=HEAD [--repeat 7]
      builds a fresh venv per git revision with a plain `pip install .` (what users get) and
      measures each; or
  python benchmarks/bench_startup.py --python NAME=/path/to/python
      measures an interpreter that already has exsa-doctor installed.

Each figure is the median of `--repeat` runs of a new process (after 2 warm-up runs), wall time;
the CPU time those processes used (user + system) is shown beside it, as it is steadier than wall
time on a busy machine. The columns take turns, run by run (A B A B ...), and each column after
the first gets the median of its pairwise ratio to the first, which holds when the machine's
speed drifts during the measurement. Every process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, free_port, standin_engine, wait_healthy


@dataclass
class Column:
    """One interpreter under measurement."""

    name: str
    python: Path
    size_kib: int | None = None
    packages: list[str] = field(default_factory=list)
    rows: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # wall, cpu, exit
    ratios: dict[str, tuple[float, float]] = field(default_factory=dict)  # wall, cpu vs column 1
    imports: list[tuple[str, float]] = field(default_factory=list)
    build_ms: str = ""


def program(col: Column) -> list[str]:
    """The installed console script (what users run), else `python -m exsa_doctor`."""
    script = col.python.parent / "exsa-doctor"
    return [str(script)] if script.exists() else [str(col.python), "-m", "exsa_doctor"]


def _once(cmd: list[str]) -> tuple[float, float, int]:
    """Wall s, CPU s (user+sys of the child) and exit code of one run of `cmd`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode


def measure(row: str, cmds: dict[str, list[str]], columns: list[Column], repeat: int) -> None:
    """Run each column's command in turn, `repeat` times after 2 warm-up rounds; store the
    medians (ms) in `Column.rows[row]` and the pairwise ratios to the first column."""
    for _ in range(2):
        for col in columns:
            subprocess.run(cmds[col.name], capture_output=True, check=False)
    runs: dict[str, list[tuple[float, float, int]]] = {c.name: [] for c in columns}
    for _ in range(repeat):
        for col in columns:
            runs[col.name].append(_once(cmds[col.name]))
    first = runs[columns[0].name]
    for col in columns:
        mine = runs[col.name]
        walls = [w for w, _, _ in mine]
        cpus = [c for _, c, _ in mine]
        col.rows[row] = (
            statistics.median(walls) * 1000,
            statistics.median(cpus) * 1000,
            mine[-1][2],
        )
        if col is not columns[0]:
            col.ratios[row] = (
                statistics.median(m[0] / f[0] for m, f in zip(mine, first, strict=True)),
                statistics.median(m[1] / max(f[1], 1e-6) for m, f in zip(mine, first, strict=True)),
            )


def import_groups(col: Column, args: list[str], top: int = 10) -> list[tuple[str, float]]:
    """Self import time (ms) summed by top-level package, for one run of `args`.

    Run from the root directory: `-m` puts the working directory first on sys.path, and from a
    checkout that would import the checkout's code instead of the venv's.
    """
    done = subprocess.run(
        [str(col.python), "-X", "importtime", "-m", "exsa_doctor", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    groups: collections.Counter[str] = collections.Counter()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line.split("|")
        if len(parts) != 3:
            continue
        name = parts[2].strip()
        head = ".".join(name.split(".")[:2]) if name.startswith("exsa_doctor.") else name
        # imports made by probe threads while another import runs can come out negative
        self_us = max(0, int(parts[0].split(":")[1]))
        groups[head.split(".")[0] if not head.startswith("exsa_doctor") else head] += self_us
    total = sum(groups.values()) / 1000
    return [("(all imports)", total)] + [(k, v / 1000) for k, v in groups.most_common(top)]


BUILD_CODE = """
import statistics, time, typer.main
from exsa_doctor import cli
lean = getattr(cli, "app_for", None)
def ms(make):
    out = []
    for _ in range(15):
        t0 = time.perf_counter(); typer.main.get_command(make()); out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1000
full = ms(lambda: cli.app)
one = ms(lambda: lean(["diagnose"])) if lean else float("nan")
print(f"all commands {full:.1f} ms, only diagnose {one:.1f} ms")
"""


def command_build_ms(col: Column) -> str:
    """In-process: Typer turning every command into Click vs only the one that runs."""
    done = subprocess.run(
        [str(col.python), "-c", BUILD_CODE], capture_output=True, text=True, check=False, cwd="/"
    )
    return done.stdout.strip() or done.stderr.strip().splitlines()[-1]


def site_packages_kib(python: Path) -> tuple[int, list[str]]:
    """Size of the venv's site-packages (KiB) and its distributions."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    du = subprocess.run(["du", "-sk", site.stdout.strip()], capture_output=True, text=True)
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    names = sorted(p["name"] for p in json.loads(listed.stdout or "[]"))
    return int(du.stdout.split()[0]), names


def build_venv(name: str, rev: str, where: Path) -> Path:
    """A fresh venv with a plain `pip install .` of the repository at `rev`."""
    src = where / f"src-{name}"
    src.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    env_dir = where / f"venv-{name}"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(src)],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return python


def empty_venv_kib(where: Path) -> int:
    env_dir = where / "venv-empty"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    return site_packages_kib(env_dir / "bin" / "python")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--venv", action="append", default=[], metavar="NAME=GITREV")
    ap.add_argument("--python", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--keep", type=Path, help="build the venvs here and keep them")
    args = ap.parse_args()
    where = args.keep or Path(tempfile.mkdtemp(prefix="exsa-startup-"))
    where.mkdir(parents=True, exist_ok=True)
    columns: list[Column] = []
    baseline = 0
    try:
        if args.venv:
            baseline = empty_venv_kib(where)
        for spec in args.venv:
            name, rev = spec.split("=", 1)
            print(f"building a venv for {name} ({rev}) ...", flush=True)
            columns.append(Column(name, build_venv(name, rev, where)))
        for spec in args.python:
            name, path = spec.split("=", 1)
            columns.append(Column(name, Path(path)))
        if not columns:
            columns.append(Column("this", Path(sys.executable)))
        for col in columns:
            col.size_kib, col.packages = site_packages_kib(col.python)
        run_all(columns, args.repeat, where)
        report(columns, baseline, args.repeat)
    finally:
        if args.keep is None:
            shutil.rmtree(where, ignore_errors=True)


def run_all(columns: list[Column], repeat: int, where: Path) -> None:
    model = where / "model.gguf"
    from exsa_doctor.demo.standin.ggufmake import write_gguf

    write_gguf(model)
    port, empty_port = free_port(), free_port()
    for flag in ("--version", "--help"):
        measure(flag, {c.name: [*program(c), flag] for c in columns}, columns, repeat)
    for col in columns:
        col.build_ms = command_build_ms(col)
    healthy = ["--url", f"http://127.0.0.1:{port}", "--model", str(model)]
    nothing = ["--url", f"http://127.0.0.1:{empty_port}"]
    out = ["--format", "json", "--output", os.devnull]
    with standin_engine(model, port):
        wait_healthy(port)
        for row, args in (
            ("diagnose, healthy engine", healthy),
            ("diagnose, nothing at target, another engine up", nothing),
        ):
            cmds = {c.name: [*program(c), "diagnose", *args, *out] for c in columns}
            measure(row, cmds, columns, repeat)
        for col in columns:
            col.imports = import_groups(
                col,
                ["diagnose", "--url", f"http://127.0.0.1:{port}", "--format", "json"],
            )


def report(columns: list[Column], baseline: int, repeat: int) -> None:
    names = [c.name for c in columns]
    print(f"\nmedian of {repeat} runs, wall ms (CPU ms), each a new process")
    print(f"{'':<48}" + "".join(f"{n:>22}" for n in names))
    for row in columns[0].rows:
        cells = []
        for c in columns:
            wall, cpu, code = c.rows[row]
            cells.append(f"{wall:8.0f} ({cpu:4.0f}) exit {code}")
        print(f"{row:<48}" + "".join(f"{cell:>22}" for cell in cells))
    for c in columns[1:]:
        print(f"\n{c.name} / {columns[0].name}, median of the run-by-run ratios, wall (CPU)")
        for row, (wall, cpu) in c.ratios.items():
            print(f"  {row:<46} {wall:6.2f} ({cpu:4.2f})")
    if baseline:
        print(
            f"\ninstalled size of `pip install .` (site-packages minus an empty venv's {baseline} KiB)"
        )
        for c in columns:
            assert c.size_kib is not None
            print(
                f"  {c.name:<10} {(c.size_kib - baseline) / 1024:7.1f} MiB  {len(c.packages)} distributions"
            )
    for c in columns:
        others = sorted(set(c.packages) - set(columns[0].packages))
        gone = sorted(set(columns[0].packages) - set(c.packages))
        if c is not columns[0] and (others or gone):
            print(f"  {c.name} vs {columns[0].name}: -{gone} +{others}")
    print("\nTyper building its Click commands, in-process (median of 15)")
    for c in columns:
        print(f"  {c.name}: {c.build_ms}")
    print("\nimport time of one `diagnose` (self ms by package, -X importtime)")
    for c in columns:
        print(f"  {c.name}: " + ", ".join(f"{k} {v:.0f}" for k, v in c.imports))


if __name__ == "__main__":
    main()
