"""holders_of against real holders: child processes that open, mmap, flock or wait for a lock."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exsa_doctor.oslayer.files import (
    holders_lsof,
    holders_of,
    holders_procfs,
    parse_proc_locks,
)
from exsa_doctor.oslayer.types import FileHolders, LockHolder

LINUX = sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")
needs_linux = pytest.mark.skipif(not LINUX, reason="procfs walk is Linux-only")
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "lsof"

OPENER = """
import sys, time
f = open(sys.argv[1], 'rb'); print('ready', flush=True); time.sleep(300)
"""
# Python's mmap.mmap keeps a dup of the descriptor; call libc's mmap and close the fd, as
# llama.cpp does, so the process only maps the file.
MAPPER = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
fd = os.open(sys.argv[1], os.O_RDONLY)
addr = libc.mmap(None, os.fstat(fd).st_size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
os.close(fd)
print('ready', flush=True); time.sleep(300)
"""
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


def _wait_ready(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "child did not get ready in time"
    assert proc.stdout.readline().strip() == b"ready"


@pytest.fixture
def spawn() -> Iterator[Callable[[str, str], int]]:
    """Start a child running `code` on a path; every child is killed by PID afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(code: str, path: str) -> int:
        proc = subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE)
        procs.append(proc)
        _wait_ready(proc)
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


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model file (copy).gguf"  # spaces and parentheses on purpose
    path.write_bytes(b"GGUF" + bytes(64 * 1024))
    return path


def _poll(check: Callable[[], FileHolders | None], timeout: float = 15.0) -> FileHolders:
    """Ask again until `check` returns a value: a process blocking in flock takes a moment."""
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got is not None:
            return got
        assert time.monotonic() < end, "condition not reached before the deadline"
        time.sleep(0.05)


@needs_linux
def test_open_only(spawn: Callable[[str, str], int], model: Path) -> None:
    pid = spawn(OPENER, str(model))
    h = holders_of(str(model), time.monotonic() + 30)
    assert pid in h.open_by
    assert pid not in h.mapped_by
    assert not [lk for lk in h.locks if lk.pid == pid]
    assert h.method == "procfs" and h.complete


@needs_linux
def test_mapped_after_close_is_found(spawn: Callable[[str, str], int], model: Path) -> None:
    import psutil

    pid = spawn(MAPPER, str(model))
    h = holders_of(str(model), time.monotonic() + 30)
    assert pid in h.mapped_by
    assert pid not in h.open_by  # it closed its descriptor after mmap
    # the reason we walk maps ourselves: psutil's open_files() does not see this process
    assert str(model) not in [f.path for f in psutil.Process(pid).open_files()]


@needs_linux
def test_flock_holder_and_waiter(spawn: Callable[[str, str], int], model: Path) -> None:
    holder = spawn(LOCKER, str(model))
    waiter = spawn(WAITER, str(model))

    def waiter_blocked() -> FileHolders | None:
        h = holders_of(str(model), time.monotonic() + 30)
        return h if any(lk.pid == waiter and lk.blocked for lk in h.locks) else None

    h = _poll(waiter_blocked)
    assert LockHolder(pid=holder, kind="FLOCK", mode="WRITE", blocked=False) in h.locks
    assert LockHolder(pid=waiter, kind="FLOCK", mode="WRITE", blocked=True) in h.locks
    assert {holder, waiter} <= set(h.open_by)


@needs_linux
def test_pids_restrict_the_walk(spawn: Callable[[str, str], int], model: Path) -> None:
    a = spawn(OPENER, str(model))
    b = spawn(OPENER, str(model))
    h = holders_of(str(model), None, pids=[b])
    assert h.open_by == (b,)
    assert a not in h.open_by


@needs_linux
def test_deleted_and_replaced_file_is_not_ours(
    spawn: Callable[[str, str], int], model: Path
) -> None:
    """A process still mapping the old, deleted copy does not hold the new file at that path."""
    old = spawn(MAPPER, str(model))
    model.unlink()
    model.write_bytes(b"GGUF" + bytes(1024))
    h = holders_of(str(model), None)
    assert old not in h.mapped_by
    new = spawn(MAPPER, str(model))
    assert new in holders_of(str(model), None).mapped_by


@needs_linux
def test_symlinked_path_matches(spawn: Callable[[str, str], int], model: Path) -> None:
    link = model.parent / "link.gguf"
    link.symlink_to(model)
    pid = spawn(OPENER, str(model))
    assert pid in holders_of(str(link), None).open_by


@needs_linux
def test_deadline_in_the_past_marks_incomplete(model: Path) -> None:
    h = holders_of(str(model), time.monotonic() - 1)
    assert not h.complete
    assert any("deadline" in n for n in h.notes)


def test_missing_file_is_a_note_not_a_crash(tmp_path: Path) -> None:
    h = holders_of(str(tmp_path / "absent.gguf"), None)
    assert not h.complete
    assert h.open_by == () and h.locks == ()


def test_parse_proc_locks_lines() -> None:
    text = (
        "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF\n"
        "1: -> FLOCK  ADVISORY  WRITE 999 fd:01:5678 0 EOF\n"
        "2: POSIX  ADVISORY  READ 4321 fd:01:5678 0 100\n"
        "3: OFDLCK ADVISORY  READ -1 fd:01:5678 0 EOF\n"
        "4: FLOCK  ADVISORY  WRITE 77 fd:02:5678 0 EOF\n"  # other device
        "5: FLOCK  ADVISORY  WRITE 78 fd:01:56789 0 EOF\n"  # other inode
        "garbage line\n6: FLOCK ADVISORY WRITE x fd:01:5678 0 EOF\n7: FLOCK\n"
    )
    assert parse_proc_locks(text, 0xFD, 0x01, 5678) == [
        LockHolder(pid=1234, kind="FLOCK", mode="WRITE", blocked=False),
        LockHolder(pid=999, kind="FLOCK", mode="WRITE", blocked=True),
        LockHolder(pid=4321, kind="POSIX", mode="READ", blocked=False),
        LockHolder(pid=None, kind="OFDLCK", mode="READ", blocked=False),
    ]


@needs_linux
def test_unprivileged_sees_lock_holder_but_not_its_fds(
    spawn: Callable[[str, str], int],
) -> None:
    """As `nobody`, root's lock still shows (from /proc/locks); root's fds are hidden."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody")
    # a directory `nobody` can traverse (pytest's tmp_path is 0700)
    shared = Path(tempfile.mkdtemp(prefix="exsa-files-"))
    try:
        shared.chmod(0o755)
        path = shared / "model.gguf"
        path.write_bytes(b"GGUF" + bytes(4096))
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        holder = spawn(LOCKER, str(path))
        result = _holders_as_nobody(str(path))
        assert holder in [lk["pid"] for lk in result["locks"]]
        assert holder not in result["open_by"]  # its fd table is not ours to read
        assert result["hidden"] > 0
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _holders_as_nobody(path: str) -> dict[str, Any]:
    """Fork, drop to uid/gid 65534, run holders_procfs, send the result back as JSON."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            h = holders_procfs(path, time.monotonic() + 30)
            payload = {
                "open_by": list(h.open_by),
                "locks": [{"pid": lk.pid, "blocked": lk.blocked} for lk in h.locks],
                "hidden": h.hidden,
            }
            os.write(write_end, json.dumps(payload).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        chunks: list[bytes] = []
        end = time.monotonic() + 30
        while True:
            ready, _, _ = select.select([read_end], [], [], max(0.0, end - time.monotonic()))
            assert ready, "unprivileged child did not answer in time"
            data = os.read(read_end, 65536)
            if not data:
                break
            chunks.append(data)
        _, status = os.waitpid(child, 0)
        child = 0
        assert os.waitstatus_to_exitcode(status) == 0
        out: dict[str, Any] = json.loads(b"".join(chunks))
        return out
    finally:
        os.close(read_end)
        if child:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)


# ------------------------------------------------------------------ lsof path (macOS and others)


@pytest.mark.skipif(shutil.which("lsof") is None, reason="lsof not installed")
def test_lsof_path_with_real_holders(spawn: Callable[[str, str], int], model: Path) -> None:
    opener = spawn(OPENER, str(model))
    mapper = spawn(MAPPER, str(model))
    locker = spawn(LOCKER, str(model))
    h = holders_lsof(str(model), time.monotonic() + 30)
    assert h.method == "lsof" and h.complete
    assert opener in h.open_by and locker in h.open_by
    assert mapper in h.mapped_by and mapper not in h.open_by
    assert [lk for lk in h.locks if lk.pid == locker] == [
        LockHolder(pid=locker, kind="UNKNOWN", mode="WRITE")
    ]


def _fake_lsof(tmp_path: Path, fixture: str) -> str:
    script = tmp_path / "lsof"
    script.write_text(f"#!/bin/sh\ncat '{FIXTURES / fixture}'\n")
    script.chmod(0o755)
    return str(script)


def test_lsof_path_on_recorded_macos_output(tmp_path: Path) -> None:
    exe = _fake_lsof(tmp_path, "macos_model_holders.txt")
    h = holders_lsof("/Users/ahammed/models/qwen2.5-1.5b-instruct-q8_0.gguf", None, executable=exe)
    assert h.mapped_by == (17939,)  # macOS shows the mapping as `txt`
    assert h.open_by == (17939, 18112, 18150)
    assert h.locks == (LockHolder(pid=18150, kind="UNKNOWN", mode="WRITE"),)


def test_lsof_failure_is_incomplete_not_a_crash(tmp_path: Path) -> None:
    script = tmp_path / "lsof"
    script.write_text("#!/bin/sh\necho 'lsof: boom' >&2\nexit 2\n")
    script.chmod(0o755)
    h = holders_lsof("/nowhere.gguf", None, executable=str(script))
    assert not h.complete
    assert h.notes and "lsof" in h.notes[0]
