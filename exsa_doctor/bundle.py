"""The support bundle: one redacted .tar.gz that support can triage without access to the machine.

Everything is gathered and redacted in memory first; the only file written is the archive at
`--output` (nothing at all with `dry_run`). Contents: the report as JSON, Markdown and HTML; the
head and tail of each log; the processes that matter to the target (its engine, the port's
holder, the model's holders) with command lines and an allow-listed environment (the variables
that matter to an engine with values, every other one by name only); the model header summary;
system facts; and `manifest.json`, which lists every file and how many secrets of each kind were
redacted in each (counts, never values). Redaction itself is `exsa_doctor.redact`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import resource
import shutil
import sys
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from exsa_doctor import __version__
from exsa_doctor.model import Diagnosis
from exsa_doctor.oslayer.procs import describe, environ_of
from exsa_doctor.oslayer.types import EngineProcess, ProcessInfo
from exsa_doctor.redact import Redaction, Redactor

if TYPE_CHECKING:
    from exsa_doctor.context import Context

LOG_HEAD_BYTES = 64 * 1024
LOG_TAIL_BYTES = 1024 * 1024
# after the run's deadline, what the bundle may still spend to learn the port's and the model's
# holders when the probes did not read them (`--probe` left them out)
_HOLDERS_BUDGET_S = 2.0
TAG_NOTE = (
    "Each secret was replaced by [REDACTED:<kind>:<tag>]; <tag> is 4 hex digits of an "
    "HMAC-SHA256 of the secret under a random key made for this bundle and never stored: the same "
    "secret has the same tag throughout this bundle, and the tag cannot be checked against "
    "guesses. Environment variables that do not matter to an engine are listed by name only."
)


@dataclass
class _Member:
    name: str
    data: bytes
    note: str = ""


@dataclass
class BundleResult:
    """What was (or, for a dry run, would be) written, for the CLI to tell the user."""

    path: Path
    files: list[str] = field(default_factory=list)
    redactions: dict[str, int] = field(default_factory=dict)
    size: int = 0
    written: bool = True
    file_bytes: dict[str, int] = field(default_factory=dict)
    places: list[Redaction] = field(default_factory=list)
    processes: list[tuple[int, list[str]]] = field(default_factory=list)  # pid, roles


def read_head_and_tail(path: Path, head: int = LOG_HEAD_BYTES, tail: int = LOG_TAIL_BYTES) -> str:
    """The first `head` and last `tail` bytes of a file, with a marker where bytes were left out."""
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size <= head + tail:
            data = fh.read(head + tail)
            return data.decode("utf-8", errors="replace")
        first = fh.read(head)
        fh.seek(size - tail)
        last = fh.read(tail)
    skipped = size - head - tail
    return (
        first.decode("utf-8", errors="replace")
        + f"\n[... exsa-doctor left out {skipped} bytes ...]\n"
        + last.decode("utf-8", errors="replace")
    )


def system_facts() -> dict[str, Any]:
    """OS, Python, CPU, memory, disk and limits: what support asks for first."""
    vm = psutil.virtual_memory()
    limits: dict[str, Any] = {}
    for name in ("RLIMIT_NOFILE", "RLIMIT_AS", "RLIMIT_MEMLOCK", "RLIMIT_NPROC"):
        if hasattr(resource, name):
            soft, hard = resource.getrlimit(getattr(resource, name))
            limits[name] = {"soft": None if soft < 0 else soft, "hard": None if hard < 0 else hard}
    facts: dict[str, Any] = {
        "os": platform.platform(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "exsa_doctor": __version__,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory": {"total": vm.total, "available": vm.available},
        "limits": limits,
        "euid": os.geteuid(),
        "process_count": len(psutil.pids()),
    }
    try:
        usage = shutil.disk_usage(Path.cwd())
        facts["disk_cwd"] = {"total": usage.total, "free": usage.free}
    except OSError:
        pass
    max_map = Path("/proc/sys/vm/max_map_count")
    if max_map.exists():
        with contextlib.suppress(OSError, ValueError):
            facts["vm_max_map_count"] = int(max_map.read_text().strip())
    return facts


def related_processes(engines: Iterable[EngineProcess], context: Context) -> dict[int, list[str]]:
    """PID -> roles of the processes that matter to the target: its engines (the run's one rule,
    `facts.target_engines`), the port's holder, the model's holders. Reuses what the probes
    read; reads what they did not, briefly."""
    from exsa_doctor import facts

    roles: dict[int, list[str]] = {}
    # the run is over; give the memoised look-ups a short budget of their own if still needed
    context.deadline = max(context.deadline, time.monotonic() + _HOLDERS_BUDGET_S)
    named = set(context.target.pids)
    with contextlib.suppress(Exception):  # a failed look-up costs the rows, never the bundle
        named |= {e.pid for e in facts.target_engines(context)}
    for pid in sorted(named):
        roles.setdefault(pid, []).append("target engine")
    with contextlib.suppress(Exception):
        scan = facts.port_listeners(context, context.target.port)
        for listener in scan.listeners:
            if listener.pid is not None:
                roles.setdefault(listener.pid, []).append("port holder")
    with contextlib.suppress(Exception):
        holders = facts.model_holders(context)
        if holders is not None:
            pids = {*holders.open_by, *holders.mapped_by}
            pids |= {lock.pid for lock in holders.locks if lock.pid is not None}
            for pid in sorted(pids):
                roles.setdefault(pid, []).append("model holder")
    return {pid: sorted(set(r)) for pid, r in roles.items() if pid != os.getpid()}


def _row(
    info: ProcessInfo, engine: EngineProcess | None, roles: list[str], redactor: Redactor
) -> dict[str, Any]:
    place = f"processes.json pid {info.pid}"
    env = environ_of(info.pid)
    kept: dict[str, str] | None = None
    names_only: list[str] = []
    if env is not None:
        kept, names_only = redactor.environment(
            env, engine.profile if engine else None, f"{place} env"
        )
    return {
        "pid": info.pid,
        "ppid": info.ppid,
        "roles": roles,
        "profile": engine.profile if engine else None,
        "state": info.state,
        "orphaned": info.orphaned,
        "user": info.username,
        "started": info.create_time,
        "rss_bytes": info.rss_bytes,
        "threads": info.threads,
        "model": redactor.text(engine.model, f"{place} model") if engine and engine.model else None,
        "port": engine.configured_port if engine else None,
        "cmdline": [redactor.text(a, f"{place} argv[{i}]") for i, a in enumerate(info.cmdline)],
        "environment": kept,
        "environment_names_only": names_only,
        "environment_hidden": env is None,
    }


def _gather_processes(
    engines: list[EngineProcess], context: Context | None
) -> list[tuple[ProcessInfo, EngineProcess | None, list[str]]]:
    if context is None:  # a library caller chose the engines itself
        return [(e.info, e, ["engine"]) for e in engines]
    by_pid = {e.pid: e for e in engines}
    out: list[tuple[ProcessInfo, EngineProcess | None, list[str]]] = []
    for pid, roles in sorted(related_processes(engines, context).items()):
        engine = by_pid.get(pid)
        info = engine.info if engine else describe(pid)
        if info is not None:
            out.append((info, engine, roles))
    return out


def build_bundle(
    diagnosis: Diagnosis,
    engines: Iterable[EngineProcess],
    logs: Iterable[Path],
    output: Path,
    extra_environ: dict[str, str] | None = None,
    context: Context | None = None,
    dry_run: bool = False,
) -> BundleResult:
    """Gather, redact and write the bundle to `output` (a .tar.gz); with `dry_run`, only say
    what would be written. With `context` (the diagnosis run's), only the processes that matter
    to its target go in; without, every engine given."""
    from exsa_doctor.render import render_as

    redactor = Redactor()
    redactor.learn_environment(dict(os.environ) if extra_environ is None else extra_environ)
    engines = list(engines)
    processes = _gather_processes(engines, context)
    # learn from every raw text first, so a secret seen anywhere is replaced everywhere; every
    # engine's, not only the bundled ones': the report mentions them all
    infos = {e.pid: e.info for e in engines} | {info.pid: info for info, _e, _r in processes}
    for pid, info in sorted(infos.items()):
        redactor.learn_argv(info.cmdline)
        env = environ_of(pid)
        if env is not None:
            redactor.learn_environment(env)
    log_texts: list[tuple[Path, str]] = []
    members: list[_Member] = []
    for path in logs:
        try:
            text = read_head_and_tail(path)
        except OSError as exc:
            members.append(_Member(f"logs/{path.name}.error.txt", str(exc).encode(), "unreadable"))
            continue
        redactor.learn_text(text)
        log_texts.append((path, text))
    reports = [
        (name, render_as(diagnosis, fmt))
        for fmt, name in (
            ("json", "report.json"),
            ("markdown", "report.md"),
            ("html", "report.html"),
        )
    ]
    for _name, text in reports:
        redactor.learn_text(text)

    for name, text in reports:
        members.append(_Member(name, redactor.text(text, name).encode()))
    seen: set[str] = set()
    for path, text in log_texts:
        name = f"logs/{path.name}"
        while name in seen:
            name += "_"
        seen.add(name)
        members.append(_Member(name, redactor.text(text, name).encode(), "head and tail kept"))
    rows = [_row(info, engine, roles, redactor) for info, engine, roles in processes]
    members.append(_Member("processes.json", json.dumps(rows, indent=2, default=str).encode()))
    model = {f.id: dict(f.data) for f in diagnosis.findings if f.probe == "model"}
    model_json = json.dumps(model, indent=2, default=str)
    members.append(_Member("model.json", redactor.text(model_json, "model.json").encode()))
    system_json = json.dumps(system_facts(), indent=2)
    members.append(_Member("system.json", redactor.text(system_json, "system.json").encode()))
    manifest = {
        "tool": {"name": "exsa-doctor", "version": __version__},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": [{"name": m.name, "bytes": len(m.data), "note": m.note} for m in members],
        "processes": [{"pid": info.pid, "roles": roles} for info, _e, roles in processes],
        "redactions": redactor.summary(),
        "redactions_by_file": redactor.by_place(),
        "note": TAG_NOTE,
    }
    members.append(_Member("manifest.json", json.dumps(manifest, indent=2).encode()))
    result = BundleResult(
        path=output,
        files=[m.name for m in members],
        redactions=redactor.summary(),
        written=not dry_run,
        file_bytes={m.name: len(m.data) for m in members},
        places=list(redactor.redactions),
        processes=[(info.pid, roles) for info, _e, roles in processes],
    )
    if dry_run:
        return result
    buffer = io.BytesIO()
    stamp = time.time()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for m in members:
            entry = tarfile.TarInfo(name=f"exsa-doctor-bundle/{m.name}")
            entry.size = len(m.data)
            entry.mtime = int(stamp)
            entry.mode = 0o600
            tar.addfile(entry, io.BytesIO(m.data))
    output.write_bytes(buffer.getvalue())
    result.size = len(buffer.getvalue())
    return result


def plan_text(result: BundleResult) -> str:
    """What a dry run would put in the bundle: every file, every process, every redaction."""
    lines = [f"exsa-doctor bundle --dry-run: nothing written; {result.path} would hold:"]
    for name in result.files:
        lines.append(f"  {name}  ({result.file_bytes.get(name, 0)} bytes)")
    lines.append(f"processes ({len(result.processes)}):")
    for pid, roles in result.processes:
        lines.append(f"  pid {pid}: {', '.join(roles)}")
    total = sum(result.redactions.values())
    lines.append(f"redactions ({total}):")
    for kind, count in result.redactions.items():
        lines.append(f"  {kind}: {count}")
    for r in result.places:
        where = f"{r.place}:{r.line}" if r.line else r.place
        lines.append(f"  {r.kind}  at {where}")
    return "\n".join(lines) + "\n"
