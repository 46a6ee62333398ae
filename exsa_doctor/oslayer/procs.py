"""Processes: read one process's facts, and find the engine instances among all processes.

Every walk over all processes checks a deadline, so thousands of processes cannot make a probe
run over; what was not reached is reported as an incomplete scan, not silently dropped.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Sequence

import psutil

from exsa_doctor.oslayer.types import EngineProcess, ProcessInfo
from exsa_doctor.profiles import Profile

_STATES = {
    psutil.STATUS_RUNNING: "running",
    psutil.STATUS_SLEEPING: "sleeping",
    psutil.STATUS_DISK_SLEEP: "disk-sleep",
    psutil.STATUS_STOPPED: "stopped",
    psutil.STATUS_TRACING_STOP: "stopped",
    psutil.STATUS_ZOMBIE: "zombie",
    psutil.STATUS_DEAD: "dead",
    psutil.STATUS_IDLE: "idle",
}

_ATTRS = ["pid", "ppid", "name", "exe", "cmdline", "username", "create_time", "status"]


def _subreapers_ok(ppid: int | None) -> bool:
    return ppid in (0, 1)


def process_info(proc: psutil.Process, cached: dict[str, object] | None = None) -> ProcessInfo:
    """Facts about one process; whatever the OS denies is left as None."""
    d: dict[str, object] = dict(cached) if cached else {}
    if not d:
        try:
            d = proc.as_dict(attrs=_ATTRS, ad_value=None)
        except psutil.NoSuchProcess:
            d = {"pid": proc.pid}
    ppid = d.get("ppid")
    ppid_i = ppid if isinstance(ppid, int) else None
    parent_alive = ppid_i is not None and ppid_i > 0 and psutil.pid_exists(ppid_i)
    cpu: float | None = None
    rss: int | None = None
    threads: int | None = None
    uid: int | None = None
    try:
        with proc.oneshot():
            try:
                t = proc.cpu_times()
                cpu = t.user + t.system
            except (psutil.AccessDenied, psutil.ZombieProcess):
                pass
            with contextlib.suppress(psutil.AccessDenied, psutil.ZombieProcess):
                rss = proc.memory_info().rss
            with contextlib.suppress(psutil.AccessDenied, psutil.ZombieProcess):
                threads = proc.num_threads()
            with contextlib.suppress(psutil.AccessDenied, psutil.ZombieProcess, AttributeError):
                uid = proc.uids().real
    except psutil.NoSuchProcess:
        pass
    status = d.get("status")
    state = _STATES.get(str(status), str(status) if status else "unknown")
    cmdline = d.get("cmdline")
    name = d.get("name")
    exe = d.get("exe")
    user = d.get("username")
    created = d.get("create_time")
    orphaned = _is_orphan(ppid_i, parent_alive, proc.pid)
    return ProcessInfo(
        pid=proc.pid,
        ppid=ppid_i,
        name=name if isinstance(name, str) else "",
        exe=exe if isinstance(exe, str) and exe else None,
        cmdline=tuple(cmdline) if isinstance(cmdline, list) else (),
        username=user if isinstance(user, str) else None,
        uid=uid,
        create_time=created if isinstance(created, float) else None,
        state=state,
        parent_alive=parent_alive,
        orphaned=orphaned,
        cpu_time_s=cpu,
        rss_bytes=rss,
        threads=threads,
    )


def _is_orphan(ppid: int | None, parent_alive: bool, pid: int | None = None) -> bool:
    """Re-parented to init (PID 1) or to a subreaper that is not the process that started it.

    We cannot know the original parent after the fact, so: PID 1 (or a subreaper such as
    `systemd --user`) as parent means orphaned, and a dead parent means orphaned; except for a
    process with no parent at all (PPID 0: it *is* PID 1, e.g. the engine as a container's init)
    and for a service its service manager started on purpose (a systemd `.service` cgroup).
    """
    if ppid is None or ppid == 0:
        return False
    if not parent_alive:
        return True
    if ppid == 1:
        return not _is_managed_service(pid)
    try:
        parent = psutil.Process(ppid)
        # A subreaper (systemd --user, tini, a CI runner) adopting a daemonised child: the parent
        # is alive, but it is an init-like process that did not start this engine on purpose.
        pname = parent.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    if pname not in {"systemd", "init", "tini", "dumb-init", "launchd", "s6-svscan"}:
        return False
    return not _is_managed_service(pid)


def _is_managed_service(pid: int | None) -> bool:
    """A systemd service (`ollama.service`): PID 1 or `systemd --user` is its intended parent.

    Linux only; the innermost cgroup of such a process is named `*.service` (a process left
    behind by a shell sits in a `session-N.scope` or an app scope instead).
    """
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as fh:
            text = fh.read(64 * 1024)
    except OSError:
        return False
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and (parts[0] == "0" or parts[1] == "name=systemd"):
            leaf = parts[2].rstrip("/").rsplit("/", 1)[-1]
            if leaf.endswith(".service") and not leaf.startswith("user@"):
                return True
    return False


def environ_of(pid: int) -> dict[str, str] | None:
    """A process's environment, or None when the OS hides it (another user's process)."""
    try:
        return dict(psutil.Process(pid).environ())
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
        return None


def identify(proc_dict: dict[str, object], profiles: Sequence[Profile]) -> Profile | None:
    """The first profile that positively identifies this process, or None."""
    name = proc_dict.get("name")
    exe = proc_dict.get("exe")
    cmdline = proc_dict.get("cmdline")
    args = tuple(cmdline) if isinstance(cmdline, list) else ()
    for profile in profiles:
        if profile.matches_process(
            name if isinstance(name, str) else "",
            exe if isinstance(exe, str) else "",
            args,
        ):
            return profile
    return None


def engine_from(proc: psutil.Process, profile: Profile, cached: dict[str, object]) -> EngineProcess:
    info = process_info(proc, cached)
    env = environ_of(proc.pid) or {}
    hidden = not env and info.uid is not None and info.uid != os.geteuid()
    if hidden:
        info = ProcessInfo(**{**info.__dict__, "environ_hidden": True})
    return EngineProcess(
        info=info,
        profile=profile.name,
        model=profile.model_from(env, info.cmdline),
        configured_port=profile.port_from(env, info.cmdline),
        configured_host=profile.host_from(env, info.cmdline),
    )


def find_engines(
    profiles: Sequence[Profile],
    deadline: float | None = None,
    extra_pids: Iterable[int] = (),
) -> tuple[list[EngineProcess], bool]:
    """All engine instances on the machine, and whether the walk finished before `deadline`.

    `extra_pids` are included even when no profile matches them (the user named them with --pid),
    identified with the first profile.
    """
    wanted = set(extra_pids)
    found: list[EngineProcess] = []
    complete = True
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "name", "exe", "cmdline"]):
        if deadline is not None and time.monotonic() > deadline:
            complete = False
            break
        if proc.pid == me:
            continue
        d = proc.info
        profile = identify(d, profiles)
        if profile is None and proc.pid in wanted and profiles:
            profile = profiles[0]
        if profile is None:
            continue
        try:
            full = proc.as_dict(attrs=_ATTRS, ad_value=None)
        except psutil.NoSuchProcess:
            continue
        found.append(engine_from(proc, profile, full))
    return found, complete


def describe(pid: int) -> ProcessInfo | None:
    """Facts about one PID, or None if it does not exist."""
    try:
        return process_info(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return None


def output_file_of(pid: int) -> str | None:
    """The regular file a process writes its stdout (else stderr) to, if any (Linux /proc).

    Tells whose log a log file is: a process whose output goes elsewhere did not write it.
    """
    for fd in (1, 2):
        try:
            path = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if path.startswith("/") and not path.startswith(("/dev/", "/proc/")):
            with contextlib.suppress(OSError):
                if os.path.isfile(path):
                    return path
    return None
