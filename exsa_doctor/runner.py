"""Runs the probes side by side under one deadline; `api.diagnose` scores what they found.

Each probe runs in its own daemon thread (a hung probe cannot be killed, but it must not keep the
process alive either). A probe that raises becomes a `crashed` row, one that overruns its own
timeout or the run's deadline becomes a `timeout` row; the run always finishes in time.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from exsa_doctor.context import Context, DeadlineExceeded
from exsa_doctor.model import ProbeResult, ProbeStatus
from exsa_doctor.probes.base import Probe, ProbeOutput
from exsa_doctor.target import Target

# Time kept back from the deadline for scoring and rendering.
_FINISH_MARGIN_S = 0.15


@dataclass
class _Slot:
    probe: Probe
    started: float = 0.0
    ended: float | None = None
    output: ProbeOutput | None = None
    error: str = ""
    skipped: str | None = None
    timed_out_inside: bool = False


def _run_one(slot: _Slot, ctx: Context) -> None:
    slot.started = time.monotonic()
    try:
        reason = slot.probe.applies(ctx)
        if reason is not None:
            slot.skipped = reason
        else:
            slot.output = slot.probe.run(ctx)
    except DeadlineExceeded:
        slot.timed_out_inside = True
    except Exception as exc:  # a crashing probe is a row in the report, never a traceback
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
        slot.error = f"{type(exc).__name__}: {exc}{where}"
    finally:
        slot.ended = time.monotonic()


def target_vars(target: Target) -> Mapping[str, str]:
    """Values for `{target:...}` placeholders in remediation commands (computed when asked)."""
    model = str(target.model) if target.model else ""
    files = target.log_files  # a log read from standard input has no path to name
    profile = target.profile
    exe = profile.executables[0] if profile.executables else profile.name
    fixed = {
        "url": target.base_url,
        "host": target.host,
        "port": str(target.port),
        "model": model,
        "model_or_placeholder": model or "/path/to/model.gguf",
        "health_url": target.endpoint(profile.health.path),
        "log_or_placeholder": files[0] if files else "ENGINE.log",
        "version_command": f"{exe} --version",
        "help_command": f"{exe} --help",
        "engine_path_or_placeholder": f"$(command -v {exe})",
        "user_phrase": "the engine's user",
        "user_phrase_cap": "The engine's user",
    }
    # the engine's own commands (start, run, readiness check, version, help) from its profile
    fixed.update(profile.command_vars({**fixed, "model": fixed["model_or_placeholder"]}))
    return _LazyVars(fixed, {"cpu_flags_phrase": _cpu_flags_phrase})


class _LazyVars(Mapping[str, str]):
    """Fixed values plus ones computed on first use (reading /proc only when a fix needs it)."""

    def __init__(self, fixed: dict[str, str], lazy: dict[str, Callable[[], str]]) -> None:
        self._values = dict(fixed)
        self._lazy = lazy

    def __getitem__(self, key: str) -> str:
        if key not in self._values and key in self._lazy:
            self._values[key] = self._lazy[key]()
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter({**self._lazy, **self._values})

    def __len__(self) -> int:
        return len({**self._lazy, **self._values})


_SIMD_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f")


def _cpu_flags_phrase() -> str:
    """` (this CPU has avx, fma; lacks avx2, avx512f)` from /proc/cpuinfo; empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    has = [f for f in _SIMD_FLAGS if f in flags]
                    lacks = [f for f in _SIMD_FLAGS if f not in flags]
                    return f" (this CPU has {', '.join(has) or 'none of them'}" + (
                        f"; lacks {', '.join(lacks)})" if lacks else ")"
                    )
    except OSError:
        pass
    return ""


def run_probes(ctx: Context, probes: Sequence[Probe]) -> list[ProbeResult]:
    slots = [_Slot(p) for p in probes]
    threads = []
    launched = time.monotonic()
    for slot in slots:
        t = threading.Thread(
            target=_run_one, args=(slot, ctx), name=f"probe-{slot.probe.name}", daemon=True
        )
        t.start()
        threads.append(t)
    for slot, thread in zip(slots, threads, strict=True):
        # A probe's own timeout counts from the launch, not from when the runner gets round to
        # it: waiting for an earlier slow probe must not extend a later probe's time.
        own_deadline = launched + slot.probe.timeout_s
        wait = min(ctx.deadline - _FINISH_MARGIN_S, own_deadline) - time.monotonic()
        thread.join(max(0.0, wait))
    results: list[ProbeResult] = []
    now = time.monotonic()
    for slot in slots:
        name = slot.probe.name
        if slot.ended is None or slot.timed_out_inside:
            limit = min(slot.probe.timeout_s, ctx.target.timeout_s)
            results.append(
                ProbeResult(
                    name=name,
                    status=ProbeStatus.TIMEOUT,
                    duration_s=round(now - slot.started, 4) if slot.started else 0.0,
                    detail=f"did not finish within {limit:g} s",
                    findings=tuple(slot.output.findings) if slot.output else (),
                )
            )
            continue
        duration = round(slot.ended - slot.started, 4)
        if slot.skipped is not None:
            results.append(ProbeResult(name, ProbeStatus.SKIPPED, duration, slot.skipped))
        elif slot.error:
            results.append(ProbeResult(name, ProbeStatus.CRASHED, duration, slot.error))
        else:
            assert slot.output is not None
            results.append(
                ProbeResult(
                    name=name,
                    status=ProbeStatus.OK,
                    duration_s=duration,
                    detail=slot.output.detail,
                    findings=tuple(slot.output.findings),
                    timeline=tuple(slot.output.timeline),
                )
            )
    return results


@dataclass(frozen=True)
class ProbeRun:
    """The probes' results for one run, and the target as the probes left it (refined)."""

    target: Target
    results: tuple[ProbeResult, ...]
    started: float  # time.monotonic()
    started_wall: float


def run_probes_for(
    target: Target, probes: Sequence[Probe], keep: list[Context] | None = None
) -> ProbeRun:
    """Run `probes` against `target` under the target's bound; `api.diagnose` scores the result.

    `keep`, when given, receives the run's context, so a caller (the support bundle) can reuse
    what the probes already read, such as the engine processes, instead of reading it again.
    """
    started_wall = time.time()
    started = time.monotonic()
    ctx = Context(target=target, deadline=started + target.timeout_s, started_wall=started_wall)
    if keep is not None:
        keep.append(ctx)
    results = run_probes(ctx, probes)
    # a probe abandoned at the deadline may have left a helper running (py-spy, lsof)
    ctx.stop_children()
    final_target = ctx.shared("target", lambda: target)
    return ProbeRun(final_target, tuple(results), started, started_wall)
