"""The processes probe: which engine instances exist, and in what state.

Symptom: "the PID was created, but nothing answers". Lists every engine instance (positively
identified by its profile: executable name or command line), tells a live instance from a
zombie that only still shows up by name, finds instances whose parent exited (orphans left by a
killed test script), several instances of the same engine or on the same model, and instances
that are stopped (SIGSTOP), stuck in disk sleep or only seconds old.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

from exsa_doctor.context import Context
from exsa_doctor.facts import engines, target_engines
from exsa_doctor.model import EventKind, Level
from exsa_doctor.oslayer.types import EngineProcess
from exsa_doctor.probes.base import Probe, ProbeOutput

YOUNG_S = 60.0
_GONE = ("zombie", "dead")


def _live(e: EngineProcess) -> bool:
    return e.info.state not in _GONE


def _newest_first(engines: list[EngineProcess]) -> list[EngineProcess]:
    return sorted(engines, key=lambda e: (-(e.info.create_time or 0.0), -e.pid))


def instance_dict(e: EngineProcess, now: float) -> dict[str, Any]:
    """One instance as plain data (for `processes.running:instances` and the JSON report)."""
    info = e.info
    return {
        "pid": e.pid,
        "ppid": info.ppid,
        "parent_alive": info.parent_alive,
        "orphaned": info.orphaned,
        "state": info.state,
        "age_s": round(now - info.create_time, 1) if info.create_time is not None else None,
        "cpu_s": round(info.cpu_time_s, 2) if info.cpu_time_s is not None else None,
        "rss": info.rss_bytes,
        "threads": info.threads,
        "model": e.model,
        "port": e.configured_port,
        "user": info.username,
        "cmdline": list(info.cmdline),
        "profile": e.profile,
    }


def _pid_gone(pid: int) -> bool:
    """True when `pid` does not exist or is a zombie (exited, not reaped)."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


def _same_file_key(path: str) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return path


class ProcessesProbe(Probe):
    """Engine instances: none, running, several, orphaned, zombie, stopped, in disk sleep,
    sharing a model, just started; and whether the --pid the user named still exists.

    Emits processes.none, processes.running, processes.multiple, processes.orphaned,
    processes.zombie, processes.stopped, processes.disk_sleep, processes.target_exited,
    processes.shared_model, processes.young.
    """

    name = "processes"
    title = "Engine processes"
    timeout_s = 3.0
    emits = (
        "processes.none",
        "processes.running",
        "processes.multiple",
        "processes.orphaned",
        "processes.zombie",
        "processes.stopped",
        "processes.disk_sleep",
        "processes.target_exited",
        "processes.shared_model",
        "processes.young",
    )

    def run(self, ctx: Context) -> ProbeOutput:
        out = ProbeOutput()
        target = ctx.target
        now = time.time()
        found, complete = engines(ctx)
        profile = target.profile.name

        # what the user means: the named PIDs, else the instances of the target profile meant
        # for the target port (all of them when none is configured for it)
        of_profile = [e for e in found if e.profile == profile]
        meant = target_engines(ctx)
        live_meant = _newest_first([e for e in meant if _live(e)])
        live_profile = _newest_first([e for e in of_profile if _live(e)])
        live_all = _newest_first([e for e in found if _live(e)])

        for pid in target.pids:
            if _pid_gone(pid):
                out.add(
                    self.finding(
                        "processes.target_exited",
                        Level.ERROR,
                        f"PID {pid} (--pid) has exited"
                        + (" and is a zombie nobody reaped" if psutil.pid_exists(pid) else ""),
                        {"pid": pid},
                    )
                )

        zombies = [e for e in found if e.info.state == "zombie"]
        if zombies:
            # the instance the user means first, then the newest
            meant_pids = {e.pid for e in meant}
            z = min(_newest_first(zombies), key=lambda e: e.pid not in meant_pids)
            out.add(
                self.finding(
                    "processes.zombie",
                    Level.WARNING,
                    f"{len(zombies)} zombie engine process(es) (exited, never reaped by the "
                    "parent): " + ", ".join(f"PID {e.pid} (parent {e.info.ppid})" for e in zombies),
                    {"pid": z.pid, "pids": [e.pid for e in zombies], "ppid": z.info.ppid},
                )
            )

        if not live_meant:
            others = [e.pid for e in live_all]
            where = f" (--pid {', '.join(map(str, target.pids))})" if target.pids else ""
            out.add(
                self.finding(
                    "processes.none",
                    Level.ERROR,
                    f"no live {profile} process{where}"
                    + (f"; other engines run: {others}" if others else "")
                    + ("" if complete else " (the process list was cut short by the deadline)"),
                    {"profiles": [profile], "other_engines": others, "complete": complete},
                )
            )
        else:
            chosen = live_meant[0]
            instances = {e.pid: e for e in [*live_meant, *live_profile]}
            out.add(
                self.finding(
                    "processes.running",
                    Level.INFO,
                    f"{len(instances)} {profile} instance(s) running: "
                    + ", ".join(f"PID {p}" for p in instances),
                    {
                        "pid": chosen.pid,
                        "pids": list(instances),
                        "instances": [instance_dict(e, now) for e in instances.values()],
                        "complete": complete,
                    },
                )
            )
            for e in live_meant:
                if e.info.create_time is not None:
                    started = f"engine process started (PID {e.pid})"
                    out.event(e.info.create_time, self.name, started, EventKind.START)
            age = now - chosen.info.create_time if chosen.info.create_time is not None else None
            if age is not None and age < YOUNG_S:
                out.add(
                    self.finding(
                        "processes.young",
                        Level.INFO,
                        f"PID {chosen.pid} started only {age:.1f} s ago",
                        {"pid": chosen.pid, "age_s": round(age, 1)},
                    )
                )

        if len(live_profile) > 1:
            out.add(
                self.finding(
                    "processes.multiple",
                    Level.WARNING,
                    f"{len(live_profile)} {profile} instances are alive: "
                    + ", ".join(str(e.pid) for e in live_profile),
                    {"pids": [e.pid for e in live_profile]},
                )
            )

        # only the target's own instances: an orphaned neighbour says nothing about the target
        orphans = [e for e in live_meant if e.info.orphaned]
        if orphans:
            listed = ", ".join(f"PID {e.pid} (now child of {e.info.ppid})" for e in orphans)
            out.add(
                self.finding(
                    "processes.orphaned",
                    Level.WARNING,
                    "engine instance(s) whose parent exited (left running by a script or test that "
                    f"ended): {listed}",
                    {"pid": orphans[0].pid, "pids": [e.pid for e in orphans]},
                )
            )

        for e in live_meant:
            if e.info.state == "stopped":
                out.add(
                    self.finding(
                        "processes.stopped",
                        Level.ERROR,
                        f"PID {e.pid} is stopped (SIGSTOP / Ctrl+Z): it cannot answer until "
                        f"`kill -CONT {e.pid}`",
                        {"pid": e.pid},
                    )
                )
            elif e.info.state == "disk-sleep":
                out.add(
                    self.finding(
                        "processes.disk_sleep",
                        Level.WARNING,
                        f"PID {e.pid} is in uninterruptible disk sleep (waiting for storage)",
                        {"pid": e.pid},
                    )
                )

        by_model: dict[str, list[EngineProcess]] = {}
        for e in live_all:
            if e.model:
                by_model.setdefault(_same_file_key(e.model), []).append(e)
        for model, sharing in by_model.items():
            if len(sharing) > 1:
                out.add(
                    self.finding(
                        "processes.shared_model",
                        Level.WARNING,
                        f"{len(sharing)} engine instances use the same model {model}: "
                        + ", ".join(str(e.pid) for e in sharing),
                        {"pids": [e.pid for e in sharing], "model": model},
                    )
                )

        out.detail = f"{len(live_all)} live engine process(es), {len(zombies)} zombie(s)" + (
            "" if complete else "; process list incomplete"
        )
        return out
