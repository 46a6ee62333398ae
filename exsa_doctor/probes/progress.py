"""The progress probe: is a not-yet-serving engine still loading, or stuck?

Symptom: "the engine appeared to start but didn't serve" - after 3 s of a 12 s load, or forever.
Refused connections look the same in both cases; what differs is whether anything moves. Like
Ollama's own supervisor (which gives up only after a span with no load progress), this probe
samples the target engine over a window and watches:
- CPU time (psutil `cpu_times`), bytes read (`/proc/PID/io` read_bytes and rchar),
- pages of the model mapping resident in memory (`/proc/PID/smaps`, Rss of the model's inode),
- the size of the engine's log files,
- the port: a cheap TCP connect every ~100 ms (refused -> listening), and one health GET when
  the connect succeeds (listening -> healthy).

An engine that serves on another port after loading (its profile listens only once loaded) has
no load to watch, and is skipped unless `--watch` asks (`facts.loaded_elsewhere`).
The window is short (~0.6 s) in a plain run and `--watch` seconds otherwise, never past the run's
deadline; it stops early once the answer is certain (the engine became ready, or, when not
watching, it clearly makes progress). Finding ids: progress.loading, progress.stalled,
progress.became_ready, progress.transitions.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from exsa_doctor.context import Context
from exsa_doctor.facts import (
    engine_ports,
    health,
    live,
    loaded_elsewhere,
    model_path,
    target_engines,
)
from exsa_doctor.httpcheck import check_health
from exsa_doctor.model import EventKind, Level
from exsa_doctor.oslayer.types import EngineProcess
from exsa_doctor.probes.base import Probe, ProbeOutput

DEFAULT_WINDOW_S = 0.6
CONNECT_EVERY_S = 0.1
SAMPLE_EVERY_S = 0.2
GET_EVERY_S = 0.5
SMAPS_EVERY_S = 1.0
MAX_PIDS = 4
MAX_SMAPS_BYTES = 16 * 1024 * 1024
# Kept back from the run's deadline for the findings and the other probes' reports.
_MARGIN_S = 0.3
# Thresholds for "it moved": CPU ticks are 10 ms; an idle process reads nothing.
CPU_MOVED_S = 0.02
RCHAR_MOVED = 4096
MIN_STALL_WINDOW_S = 0.3
_SMAPS_HEADER = re.compile(
    rb"^[0-9a-f]+-[0-9a-f]+\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+):([0-9a-f]+)\s+(\d+)"
)

try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
    _PAGE = 4096


@dataclass
class Sample:
    """Summed counters of the watched processes at one moment."""

    t: float
    cpu_s: float = 0.0
    read_bytes: int = 0
    rchar: int = 0
    log_bytes: int = 0
    pages: int = 0
    alive: set[int] = field(default_factory=set)
    hidden: set[int] = field(default_factory=set)  # counters the OS would not show us


@dataclass(frozen=True)
class ModelFile:
    """The model's identity: its device and inode (what smaps names a mapping by), and path."""

    path: str
    dev_major: int
    dev_minor: int
    inode: int


def model_identity(path: str | None) -> ModelFile | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return ModelFile(path, os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)


def resident_model_pages(pid: int, model: ModelFile, limit: int = MAX_SMAPS_BYTES) -> int | None:
    """Pages of `model` resident in `pid`'s mappings (sum of their Rss), None when unreadable."""
    try:
        with open(f"/proc/{pid}/smaps", "rb") as fh:
            data = fh.read(limit)
    except OSError:
        return None
    total_kb = 0
    in_model = False
    for line in data.splitlines():
        header = _SMAPS_HEADER.match(line)
        if header is not None:
            major, minor, ino = int(header[1], 16), int(header[2], 16), int(header[3])
            in_model = (major, minor, ino) == (model.dev_major, model.dev_minor, model.inode)
            continue
        if in_model and line.startswith(b"Rss:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                total_kb += int(parts[1])
    return total_kb * 1024 // _PAGE


def port_state(host: str, port: int, timeout: float) -> str:
    """refused, listening, no_answer (connect timed out) or unreachable: one TCP connect."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "listening"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "no_answer"
    except OSError as exc:
        return "refused" if exc.errno == errno.ECONNREFUSED else "unreachable"


def _log_bytes(paths: Iterable[Path]) -> int:
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += os.stat(path).st_size
    return total


def take_sample(
    pids: Sequence[int], logs: Sequence[Path], model: ModelFile | None, with_pages: bool
) -> Sample:
    sample = Sample(t=time.monotonic(), log_bytes=_log_bytes(logs))
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                times = proc.cpu_times()
                sample.cpu_s += times.user + times.system
                sample.alive.add(pid)
                try:
                    io = proc.io_counters()
                    sample.read_bytes += io.read_bytes
                    sample.rchar += getattr(io, "read_chars", 0)
                except (psutil.AccessDenied, AttributeError, NotImplementedError):
                    sample.hidden.add(pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied:
            sample.hidden.add(pid)
            sample.alive.add(pid)
            continue
        if with_pages and model is not None:
            pages = resident_model_pages(pid, model)
            if pages is not None:
                sample.pages += pages
    return sample


@dataclass(frozen=True)
class Movement:
    """What changed between two samples."""

    cpu_s: float
    read_bytes: int
    rchar: int
    log_bytes: int
    pages: int

    @property
    def moved(self) -> bool:
        return (
            self.cpu_s >= CPU_MOVED_S
            or self.read_bytes > 0
            or self.rchar >= RCHAR_MOVED
            or self.log_bytes > 0
            or self.pages > 0
        )


def movement(first: Sample, last: Sample) -> Movement:
    # Only processes alive in both samples: a process that died must not read as "moved".
    return Movement(
        cpu_s=round(max(0.0, last.cpu_s - first.cpu_s), 3),
        read_bytes=max(0, last.read_bytes - first.read_bytes),
        rchar=max(0, last.rchar - first.rchar),
        log_bytes=max(0, last.log_bytes - first.log_bytes),
        pages=max(0, last.pages - first.pages),
    )


@dataclass(frozen=True)
class Watch:
    """What one watch window saw."""

    first: Sample
    last: Sample
    observed: float
    state: str
    transitions: list[dict[str, object]]
    became_ready: float | None
    ever_connected: bool
    pids: list[int]
    model: ModelFile | None
    planned: float
    listens_elsewhere: bool = False


def _model_path(ctx: Context, engines: Sequence[EngineProcess]) -> str | None:
    """The model under diagnosis (`facts.model_path`), else this engine's own."""
    found = model_path(ctx)
    return found[0] if found is not None else next((e.model for e in engines if e.model), None)


def live_engines(ctx: Context) -> list[EngineProcess]:
    return live(target_engines(ctx))


class ProgressProbe(Probe):
    """Watches a not-yet-serving engine: CPU, reads, resident model pages, log growth, the port.

    Tells "still loading" (progress.loading, progress.became_ready) from "stuck"
    (progress.stalled); reports the refused -> listening -> healthy changes it saw
    (progress.transitions).
    """

    name = "progress"
    title = "Load progress"
    # The run's deadline bounds it (--watch can be long); run() sizes its own window from
    # ctx.remaining().
    timeout_s = 3600.0
    emits = (
        "progress.loading",
        "progress.stalled",
        "progress.became_ready",
        "progress.transitions",
    )

    def applies(self, ctx: Context) -> str | None:
        engines = live_engines(ctx)
        if not engines:
            return "no live engine process to watch"
        if ctx.target.watch_s == 0 and health(ctx).ready:
            return "the engine already serves (use --watch to watch it anyway)"
        loaded = loaded_elsewhere(ctx, engines) if ctx.target.watch_s == 0 else None
        if loaded is not None:
            return f"{loaded} (use --watch to watch it anyway)"
        return None

    def run(self, ctx: Context) -> ProbeOutput:
        target = ctx.target
        out = ProbeOutput()
        engines = live_engines(ctx)[:MAX_PIDS]
        pids = [e.pid for e in engines]
        watching = target.watch_s > 0
        wanted = target.watch_s if watching else DEFAULT_WINDOW_S
        window = max(0.0, min(wanted, ctx.remaining() - _MARGIN_S))
        model = model_identity(_model_path(ctx, engines))
        started = time.monotonic()
        end = started + window
        first = take_sample(pids, target.logs, model, with_pages=True)
        last = first
        samples = 1
        state = ""
        transitions: list[dict[str, object]] = []
        ever_connected = False
        became_ready: float | None = None
        next_connect = started
        next_sample = started + SAMPLE_EVERY_S
        next_get = started
        next_pages = started + SMAPS_EVERY_S

        def change(new: str) -> None:
            nonlocal state
            if new == state:
                return
            now_wall = time.time()
            after = round(time.monotonic() - started, 3)
            if state:
                transitions.append({"from": state, "to": new, "t": now_wall, "after_s": after})
                # a port that opens is a milestone; the rest is what the probe saw
                kind = EventKind.LISTENING if new == "listening" else EventKind.OBSERVATION
                out.event(now_wall, "probe", f"progress: {state} -> {new}", kind)
            state = new

        while True:
            now = time.monotonic()
            if now >= end:
                break
            if now >= next_connect:
                next_connect = now + CONNECT_EVERY_S
                seen = port_state(target.host, target.port, timeout=min(0.5, end - now))
                if seen == "listening":
                    ever_connected = True
                    if state == "healthy":
                        seen = "healthy"  # a connect cannot tell healthy from listening
                    elif time.monotonic() >= next_get:
                        next_get = time.monotonic() + GET_EVERY_S
                        left = end - time.monotonic()
                        obs = check_health(
                            target,
                            time.monotonic() + max(0.05, min(1.0, left)),
                            connect_s=min(0.5, max(0.05, left)),
                            read_s=min(1.0, max(0.05, left)),
                        )
                        if obs.ready:
                            if state and state != "listening":
                                change("listening")  # the step between, seen in one look
                            seen = "healthy"
                change(seen)
                if state == "healthy" and transitions and became_ready is None:
                    became_ready = round(time.monotonic() - started, 3)
                    break
            if time.monotonic() >= next_sample:
                next_sample = time.monotonic() + SAMPLE_EVERY_S
                with_pages = time.monotonic() >= next_pages
                if with_pages:
                    next_pages = time.monotonic() + SMAPS_EVERY_S
                current = take_sample(pids, target.logs, model, with_pages=with_pages)
                if not with_pages:
                    current.pages = last.pages
                last = current
                samples += 1
                if not last.alive:
                    break
                if not watching and samples >= 3 and movement(first, last).moved:
                    break  # clearly making progress: no need to sit out the window
            pause = min(next_connect, next_sample, end) - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        final = take_sample(pids, target.logs, model, with_pages=True)
        if final.alive or not last.alive:
            last = final
        observed = round(time.monotonic() - started, 3)
        watch = Watch(
            first,
            last,
            observed,
            state,
            transitions,
            became_ready,
            ever_connected,
            pids,
            model,
            planned=window,
            listens_elsewhere=not ever_connected and _listens_anywhere(ctx, pids),
        )
        self._findings(out, watch)
        return out

    def _findings(self, out: ProbeOutput, w: Watch) -> None:
        first, last, observed, state = w.first, w.last, w.observed, w.state
        transitions, became_ready = w.transitions, w.became_ready
        moved = movement(first, last)
        gone = sorted(set(first.alive) - set(last.alive))
        data = {
            "cpu_s": moved.cpu_s,
            "read_bytes": moved.read_bytes,
            "rchar": moved.rchar,
            "log_bytes": moved.log_bytes,
            "pages": moved.pages,
            "resident_pages": last.pages if w.model is not None else None,
            "window_s": observed,
            "pids": w.pids,
        }
        if moved.moved:
            what = [
                label
                for label, hit in (
                    (f"CPU +{moved.cpu_s:g} s", moved.cpu_s >= CPU_MOVED_S),
                    (
                        f"read +{moved.read_bytes or moved.rchar} bytes",
                        moved.read_bytes > 0 or moved.rchar >= RCHAR_MOVED,
                    ),
                    (f"log +{moved.log_bytes} bytes", moved.log_bytes > 0),
                    (f"model pages +{moved.pages}", moved.pages > 0),
                )
                if hit
            ]
            out.add(
                self.finding(
                    "progress.loading",
                    Level.INFO,
                    f"the engine is making progress over {observed:g} s: {', '.join(what)}",
                    data,
                )
            )
        if became_ready is not None:
            out.add(
                self.finding(
                    "progress.became_ready",
                    Level.INFO,
                    f"the engine became ready {became_ready:g} s into the watch",
                    {"after_s": became_ready},
                )
            )
        if transitions:
            path = " -> ".join([str(transitions[0]["from"]), *(str(t["to"]) for t in transitions)])
            out.add(
                self.finding(
                    "progress.transitions",
                    Level.INFO,
                    f"the port went {path}",
                    {"transitions": transitions},
                )
            )
        # too short a look proves nothing: "stalled" needs a real window
        long_enough = min(observed, w.planned) >= MIN_STALL_WINDOW_S
        if (
            not moved.moved
            and not w.ever_connected
            and not gone
            and last.alive
            and long_enough
            and not w.listens_elsewhere
        ):
            hidden = sorted(last.hidden)
            out.add(
                self.finding(
                    "progress.stalled",
                    Level.ERROR,
                    f"nothing moved in {observed:g} s (no CPU, no reads, no log, no model pages) "
                    "and the port stayed closed",
                    {**data, "port_state": state, "hidden": hidden},
                )
            )
        parts = [f"watched {observed:g} s", f"port {state or 'unknown'}"]
        if gone:
            parts.append(f"exited while watched: {', '.join(map(str, gone))}")
        parts.append("moving" if moved.moved else "nothing moved")
        out.detail = "; ".join(parts)


def _listens_anywhere(ctx: Context, pids: list[int]) -> bool:
    """An engine that listens (on any port) has finished loading: idle, not stalled."""
    ports = engine_ports(ctx)
    return any(ports.get(pid) for pid in pids)
