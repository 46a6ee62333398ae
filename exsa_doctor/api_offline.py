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
    url: str | None = None,
) -> Diagnosis:
    """Diagnose from logs alone: only the logs probe runs, the profile comes from the log.

    `inline_logs` maps a name given in `logs` (such as "<stdin>") to the bytes of that log.
    `url` is the address the commands of the fixes name; without it, the address the client in
    the log used (where it printed one), else the detected engine's default address.
    """
    from exsa_doctor import api
    from exsa_doctor.detect import log_profile
    from exsa_doctor.profiles import all_builtin
    from exsa_doctor.target import UsageError, resolve_target

    def resolve(chosen: str, address: str | None) -> Target:
        resolved = resolve_target(
            url=address,
            logs=tuple(logs),
            failed_at=failed_at,
            timeout_s=timeout_s,
            profile=chosen,
            profile_file=profile_file,
            environ={},
        )
        return replace(resolved, offline=True, inline_logs=dict(inline_logs or {}))

    chosen = profile
    target = resolve(chosen, url)
    if profile_file is None and profile in ("", "auto"):
        found = log_profile(target, list(all_builtin()))
        if found is not None:
            # the engine the log names, at its own default address: the fix's commands use it
            chosen = found[0].name
            target = replace(resolve(chosen, url), profile_reason=found[1])
    diagnosis = api.diagnose(target, probes=["logs"])
    address = None if url is not None else client_address(diagnosis.findings)
    if address is None:
        return diagnosis
    try:
        moved = replace(resolve(chosen, address), profile_reason=target.profile_reason)
    except UsageError:
        return diagnosis  # an address no URL can hold: the default stays
    if (moved.host, moved.port) == (target.host, target.port):
        return diagnosis
    # the same findings and verdict; only the commands of the fixes name another address
    return api.retarget(diagnosis, moved)


# findings whose data hold the address a client used, most telling first
_ADDRESS_FINDINGS = (
    "logs.client_refused_remote",
    "logs.client_refused",
    "logs.client_cli_unreachable",
    "logs.client_timeout",
)


def client_address(findings: Sequence[Finding]) -> str | None:
    """The URL of the address a client in the log was refused on (or timed out on), or None."""
    for fid in _ADDRESS_FINDINGS:
        for found in findings:
            if found.id != fid:
                continue
            host, port = str(found.data.get("host") or ""), str(found.data.get("port") or "")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                continue
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"  # an IPv6 address in a URL
            return f"http://{host}:{port}"
    return None


def offline_findings(path: Path) -> tuple[Finding, ...]:
    """The findings an offline diagnosis of one log raises (the accuracy benchmark's features)."""
    return offline_diagnosis([path]).findings
