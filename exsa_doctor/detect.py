"""Refines a `Target` from what is running: the engine profile (`--profile auto`) and the model.

Runs before the probes, because every probe reads the profile. Evidence, strongest first:

1. an engine process the user named with `--pid`;
2. the engine process that listens on the target port right now;
3. an engine process started for the target port (its `--port` flag or port variable);
4. an engine process with no port setting whose profile's default port is the target port;
5. the log (`--log`): the profile whose log markers match the most kinds of line.

The health body is not used: it would cost a request before the probes run, and the process or
the log already tells. Everything here is bounded (one pass over the process table, one socket
scan, the last 256 KiB of each log) and `target.profile_reason` says which evidence decided.
The process and socket readers (psutil) are imported where they are used: an offline diagnosis
reads only the log (`log_profile`) and does not pay for them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from exsa_doctor.oslayer.types import EngineProcess, ListenerScan
from exsa_doctor.profiles import Profile, all_builtin, load_builtin
from exsa_doctor.target import Sighting, Target

_DETECT_BUDGET_S = 1.0
_LOG_TAIL_BYTES = 256 * 1024
# Markers that name an engine's own wording. Generic ones (oom, mmap_failed, panic, zero_tokens,
# shutdown) read alike across engines and would make any log look like every engine's.
_DISTINCT_MARKERS = (
    "start",
    "model_loading",
    "model_loaded",
    "model_error",
    "model_validated",
    "model_path_unset",
    "binding",
    "listening",
    "bind_failed",
    "loading_reply",  # what the engine answers a request while its model loads
    "own_client",  # the engine's own command line failing to reach its server
)


def _describe(engine: EngineProcess) -> str:
    return f"PID {engine.pid} ({engine.info.name})"


def _choose_engine(
    engines: list[EngineProcess], target: Target, scan: ListenerScan | None
) -> tuple[EngineProcess, str] | None:
    """The engine instance the target means, and why; None when no process tells."""
    if target.pids:
        named = [e for e in engines if e.pid in target.pids]
        if named:
            return named[0], f"detected from --pid: {_describe(named[0])} is a {named[0].profile}"
    if not engines:
        return None
    listening_pids = {
        lst.pid for lst in (scan.listeners if scan else ()) if lst.state == "LISTEN" and lst.pid
    }
    on_port = [e for e in engines if e.pid in listening_pids]
    if on_port:
        e = on_port[0]
        return e, f"detected from {_describe(e)}, {_a(e.profile)} listening on port {target.port}"
    configured = [e for e in engines if e.configured_port == target.port]
    if configured:
        e = max(configured, key=lambda c: c.info.create_time or 0.0)
        return e, f"detected from {_describe(e)}, {_a(e.profile)} started for port {target.port}"
    by_default = [
        e
        for e in engines
        if e.configured_port is None and load_builtin(e.profile).default_port == target.port
    ]
    if by_default:
        e = max(by_default, key=lambda c: c.info.create_time or 0.0)
        return e, (
            f"detected from {_describe(e)}, {_a(e.profile)} with no port setting "
            f"(its default is {target.port})"
        )
    return None


def _log_tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - _LOG_TAIL_BYTES))
            data = fh.read(_LOG_TAIL_BYTES)
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


def profile_from_log(text: str, profiles: list[Profile]) -> tuple[Profile, list[str]] | None:
    """The profile whose distinctive markers match the most kinds of line in `text`.

    Returns it with the marker names that matched; None when nothing matches or two profiles tie
    (a log we cannot tell apart is no evidence).
    """
    lines = text.splitlines()
    scored: list[tuple[int, Profile, list[str]]] = []
    for profile in profiles:
        compiled = profile.compiled_markers()
        hits = [
            name
            for name in _DISTINCT_MARKERS
            if name in compiled and any(compiled[name].search(line) for line in lines)
        ]
        if hits:
            scored.append((len(hits), profile, hits))
    if not scored:
        return None
    scored.sort(key=lambda s: s[0], reverse=True)
    if len(scored) > 1 and scored[0][0] == scored[1][0]:
        return None
    return scored[0][1], scored[0][2]


def log_profile(target: Target, profiles: list[Profile]) -> tuple[Profile, str] | None:
    """The profile the target's logs name by their wording, with the reason."""
    for path in target.logs:
        inline = target.inline_logs.get(str(path))
        text = (
            inline[-_LOG_TAIL_BYTES:].decode("utf-8", errors="replace")
            if inline is not None
            else _log_tail(path)
        )
        found = profile_from_log(text, profiles)
        if found is not None:
            profile, hits = found
            return profile, (
                f"detected from the log {path}: its lines match {profile.name}'s markers "
                f"({', '.join(hits)})"
                + ("" if target.offline else f"; no engine process found for port {target.port}")
            )
    return None


def refine_target(target: Target, *, auto_profile: bool) -> Target:
    """Pick the profile of the engine serving (or meant to serve) the target port, and the model
    that engine was started with, unless the user gave them."""
    if not auto_profile and target.model is not None:
        return target
    from exsa_doctor.oslayer.procs import find_engines

    profiles = [target.profile, *[p for p in all_builtin() if p.name != target.profile.name]]
    walked = time.monotonic()
    deadline = walked + min(_DETECT_BUDGET_S, target.timeout_s / 4)
    engines, complete = find_engines(profiles, deadline=deadline, extra_pids=target.pids)
    named = any(e.pid in target.pids for e in engines)
    # the port's sockets tell which engine serves it, unless --pid already named one
    scan = _port_scan(target.port, deadline) if engines and not named else None
    chosen = _choose_engine(engines, target, scan)
    refined = target
    if auto_profile:
        if chosen is not None:
            engine, why = chosen
            profile = (
                target.profile
                if engine.profile == target.profile.name
                else load_builtin(engine.profile)
            )
            refined = replace(refined, profile=profile, profile_reason=why)
        else:
            from_log = log_profile(target, profiles)
            if from_log is not None:
                refined = replace(refined, profile=from_log[0], profile_reason=from_log[1])
    if refined.model is None:
        # only the engine chosen for this port lends its model: another engine on the machine,
        # even the only other one of this profile, is a neighbour, not the target
        with_model = [chosen[0]] if chosen is not None and chosen[0].model else []
        if with_model:
            newest = max(with_model, key=lambda e: e.info.create_time or 0.0)
            assert newest.model is not None
            refined = refined.with_model(Path(newest.model), f"engine PID {newest.pid}")
    if complete:
        # lent to the run's facts, which read the same a few milliseconds later
        sighting = Sighting(
            taken=walked,
            profiles=tuple(p.name for p in profiles),
            pids=target.pids,
            engines=tuple(engines),
            listeners=scan,
        )
        refined = replace(refined, sighting=sighting)
    return refined


def _port_scan(port: int, deadline: float) -> ListenerScan | None:
    from exsa_doctor.oslayer.sockets import listeners_of

    try:
        return listeners_of(port, deadline=deadline)
    except (OSError, ValueError):
        return None


def _a(noun: str) -> str:
    """'an exsa-engine', 'a llama-server'."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
