"""The stack probe on real processes: a real flock conflict, a sleeper, a busy loop."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from exsa_doctor.context import Context
from exsa_doctor.facts import target_engines
from exsa_doctor.model import Finding
from exsa_doctor.oslayer.files import lock_table
from exsa_doctor.probes.stack import (
    StackProbe,
    ThreadState,
    find_lock_waits,
    parse_stat,
    parse_syscall,
    py_spy_dump,
    read_threads,
)
from exsa_doctor.target import resolve_target
from tests.support import hostile_server as hs

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="thread states come from /proc"
)

HOLDER = """
import fcntl, sys, time
fh = open(sys.argv[1], "r+b")
fcntl.flock(fh, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""

WAITER = """
import fcntl, sys, time
fh = open(sys.argv[1], "r+b")
print("waiting", flush=True)
fcntl.flock(fh, fcntl.LOCK_EX)
print("got it", flush=True)
time.sleep(120)
"""

SLEEPER = """
import time
print("ready", flush=True)
time.sleep(120)
"""

SPINNER = """
print("ready", flush=True)
while True:
    pass
"""


@pytest.fixture
def children() -> Iterator[hs.Children]:
    kids = hs.Children()
    try:
        yield kids
    finally:
        kids.stop_all()


def make_ctx(pid: int, model: Path | None = None, port: int | None = None) -> Context:
    target = resolve_target(
        url=f"http://127.0.0.1:{port or hs.free_port()}", pids=(pid,), model=model, environ={}
    )
    return Context(target=target, deadline=time.monotonic() + 10.0)


def by_id(findings: list[Finding]) -> dict[str, Finding]:
    return {f.id: f for f in findings}


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


@linux_only
def test_blocked_in_flock_names_the_holder(children: hs.Children, tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 4096)
    holder = children.python(HOLDER, str(model))
    hs.wait_line(holder, b"locked")
    waiter = children.python(WAITER, str(model))
    hs.wait_line(waiter, b"waiting")
    assert hs.wait_until(lambda: "lock" in _wchan(waiter.pid), timeout=20), _wchan(waiter.pid)
    ctx = make_ctx(waiter.pid, model=model)
    probe = StackProbe()
    assert probe.applies(ctx) is None
    out = probe.run(ctx)
    found = by_id(out.findings)
    f = found["stack.blocked_in_flock"]
    assert f.data["pid"] == waiter.pid
    assert f.data["tid"] == waiter.pid  # the main thread is the one blocked
    assert f.data["holder_pid"] == holder.pid
    assert os.path.samefile(f.data["path"], model)
    assert "stack.idle_waiting" not in found and "stack.busy" not in found
    dump = found["stack.dump"]
    assert dump.data["pid"] == waiter.pid
    if dump.data["source"] == "py-spy":
        assert "flock" in dump.data["text"] or "<module>" in dump.data["text"]
    else:  # py-spy could not attach here; the wchan summary must show the lock wait
        assert "flock" in dump.data["text"]


@linux_only
def test_a_lock_on_another_file_is_not_a_model_lock(children: hs.Children, tmp_path: Path) -> None:
    other = tmp_path / "other.lock"
    other.write_bytes(b"")
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    holder = children.python(HOLDER, str(other))
    hs.wait_line(holder, b"locked")
    waiter = children.python(WAITER, str(other))
    hs.wait_line(waiter, b"waiting")
    assert hs.wait_until(lambda: "lock" in _wchan(waiter.pid), timeout=20)
    out = StackProbe().run(make_ctx(waiter.pid, model=model))
    assert "stack.blocked_in_flock" not in by_id(out.findings)


@linux_only
def test_a_sleeping_engine_is_idle_waiting(children: hs.Children) -> None:
    child = children.python(SLEEPER)
    hs.wait_line(child, b"ready")
    assert hs.wait_until(lambda: _wchan(child.pid) not in ("", "0"), timeout=20)
    out = StackProbe().run(make_ctx(child.pid))
    found = by_id(out.findings)
    assert "stack.idle_waiting" in found, out.detail
    f = found["stack.idle_waiting"]
    assert f.data["pid"] == child.pid
    assert sum(f.data["wchans"].values()) == f.data["threads"] >= 1
    assert not {"stack.busy", "stack.blocked_in_flock", "stack.blocked_in_io"} & set(found)
    assert "stack.dump" in found


@linux_only
def test_a_spinning_engine_is_busy(children: hs.Children) -> None:
    child = children.python(SPINNER)
    hs.wait_line(child, b"ready")
    out = StackProbe().run(make_ctx(child.pid))
    found = by_id(out.findings)
    assert "stack.busy" in found, out.detail
    assert found["stack.busy"].data["pid"] == child.pid
    assert "stack.idle_waiting" not in found


def test_skipped_when_serving_or_without_an_engine(children: hs.Children) -> None:
    child = children.python(SLEEPER)
    hs.wait_line(child, b"ready")
    with hs.HostileServer({"/v1/health": hs.exsa_health()}) as srv:
        reason = StackProbe().applies(make_ctx(child.pid, port=srv.port))
    assert reason is not None and "serves" in reason
    ctx = Context(
        target=resolve_target(url=f"http://127.0.0.1:{hs.free_port()}", environ={}),
        deadline=time.monotonic() + 5,
    )
    if not target_engines(ctx):
        assert StackProbe().applies(ctx) == "no live engine process"


def test_skipped_for_an_engine_serving_on_another_port_after_its_load(
    children: hs.Children,
) -> None:
    # exsa-engine listens only once loaded: an instance serving elsewhere is not stuck anywhere
    port = hs.free_port()
    child = children.script(str(Path(hs.__file__).resolve()), "--port", str(port))
    assert hs.wait_until(lambda: port in _listening_ports(child.pid))
    reason = StackProbe().applies(make_ctx(child.pid))
    assert reason is not None and f"listens on 127.0.0.1:{port}" in reason, reason
    assert "nothing is stuck" in reason


def _listening_ports(pid: int) -> set[int]:
    from exsa_doctor.oslayer.sockets import listening_ports_of

    return {p for _, p in listening_ports_of([pid])[pid]}


def test_parse_stat_handles_parentheses_in_the_name() -> None:
    line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 17 3 0 0 20 0 1 0"
    assert parse_stat(line) == ("S", 20)
    assert parse_stat("garbage") is None
    assert parse_stat("1 (x) R 1") is None


def test_parse_syscall() -> None:
    assert parse_syscall("73 0x3 0x2 0x0 0x7f 0x0 0x0 0x7ffd 0x7f49") == (73, (3, 2, 0, 0x7F, 0, 0))
    assert parse_syscall("running") == (None, ())
    assert parse_syscall("-1 0x7ffd 0x7f49") == (None, ())
    assert parse_syscall("") == (None, ())


def test_lock_calls_by_machine() -> None:
    flock = ThreadState(1, "S", "", 73, (3, 2), 0)
    assert flock.lock_call("x86_64") == "flock"
    assert flock.lock_call("aarch64") is None
    fcntl_wait = ThreadState(1, "S", "", 72, (3, 7), 0)
    fcntl_nowait = ThreadState(1, "S", "", 72, (3, 6), 0)
    assert fcntl_wait.lock_call("x86_64") == "fcntl"
    assert fcntl_nowait.lock_call("x86_64") is None
    assert ThreadState(1, "S", "", 32, (3, 2), 0).lock_call("aarch64") == "flock"
    assert ThreadState(1, "S", "locks_lock_inode_wait", None, (), 0).lock_wait("riscv64")


@linux_only
def test_read_threads_sees_every_thread(children: hs.Children) -> None:
    child = children.python(
        "import threading, time\n"
        "for _ in range(3):\n"
        "    threading.Thread(target=time.sleep, args=(120,), daemon=True).start()\n"
        "print('ready', flush=True)\ntime.sleep(120)\n"
    )
    hs.wait_line(child, b"ready")
    threads = read_threads(child.pid)
    assert len(threads) == 4
    assert threads[0].tid == child.pid
    assert all(t.state in "SRD" for t in threads)


@linux_only
def test_lock_wait_found_from_proc_locks_when_syscall_is_hidden(
    children: hs.Children, tmp_path: Path
) -> None:
    # Without ptrace rights /proc/PID/syscall is unreadable: the wchan and the waiter line of
    # /proc/locks (`->`) must still name the file and its holder.
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    holder = children.python(HOLDER, str(model))
    hs.wait_line(holder, b"locked")
    waiter = children.python(WAITER, str(model))
    hs.wait_line(waiter, b"waiting")
    assert hs.wait_until(lambda: "lock" in _wchan(waiter.pid), timeout=20)
    locks = lock_table(Path("/proc/locks").read_text())
    hidden = ThreadState(waiter.pid, "S", "locks_lock_inode_wait", None, (), 0)
    (wait,) = find_lock_waits(waiter.pid, [hidden], os.uname().machine, str(model), locks)
    assert wait.path == str(model)
    assert [h.pid for h in wait.holders] == [holder.pid]


def test_py_spy_on_a_missing_process_is_an_error_not_an_exception() -> None:
    gone = hs.Children()
    try:
        child = gone.python("pass")
        child.wait(timeout=20)
    finally:
        gone.stop_all()
    text, error = py_spy_dump(child.pid, timeout=5.0)
    assert text == "" and error


def test_a_hanging_py_spy_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    fake = tmp_path / "py-spy"
    fake.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 60\n")
    fake.chmod(0o755)
    text, error = py_spy_dump(os.getpid(), timeout=2.0, exe=str(fake))
    assert text == "" and "killed" in error
    hung = int(pidfile.read_text())
    # killed and reaped by its PID: nothing of it is left, not even a zombie
    assert not psutil.pid_exists(hung)
