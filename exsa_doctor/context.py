"""The context a probe runs in: the target, one deadline, and memoised shared observations.

Probes are independent units of reporting, but several of them need the same expensive fact
(the engine processes, the listeners on the port, one health request). `Context.shared` computes
such a fact once, whichever probe asks first, and hands the same value to the others.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from exsa_doctor.oslayer.types import EngineProcess, Listener, ListenerScan
from exsa_doctor.profiles import Profile, all_builtin
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

    def engines(self) -> tuple[list[EngineProcess], bool]:
        """All engine instances (any built-in profile, plus the target's), and completeness."""
        from exsa_doctor.oslayer.procs import find_engines

        def compute() -> tuple[list[EngineProcess], bool]:
            profiles = _profiles_for(self.target.profile)
            # leave a little of the budget to the probes that read this
            return find_engines(profiles, deadline=self.deadline - 0.2, extra_pids=self.target.pids)

        return self.shared("engines", compute)

    def target_engines(self) -> list[EngineProcess]:
        """The engine instances this diagnosis is about: --pid, else those of the target profile
        meant for the target port; never a neighbour (`neighbours`)."""
        return self.shared("target_engines", self._decide_target_engines)

    def neighbours(self) -> list[EngineProcess]:
        """Other engines on the machine: context, named as such, never the target."""
        engines, _ = self.engines()
        mine = {e.pid for e in self.target_engines()}
        return [e for e in engines if e.pid not in mine]

    def _decide_target_engines(self) -> list[EngineProcess]:
        engines, _ = self.engines()
        target = self.target
        if target.pids:
            return [e for e in engines if e.pid in target.pids]
        mine = [e for e in engines if e.profile == target.profile.name]
        # Several instances on one machine: the ones configured for the target port are meant;
        # an instance that serves another port is somebody else's (or a wrong-address clue,
        # which the port probe reports on its own).
        default = target.profile.default_port
        for_port = [e for e in mine if (e.configured_port or default) == target.port]
        if for_port:
            return for_port
        return [e for e in mine if not self._is_neighbour(e)]

    def _is_neighbour(self, engine: EngineProcess) -> bool:
        """An instance of the target profile, not set up for the target port, that positively
        belongs to something else: it writes another log than --log, serves another model than
        --model, or the target port is held by another process (then the target's engine is the
        one that could not bind, and this one is a bystander)."""
        from exsa_doctor.oslayer.files import same_file
        from exsa_doctor.oslayer.procs import output_file_of

        target = self.target
        if target.logs:
            writes_to = output_file_of(engine.pid)
            if writes_to is not None and not any(same_file(writes_to, p) for p in target.logs):
                return True
        if (
            target.model is not None
            and target.model_source in ("--model", "MODEL_PATH")
            and engine.model
            and not same_file(engine.model, target.model)
        ):
            return True
        held = [
            ls.pid
            for ls in self._port_listeners()
            if ls.state == "LISTEN" and ls.pid is not None and ls.pid != engine.pid
        ]
        return bool(held)

    def _port_listeners(self) -> tuple[Listener, ...]:
        from exsa_doctor.oslayer.sockets import listeners_of

        port = self.target.port
        limit = self.deadline - 0.2

        def scan() -> ListenerScan:
            return listeners_of(port, limit)

        try:
            return self.shared(f"listeners:{port}", scan).listeners
        except (OSError, ValueError):
            return ()


def _kill_child(proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        return False
    with contextlib.suppress(OSError):
        proc.kill()  # our own child, by its PID
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=0.1)
    return True


def _profiles_for(target_profile: Profile) -> list[Profile]:
    others = [p for p in all_builtin() if p.name != target_profile.name]
    return [target_profile, *others]
