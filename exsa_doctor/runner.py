"""Runs the probes side by side under one deadline, then scores and assembles the `Diagnosis`.

Each probe runs in its own daemon thread (a hung probe cannot be killed, but it must not keep the
process alive either). A probe that raises becomes a `crashed` row, one that overruns its own
timeout or the run's deadline becomes a `timeout` row; the run always finishes in time.
"""

from __future__ import annotations

import socket
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

from exsa_doctor import __version__
from exsa_doctor.causes import load_causes
from exsa_doctor.context import Context, DeadlineExceeded
from exsa_doctor.model import (
    Diagnosis,
    Finding,
    ProbeResult,
    ProbeStatus,
    TimelineEvent,
)
from exsa_doctor.probes.base import Probe, ProbeOutput
from exsa_doctor.scoring import score, verdict
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


def target_vars(target: Target) -> dict[str, str]:
    """Values for `{target:...}` placeholders in remediation commands."""
    model = str(target.model) if target.model else ""
    values = {
        "url": target.base_url,
        "host": target.host,
        "port": str(target.port),
        "model": model,
        "model_or_placeholder": model or "/path/to/model.gguf",
        "health_url": target.endpoint(target.profile.health.path),
    }
    # the engine's own commands (start, run, readiness check) from its profile
    commands = target.profile.command_vars({**values, "model": values["model_or_placeholder"]})
    return {**values, **commands}


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


def diagnose(
    target: Target, probes: Sequence[Probe], keep: list[Context] | None = None
) -> Diagnosis:
    """Run `probes` against `target` and return the scored diagnosis.

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
    findings: list[Finding] = [f for r in results for f in r.findings]
    timeline: list[TimelineEvent] = [e for r in results for e in r.timeline]
    if target.failed_at is not None:
        timeline.append(TimelineEvent(t=target.failed_at, source="client", event="request failed"))
    timeline.sort(key=lambda e: e.t)
    final_target = ctx.shared("target", lambda: target)
    ranked = score(load_causes(), findings, target_vars(final_target))
    return Diagnosis(
        tool_version=__version__,
        target=final_target.info(),
        started_at=started_wall,
        duration_s=round(time.monotonic() - started, 4),
        verdict=verdict(ranked, findings),
        causes=ranked,
        findings=tuple(findings),
        probes=tuple(results),
        timeline=tuple(timeline),
        failed_at=target.failed_at,
        hostname=socket.gethostname(),
    )
