"""Builders of realistic `Diagnosis` objects for the renderer tests.

The causes are ranked by the real scorer over the shipped cause table, so a sample reads the
way a real run would (the probabilities, the evidence for and against and the filled-in fix
commands are what `exsa-doctor diagnose` would print for these findings).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exsa_doctor.causes import load_causes
from exsa_doctor.model import (
    Diagnosis,
    EventKind,
    Finding,
    Level,
    ProbeResult,
    ProbeStatus,
    TargetInfo,
    TimelineEvent,
    Verdict,
)
from exsa_doctor.scoring import score, verdict

MODEL = "/models/qwen2.5-1.5b-instruct-q4_k_m.gguf"
LOG = "/tmp/exsa/server.log"


def at(stamp: str) -> float:
    """Epoch seconds of an ISO 8601 UTC time (`2025-11-23T23:41:53.120`)."""
    return dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.timezone.utc).timestamp()


def finding(fid: str, level: Level, summary: str, **data: Any) -> Finding:
    return Finding(probe=fid.split(".")[0], id=fid, status=level, summary=summary, data=data)


def target(
    url: str = "http://127.0.0.1:3000",
    model: str | None = MODEL,
    logs: tuple[str, ...] = (LOG,),
    pids: tuple[int, ...] = (),
) -> TargetInfo:
    host_port = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    return TargetInfo(
        url=url,
        host=host.strip("[]") or "127.0.0.1",
        port=int(port) if port.isdigit() else 3000,
        model=model,
        logs=logs,
        pids=pids,
        profile="exsa-engine",
        profile_reason="default profile (port 3000 is exsa-engine's)",
    )


def probes_for(
    findings: Sequence[Finding],
    timeline: Sequence[TimelineEvent] = (),
    overrides: Mapping[str, tuple[ProbeStatus, str]] | None = None,
) -> tuple[ProbeResult, ...]:
    """One probe row per probe, carrying its findings; `overrides` sets status and detail."""
    names = ("port", "processes", "model", "health", "logs", "generation", "progress", "stack")
    durations = {
        "port": 0.0213,
        "processes": 0.1432,
        "model": 0.0087,
        "health": 0.0041,
        "logs": 0.0125,
        "generation": 0.3518,
        "progress": 0.0,
        "stack": 0.0,
    }
    overrides = dict(overrides or {})
    out: list[ProbeResult] = []
    for name in names:
        own = tuple(f for f in findings if f.probe == name)
        status, detail = overrides.get(name, (ProbeStatus.OK, f"{len(own)} finding(s)"))
        if name in ("progress", "stack") and name not in overrides:
            status, detail = ProbeStatus.SKIPPED, "needs --watch"
        if name == "generation" and name not in overrides and not own:
            status, detail = ProbeStatus.SKIPPED, "health is not OK"
        events = tuple(e for e in timeline if e.source == "log") if name == "logs" else ()
        out.append(
            ProbeResult(
                name=name,
                status=status,
                duration_s=(
                    0.0001
                    if status is ProbeStatus.SKIPPED
                    else {"port": 3.0012, "health": 5.0008}.get(name, durations[name])
                    if status is ProbeStatus.TIMEOUT
                    else durations[name]
                ),
                detail=detail,
                findings=own if status is ProbeStatus.OK else (),
                timeline=events,
            )
        )
    return tuple(out)


def build(
    info: TargetInfo,
    findings: Sequence[Finding],
    timeline: Sequence[TimelineEvent],
    started_at: float,
    failed_at: float | None = None,
    overrides: Mapping[str, tuple[ProbeStatus, str]] | None = None,
) -> Diagnosis:
    tvars = {
        "url": info.url,
        "host": info.host,
        "port": str(info.port),
        "model": info.model or "",
        "model_or_placeholder": info.model or "/path/to/model.gguf",
        "health_url": info.url.rstrip("/") + "/v1/health",
    }
    # the profile's own commands, as runner.target_vars adds them
    from exsa_doctor.profiles import load_builtin

    profile = load_builtin(info.profile or "exsa-engine")
    tvars.update(profile.command_vars({**tvars, "model": tvars["model_or_placeholder"]}))
    events = list(timeline)
    if failed_at is not None:
        events.append(
            TimelineEvent(failed_at, "client", "request failed", EventKind.FAILED_REQUEST)
        )
    events.sort(key=lambda e: e.t)
    ranked = score(load_causes(), findings, tvars)
    return Diagnosis(
        tool_version="0.1.0",
        target=info,
        started_at=started_at,
        duration_s=0.4127,
        verdict=verdict(ranked, findings),
        causes=ranked,
        findings=tuple(findings),
        probes=probes_for(findings, events, overrides),
        timeline=tuple(events),
        failed_at=failed_at,
    )


def engine(t: str, event: str, kind: EventKind) -> TimelineEvent:
    """An event of the engine's log, worded and kinded as the logs probe makes it."""
    return TimelineEvent(t=at(t), source="log", event=event, kind=kind)


def race() -> Diagnosis:
    """The seed's failure: the request came 3 s after start, the model took 12 s to load."""
    failed = at("2025-11-23T23:41:56.127")
    ready = at("2025-11-23T23:42:05.214")
    timeline = [
        engine("2025-11-23T23:41:53.120", "engine started (version 0.1.0)", EventKind.START),
        engine("2025-11-23T23:41:53.124", f"loading model {MODEL}", EventKind.MODEL_LOADING),
        engine("2025-11-23T23:41:53.131", "model validated", EventKind.MODEL_VALIDATED),
        engine("2025-11-23T23:42:05.209", "model loaded (12.08 s)", EventKind.MODEL_LOADED),
        engine(
            "2025-11-23T23:42:05.211",
            "starting HTTP server on 127.0.0.1:3000",
            EventKind.HTTP_STARTING,
        ),
        engine(
            "2025-11-23T23:42:05.214", "listening on http://127.0.0.1:3000", EventKind.LISTENING
        ),
        # what other probes add: the process start time and what they saw while running
        TimelineEvent(
            at("2025-11-23T23:41:53.116"),
            "processes",
            "engine process started (PID 17939)",
            EventKind.START,
        ),
        TimelineEvent(
            at("2025-11-23T23:42:31.540"), "probe", "health: ready", EventKind.OBSERVATION
        ),
    ]
    findings = [
        finding(
            "processes.running",
            Level.INFO,
            "exsa-engine is running as PID 17939",
            pid=17939,
            pids=[17939],
            instances=[{"pid": 17939, "name": "exsa-engine", "model": MODEL}],
        ),
        finding(
            "port.listening",
            Level.INFO,
            "PID 17939 (exsa-engine) listens on 127.0.0.1:3000",
            pid=17939,
            name="exsa-engine",
            cmdline=["./exsa-engine"],
            user="ci",
            address="127.0.0.1:3000",
            family="ipv4",
            is_engine=True,
        ),
        finding(
            "port.listening_engine",
            Level.OK,
            "exsa-engine (PID 17939) listens on port 3000",
            pid=17939,
            name="exsa-engine",
            profile="exsa-engine",
            address="127.0.0.1:3000",
        ),
        finding(
            "health.ok",
            Level.OK,
            "GET /v1/health answered 200 healthy in 2 ms",
            status_code=200,
            latency_ms=2.1,
            body={"status": "healthy", "model_loaded": True, "version": "0.1.0"},
        ),
        finding(
            "logs.started",
            Level.INFO,
            "the engine started at 23:41:53.120",
            t=at("2025-11-23T23:41:53.120"),
            version="0.1.0",
        ),
        finding(
            "logs.model_validated",
            Level.INFO,
            "model validation passed",
            t=at("2025-11-23T23:41:53.131"),
        ),
        finding(
            "logs.model_loaded",
            Level.OK,
            "the model loaded in 12.08 s",
            t=at("2025-11-23T23:42:05.209"),
            load_s=12.08,
        ),
        finding(
            "logs.listening",
            Level.OK,
            "the engine listens on http://127.0.0.1:3000 since 23:42:05.214",
            t=ready,
            address="127.0.0.1:3000",
        ),
        finding(
            "logs.failed_before_ready",
            Level.ERROR,
            "the request failed at 23:41:56.127, 9.09 s before the engine listened",
            failed_at=failed,
            ready_at=ready,
            gap_s=round(ready - failed, 3),
        ),
    ]
    return build(
        target(pids=(17939,)),
        findings,
        timeline,
        started_at=at("2025-11-23T23:42:31.502"),
        failed_at=failed,
    )


def port_in_use() -> Diagnosis:
    """An orphaned earlier instance (PID 4242) holds port 3000; the new engine (5120) exits."""
    timeline = [
        engine("2025-11-24T09:15:02.004", "engine started (version 0.1.0)", EventKind.START),
        engine("2025-11-24T09:15:02.010", "model validated", EventKind.MODEL_VALIDATED),
        engine("2025-11-24T09:15:02.171", "model loaded (0.16 s)", EventKind.MODEL_LOADED),
        engine(
            "2025-11-24T09:15:02.172",
            "starting HTTP server on 127.0.0.1:3000",
            EventKind.HTTP_STARTING,
        ),
        engine(
            "2025-11-24T09:15:02.173",
            "bind failed: 127.0.0.1:3000: ERROR exsa_engine: Failed to bind to "
            "127.0.0.1:3000: Address already in use (os error 98)",
            EventKind.BIND_FAILED,
        ),
    ]
    findings = [
        finding(
            "port.listening",
            Level.INFO,
            "PID 4242 (exsa-engine) listens on 127.0.0.1:3000",
            pid=4242,
            name="exsa-engine",
            cmdline=("./exsa-engine",),
            user="ci",
            address="127.0.0.1:3000",
            family="ipv4",
            is_engine=True,
        ),
        finding(
            "port.held_by_stale_instance",
            Level.ERROR,
            "port 3000 is held by a stale exsa-engine, PID 4242 (orphaned, started 2 h ago)",
            pid=4242,
            name="exsa-engine",
            why="orphaned: its launcher exited",
            started="2025-11-24T07:02:44Z",
            holder="PID 4242 of user ci, started 2025-11-24T07:02:44+00:00: ./exsa-engine",
            cleanup="exsa-doctor cleanup may stop it",
            cleanup_command="exsa-doctor cleanup --port 3000",
        ),
        finding(
            "processes.running",
            Level.INFO,
            "exsa-engine is running as PID 4242",
            pid=4242,
            pids=[4242],
            instances=[{"pid": 4242, "model": Path(MODEL), "cwd": Path("/srv/ci")}],
        ),
        finding(
            "processes.orphaned",
            Level.WARNING,
            "PID 4242 was re-parented to PID 1",
            pid=4242,
            pids=(4242,),
        ),
        finding(
            "processes.target_exited",
            Level.ERROR,
            "PID 5120 (given with --pid) has exited",
            pid=5120,
        ),
        finding(
            "logs.bind_failed",
            Level.ERROR,
            "bind to 127.0.0.1:3000 failed: Address already in use (os error 98)",
            t=at("2025-11-24T09:15:02.173"),
            address="127.0.0.1:3000",
            errno=98,
            port=3000,
        ),
        finding(
            "health.ok",
            Level.OK,
            "GET /v1/health answered 200 healthy (the old instance)",
            status_code=200,
            latency_ms=1.4,
            body={"status": "healthy"},
        ),
    ]
    return build(target(pids=(5120,)), findings, timeline, started_at=at("2025-11-24T09:15:40.020"))


def healthy() -> Diagnosis:
    """Everything answers: health OK, one token generated."""
    timeline = [
        engine("2025-11-24T10:00:00.000", "engine started (version 0.1.0)", EventKind.START),
        engine("2025-11-24T10:00:00.009", "model validated", EventKind.MODEL_VALIDATED),
        engine("2025-11-24T10:00:00.170", "model loaded (0.16 s)", EventKind.MODEL_LOADED),
        engine(
            "2025-11-24T10:00:00.173", "listening on http://127.0.0.1:3000", EventKind.LISTENING
        ),
    ]
    findings = [
        finding(
            "processes.running",
            Level.INFO,
            "exsa-engine is running as PID 31337",
            pid=31337,
            pids=[31337],
            instances=[],
        ),
        finding(
            "port.listening_engine",
            Level.OK,
            "exsa-engine (PID 31337) listens on port 3000",
            pid=31337,
            name="exsa-engine",
            profile="exsa-engine",
            address="127.0.0.1:3000",
        ),
        finding(
            "model.ok",
            Level.OK,
            "valid GGUF v3, 339 tensors, 986 MB",
            path=MODEL,
            size=986_048_768,
            version=3,
            tensors=339,
            kv=26,
            architecture="qwen2",
        ),
        finding(
            "health.ok",
            Level.OK,
            "GET /v1/health answered 200 healthy in 1 ms",
            status_code=200,
            latency_ms=1.0,
            body={"status": "healthy"},
        ),
        finding(
            "generation.ok",
            Level.OK,
            "generated 4 tokens, first after 38 ms",
            tokens=4,
            ttft_ms=38.2,
            total_ms=71.9,
        ),
        finding(
            "logs.listening",
            Level.OK,
            "the engine listens on http://127.0.0.1:3000",
            t=at("2025-11-24T10:00:00.173"),
            address="127.0.0.1:3000",
        ),
    ]
    return build(target(), findings, timeline, started_at=at("2025-11-24T10:05:00.000"))


def broken_probes() -> Diagnosis:
    """Inconclusive: the port and health probes timed out and the model probe crashed."""
    timeline = [
        engine("2025-11-24T11:20:00.500", "engine started (version 0.1.0)", EventKind.START)
    ]
    findings = [
        finding(
            "processes.running",
            Level.INFO,
            "exsa-engine is running as PID 777",
            pid=777,
            pids=[777],
            instances=[],
        ),
        finding(
            "logs.started_never_listened",
            Level.WARNING,
            "the last start (41 s ago) never reached 'listening'",
            since_s=41.2,
        ),
    ]
    overrides = {
        "model": (ProbeStatus.CRASHED, "KeyError: 'tensor_count' at gguf_reader.py:88"),
        "port": (ProbeStatus.TIMEOUT, "did not finish within 3 s"),
        "health": (ProbeStatus.TIMEOUT, "did not finish within 5 s"),
        "stack": (ProbeStatus.SKIPPED, "py-spy needs root (ptrace)"),
    }
    return build(
        target(pids=(777,)),
        findings,
        timeline,
        started_at=at("2025-11-24T11:20:41.700"),
        overrides=overrides,
    )


HOSTILE = (
    "</script><script>alert('x')</script> | `tick` ``two`` \x00\x07\x1b[31mred\x1b[0m\x0b\x7f & <b>"
)
LONG = "A" * 4000 + "|" + "</td>" * 200 + "B" * 5000 + "\ufffe\ud800"


def hostile() -> Diagnosis:
    """Strings that break careless renderers: markup, pipes, control characters, huge lines."""
    failed = at("2025-11-24T12:00:05.000")
    timeline = [
        engine("2025-11-24T12:00:00.000", "engine started " + HOSTILE, EventKind.START),
        engine("2025-11-24T12:00:01.000", "model validated: " + LONG, EventKind.MODEL_VALIDATED),
        engine("2025-11-24T12:00:09.000", "listening on " + HOSTILE, EventKind.LISTENING),
    ]
    findings = [
        finding(
            "port.owned_by_other",
            Level.ERROR,
            "port held by " + HOSTILE,
            pid=666,
            name=HOSTILE,
            cmdline=(HOSTILE, LONG),
            user="<root>",
            address="127.0.0.1:3000",
        ),
        finding(
            "logs.failed_before_ready",
            Level.ERROR,
            LONG,
            failed_at=failed,
            ready_at=float("nan"),
            gap_s=float("inf"),
        ),
        finding(
            "model.missing",
            Level.ERROR,
            "no file at " + HOSTILE,
            path=Path("/models") / "a|b`c</script>.gguf",
            parent=Path("/models"),
            extra={b"raw": {1, 2}, "nested": ({"deep": [float("-inf"), b"\xff\xfe"]},)},
        ),
        finding(
            "health.refused",
            Level.ERROR,
            "refused\r\nX-Injected: " + HOSTILE,
            latency_ms=0.4,
            url="http://127.0.0.1:3000/v1/health",
        ),
    ]
    overrides = {"model": (ProbeStatus.CRASHED, "ValueError: " + HOSTILE + LONG)}
    info = target(url="http://127.0.0.1:3000/" + HOSTILE, model=HOSTILE, logs=(LONG,), pids=(666,))
    return build(
        info,
        findings,
        timeline,
        started_at=at("2025-11-24T12:00:30.000"),
        failed_at=failed,
        overrides=overrides,
    )


def empty() -> Diagnosis:
    """Nothing at all: no probes ran, no cause table, no timeline (renderers must not trip)."""
    return Diagnosis(
        tool_version="0.1.0",
        target=target(model=None, logs=()),
        started_at=at("2025-11-24T13:00:00.000"),
        duration_s=0.0,
        verdict=Verdict.INCONCLUSIVE,
        causes=(),
        findings=(),
        probes=(),
        timeline=(),
    )


ALL = {
    "race": race,
    "port_in_use": port_in_use,
    "healthy": healthy,
    "broken_probes": broken_probes,
    "hostile": hostile,
    "empty": empty,
}
