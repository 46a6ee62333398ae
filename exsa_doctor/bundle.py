"""The support bundle: one redacted .tar.gz that support can triage without access to the machine.

Everything is gathered and redacted in memory first; the only file written is the archive at
`--output`. Contents: the report as JSON, Markdown and HTML; the head and tail of each log; the
engine process table with command lines and environments; the model header summary; system
facts; and `manifest.json`, which lists every file and how many secrets of each kind were
redacted (counts, never values).
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
from typing import Any

import psutil

from exsa_doctor import __version__
from exsa_doctor.model import Diagnosis
from exsa_doctor.oslayer.procs import environ_of
from exsa_doctor.oslayer.types import EngineProcess
from exsa_doctor.redact import Redactor

LOG_HEAD_BYTES = 64 * 1024
LOG_TAIL_BYTES = 1024 * 1024


@dataclass
class _Member:
    name: str
    data: bytes
    note: str = ""


@dataclass
class BundleResult:
    """What was written, for the CLI to tell the user."""

    path: Path
    files: list[str] = field(default_factory=list)
    redactions: dict[str, int] = field(default_factory=dict)
    size: int = 0


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


def _engine_rows(engines: Iterable[EngineProcess], redactor: Redactor) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for engine in engines:
        info = engine.info
        env = environ_of(info.pid)
        if env is not None:
            redactor.learn_environment(env)
        rows.append(
            {
                "pid": info.pid,
                "ppid": info.ppid,
                "profile": engine.profile,
                "state": info.state,
                "orphaned": info.orphaned,
                "user": info.username,
                "started": info.create_time,
                "rss_bytes": info.rss_bytes,
                "threads": info.threads,
                "model": engine.model,
                "port": engine.configured_port,
                "cmdline": list(info.cmdline),
                "environment": env,
                "environment_hidden": env is None,
            }
        )
    return rows


def build_bundle(
    diagnosis: Diagnosis,
    engines: Iterable[EngineProcess],
    logs: Iterable[Path],
    output: Path,
    extra_environ: dict[str, str] | None = None,
) -> BundleResult:
    """Gather, redact and write the bundle to `output` (a .tar.gz)."""
    from exsa_doctor.render import render_as

    redactor = Redactor()
    redactor.learn_environment(dict(os.environ) if extra_environ is None else extra_environ)
    rows = _engine_rows(engines, redactor)
    for row in rows:
        redactor.learn_text(" ".join(row["cmdline"]))
    # raw texts first, so every secret is known before anything is redacted
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
    for row in rows:
        row["cmdline"] = redactor.argv(row["cmdline"])
        if row["environment"] is not None:
            row["environment"] = redactor.environment(row["environment"])
    for fmt, name in (("json", "report.json"), ("markdown", "report.md"), ("html", "report.html")):
        members.append(_Member(name, redactor.text(render_as(diagnosis, fmt)).encode()))
    seen: set[str] = set()
    for path, text in log_texts:
        name = f"logs/{path.name}"
        while name in seen:
            name += "_"
        seen.add(name)
        members.append(_Member(name, redactor.text(text).encode(), "head and tail kept"))
    members.append(
        _Member("processes.json", redactor.text(json.dumps(rows, indent=2, default=str)).encode())
    )
    model = {f.id: dict(f.data) for f in diagnosis.findings if f.probe == "model"}
    members.append(
        _Member("model.json", redactor.text(json.dumps(model, indent=2, default=str)).encode())
    )
    members.append(
        _Member("system.json", redactor.text(json.dumps(system_facts(), indent=2)).encode())
    )
    manifest = {
        "tool": {"name": "exsa-doctor", "version": __version__},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": [{"name": m.name, "bytes": len(m.data), "note": m.note} for m in members],
        "redactions": redactor.summary(),
        "note": "Values of secret-named variables, URL credentials, bearer tokens and secret "
        "arguments were replaced by [REDACTED] everywhere before this archive was written.",
    }
    members.append(_Member("manifest.json", json.dumps(manifest, indent=2).encode()))
    buffer = io.BytesIO()
    stamp = time.time()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for m in members:
            info = tarfile.TarInfo(name=f"exsa-doctor-bundle/{m.name}")
            info.size = len(m.data)
            info.mtime = int(stamp)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(m.data))
    output.write_bytes(buffer.getvalue())
    return BundleResult(
        path=output,
        files=[m.name for m in members],
        redactions=redactor.summary(),
        size=len(buffer.getvalue()),
    )
