"""`exsa-doctor cleanup`: stop stale engine instances, and nothing else.

The replacement for `pkill -f exsa-engine`, which signals whatever mentions the name (an editor
on `exsa-engine.log`, a colleague's engine). A process is a target only when all of these hold:

- it is positively identified as an engine instance by a profile (`Profile.matches_process`:
  the executable's basename or a profile's command-line regex, never a substring of argv);
- it belongs to the current user (real uid);
- it is alive (a zombie has already exited; only its parent can remove it);
- it is stale: orphaned (no filter given), or on the `--port` / holding the `--model` asked for.

The plan is printed first, with why each target is stale and why it is safe to stop. Right
before signalling, each target's identity (PID + creation time), profile match and owner are
checked again, so a PID reused in between is never signalled. Foreign processes on the port or
holding the model are named (PID, command line) and never signalled.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

from exsa_doctor.oslayer.files import same_file
from exsa_doctor.oslayer.types import EngineProcess
from exsa_doctor.profiles import Profile, all_builtin
from exsa_doctor.supervise.signals import (
    DEFAULT_GRACE_S,
    ProcessIdentity,
    StopOutcome,
    stop_identified,
)

_SCAN_BUDGET_S = 3.0
_RELEASE_WAIT_S = 5.0
_POLL_S = 0.05


@dataclass(frozen=True)
class Target:
    """One process the plan will stop."""

    pid: int
    create_time: float
    profile: str
    user: str | None
    uid: int | None
    age_s: float | None
    cmdline: str
    why_stale: tuple[str, ...]
    why_safe: str

    @property
    def identity(self) -> ProcessIdentity:
        return ProcessIdentity(self.pid, self.create_time)


@dataclass(frozen=True)
class Bystander:
    """A process the plan names but will never signal, and why."""

    pid: int | None
    cmdline: str
    reason: str


@dataclass
class Plan:
    """What cleanup would do."""

    port: int | None
    model: str | None
    targets: list[Target] = field(default_factory=list)
    bystanders: list[Bystander] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What cleanup did."""

    outcomes: list[StopOutcome] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (pid, why not signalled)
    port_free: bool | None = None
    port_holders: list[str] = field(default_factory=list)
    model_released: bool | None = None
    model_holders: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            all(o.stopped for o in self.outcomes)
            and self.port_free is not False
            and self.model_released is not False
        )


def _cmd(info_cmdline: Sequence[str], name: str) -> str:
    return shlex.join(info_cmdline) if info_cmdline else f"[{name}]"


def _describe(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        cmd = proc.cmdline()
        return _cmd(cmd, proc.name())
    except (psutil.Error, OSError):
        return "(exited or hidden)"


def make_plan(port: int | None, model: str | None, budget_s: float = _SCAN_BUDGET_S) -> Plan:
    """Find the targets and the bystanders. Signals nothing."""
    from exsa_doctor.oslayer.procs import find_engines
    from exsa_doctor.oslayer.sockets import listeners_of, listening_ports_of

    deadline = time.monotonic() + budget_s
    plan = Plan(port=port, model=model)
    engines, complete = find_engines(all_builtin(), deadline=deadline)
    if not complete:
        plan.notes.append("the process scan hit its time limit: some instances may be missing")
    me = os.getuid()
    live = [e for e in engines if e.info.state not in ("zombie", "dead")]
    listening = listening_ports_of([e.pid for e in live], deadline=deadline + 1.0)
    holders_open: set[int] = set()
    holders_mapped: set[int] = set()
    if model:
        from exsa_doctor.oslayer.files import holders_of

        found = holders_of(model, deadline + 2.0)
        holders_open, holders_mapped = set(found.open_by), set(found.mapped_by)
    engine_pids = {e.pid for e in engines}
    now = time.time()
    for eng in engines:
        info = eng.info
        cmd = _cmd(info.cmdline, info.name)
        reasons = _stale_reasons(eng, port, model, listening, holders_open | holders_mapped)
        if not reasons:
            continue
        if info.state in ("zombie", "dead"):
            plan.bystanders.append(
                Bystander(
                    eng.pid,
                    cmd,
                    f"a zombie (already exited): nothing to signal; its parent PID {info.ppid} "
                    "must reap it",
                )
            )
            continue
        if info.uid is None or info.uid != me:
            owner = info.username or f"uid {info.uid}"
            plan.bystanders.append(
                Bystander(eng.pid, cmd, f"an engine instance of {owner}, not yours: left alone")
            )
            continue
        if info.create_time is None:
            plan.bystanders.append(
                Bystander(eng.pid, cmd, "its start time is unreadable, so it cannot be re-verified")
            )
            continue
        plan.targets.append(
            Target(
                pid=eng.pid,
                create_time=info.create_time,
                profile=eng.profile,
                user=info.username,
                uid=info.uid,
                age_s=round(now - info.create_time, 1),
                cmdline=cmd,
                why_stale=tuple(reasons),
                why_safe=(
                    f"identified as {eng.profile} by its {_matched_by(eng)}, owned by you "
                    f"(uid {info.uid}); PID and start time are re-checked before the signal"
                ),
            )
        )
    if port is not None:
        scan = listeners_of(port, deadline=deadline + 2.0)
        seen: set[int] = set()
        for lst in scan.listeners:
            if lst.pid is None:
                plan.bystanders.append(
                    Bystander(
                        None,
                        "(hidden)",
                        f"holds port {port} ({lst.address}, uid {lst.uid}); its process is "
                        "hidden from us: never signalled",
                    )
                )
            elif lst.pid not in engine_pids and lst.pid not in seen:
                seen.add(lst.pid)
                plan.bystanders.append(
                    Bystander(
                        lst.pid,
                        _describe(lst.pid),
                        f"holds port {port} ({lst.address}) but is not an engine instance: "
                        "never signalled",
                    )
                )
    if model:
        for pid in sorted((holders_open | holders_mapped) - engine_pids):
            plan.bystanders.append(
                Bystander(
                    pid,
                    _describe(pid),
                    f"has the model {model} open or mapped but is not an engine instance: "
                    "never signalled",
                )
            )
    return plan


def _matched_by(eng: EngineProcess) -> str:
    profile = _profile(eng.profile)
    info = eng.info
    names = {os.path.basename(n) for n in (info.name, info.exe or "") if n}
    if info.cmdline:
        names.add(os.path.basename(info.cmdline[0]))
    if profile is not None and names & set(profile.executables):
        return "executable name"
    return "command line"


def _profile(name: str) -> Profile | None:
    return next((p for p in all_builtin() if p.name == name), None)


def _stale_reasons(
    eng: EngineProcess,
    port: int | None,
    model: str | None,
    listening: dict[int, list[tuple[str, int]]],
    model_holders: set[int],
) -> list[str]:
    """Why this instance is a target; empty when it is not one."""
    reasons: list[str] = []
    info = eng.info
    if port is None and model is None:
        if info.orphaned:
            reasons.append(f"orphaned: its parent exited (re-parented to PID {info.ppid})")
        return reasons
    if port is not None:
        ports = {p for _, p in listening.get(eng.pid, [])}
        if port in ports:
            reasons.append(f"listens on port {port}")
        elif eng.configured_port == port:
            reasons.append(f"is configured for port {port}")
    if model is not None:
        if eng.pid in model_holders:
            reasons.append(f"has the model {model} open or mapped")
        elif eng.model and same_file(eng.model, model):
            reasons.append(f"was started with the model {model}")
    if reasons and info.orphaned:
        reasons.append(f"orphaned (parent now PID {info.ppid})")
    return reasons


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render_plan(plan: Plan, dry_run: bool) -> str:
    """The plan for a person: every target with why it is stale and why it is safe."""
    scope = []
    if plan.port is not None:
        scope.append(f"port {plan.port}")
    if plan.model is not None:
        scope.append(f"model {plan.model}")
    what = " and ".join(scope) if scope else "orphaned instances"
    lines = [f"cleanup plan ({what}){' — dry run, nothing will be signalled' if dry_run else ''}:"]
    if not plan.targets:
        lines.append("  no stale engine instance to stop")
    for t in plan.targets:
        lines.append(
            f"  stop PID {t.pid}  user {t.user or t.uid}  age {_age(t.age_s)}  [{t.profile}]"
        )
        lines.append(f"      command: {t.cmdline}")
        lines.append(f"      stale:   {'; '.join(t.why_stale)}")
        lines.append(f"      safe:    {t.why_safe}")
    if plan.bystanders:
        lines.append("left alone:")
        for b in plan.bystanders:
            who = f"PID {b.pid}" if b.pid is not None else "a hidden process"
            lines.append(f"  {who}: {b.cmdline}")
            lines.append(f"      {b.reason}")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines) + "\n"


def _still_target(t: Target) -> str | None:
    """None when `t` is still the same engine process of ours; else why it is skipped."""
    proc = t.identity.current()
    if proc is None:
        return "exited, or its PID now names another process"
    profile = _profile(t.profile)
    try:
        with proc.oneshot():
            name, exe, cmdline, uid = proc.name(), "", proc.cmdline(), proc.uids().real
            try:
                exe = proc.exe()
            except (psutil.AccessDenied, OSError):
                exe = ""
    except (psutil.Error, OSError):
        return "cannot be inspected any more"
    if uid != os.getuid():
        return "no longer owned by you"
    if profile is None or not profile.matches_process(name, exe, cmdline):
        return "no longer identified as an engine instance"
    return None


def execute(plan: Plan, grace_s: float = DEFAULT_GRACE_S) -> Report:
    """Stop the plan's targets (re-verified first), then wait for the port and the model."""
    report = Report()
    go: list[ProcessIdentity] = []
    for t in plan.targets:
        why = _still_target(t)
        if why is None:
            go.append(t.identity)
        else:
            report.skipped.append((t.pid, why))
    report.outcomes = stop_identified(go, grace_s) if go else []
    deadline = time.monotonic() + _RELEASE_WAIT_S
    stopped = [o.pid for o in report.outcomes]
    if plan.port is not None:
        report.port_free, report.port_holders = _wait_port(plan.port, set(stopped), deadline)
    if plan.model is not None:
        report.model_released, report.model_holders = _wait_model(plan.model, stopped, deadline)
    return report


def _wait_port(port: int, stopped: set[int], deadline: float) -> tuple[bool, list[str]]:
    """Wait until no stopped process holds the port; then say who (if anyone) still does."""
    from exsa_doctor.oslayer.sockets import listeners_of

    while True:
        scan = listeners_of(port, deadline=time.monotonic() + 1.0)
        if not scan.listeners:
            return True, []
        ours = [lst for lst in scan.listeners if lst.pid is None or lst.pid in stopped]
        if not ours or time.monotonic() >= deadline:
            holders = []
            for lst in scan.listeners:
                who = f"PID {lst.pid} ({_describe(lst.pid)})" if lst.pid else f"uid {lst.uid}"
                holders.append(f"{lst.address}:{lst.port} held by {who}")
            return False, holders
        time.sleep(_POLL_S)


def _wait_model(model: str, pids: Sequence[int], deadline: float) -> tuple[bool, list[int]]:
    """Wait until none of the stopped processes maps or opens the model any more."""
    from exsa_doctor.oslayer.files import holders_of

    if not pids:
        return True, []
    while True:
        found = holders_of(model, time.monotonic() + 1.0, pids=pids)
        still = sorted((set(found.mapped_by) | set(found.open_by)) & set(pids))
        if not still:
            return True, []
        if time.monotonic() >= deadline:
            return False, still
        time.sleep(_POLL_S)


def render_report(plan: Plan, report: Report) -> str:
    """What was done, target by target, and whether the port and model are free now."""
    lines = ["cleanup report:"]
    for o in report.outcomes:
        lines.append(f"  PID {o.pid}: {o.result} ({o.detail})")
    for pid, why in report.skipped:
        lines.append(f"  PID {pid}: not signalled: {why}")
    if plan.port is not None:
        if report.port_free:
            lines.append(f"  port {plan.port} is free")
        else:
            lines.append(f"  port {plan.port} is still held: {'; '.join(report.port_holders)}")
    if plan.model is not None:
        if report.model_released:
            lines.append(f"  the model {plan.model} is no longer held by the stopped instances")
        else:
            lines.append(
                f"  the model {plan.model} is still open or mapped by "
                f"{', '.join(str(p) for p in report.model_holders)}"
            )
    return "\n".join(lines) + "\n"
