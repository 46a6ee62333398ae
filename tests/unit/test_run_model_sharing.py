"""`run`'s preflight on a shared model (issue 9, item 3): another process mapping the model
read-only is no refusal; a process holding a lock on it is, and is named."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exsa_doctor.demo.standin.ggufmake import write_gguf
from exsa_doctor.supervise.run import model_lock_problems

_HOLD = (
    "import fcntl, mmap, sys, time\n"
    "fh = open(sys.argv[1], 'rb')\n"
    "m = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)\n"
    "if sys.argv[2] == 'lock':\n"
    "    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    write_gguf(path)
    return path


@pytest.fixture
def holder() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()  # our own child, by its PID
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


def _hold(model: Path, how: str, procs: list[subprocess.Popen[str]]) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(model), how], stdout=subprocess.PIPE, text=True
    )
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc.pid


def test_a_read_only_mapping_is_not_a_refusal(
    model: Path, holder: list[subprocess.Popen[str]]
) -> None:
    _hold(model, "map", holder)
    assert model_lock_problems(str(model)) == []


def test_a_lock_on_the_model_is_a_refusal_naming_the_holder(
    model: Path, holder: list[subprocess.Popen[str]]
) -> None:
    pid = _hold(model, "lock", holder)
    (problem,) = model_lock_problems(str(model))
    assert problem.pids == (pid,)
    assert f"PID {pid}" in problem.message and "lock" in problem.message
