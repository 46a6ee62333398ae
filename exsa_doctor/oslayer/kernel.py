"""The kernel's own record of a process it killed: `oom_kill_record(pid)`.

When an engine dies of SIGKILL, the usual sender is the kernel's OOM killer, and the kernel says
so in its ring buffer (`Out of memory: Killed process 1234 (llama-server) ...`, `oom-kill:...,
pid=1234,...`). Linux exposes the buffer as `/dev/kmsg`, one record per `read()`; reading it needs
root or `kernel.dmesg_restrict=0`. Where it cannot be read (no such device: macOS, a container
without it, or permission denied) the answer says why instead of guessing.

The read is bounded in records and time, never blocks (`O_NONBLOCK`: the end of the buffer is
`EAGAIN`), and keeps only the lines that name the PID.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KMSG = Path("/dev/kmsg")
_RECORD_BYTES = 8192  # a /dev/kmsg record is at most ~1 KiB; a smaller buffer gets EINVAL
_MAX_RECORDS = 50_000
_MAX_LINES = 10


@dataclass(frozen=True)
class KernelRecord:
    """What the kernel log says about one PID: its lines, or why the log could not be read."""

    pid: int
    lines: tuple[str, ...] = ()
    unreadable: str | None = None  # None: the log was read (lines may be empty)

    @property
    def oom_killed(self) -> bool:
        return bool(self.lines)


def _pid_pattern(pid: int) -> re.Pattern[str]:
    return re.compile(rf"(?:[Kk]illed process {pid}\b|\boom-kill:.{{0,2000}}\bpid={pid}\b)")


def oom_lines(messages: Iterable[str], pid: int) -> list[str]:
    """The kernel messages that record the OOM killer ending `pid` (at most a few)."""
    pattern = _pid_pattern(pid)
    found = [m for m in messages if pattern.search(m)]
    return found[-_MAX_LINES:]


def kmsg_message(record: bytes) -> str:
    """The text of one `/dev/kmsg` record (`prio,seq,usec,flags;text` plus continuation lines)."""
    text = record.decode("utf-8", errors="replace")
    head, _, rest = text.partition(";")
    body = rest if rest else head
    return body.split("\n", 1)[0].strip()


def read_kmsg(path: Path = KMSG, budget_s: float = 0.5) -> list[str] | str:
    """Every message in the kernel ring buffer, or a sentence saying why it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return f"{path} does not exist on this system"
    except PermissionError:
        return f"{path} is not readable by this user (root, or sysctl kernel.dmesg_restrict=0)"
    except OSError as exc:
        return f"{path} cannot be opened: {exc.strerror or exc}"
    messages: list[str] = []
    deadline = time.monotonic() + budget_s
    try:
        while len(messages) < _MAX_RECORDS and time.monotonic() < deadline:
            try:
                record = os.read(fd, _RECORD_BYTES)
            except BlockingIOError:
                break  # the end of the buffer
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue  # the record was overwritten while we read: go on with the next
                if exc.errno in (errno.EPERM, errno.EACCES):
                    return f"{path} is not readable by this user (root, or kernel.dmesg_restrict=0)"
                if not messages:
                    return f"{path} cannot be read: {exc.strerror or exc}"
                break
            if not record:
                break
            messages.append(kmsg_message(record))
    finally:
        os.close(fd)
    return messages


def oom_kill_record(pid: int, path: Path = KMSG) -> KernelRecord:
    """The kernel log's lines about the OOM killer ending `pid` (empty when there are none)."""
    messages = read_kmsg(path)
    if isinstance(messages, str):
        return KernelRecord(pid=pid, unreadable=messages)
    return KernelRecord(pid=pid, lines=tuple(oom_lines(messages, pid)))
