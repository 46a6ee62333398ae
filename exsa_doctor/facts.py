"""The facts of one run, read once and shared by the probes that ask for them.

Probes are independent units of reporting, but several need the same fact: the engine processes,
the sockets on the port, the one health request, the model and its holders, the lock table, the
parsed logs. Each fact is computed once per run, whichever probe asks first, and memoised in the
run's `Context` (`Context.shared`); the others get the same value. Probes ask this module for
facts; they never import each other.

- `engines`, `target_engines` (the one rule for the engines of this target): the processes, port,
  model, logs, progress and stack probes, and the support bundle;
- `engine_ports` (what each live engine listens on), `loaded_elsewhere`: port, progress, stack;
- `port_listeners` (the sockets on a port, with their owners): port, the target rule, the bundle;
- `health` (the one health request): health, generation, progress, stack;
- `model_path`, `model_holders`: model, progress, stack, the bundle;
- `lock_table` (`/proc/locks`): the model's holders, stack;
- `log_report`, `last_log_start` (each `--log`, parsed): logs, port.

`meant_for_port` is the one reading of "an engine started for this port" (its own port setting,
else its profile's default), shared with `wait`, `run` and the support bundle.
"""

from __future__ import annotations

import errno as errno_mod
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exsa_doctor.context import Context
from exsa_doctor.oslayer.types import EngineProcess, FileHolders, Listener, ListenerScan

if TYPE_CHECKING:
    from exsa_doctor.httpcheck import HealthObservation
    from exsa_doctor.oslayer.files import LockTable
    from exsa_doctor.parsers.logs import LogBytes, LogReport
    from exsa_doctor.profiles import Profile
    from exsa_doctor.target import Sighting

_GONE = ("zombie", "dead")
# How old what engine detection read may be and still stand for the run's own reading.
_SIGHTING_FRESH_S = 0.5
_HOLDERS_BUDGET_S = 2.5
# How far an engine's create time may sit before the start its log implies (stamps written
# later than the newest elapsed one push the file's mtime on) and still be that log's writer.
_ANCHOR_BEFORE_S = 600.0
_ANCHOR_AFTER_S = 2.0


# ------------------------------------------------------------------------------ engines


def meant_for_port(engine: EngineProcess, port: int, default_port: int | None) -> bool:
    """Started for `port`: its own port setting says so, or it has none and `port` is its
    profile's default (`default_port`)."""
    if engine.configured_port is not None:
        return engine.configured_port == port
    return default_port == port


def _profiles_for(target_profile: Profile) -> list[Profile]:
    from exsa_doctor.profiles import all_builtin

    others = [p for p in all_builtin() if p.name != target_profile.name]
    return [target_profile, *others]


def _sighting(ctx: Context) -> Sighting | None:
    """What detection read for this target just before the run, while it is fresh."""
    seen = ctx.target.sighting
    if seen is None or time.monotonic() - seen.taken > _SIGHTING_FRESH_S:
        return None
    return seen if seen.pids == ctx.target.pids else None


def engines(ctx: Context) -> tuple[list[EngineProcess], bool]:
    """All engine instances (any built-in profile, plus the target's), and completeness.

    Engine detection walked the processes moments before the run (`Target.sighting`): while that
    walk is fresh and identified processes in the same profile order, it is this fact.
    """
    from exsa_doctor.oslayer.procs import find_engines

    def compute() -> tuple[list[EngineProcess], bool]:
        profiles = _profiles_for(ctx.target.profile)
        seen = _sighting(ctx)
        if seen is not None and seen.profiles == tuple(p.name for p in profiles):
            return list(seen.engines), True
        # leave a little of the budget to the probes that read this
        return find_engines(profiles, deadline=ctx.deadline - 0.2, extra_pids=ctx.target.pids)

    return ctx.shared("engines", compute)


def live(found: list[EngineProcess]) -> list[EngineProcess]:
    """The instances that still run (not zombies, not gone)."""
    return [e for e in found if e.info.state not in _GONE]


def target_engines(ctx: Context) -> list[EngineProcess]:
    """The engine instances this diagnosis is about (the rule settled for shared machines):

    1. the PIDs the user named (`--pid`);
    2. else the target profile's instances started for the target port (`meant_for_port`);
    3. else the target profile's instances that are not positively somebody else's: one that
       writes another log than `--log`, serves another model than `--model`, or stands beside a
       port held by another process is a neighbour, never the target. What is left may be the
       target's engine on a wrong port, which the port probe names as such.
    """

    def compute() -> list[EngineProcess]:
        found, _ = engines(ctx)
        target = ctx.target
        if target.pids:
            return [e for e in found if e.pid in target.pids]
        mine = [e for e in found if e.profile == target.profile.name]
        default = target.profile.default_port
        for_port = [e for e in mine if meant_for_port(e, target.port, default)]
        if for_port:
            return for_port
        return [e for e in mine if not _somebody_elses(ctx, e)]

    return ctx.shared("target_engines", compute)


def _somebody_elses(ctx: Context, engine: EngineProcess) -> bool:
    """An instance of the target profile, not set up for the target port, that positively
    belongs to something else: it writes another log than --log, serves another model than
    --model, or the target port is held by another process (then the target's engine is the
    one that could not bind, and this one is a bystander)."""
    from exsa_doctor.oslayer.files import same_file
    from exsa_doctor.oslayer.procs import output_file_of

    target = ctx.target
    if target.logs:
        writes_to = output_file_of(engine.pid)
        if writes_to is not None and not any(same_file(writes_to, p) for p in target.logs):
            return True
    if (
        target.model is not None
        and target.model_source in ("--model", "MODEL_PATH")
        and engine.model
        and not same_file(engine.model, target.model)
    ):
        return True
    try:
        held = port_listeners(ctx, target.port).listeners
    except (OSError, ValueError):
        held = ()
    return any(ls.state == "LISTEN" and ls.pid not in (None, engine.pid) for ls in held)


def engine_ports(ctx: Context) -> dict[int, list[tuple[str, int]]]:
    """What each live engine instance listens on: `{pid: [(address, port), ...]}`."""
    from exsa_doctor.oslayer.sockets import listening_ports_of

    def compute() -> dict[int, list[tuple[str, int]]]:
        pids = [e.pid for e in live(engines(ctx)[0])]
        try:
            return listening_ports_of(pids, ctx.deadline - 0.2)
        except OSError:
            return {pid: [] for pid in pids}

    return ctx.shared("engine_ports", compute)


def serving_elsewhere(ctx: Context, engine: EngineProcess) -> list[tuple[str, int]]:
    """Where an engine that has finished loading serves, other than the target port.

    Empty unless the engine listens only on other ports and its profile listens only once its
    model is loaded (`Profile.listens_when_loaded`): such an engine is not loading and not stuck
    in a load, whatever the target port says.
    """
    from exsa_doctor.profiles import ProfileError, load_builtin

    ports = engine_ports(ctx).get(engine.pid, [])
    if not ports or any(port == ctx.target.port for _, port in ports):
        return []
    try:
        profile = (
            ctx.target.profile
            if engine.profile == ctx.target.profile.name
            else load_builtin(engine.profile)
        )
    except ProfileError:
        return []
    return ports if profile.listens_when_loaded else []


def loaded_elsewhere(ctx: Context, found: list[EngineProcess]) -> str | None:
    """Why there is no load to watch when every engine serves on another port, having loaded
    (its profile listens only once loaded); None when one of them may still be loading."""
    where = [(e, serving_elsewhere(ctx, e)) for e in found]
    if not where or not all(ports for _, ports in where):
        return None
    engine, ports = where[0]
    address, port = ports[0]
    shown = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return (
        f"PID {engine.pid} listens on {shown}: {engine.profile} listens only once its model is "
        "loaded, so it is not loading"
    )


# ------------------------------------------------------------------------------ sockets


def port_listeners(ctx: Context, port: int, deadline: float | None = None) -> ListenerScan:
    """The one scan of `port` per run: every socket listening on it or bound to it, with owners
    (detection's own scan of the target port, complete and fresh, stands for it)."""
    from exsa_doctor.oslayer.sockets import listeners_of

    limit = ctx.deadline - 0.2 if deadline is None else deadline

    def compute() -> ListenerScan:
        seen = _sighting(ctx)
        scan = seen.listeners if seen is not None else None
        if scan is not None and scan.port == port and scan.complete:
            return scan
        return listeners_of(port, limit)

    return ctx.shared(f"listeners:{port}", compute)


def listening_pids(ctx: Context, port: int) -> set[int]:
    """The processes listening on `port` (owners hidden by permissions left out)."""
    try:
        scan: tuple[Listener, ...] = port_listeners(ctx, port).listeners
    except (OSError, ValueError):
        return set()
    return {ls.pid for ls in scan if ls.state == "LISTEN" and ls.pid is not None}


# ------------------------------------------------------------------------------- health


def health(ctx: Context) -> HealthObservation:
    """The run's one health observation, made by whichever probe asks first."""
    from exsa_doctor.httpcheck import (
        CONNECT_TIMEOUT_S,
        HEALTH_BUDGET_S,
        READ_TIMEOUT_S,
        check_health,
    )

    def compute() -> HealthObservation:
        budget = ctx.io_timeout(HEALTH_BUDGET_S)
        return check_health(
            ctx.target,
            time.monotonic() + budget,
            connect_s=ctx.io_timeout(CONNECT_TIMEOUT_S),
            read_s=ctx.io_timeout(READ_TIMEOUT_S),
        )

    return ctx.shared("health", compute)


# -------------------------------------------------------------------------------- model


def model_path(ctx: Context) -> tuple[str, str] | None:
    """The model file under diagnosis and where we learnt it, or None when nobody says.

    The user's `--model`/`MODEL_PATH` wins; otherwise the target engine's own model, made absolute
    against that engine's working directory when it was given relative.
    """
    import psutil

    def compute() -> tuple[str, str] | None:
        target = ctx.target
        if target.model is not None:
            return os.path.abspath(os.path.expanduser(str(target.model))), target.model_source
        try:
            mine = target_engines(ctx)
        except Exception:  # the engine walk failing must not cost us the model checks
            return None
        for engine in sorted(mine, key=lambda e: e.info.create_time or 0.0, reverse=True):
            if not engine.model:
                continue
            path = os.path.expanduser(engine.model)
            if not os.path.isabs(path):
                try:
                    path = os.path.join(psutil.Process(engine.pid).cwd(), path)
                except (psutil.Error, OSError):
                    continue
            return os.path.normpath(path), f"engine pid {engine.pid}"
        return None

    return ctx.shared("model:path", compute)


def lock_table(ctx: Context) -> LockTable:
    """The system's advisory locks (`/proc/locks`), read once per run; empty where unreadable."""
    from exsa_doctor.oslayer.files import LockTable, read_lock_table

    def compute() -> LockTable:
        try:
            return read_lock_table()
        except OSError:
            return LockTable()

    return ctx.shared("locks", compute)


def model_holders(ctx: Context) -> FileHolders | None:
    """Who opens, maps and locks the model; computed once per run, whichever probe asks first."""
    import sys

    from exsa_doctor.oslayer.files import holders_of

    found = model_path(ctx)
    if found is None:
        return None
    path = found[0]

    def compute() -> FileHolders:
        deadline = min(ctx.deadline - 0.2, time.monotonic() + _HOLDERS_BUDGET_S)
        locks = lock_table(ctx) if sys.platform.startswith("linux") else None
        return holders_of(path, deadline, locks=locks)

    return ctx.shared(f"holders:{path}", compute)


# --------------------------------------------------------------------------------- logs


@dataclass(frozen=True)
class Unreadable:
    """A `--log` that could not be read, and why."""

    path: str
    reason: str


def _reason(exc: OSError) -> str:
    from exsa_doctor.parsers.logs import LogReadError

    if isinstance(exc, LogReadError):
        return str(exc)
    if exc.errno == errno_mod.ENOENT:
        return "no such file"
    if exc.errno in (errno_mod.EACCES, errno_mod.EPERM):
        return "permission denied"
    if exc.errno == errno_mod.EISDIR:
        return "is a directory"
    return exc.strerror or str(exc)


def _engine_anchor(ctx: Context, raw: LogBytes, last_elapsed: float) -> float | None:
    """The create time of the target engine that fits as the writer of the log's newest run."""
    try:
        mine = target_engines(ctx)
    except Exception:  # the process walk failing must not cost us the log
        return None
    implied = raw.mtime - last_elapsed  # when the newest run's clock was at zero, roughly
    fits = [
        e.info.create_time
        for e in mine
        if e.info.create_time is not None
        and implied - _ANCHOR_BEFORE_S <= e.info.create_time <= implied + _ANCHOR_AFTER_S
    ]
    return max(fits) if fits else None


def log_report(ctx: Context, path: Path) -> LogReport | Unreadable:
    """One log, read and parsed once per run whichever probe asks first.

    Reading is bounded (`parsers.logs.read_log`); llama.cpp's elapsed timestamps are anchored on
    the target engine's create time when it fits the log, else on the file's modification time.
    """
    from exsa_doctor.parsers.logs import LogBytes, parse_log, read_log

    def compute() -> LogReport | Unreadable:
        inline = ctx.target.inline_logs.get(str(path))
        try:
            raw = (
                LogBytes(data=inline, size=len(inline), skipped=0, mtime=ctx.started_wall)
                if inline is not None
                else read_log(path)
            )
        except OSError as exc:
            return Unreadable(str(path), _reason(exc))
        profile = ctx.target.profile
        report = parse_log(raw, profile)
        # an offline log is never anchored on a process of this machine
        if (
            not ctx.target.offline
            and profile.timestamp_format == "elapsed"
            and report.last_elapsed is not None
        ):
            anchor = _engine_anchor(ctx, raw, report.last_elapsed)
            if anchor is not None and (report.anchor is None or abs(anchor - report.anchor) > 1e-3):
                report = parse_log(raw, profile, anchor=anchor)
        return report

    return ctx.shared(f"logs:report:{os.path.abspath(path)}", compute)


def last_log_start(ctx: Context) -> float | None:
    """The newest start-marker time across the target's logs (None: no log, or no times)."""
    if not ctx.target.logs:
        return None  # and the log parser is not even loaded
    from exsa_doctor.parsers.logs import LogReport, newest_start

    def compute() -> float | None:
        reports = [r for p in ctx.target.logs if isinstance(r := log_report(ctx, p), LogReport)]
        return newest_start(reports)

    return ctx.shared("logs:last_start", compute)
