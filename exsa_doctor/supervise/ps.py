"""`exsa-doctor ps`: every engine instance on this machine, as the OS sees it.

One row per process positively identified by a built-in profile (executable or command line):
PID, PPID, whether the parent is alive, orphaned, zombie, state, age, the ports it listens on,
its model, RSS. A zombie is shown as a zombie, not as running: in containers PID 1 may never
reap, and a zombie still shows up by name in `ps` and `pgrep`.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from exsa_doctor.oslayer.types import EngineProcess
from exsa_doctor.profiles import all_builtin

_SCAN_BUDGET_S = 3.0


@dataclass(frozen=True)
class InstanceRow:
    """One engine instance, flattened for printing."""

    pid: int
    ppid: int | None
    parent_alive: bool
    orphaned: bool
    zombie: bool
    state: str
    age_s: float | None
    ports: tuple[str, ...]  # "127.0.0.1:3000"
    configured_port: int | None
    model: str | None
    rss_bytes: int | None
    profile: str
    user: str | None
    cmdline: str


@dataclass(frozen=True)
class Listing:
    """All instances, and whether the scan saw everything."""

    rows: tuple[InstanceRow, ...]
    complete: bool
    notes: tuple[str, ...] = ()


def _address(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def row_for(engine: EngineProcess, ports: Sequence[tuple[str, int]], now: float) -> InstanceRow:
    info = engine.info
    zombie = info.state == "zombie"
    return InstanceRow(
        pid=info.pid,
        ppid=info.ppid,
        parent_alive=info.parent_alive,
        orphaned=info.orphaned,
        zombie=zombie,
        state=info.state,
        age_s=round(now - info.create_time, 1) if info.create_time else None,
        ports=tuple(_address(a, p) for a, p in ports),
        configured_port=engine.configured_port,
        model=engine.model,
        # a zombie has no memory: psutil may still report the last figure; do not show it
        rss_bytes=None if zombie else info.rss_bytes,
        profile=engine.profile,
        user=info.username,
        cmdline=shlex.join(info.cmdline) if info.cmdline else f"[{info.name}]",
    )


def list_instances(budget_s: float = _SCAN_BUDGET_S) -> Listing:
    """Scan the process table (bounded by `budget_s`) and the sockets of what was found."""
    from exsa_doctor.oslayer.procs import find_engines
    from exsa_doctor.oslayer.sockets import listening_ports_of

    deadline = time.monotonic() + budget_s
    engines, complete = find_engines(all_builtin(), deadline=deadline)
    notes: list[str] = []
    if not complete:
        notes.append("the process scan hit its time limit: the list may be incomplete")
    live = [e.pid for e in engines if e.info.state != "zombie"]
    ports = listening_ports_of(live, deadline=deadline + 1.0)
    now = time.time()
    rows = tuple(
        sorted(
            (row_for(e, ports.get(e.pid, []), now) for e in engines),
            key=lambda r: (r.profile, r.pid),
        )
    )
    return Listing(rows=rows, complete=complete, notes=tuple(notes))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"  # pragma: no cover - the loop always returns


def render_text(listing: Listing) -> str:
    """A fixed-width table; the command line goes last so it may be long."""
    if not listing.rows:
        lines = ["no engine instances found"]
        lines += [f"note: {n}" for n in listing.notes]
        return "\n".join(lines) + "\n"
    header = (
        "PID",
        "PPID",
        "PARENT",
        "STATE",
        "AGE",
        "PORTS",
        "RSS",
        "PROFILE",
        "MODEL",
        "COMMAND",
    )
    table: list[tuple[str, ...]] = [header]
    for r in listing.rows:
        if r.zombie:
            state = "zombie"
        elif r.orphaned:
            state = f"{r.state},orphan"
        else:
            state = r.state
        parent = "alive" if r.parent_alive else "gone"
        if r.ppid == 1:
            parent = "init"
        ports = ",".join(r.ports) or (
            "-" if r.configured_port is None else f"none (set: {r.configured_port})"
        )
        table.append(
            (
                str(r.pid),
                "-" if r.ppid is None else str(r.ppid),
                parent,
                state,
                _age(r.age_s),
                ports,
                _size(r.rss_bytes),
                r.profile,
                r.model or "-",
                r.cmdline,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    out = []
    for row in table:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        out.append("  ".join([*cells, row[-1]]).rstrip())
    zombies = [r for r in listing.rows if r.zombie]
    if zombies:
        out.append("")
        for r in zombies:
            out.append(
                f"PID {r.pid} is a zombie: it has exited; its parent (PID {r.ppid}) has not reaped "
                "it. It holds no port and no memory; only the parent can remove it."
            )
    out += [f"note: {n}" for n in listing.notes]
    return "\n".join(out) + "\n"


def render_json(listing: Listing) -> str:
    """Machine-readable: `{"instances": [...], "complete": bool, "notes": [...]}`."""
    payload = {
        "instances": [asdict(r) for r in listing.rows],
        "complete": listing.complete,
        "notes": list(listing.notes),
    }
    return json.dumps(payload, indent=2, sort_keys=True) + "\n"
