"""The stack probe: where does an engine that is alive but not serving wait?

Symptom: "Engine starts but hangs during model load. No error message (just stalls)." The kernel
knows where each thread sleeps. For every thread of the target engine, `/proc/PID/task/TID/stat`
(state), `wchan` (the kernel function it sleeps in) and `syscall` (the system call and its
arguments) tell:
- a thread in `flock`/`fcntl(F_SETLKW)` (or sleeping in the kernel's lock wait) on a file that
  another process holds locked in `/proc/locks` -> stack.blocked_in_flock, with the holder's PID;
- threads in uninterruptible disk sleep -> stack.blocked_in_io;
- every thread asleep (futex, poll, epoll, nanosleep) and no CPU used -> stack.idle_waiting;
- threads running -> stack.busy.
Python engines also get a `py-spy dump` (bounded in time and output; py-spy can hang, so its
process is killed by PID on timeout); others a wchan summary -> stack.dump.

Runs only when a target engine is alive, the health endpoint is not ready, and the engine does
not serve on another port after loading (`facts.loaded_elsewhere`: nothing is stuck there). Linux
only for the thread states; elsewhere only the py-spy dump is attempted. The lock table and the
model's holders are the run's shared facts.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exsa_doctor.context import Context
from exsa_doctor.facts import (
    health,
    live,
    loaded_elsewhere,
    lock_table,
    model_holders,
    model_path,
    target_engines,
)
from exsa_doctor.model import Level
from exsa_doctor.oslayer.files import FileId, LockTable, file_id
from exsa_doctor.oslayer.types import EngineProcess, LockHolder
from exsa_doctor.probes.base import Probe, ProbeOutput

MAX_THREADS = 256
MAX_DUMP_BYTES = 16 * 1024
SNAPSHOTS = 3
SNAPSHOT_GAP_S = 0.1
MAX_PIDS = 4
_MARGIN_S = 0.3

# System call numbers of the blocking lock calls, by machine (fcntl only with F_SETLKW/F_OFD_SETLKW)
_LOCK_SYSCALLS = {
    "x86_64": {73: "flock", 72: "fcntl"},
    "amd64": {73: "flock", 72: "fcntl"},
    "aarch64": {32: "flock", 25: "fcntl"},
    "arm64": {32: "flock", 25: "fcntl"},
}
_F_SETLKW = (7, 38)  # F_SETLKW, F_OFD_SETLKW
_LOCK_WCHANS = frozenset(
    {
        "locks_lock_inode_wait",
        "flock_lock_inode_wait",
        "locks_lock_file_wait",
        "posix_lock_inode_wait",
        "do_lock_file_wait",
        "fcntl_setlk",
        "flock_lock_file_wait",
        "__do_sys_flock",
        "__x64_sys_flock",
        "__arm64_sys_flock",
    }
)


@dataclass(frozen=True)
class ThreadState:
    """One thread at one moment: state letter (R, S, D, ...), wchan, syscall and arguments."""

    tid: int
    state: str
    wchan: str
    syscall: int | None
    args: tuple[int, ...]
    cpu_ticks: int

    def lock_call(self, machine: str) -> str | None:
        """ "flock"/"fcntl" when the thread is in a blocking lock call, else None."""
        name = _LOCK_SYSCALLS.get(machine, {}).get(self.syscall if self.syscall is not None else -1)
        if name == "flock":
            return name
        if name == "fcntl" and len(self.args) > 1 and self.args[1] in _F_SETLKW:
            return name
        return None

    def lock_wait(self, machine: str) -> bool:
        return self.lock_call(machine) is not None or self.wchan in _LOCK_WCHANS


def _read_text(path: str, limit: int = 4096) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return None


def parse_stat(text: str) -> tuple[str, int] | None:
    """(state letter, utime+stime ticks) from a /proc stat line; the comm may hold ') '."""
    close = text.rfind(")")
    if close < 0:
        return None
    fields = text[close + 2 :].split()
    if len(fields) < 13:
        return None
    try:
        return fields[0], int(fields[11]) + int(fields[12])
    except ValueError:
        return None


def parse_syscall(text: str) -> tuple[int | None, tuple[int, ...]]:
    """`nr arg1 ... arg6 sp pc` (args hex), `running`, or `-1 sp pc` (not in a syscall)."""
    parts = text.split()
    if not parts or parts[0] == "running":
        return None, ()
    try:
        nr = int(parts[0])
    except ValueError:
        return None, ()
    if nr < 0:
        return None, ()
    args: list[int] = []
    for raw in parts[1:7]:
        try:
            args.append(int(raw, 16))
        except ValueError:
            break
    return nr, tuple(args)


def read_threads(pid: int, limit: int = MAX_THREADS) -> list[ThreadState]:
    """Every thread of `pid` (up to `limit`); unreadable fields are left empty."""
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if t.isdigit())
    except OSError:
        return []
    threads: list[ThreadState] = []
    for tid in tids[:limit]:
        base = f"/proc/{pid}/task/{tid}"
        stat = parse_stat(_read_text(f"{base}/stat") or "")
        if stat is None:
            continue  # the thread ended meanwhile
        wchan = (_read_text(f"{base}/wchan", 256) or "").strip()
        nr, args = parse_syscall(_read_text(f"{base}/syscall", 512) or "")
        threads.append(
            ThreadState(
                tid=tid,
                state=stat[0],
                wchan="" if wchan == "0" else wchan,
                syscall=nr,
                args=args,
                cpu_ticks=stat[1],
            )
        )
    return threads


@dataclass(frozen=True)
class LockWait:
    """A thread blocked on a lock, the file, and the other processes holding it."""

    tid: int
    call: str
    path: str | None
    dev: FileId | None  # device major, minor, inode
    holders: tuple[LockHolder, ...]


def find_lock_waits(
    pid: int, threads: list[ThreadState], machine: str, model: str | None, locks: LockTable
) -> list[LockWait]:
    """The threads of `pid` that wait for a lock, each with the file and its other holders."""
    model_id = file_id(model) if model else None
    waits: list[LockWait] = []
    for th in threads:
        if not th.lock_wait(machine):
            continue
        call = th.lock_call(machine) or th.wchan
        path: str | None = None
        dev: FileId | None = None
        if th.lock_call(machine) and th.args:
            fd_link = f"/proc/{pid}/fd/{th.args[0]}"
            with contextlib.suppress(OSError):
                path = os.readlink(fd_link)
            dev = file_id(fd_link)
        if dev is None:
            # No syscall arguments (hidden): /proc/locks lists the waiter itself.
            waiting = locks.waited_for_by(pid)
            dev = waiting[0] if waiting else model_id
            if dev is not None and dev == model_id:
                path = model
        holders = (
            tuple(h for h in locks.on(dev) if not h.blocked and h.pid != pid)
            if dev is not None
            else ()
        )
        waits.append(LockWait(th.tid, call, path, dev, holders))
    return waits


def _model_locks(ctx: Context) -> tuple[LockHolder, ...]:
    """Lock holders of the model, from the run's shared holder scan."""
    holders = model_holders(ctx)
    return tuple(holders.locks) if holders is not None else ()


def _model_path(ctx: Context, engine: EngineProcess) -> str | None:
    """The model under diagnosis (`facts.model_path`), else this engine's own."""
    found = model_path(ctx)
    return found[0] if found is not None else engine.model


def is_python(engine: EngineProcess) -> bool:
    names = [engine.info.name, engine.info.exe or "", *(engine.info.cmdline[:1])]
    return any("python" in Path(n).name.lower() for n in names if n)


def _find_py_spy() -> str | None:
    """py-spy on PATH, else the one installed beside this interpreter: a dependency of
    exsa-doctor, so it sits in the venv's bin/ even when the venv is not activated."""
    found = shutil.which("py-spy")
    if found is None:
        beside = Path(sys.executable).parent / "py-spy"
        if beside.is_file() and os.access(beside, os.X_OK):
            found = str(beside)
    return found


def py_spy_dump(
    pid: int,
    timeout: float,
    exe: str | None = None,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> tuple[str, str]:
    """(text, error) of `py-spy dump --pid PID`, bounded in time and bytes; killed on timeout.

    `exe` replaces the py-spy found on PATH (tests use it to stand in a py-spy that hangs).
    """
    exe = exe or _find_py_spy()
    if exe is None:
        return "", "py-spy is not installed"
    cmd = [exe, "dump", "--pid", str(pid)]
    if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64"):
        cmd.append("--native")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        except OSError as exc:
            return "", f"cannot run py-spy: {exc}"
        if on_start is not None:
            on_start(proc)
        try:
            code = proc.wait(timeout=max(0.1, timeout))
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child, by its PID
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
            return "", f"py-spy did not finish within {timeout:.1f} s (killed)"
        out.seek(0)
        err.seek(0)
        text = out.read(MAX_DUMP_BYTES).decode("utf-8", errors="replace")
        error = err.read(2048).decode("utf-8", errors="replace").strip()
    if code != 0:
        return "", f"py-spy exited {code}: {error.splitlines()[0] if error else 'no message'}"
    return text, ""


def wchan_summary(pid: int, threads: list[ThreadState], machine: str) -> str:
    lines = [f"pid {pid}: {len(threads)} thread(s)"]
    for th in threads[:64]:
        call = th.lock_call(machine)
        sc = (
            f"syscall {th.syscall}" + (f" ({call})" if call else "")
            if th.syscall is not None
            else ""
        )
        lines.append(f"  tid {th.tid} {th.state} wchan={th.wchan or '-'} {sc}".rstrip())
        if th.state == "D" or th.lock_wait(machine):
            kstack = _read_text(f"/proc/{pid}/task/{th.tid}/stack", 2048)
            if kstack:
                lines += [f"      {k}" for k in kstack.strip().splitlines()[:12]]
    if len(threads) > 64:
        lines.append(f"  ... {len(threads) - 64} more")
    return "\n".join(lines)[:MAX_DUMP_BYTES]


class StackProbe(Probe):
    """Reads where each thread of a live but not-serving engine sleeps; dumps Python stacks.

    Emits stack.blocked_in_flock, stack.blocked_in_io, stack.idle_waiting, stack.busy, stack.dump.
    """

    name = "stack"
    title = "Where a stuck engine waits"
    timeout_s = 4.0
    emits = (
        "stack.blocked_in_flock",
        "stack.blocked_in_io",
        "stack.idle_waiting",
        "stack.busy",
        "stack.dump",
    )

    def __init__(self) -> None:
        self._started: float | None = None

    def applies(self, ctx: Context) -> str | None:
        self._started = time.monotonic()
        engines = live(target_engines(ctx))
        if not engines:
            return "no live engine process"
        if health(ctx).ready:
            return "the engine serves; nothing is stuck"
        loaded = loaded_elsewhere(ctx, engines)
        if loaded is not None:
            return f"{loaded}; nothing is stuck"
        return None

    def run(self, ctx: Context) -> ProbeOutput:
        started = self._started if self._started is not None else time.monotonic()
        deadline = min(
            started + self.timeout_s - _MARGIN_S, time.monotonic() + ctx.remaining() - 0.2
        )
        out = ProbeOutput()
        machine = os.uname().machine if hasattr(os, "uname") else platform.machine()
        details: list[str] = []
        for engine in live(target_engines(ctx))[:MAX_PIDS]:
            details.append(self._one(ctx, engine, machine, deadline, out))
        out.detail = "; ".join(details)
        return out

    def _one(
        self, ctx: Context, engine: EngineProcess, machine: str, deadline: float, out: ProbeOutput
    ) -> str:
        pid = engine.pid
        snapshots: list[list[ThreadState]] = []
        have_proc = os.path.isdir(f"/proc/{pid}/task")
        if have_proc:
            for i in range(SNAPSHOTS):
                snap = read_threads(pid)
                if not snap:
                    break
                snapshots.append(snap)
                if i + 1 < SNAPSHOTS and time.monotonic() + SNAPSHOT_GAP_S < deadline - 0.5:
                    time.sleep(SNAPSHOT_GAP_S)
                else:
                    break
        verdict = "no thread states (not Linux, or the process ended)"
        last = snapshots[-1] if snapshots else []
        if last:
            verdict = self._classify(ctx, engine, machine, snapshots, out)
        text, source, dump_error = "", "", ""
        if is_python(engine):
            left = deadline - time.monotonic()
            if left < 0.2:
                text, dump_error = "", "no time left for py-spy"
            else:
                text, dump_error = py_spy_dump(pid, left, on_start=ctx.track_child)
            source = "py-spy"
        if not text and last:
            text, source = wchan_summary(pid, last, machine), "wchan"
            if dump_error:
                text = f"({dump_error})\n{text}"
        if text:
            summary = f"{source} of pid {pid}"
            data = {"pid": pid, "text": text, "source": source, "error": dump_error or None}
            out.add(self.finding("stack.dump", Level.INFO, summary, data))
        return f"pid {pid}: {verdict}"

    def _classify(
        self,
        ctx: Context,
        engine: EngineProcess,
        machine: str,
        snapshots: list[list[ThreadState]],
        out: ProbeOutput,
    ) -> str:
        pid = engine.pid
        last = snapshots[-1]
        model = _model_path(ctx, engine)
        waits = find_lock_waits(pid, last, machine, model, lock_table(ctx))
        model_id = file_id(model) if model else None
        for wait in waits:
            holders = wait.holders
            on_model = model_id is None or wait.dev == model_id
            if not holders and on_model and model_id is not None:
                holders = tuple(h for h in _model_locks(ctx) if not h.blocked and h.pid != pid)
            if not holders or not on_model:
                continue
            holder = holders[0]
            path = wait.path or model
            out.add(
                self.finding(
                    "stack.blocked_in_flock",
                    Level.ERROR,
                    f"pid {pid} thread {wait.tid} waits in {wait.call} for a lock on {path} "
                    f"held by pid {holder.pid}",
                    {
                        "pid": pid,
                        "tid": wait.tid,
                        "holder_pid": holder.pid,
                        "path": path,
                        "call": wait.call,
                        "kind": holder.kind,
                        "mode": holder.mode,
                    },
                )
            )
            return f"thread {wait.tid} blocked in {wait.call} (holder pid {holder.pid})"
        waiting_tids = {w.tid for w in waits}
        # a state counts when seen in most snapshots: one glimpse of D or R is noise
        need = len(snapshots) // 2 + 1
        d_count: Counter[int] = Counter()
        r_max = 0
        for snap in snapshots:
            d_count.update(t.tid for t in snap if t.state == "D" and t.tid not in waiting_tids)
            r_max = max(r_max, sum(1 for t in snap if t.state == "R"))
        cpu_moved = sum(t.cpu_ticks for t in last) - sum(t.cpu_ticks for t in snapshots[0])
        by_tid = {t.tid: t for t in last}
        in_io = [tid for tid, n in d_count.items() if n >= need]
        if in_io:
            threads = [
                {"tid": tid, "wchan": by_tid[tid].wchan if tid in by_tid else ""} for tid in in_io
            ]
            out.add(
                self.finding(
                    "stack.blocked_in_io",
                    Level.WARNING,
                    f"pid {pid}: {len(in_io)} thread(s) in uninterruptible disk sleep",
                    {"pid": pid, "threads": threads},
                )
            )
            return f"{len(in_io)} thread(s) in disk sleep"
        if r_max > 0 or cpu_moved > 0:
            out.add(
                self.finding(
                    "stack.busy",
                    Level.INFO,
                    f"pid {pid} is running ({r_max} thread(s) on CPU)",
                    {"pid": pid, "running": r_max, "cpu_ticks": cpu_moved},
                )
            )
            return f"busy ({r_max} running)"
        wchans = dict(Counter(t.wchan or "?" for t in last).most_common(12))
        out.add(
            self.finding(
                "stack.idle_waiting",
                Level.WARNING,
                f"pid {pid}: every thread sleeps and uses no CPU "
                f"({', '.join(f'{k} x{v}' for k, v in wchans.items())})",
                {
                    "pid": pid,
                    "wchans": wchans,
                    "threads": len(last),
                    "lock_waits": [w.tid for w in waits],
                },
            )
        )
        return "idle, every thread asleep"
