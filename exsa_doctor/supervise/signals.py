"""Safe termination: stop exactly the processes we mean, never a stranger that reused a PID.

Two situations, two rules:

- A process *we started* (`run`'s engine, `--then`'s shell) leads its own process group and
  session. We watch it with `waitid(WNOWAIT)`, which sees the exit without reaping, so its PID
  (and with it the group and session id) cannot be reused until we reap it ourselves. Only then
  is `os.killpg` on that id known to reach our group and nobody else's.
- A process *we found* (`cleanup`) is identified by PID **and** creation time; the identity is
  checked again right before each signal, so a PID recycled in between is left alone.

Nothing here prints: callers get reports (`GroupStop`, `StopOutcome`) and decide what to say.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import psutil

DEFAULT_GRACE_S = 5.0
KILL_WAIT_S = 3.0
_POLL_S = 0.02
_DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for a few lines (e.g. between fork and recording the PID).

    A signal that arrives meanwhile is delivered when the block ends, so a Ctrl-C can never leave
    a child started but unrecorded (and therefore never torn down).
    """
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - all POSIX we support have it
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as PID plus creation time: survives PID reuse, unlike a bare PID."""

    pid: int
    create_time: float

    def current(self) -> psutil.Process | None:
        """The live process if it is still this one (not exited, not a zombie, not a reused PID)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.01:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except psutil.AccessDenied:
            return None
        return proc


def identity_of(pid: int) -> ProcessIdentity | None:
    """The identity of a live PID, or None if it does not exist."""
    try:
        return ProcessIdentity(pid, psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


def is_gone(pid: int, create_time: float | None = None) -> bool:
    """True when the process exited: no such PID, a zombie, or the PID now names another process."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.01:
            return True
        return proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.AccessDenied:
        return False


def exit_fd(pid: int) -> int | None:
    """A file descriptor that becomes readable when `pid` exits (Linux pidfd), or None.

    Waiting on it with `select` costs no CPU and wakes at once on exit; without it callers poll.
    """
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:
        return None
    return fd


def fd_ready(fds: Sequence[int], timeout_s: float) -> list[int]:
    """The descriptors among `fds` readable within `timeout_s` (a plain sleep without `fds`)."""
    if not fds:
        if timeout_s > 0:
            time.sleep(timeout_s)
        return []
    readable, _, _ = select.select(list(fds), [], [], max(0.0, timeout_s))
    return list(readable)


def _exit_code_from_siginfo(si_code: int, si_status: int) -> int:
    """Shell convention: a normal exit gives its status, death by signal N gives -N."""
    if si_code == os.CLD_EXITED:
        return si_status
    return -si_status


class Child:
    """A process we started with `start_new_session=True`: it leads its own group and session.

    `exit_status` looks at the exit without reaping (WNOWAIT), so the PID stays reserved for us
    until `reap`; every group signal is sent only while that is so.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.pgid = popen.pid
        self._status: int | None = None
        self._reaped = False
        try:
            self.create_time: float | None = psutil.Process(self.pid).create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self.create_time = None

    @property
    def reaped(self) -> bool:
        return self._reaped

    def exit_status(self) -> int | None:
        """Exit code (negative: killed by that signal) once it exited, else None. Never reaps."""
        if self._status is not None:
            return self._status
        if self._reaped:
            self._status = self.popen.returncode
            return self._status
        waitid = getattr(os, "waitid", None)
        if waitid is not None and hasattr(os, "WNOWAIT"):
            try:
                info = waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
            if info is not None and info.si_pid == self.pid:
                self._status = _exit_code_from_siginfo(info.si_code, info.si_status)
            return self._status
        # No waitid (rare): poll, which reaps; group signals then rely on the group check below.
        code = self.popen.poll()  # pragma: no cover - Linux and macOS have waitid
        if code is not None:  # pragma: no cover
            self._reaped = True
            self._status = code
        return self._status  # pragma: no cover

    def reap(self, timeout_s: float = KILL_WAIT_S) -> int | None:
        """Collect the exit status (after this the PID may be reused: no more group signals)."""
        if self._reaped:
            return self.popen.returncode
        try:
            code = self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        self._reaped = True
        self._status = code
        return code

    def group_is_ours(self) -> bool:
        """The group id still belongs to our unreaped child, so `killpg` cannot hit a stranger."""
        if self._reaped:
            return False
        try:
            proc = psutil.Process(self.pid)
            if self.create_time is not None and abs(proc.create_time() - self.create_time) > 0.01:
                return False
            return proc.ppid() == os.getpid()
        except psutil.ZombieProcess:
            return True  # exited, not reaped by us yet: the id is still reserved for us
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def signal_group(self, signum: int) -> bool:
        """Send `signum` to the whole group, only if the group is provably ours."""
        if not self.group_is_ours():
            return False
        try:
            os.killpg(self.pgid, signum)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False
        return True

    def members(self) -> list[ProcessIdentity]:
        """Live processes of our group or session, the leader excluded (it is watched apart).

        A descendant that moved to its own process group is still found by its session id,
        unless it also called setsid(); those are caught by the descendant snapshot in `stop_group`.
        """
        if self._reaped:
            return []
        found: list[ProcessIdentity] = []
        for pid in psutil.pids():
            if pid == self.pid:
                continue
            try:
                if os.getpgid(pid) != self.pgid and os.getsid(pid) != self.pgid:
                    continue
            except OSError:
                continue
            if is_gone(pid):
                continue
            ident = identity_of(pid)
            if ident is not None:
                found.append(ident)
        return found

    def descendants(self) -> list[ProcessIdentity]:
        """Children of the leader, recursively, while it is alive (a snapshot)."""
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return []
        out: list[ProcessIdentity] = []
        for kid in kids:
            try:
                out.append(ProcessIdentity(kid.pid, kid.create_time()))
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
        return out


@dataclass
class GroupStop:
    """What stopping a child's group did: signals sent, and whatever survived."""

    pid: int
    exit_code: int | None = None
    sent_term: bool = False
    sent_kill: bool = False
    already_exited: bool = False
    survivors: list[int] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.survivors and self.exit_code is not None


def _signal_identity(ident: ProcessIdentity, signum: int) -> bool:
    proc = ident.current()
    if proc is None:
        return False
    try:
        proc.send_signal(signum)  # psutil re-checks the creation time before sending
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return True


def _wait_all_gone(
    child: Child, others: Iterable[ProcessIdentity], deadline: float
) -> list[ProcessIdentity]:
    """Poll until the leader exited and every other process is gone; return what is left."""
    pending = list(others)
    while True:
        pending = [p for p in pending if not is_gone(p.pid, p.create_time)]
        leader_done = child.exit_status() is not None
        if leader_done and not pending:
            return []
        if time.monotonic() >= deadline:
            left = list(pending)
            if not leader_done and child.create_time is not None:
                left.insert(0, ProcessIdentity(child.pid, child.create_time))
            return left
        time.sleep(_POLL_S)


def stop_group(child: Child, grace_s: float = DEFAULT_GRACE_S) -> GroupStop:
    """SIGTERM to the child's process group, a grace period, SIGKILL for what is left; then reap.

    Escaped descendants (own group or session) are signalled one by one by identity. The report
    lists every process of the group or session still alive at the end (there should be none).
    """
    started = time.monotonic()
    report = GroupStop(pid=child.pid)
    with signals_deferred():
        report.already_exited = child.exit_status() is not None
        tracked = {p.pid: p for p in [*child.descendants(), *child.members()]}
        report.sent_term = child.signal_group(signal.SIGTERM)
        for ident in tracked.values():
            _signal_identity(ident, signal.SIGTERM)
    left = _wait_all_gone(child, tracked.values(), time.monotonic() + max(0.0, grace_s))
    # processes started in the group after our snapshot are found again here
    extra = [p for p in child.members() if p.pid not in tracked]
    if left or extra:
        with signals_deferred():
            report.sent_kill = child.signal_group(signal.SIGKILL)
            for ident in [*left, *extra]:
                if ident.pid != child.pid:
                    _signal_identity(ident, signal.SIGKILL)
        left = _wait_all_gone(child, [*left, *extra], time.monotonic() + KILL_WAIT_S)
    survivors = [p.pid for p in left if p.pid != child.pid]
    survivors += [p.pid for p in child.members() if p.pid not in survivors]
    report.exit_code = child.reap()
    if report.exit_code is None:
        survivors.insert(0, child.pid)
    report.survivors = survivors
    report.duration_s = round(time.monotonic() - started, 3)
    return report


@dataclass(frozen=True)
class StopOutcome:
    """What `stop_identified` did to one process found (not started) by us."""

    pid: int
    result: str  # "terminated", "killed", "vanished", "changed", "denied", "survived"
    detail: str = ""

    @property
    def stopped(self) -> bool:
        return self.result in ("terminated", "killed", "vanished")


def stop_identified(
    targets: Sequence[ProcessIdentity], grace_s: float = DEFAULT_GRACE_S
) -> list[StopOutcome]:
    """SIGTERM each target (re-checking its identity first), grace, then SIGKILL survivors.

    A target whose PID now names another process (`changed`) is never signalled.
    """
    outcomes: dict[int, StopOutcome] = {}
    live: list[ProcessIdentity] = []
    for ident in targets:
        proc = ident.current()
        if proc is None:
            outcomes[ident.pid] = StopOutcome(
                ident.pid,
                "vanished" if is_gone(ident.pid, ident.create_time) else "changed",
                "exited before we signalled it",
            )
            continue
        try:
            proc.send_signal(signal.SIGTERM)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            outcomes[ident.pid] = StopOutcome(ident.pid, "vanished", "exited before SIGTERM")
            continue
        except psutil.AccessDenied:
            outcomes[ident.pid] = StopOutcome(ident.pid, "denied", "permission denied")
            continue
        live.append(ident)
    deadline = time.monotonic() + max(0.0, grace_s)
    pending = list(live)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if not is_gone(p.pid, p.create_time)]
        if pending:
            time.sleep(_POLL_S)
    for ident in live:
        if ident not in pending:
            outcomes[ident.pid] = StopOutcome(ident.pid, "terminated", "exited after SIGTERM")
    for ident in pending:
        if _signal_identity(ident, signal.SIGKILL):
            outcomes[ident.pid] = StopOutcome(ident.pid, "killed", "SIGKILL after the grace period")
    deadline = time.monotonic() + KILL_WAIT_S
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if not is_gone(p.pid, p.create_time)]
        if pending:
            time.sleep(_POLL_S)
    for ident in pending:
        outcomes[ident.pid] = StopOutcome(ident.pid, "survived", "still alive after SIGKILL")
    return [outcomes[t.pid] for t in targets if t.pid in outcomes]


def errno_name(exc: OSError) -> str:
    """`EADDRINUSE` for an OSError, for messages that people search for."""
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))
