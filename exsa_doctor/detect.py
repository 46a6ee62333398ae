"""Refines a `Target` from what is running: the engine profile (`--profile auto`) and the model.

Runs before the probes, because every probe reads the profile. It looks at engine processes only
(cheap: one pass over the process table); the probes do the deeper work.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from exsa_doctor.oslayer.procs import find_engines
from exsa_doctor.oslayer.types import EngineProcess
from exsa_doctor.profiles import all_builtin, load_builtin
from exsa_doctor.target import Target

_DETECT_BUDGET_S = 1.0


def _for_port(engines: list[EngineProcess], port: int) -> list[EngineProcess]:
    return [e for e in engines if e.configured_port == port]


def refine_target(target: Target, *, auto_profile: bool) -> Target:
    """Pick the profile of the engine serving (or meant to serve) the target port, and the model
    that engine was started with, unless the user gave them."""
    if not auto_profile and target.model is not None:
        return target
    profiles = [target.profile, *[p for p in all_builtin() if p.name != target.profile.name]]
    deadline = time.monotonic() + min(_DETECT_BUDGET_S, target.timeout_s / 4)
    engines, _complete = find_engines(profiles, deadline=deadline, extra_pids=target.pids)
    if target.pids:
        candidates = [e for e in engines if e.pid in target.pids]
    else:
        candidates = _for_port(engines, target.port)
        if not candidates:
            # an engine that took its default port: match on the profile's default
            candidates = [
                e for e in engines
                if e.configured_port is None and load_builtin(e.profile).default_port == target.port
            ]
    refined = target
    if auto_profile and candidates:
        chosen = candidates[0]
        if chosen.profile != target.profile.name:
            refined = replace(
                refined,
                profile=load_builtin(chosen.profile),
                profile_reason=f"detected from PID {chosen.pid} ({chosen.info.name})",
            )
        else:
            refined = replace(refined, profile_reason=f"detected from PID {chosen.pid}")
    if refined.model is None:
        with_model = [e for e in candidates if e.model] or [
            e for e in engines if e.model and e.profile == refined.profile.name
        ]
        if with_model:
            newest = max(with_model, key=lambda e: e.info.create_time or 0.0)
            assert newest.model is not None
            refined = refined.with_model(Path(newest.model), f"engine PID {newest.pid}")
    return refined
