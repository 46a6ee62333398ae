"""The engine processes a wait watches: which they are, whether they exited, whether they move.

Every `SAMPLE_S` the watched engines' CPU time, bytes read and resident memory, and the size of
their logs, are sampled (`ProgressSampler`), so a timeout can say whether the load was still
moving (slow) or not (hung).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

import psutil

from exsa_doctor.facts import meant_for_port
from exsa_doctor.profiles import Profile, all_builtin
from exsa_doctor.supervise.signals import is_gone
from exsa_doctor.target import Target

SAMPLE_S = 0.5
_SCAN_BUDGET_S = 0.5


@dataclass
class Watched:
    """One engine process the wait watches."""

    pid: int
    create_time: float | None
    profile: str
    model: str | None = None
    log: str | None = None
    fd: int | None = None
    exit_code: int | None = None  # known only for our own child
    exited_at: float | None = None  # seconds after the wait started
    cpu_s: float | None = None
    read_bytes: int | None = None
    rss: int | None = None


@dataclass
class Progress:
    """Movement of the load between samples: CPU, bytes read, resident memory, log size."""

    first_t: float | None = None
    last_progress_t: float | None = None
    cpu_s: float = 0.0
    read_bytes: int = 0
    rss_bytes: int = 0
    log_bytes: int = 0
    samples: int = 0


def _cpu_read_rss(pid: int) -> tuple[float | None, int | None, int | None]:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            times = proc.cpu_times()
            cpu: float | None = times.user + times.system
            try:
                io = proc.io_counters()
                # read_chars counts page-cache reads too (a warm load reads no disk at all)
                read: int | None = int(getattr(io, "read_chars", io.read_bytes))
            except (psutil.AccessDenied, AttributeError, NotImplementedError):
                read = None
            rss: int | None = proc.memory_info().rss
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None, None, None
    return cpu, read, rss


def _model_abs(pid: int, model: str | None) -> str | None:
    if not model or os.path.isabs(model):
        return model
    with contextlib.suppress(psutil.Error, OSError):
        return os.path.join(psutil.Process(pid).cwd(), model)
    return model


def engines_for(target: Target) -> list[Watched]:
    """Live engine instances meant to serve the target's port (by their config or default)."""
    from exsa_doctor.oslayer.procs import find_engines

    profiles: list[Profile] = [
        target.profile,
        *[p for p in all_builtin() if p.name != target.profile.name],
    ]
    defaults = {p.name: p.default_port for p in profiles}
    engines, _ = find_engines(profiles, deadline=time.monotonic() + _SCAN_BUDGET_S)
    return [
        Watched(
            pid=eng.pid,
            create_time=eng.info.create_time,
            profile=eng.profile,
            model=_model_abs(eng.pid, eng.model),
        )
        for eng in engines
        if eng.info.state not in ("zombie", "dead")
        and meant_for_port(eng, target.port, defaults.get(eng.profile))
    ]


def watch_pid(pid: int, profile: str) -> Watched:
    create: float | None = None
    with contextlib.suppress(psutil.Error):
        create = psutil.Process(pid).create_time()
    return Watched(pid=pid, create_time=create, profile=profile)


def has_exited(w: Watched) -> bool:
    """Gone, a zombie, or its PID reused by another process."""
    return is_gone(w.pid, w.create_time)


class ProgressSampler:
    """Samples the watched engines and their logs every `SAMPLE_S`, adding what moved."""

    def __init__(self, started: float) -> None:
        self._t0 = started
        self._next = started
        self._log_sizes: dict[str, int] = {}

    def sample(self, live: list[Watched], logs: list[str], progress: Progress) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + SAMPLE_S
        moved = False
        cpu_total = 0.0
        read_total = 0
        rss_total = 0
        any_proc = False
        for w in live:
            cpu, read, rss = _cpu_read_rss(w.pid)
            if cpu is None:
                continue
            any_proc = True
            if w.cpu_s is not None and cpu - w.cpu_s > 0.005:
                moved = True
                cpu_total += cpu - w.cpu_s
            if read is not None and w.read_bytes is not None and read > w.read_bytes:
                moved = True
                read_total += read - w.read_bytes
            if rss is not None and w.rss is not None and rss > w.rss:
                moved = True
                rss_total += rss - w.rss
            w.cpu_s, w.read_bytes, w.rss = cpu, read, rss
        for path in logs:
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            any_proc = True
            old = self._log_sizes.get(path)
            if old is not None and size != old:
                moved = True
                progress.log_bytes += max(0, size - old)
            self._log_sizes[path] = size
        if not any_proc:
            return
        t = round(now - self._t0, 3)
        if progress.first_t is None:
            progress.first_t = t
        progress.samples += 1
        if moved:
            progress.last_progress_t = t
            progress.cpu_s += cpu_total
            progress.read_bytes += read_total
            progress.rss_bytes += rss_total
