"""After a client of an engine we started failed: is the engine alive, how did it end, and why.

`run --then CMD` (when CMD fails) and the pytest plugin (when a test fails, or finds its engine
gone) ask the same questions of the engine they started:

- `check_liveness`: is the process alive, and does its health route answer (one bounded request
  to the engine's own address)?
- `engine_exit`: how it ended, from the exit status of our own child (a code, or the signal that
  killed it); for SIGKILL, the kernel's OOM-killer record of its PID when the kernel log can be
  read (`oslayer.kernel`), so "killed" is told apart from "killed by the OOM killer".
- `failure_target`: what to diagnose at that moment: the engine's own log, its PID, the time the
  client failed (`failed_at`) and the kernel's record as one more log, so the log signatures
  score it like any other line. `api.diagnose` does the rest: nothing here scores.
"""

from __future__ import annotations

import http.client
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from exsa_doctor.oslayer.kernel import KernelRecord, oom_kill_record
from exsa_doctor.target import Target

LOG_TAIL_LINES = 30
LOG_TAIL_BYTES = 8192
_HEALTH_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class EngineExit:
    """How an engine we started ended: its exit status and, for SIGKILL, the kernel's record."""

    pid: int
    status: int  # the exit code; negative: killed by that signal (Popen's convention)
    kernel: KernelRecord | None = None  # looked up for SIGKILL only

    @property
    def signal_number(self) -> int | None:
        return -self.status if self.status < 0 else None

    @property
    def signal_name(self) -> str | None:
        number = self.signal_number
        if number is None:
            return None
        try:
            return signal.Signals(number).name
        except ValueError:
            return f"signal {number}"

    def describe(self) -> str:
        """`was killed by signal 9 (SIGKILL)`, `exited with code 1`: what a person reads first."""
        return describe_status(self.status)

    def kernel_note(self) -> str | None:
        """What the kernel log says about a SIGKILL (None for other endings)."""
        if self.kernel is None:
            return None
        if self.kernel.unreadable is not None:
            return (
                "the kernel log cannot be read here, so whether the OOM killer sent the SIGKILL "
                f"is unknown ({self.kernel.unreadable})"
            )
        if self.kernel.lines:
            return "the kernel's OOM killer killed it: " + self.kernel.lines[0]
        return (
            f"the kernel log has no OOM-killer record for PID {self.pid}: something else sent "
            "the SIGKILL (a person, a script, a supervisor's timeout)"
        )


def describe_status(status: int | None) -> str:
    """An exit status in words (negative: the signal that killed the process)."""
    if status is None:
        return "is still running"
    if status >= 0:
        return f"exited with code {status}"
    number = -status
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"was killed by signal {number}"
    meaning = signal.strsignal(number) or ""
    what = f"{name}: {meaning.lower()}" if meaning and number != signal.SIGKILL else name
    return f"was killed by signal {number} ({what})"


def engine_exit(pid: int, status: int) -> EngineExit:
    """How the engine `pid` ended; the kernel log is read only when SIGKILL ended it."""
    kernel = oom_kill_record(pid) if status == -signal.SIGKILL else None
    return EngineExit(pid=pid, status=status, kernel=kernel)


@dataclass(frozen=True)
class Liveness:
    """The engine at one moment: exited (with its status), or alive and answering or not."""

    status: int | None  # not None: it exited (see `describe_status`)
    answered: bool  # its health route gave an HTTP answer
    detail: str  # what the health route said, or why it said nothing

    @property
    def alive(self) -> bool:
        return self.status is None

    @property
    def serving(self) -> bool:
        return self.alive and self.answered


def health_answer(target: Target, timeout_s: float) -> tuple[bool, str]:
    """One GET of the profile's health route: (answered, what it said or why not)."""
    from exsa_doctor.parsers.health import classify_health

    path = target.profile.health.path
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        import ssl

        conn = http.client.HTTPSConnection(
            target.host, target.port, timeout=timeout_s, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"Connection": "close", "User-Agent": "exsa-doctor"})
        resp = conn.getresponse()
        body = resp.read(_HEALTH_BODY_BYTES)
    except (OSError, http.client.HTTPException) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return False, f"GET {target.endpoint(path)}: no HTTP answer ({why})"
    finally:
        conn.close()
    answer = classify_health(target.profile.health, resp.status, body)
    return True, f"GET {target.endpoint(path)}: {answer.state.value} ({answer.reason})"


def check_liveness(
    target: Target,
    exit_status: Callable[[], int | None],
    *,
    timeout_s: float = 5.0,
    exit_fd: int | None = None,
    settle_s: float = 1.0,
) -> Liveness:
    """Alive, and does the health route answer? One request, bounded by `timeout_s`.

    An engine that is dying (its sockets closed, its exit not yet seen) is given `settle_s` to
    be seen exiting, so "no answer" is not reported for what is in fact a death.
    """
    from exsa_doctor.supervise.signals import fd_ready

    status = exit_status()
    if status is not None:
        return Liveness(status, False, describe_status(status))
    answered, detail = health_answer(target, timeout_s)
    if answered:
        return Liveness(None, True, detail)
    fd_ready([exit_fd] if exit_fd is not None else [], settle_s)
    status = exit_status()
    if status is not None:
        return Liveness(status, False, describe_status(status))
    return Liveness(None, False, detail)


def log_tail(
    path: Path | None, lines: int = LOG_TAIL_LINES, max_bytes: int = LOG_TAIL_BYTES
) -> list[str]:
    """The last `lines` lines of a log (read at most `max_bytes` from its end; [] if unreadable)."""
    if path is None:
        return []
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read(max_bytes)
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and text:
        text = text[1:]  # the first line was cut by the seek
    return text[-lines:]


def kernel_log_name(pid: int) -> str:
    """The name the kernel's record of `pid` goes by among the diagnosed logs."""
    return f"kernel log (OOM killer, PID {pid})"


def failure_target(
    target: Target,
    *,
    log: Path | None,
    pid: int,
    failed_at: float | None,
    ended: EngineExit | None = None,
) -> Target:
    """The engine's target with what is known at the failure: log, PID, time, kernel record."""
    logs: tuple[Path, ...] = (log,) if log is not None else ()
    inline = dict(target.inline_logs)
    if ended is not None and ended.kernel is not None and ended.kernel.lines:
        name = kernel_log_name(pid)
        logs += (Path(name),)
        inline[name] = ("\n".join(ended.kernel.lines) + "\n").encode()
    return replace(target, logs=logs, pids=(pid,), failed_at=failed_at, inline_logs=inline)
