"""The context a probe runs in: the target, one deadline, and the run's memoised facts.

Probes are independent units of reporting, but several of them need the same expensive fact
(the engine processes, the listeners on the port, one health request). `Context.shared` computes
such a fact once, whichever probe asks first, and hands the same value to the others; the facts
themselves, and who asks for them, are in `facts.py`.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from exsa_doctor.target import Target

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """Raised inside a probe that noticed its deadline has passed."""


@dataclass
class Context:
    """Shared state for one diagnosis run. Thread-safe."""

    target: Target
    deadline: float  # time.monotonic() value
    started_wall: float = field(default_factory=time.time)
    _values: dict[str, Any] = field(default_factory=dict)
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _children_stopped: bool = False

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def check_deadline(self) -> None:
        if time.monotonic() >= self.deadline:
            raise DeadlineExceeded("the run's deadline passed")

    def io_timeout(self, wanted: float) -> float:
        """A timeout for one I/O step: what was asked, but never past the deadline."""
        return max(0.05, min(wanted, self.remaining()))

    def shared(self, key: str, compute: Callable[[], T]) -> T:
        """Compute `key` once; concurrent callers wait for the first one's value."""
        with self._guard:
            if key in self._values:
                return self._values[key]  # type: ignore[no-any-return]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in self._values:
                    return self._values[key]  # type: ignore[no-any-return]
            value = compute()
            with self._guard:
                self._values[key] = value
            return value

    def track_child(self, proc: subprocess.Popen[bytes]) -> None:
        """Register a process a probe started, so it can be stopped if the probe is abandoned.

        After `stop_children` (the run is over) a late registration is killed at once.
        """
        with self._guard:
            self._children.append(proc)
            late = self._children_stopped
        if late:
            _kill_child(proc)

    def stop_children(self) -> list[int]:
        """Kill, by PID, every registered child still running; the PIDs that were killed."""
        with self._guard:
            self._children_stopped = True
            children = list(self._children)
        return [proc.pid for proc in children if _kill_child(proc)]


def _kill_child(proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        return False
    with contextlib.suppress(OSError):
        proc.kill()  # our own child, by its PID
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=0.1)
    return True
