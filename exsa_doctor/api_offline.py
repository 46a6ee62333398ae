"""Offline diagnosis: a log read on its own, the way support reads a pasted log.

Nothing of this machine is probed (no ports, processes, model file or health endpoint): the log
may come from a machine we do not control, so this machine's state would be evidence about the
wrong machine. The engine's profile is detected from the log itself; timestamps of llama.cpp's
elapsed format are anchored on the log file's own modification time, never on a process here.
`exsa-doctor diagnose --offline --log FILE` and `--log -` (standard input) use this; it goes
through the library core (`exsa_doctor.api.diagnose`) like every other diagnosis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from exsa_doctor.model import Diagnosis, Finding

if TYPE_CHECKING:
    from exsa_doctor.target import Target


def offline_diagnosis(
    logs: Sequence[Path],
    *,
    profile: str = "auto",
    profile_file: Path | None = None,
    failed_at: str | None = None,
    timeout_s: float = 10.0,
    inline_logs: Mapping[str, bytes] | None = None,
) -> Diagnosis:
    """Diagnose from logs alone: only the logs probe runs, the profile comes from the log.

    `inline_logs` maps a name given in `logs` (such as "<stdin>") to the bytes of that log.
    """
    from exsa_doctor import api
    from exsa_doctor.detect import log_profile
    from exsa_doctor.profiles import all_builtin
    from exsa_doctor.target import resolve_target

    def resolve(chosen: str) -> Target:
        resolved = resolve_target(
            logs=tuple(logs),
            failed_at=failed_at,
            timeout_s=timeout_s,
            profile=chosen,
            profile_file=profile_file,
            environ={},
        )
        return replace(resolved, offline=True, inline_logs=dict(inline_logs or {}))

    target = resolve(profile)
    if profile_file is None and profile in ("", "auto"):
        found = log_profile(target, list(all_builtin()))
        if found is not None:
            # the engine the log names, at its own default address: the fix's commands use it
            target = replace(resolve(found[0].name), profile_reason=found[1])
    return api.diagnose(target, probes=["logs"])


def offline_findings(path: Path) -> tuple[Finding, ...]:
    """The findings an offline diagnosis of one log raises (the accuracy benchmark's features)."""
    return offline_diagnosis([path]).findings
