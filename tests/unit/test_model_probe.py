"""ModelProbe on real files (written by the gguf package) and real holders (child processes)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest

from exsa_doctor.context import Context
from exsa_doctor.demo.standin.ggufmake import write_gguf, write_not_gguf
from exsa_doctor.facts import model_holders, model_path
from exsa_doctor.model import Finding
from exsa_doctor.probes.modelfile import ModelProbe
from exsa_doctor.target import resolve_target

LINUX = sys.platform.startswith("linux")

IDLE = "import time; print('ready', flush=True); time.sleep(300)"
LOCKER = """
import fcntl, sys, time
f = open(sys.argv[1], 'rb'); fcntl.flock(f, fcntl.LOCK_EX); print('ready', flush=True)
time.sleep(300)
"""
WAITER = """
import fcntl, sys, time
f = open(sys.argv[1], 'rb'); print('ready', flush=True); fcntl.flock(f, fcntl.LOCK_EX)
time.sleep(300)
"""
MAPPER = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
fd = os.open(sys.argv[1], os.O_RDONLY)
addr = libc.mmap(None, os.fstat(fd).st_size, 1, 1, fd, 0)
assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
os.close(fd)
print('ready', flush=True); time.sleep(300)
"""

Spawn = Callable[..., int]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start a python child; every child is killed by PID afterwards, even on failure."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(code: str, *args: str, env: Mapping[str, str] | None = None) -> int:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready and proc.stdout.readline().strip() == b"ready"
        return proc.pid

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


def run_probe(model: Path | None, pids: tuple[int, ...] = ()) -> tuple[list[Finding], Context]:
    target = resolve_target(model=model, pids=pids, environ={}, profile="exsa-engine")
    ctx = Context(target=target, deadline=time.monotonic() + 20)
    out = ModelProbe().run(ctx)
    return out.findings, ctx


def only(findings: list[Finding], fid: str) -> Mapping[str, Any]:
    hits = [f for f in findings if f.id == fid]
    assert len(hits) == 1, [f.id for f in findings]
    return hits[0].data


def ids(findings: list[Finding]) -> set[str]:
    return {f.id for f in findings}


def test_valid_model_is_ok(tmp_path: Path, spawn: Spawn) -> None:
    path = tmp_path / "m.gguf"
    size = write_gguf(path, n_tensors=3, tensor_elems=4096, architecture="qwen2")
    engine = spawn(IDLE)
    findings, _ = run_probe(path, (engine,))
    data = only(findings, "model.ok")
    assert data == {
        "path": str(path),
        "size": size,
        "version": 3,
        "tensors": 3,
        "kv": data["kv"],
        "architecture": "qwen2",
    }
    assert data["kv"] >= 4
    assert not ids(findings) & {
        "model.open_by_other",
        "model.mapped_by_other",
        "model.locked_by_other",
        "model.truncated",
    }


def test_missing(tmp_path: Path) -> None:
    findings, _ = run_probe(tmp_path / "nope" / "m.gguf")
    assert only(findings, "model.missing") == {
        "path": str(tmp_path / "nope" / "m.gguf"),
        "parent": str(tmp_path / "nope"),
    }
    assert ids(findings) == {"model.missing"}


def test_directory_is_unreadable(tmp_path: Path) -> None:
    findings, _ = run_probe(tmp_path)
    assert only(findings, "model.unreadable")["reason"] == "is a directory"


def test_fifo_is_unreadable_and_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "m.gguf"
    os.mkfifo(fifo)
    findings, _ = run_probe(fifo)
    assert only(findings, "model.unreadable")["reason"] == "not a regular file"


def test_empty(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"")
    findings, _ = run_probe(path)
    assert only(findings, "model.empty") == {"path": str(path)}


def test_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_not_gguf(path)
    findings, _ = run_probe(path)
    assert only(findings, "model.bad_magic") == {"path": str(path), "magic": "PK\\x03\\x04"}


def test_invalid_header(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    # GGUF v3 declaring 2^40 tensors in a 24-byte file
    path.write_bytes(
        b"GGUF"
        + (3).to_bytes(4, "little")
        + (1 << 40).to_bytes(8, "little")
        + (0).to_bytes(8, "little")
    )
    findings, _ = run_probe(path)
    reason = only(findings, "model.invalid_header")["reason"]
    assert "tensor count" in reason


def test_truncated(tmp_path: Path) -> None:
    full = tmp_path / "full.gguf"
    cut = tmp_path / "cut.gguf"
    full_size = write_gguf(full, n_tensors=2, tensor_elems=256 * 1024)
    cut_size = write_gguf(cut, n_tensors=2, tensor_elems=256 * 1024, truncate_to=full_size // 2)
    findings, _ = run_probe(cut)
    data = only(findings, "model.truncated")
    # f32 tensors of 1 MiB need no trailing padding: the table's extent is the whole file
    assert data == {
        "path": str(cut),
        "size": cut_size,
        "expected": full_size,
        "missing": full_size - cut_size,
    }
    assert "model.ok" not in ids(findings)


@pytest.mark.skipif(not LINUX, reason="flock waiters are read from /proc/locks")
def test_lock_held_by_other_while_engine_waits(tmp_path: Path, spawn: Spawn) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, tensor_elems=1024)
    holder = spawn(LOCKER, str(path))
    engine = spawn(WAITER, str(path))
    end = time.monotonic() + 15
    while True:  # the engine's flock call takes a moment to reach the kernel's wait list
        findings, _ = run_probe(path, (engine,))
        data = only(findings, "model.locked_by_other")
        if data["waiters"] or time.monotonic() > end:
            break
        time.sleep(0.05)
    assert data == {
        "holder_pid": holder,
        "holder_name": psutil.Process(holder).name(),
        "kind": "FLOCK",
        "mode": "WRITE",
        "waiters": [engine],
    }
    # the engine opening its own model is not "other"
    assert only(findings, "model.open_by_other")["pids"] == [holder]


@pytest.mark.skipif(not LINUX, reason="procfs lock table")
def test_lock_held_by_the_engine_itself_is_not_other(tmp_path: Path, spawn: Spawn) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, tensor_elems=1024)
    engine = spawn(LOCKER, str(path))
    findings, _ = run_probe(path, (engine,))
    assert "model.locked_by_other" not in ids(findings)
    assert "model.open_by_other" not in ids(findings)
    assert "model.ok" in ids(findings)
    # without naming the engine, the same process is someone else
    findings, _ = run_probe(path, (spawn(IDLE),))
    assert only(findings, "model.locked_by_other")["holder_pid"] == engine


@pytest.mark.skipif(not LINUX, reason="procfs maps")
def test_mapped_by_other(tmp_path: Path, spawn: Spawn) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, tensor_elems=1024)
    mapper = spawn(MAPPER, str(path))
    findings, ctx = run_probe(path, (spawn(IDLE),))
    assert only(findings, "model.mapped_by_other") == {"pids": [mapper]}
    assert "model.open_by_other" not in ids(findings)  # it closed its fd after mmap
    # the stack probe gets the same observation without a second walk
    holders = model_holders(ctx)
    assert holders is ctx.shared(f"holders:{path}", lambda: None)
    assert holders is not None and mapper in holders.mapped_by


def test_insufficient_memory_on_a_sparse_model(tmp_path: Path, spawn: Spawn) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, tensor_elems=1024)
    big = 2 * psutil.virtual_memory().total
    os.truncate(path, big)  # sparse: no disk blocks, a real size
    findings, _ = run_probe(path, (spawn(IDLE),))
    data = only(findings, "model.insufficient_memory")
    assert data["size"] == big and 0 < data["available"] < big
    assert "model.ok" in ids(findings)  # a longer file still holds all its tensors


def test_not_given(spawn: Spawn) -> None:
    # an engine with no model on its command line or in its environment
    env = {k: v for k, v in os.environ.items() if k != "MODEL_PATH"}
    engine = spawn(IDLE, env=env)
    findings, _ = run_probe(None, (engine,))
    assert ids(findings) == {"model.not_given"}


@pytest.mark.skipif(not LINUX, reason="reads the engine's environment from /proc")
def test_model_from_the_engine_environment(tmp_path: Path, spawn: Spawn) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, tensor_elems=1024)
    engine = spawn(IDLE, env={**os.environ, "MODEL_PATH": str(path)})
    findings, ctx = run_probe(None, (engine,))
    assert model_path(ctx) == (str(path), f"engine pid {engine}")
    assert only(findings, "model.ok")["path"] == str(path)
