"""The model probe: is the GGUF file there, whole, valid, and free of other processes' locks?

Symptom: the engine never finishes loading, or dies at start with a model error. The probe checks
the file the engine is given (`--model`, `MODEL_PATH`, or the target engine's own command line or
environment): missing, unreadable, empty, not GGUF, a broken header, a tensor table that needs
more bytes than the file has (a cut download), less free memory than the file's size, and other
processes that open, map or lock it. "Other" means not the target engine and not us; a lock the
engine holds itself is normal and not reported.

The header is read by our own bounded parser (`parsers.gguf`), never memory-mapped; the path and
the holders (one pass over /proc, lsof elsewhere) are the run's shared facts (`facts.model_path`,
`facts.model_holders`), which the stack and progress probes read too.

Finding ids: model.ok, model.missing, model.unreadable, model.empty, model.bad_magic,
model.invalid_header, model.truncated, model.open_by_other, model.mapped_by_other,
model.locked_by_other, model.insufficient_memory, model.not_given, model.missing_shard.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re

import psutil

from exsa_doctor.context import Context
from exsa_doctor.facts import model_holders, model_path, target_engines
from exsa_doctor.model import Level
from exsa_doctor.oslayer.types import FileHolders, LockHolder
from exsa_doctor.parsers.gguf import GGUFError, GGUFHeader, read_gguf_header
from exsa_doctor.probes.base import Probe, ProbeOutput

_SHARD = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def missing_shards(path: str, count: int) -> list[str]:
    """The shards of a split model (llama.cpp's `NAME-0000N-of-0000M.gguf`) that are not there."""
    if count <= 1:
        return []
    m = _SHARD.match(os.path.basename(path))
    if m is None:
        return []
    folder = os.path.dirname(path)
    names = [f"{m['stem']}-{n:05d}-of-{count:05d}.gguf" for n in range(1, count + 1)]
    return [os.path.join(folder, n) for n in names if not os.path.exists(os.path.join(folder, n))]


def _printable(raw: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in raw)


def _proc_name(pid: int | None) -> str | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return None


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - loop always returns


class ModelProbe(Probe):
    """Checks the GGUF model file: existence, header, truncation, memory, and other holders.

    Emits model.ok / model.missing / model.unreadable / model.empty / model.bad_magic /
    model.invalid_header / model.truncated, model.insufficient_memory, and model.open_by_other /
    model.mapped_by_other / model.locked_by_other for processes other than the target engine;
    model.not_given when no model path is known.
    """

    name = "model"
    title = "Model file"
    timeout_s = 3.0
    emits = (
        "model.ok",
        "model.missing_shard",
        "model.missing",
        "model.unreadable",
        "model.empty",
        "model.bad_magic",
        "model.invalid_header",
        "model.truncated",
        "model.open_by_other",
        "model.mapped_by_other",
        "model.locked_by_other",
        "model.insufficient_memory",
        "model.not_given",
    )

    def run(self, ctx: Context) -> ProbeOutput:
        out = ProbeOutput()
        found = model_path(ctx)
        if found is None:
            out.add(
                self.finding(
                    "model.not_given",
                    Level.INFO,
                    "No model path known (no --model, no MODEL_PATH, no engine).",
                )
            )
            out.detail = "no model path"
            return out
        # The path found from the engine is not written back into ctx.shared("target"): that
        # slot is first-come, and the probe that refines the profile may need it.
        path = found[0]
        size = self._check_file(out, path)
        ctx.check_deadline()
        if size is None:
            return out
        engine_pids = self._engine_pids(ctx)
        holders = model_holders(ctx)
        if holders is not None:
            self._check_holders(out, holders, engine_pids)
        self._check_memory(out, size, holders, engine_pids)
        if holders is not None and (not holders.complete or holders.hidden):
            extra = f"; holders: {holders.hidden} processes hidden" if holders.hidden else ""
            if not holders.complete:
                extra += "; holder scan incomplete"
            out.detail += extra
        return out

    # -- the file itself -------------------------------------------------------------------

    def _check_file(self, out: ProbeOutput, path: str) -> int | None:
        """Emit the file's validity finding; return its size when it exists as a regular file."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            parent = os.path.dirname(path) or "."
            out.add(
                self.finding(
                    "model.missing",
                    Level.ERROR,
                    f"No file at {path}.",
                    {"path": path, "parent": parent},
                )
            )
            out.detail = "missing"
            return None
        except NotADirectoryError:  # a path component is a file: the model cannot exist
            out.add(
                self.finding(
                    "model.missing",
                    Level.ERROR,
                    f"No file at {path}.",
                    {"path": path, "parent": os.path.dirname(path) or "."},
                )
            )
            out.detail = "missing"
            return None
        except OSError as exc:
            self._unreadable(out, path, exc.strerror or str(exc))
            return None
        if os.path.isdir(path):
            self._unreadable(out, path, "is a directory")
            return None
        try:
            header = read_gguf_header(path)
        except FileNotFoundError:  # removed between stat and open
            out.add(
                self.finding(
                    "model.missing",
                    Level.ERROR,
                    f"No file at {path}.",
                    {"path": path, "parent": os.path.dirname(path) or "."},
                )
            )
            out.detail = "missing"
            return None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EACCES:
                reason = f"permission denied (uid {os.geteuid()})"
            self._unreadable(out, path, reason)
            return st.st_size
        except GGUFError as exc:
            return self._header_error(out, path, exc, st.st_size)
        self._header_ok(out, path, header)
        return header.file_size

    def _unreadable(self, out: ProbeOutput, path: str, reason: str) -> None:
        out.add(
            self.finding(
                "model.unreadable",
                Level.ERROR,
                f"{path} cannot be read: {reason}.",
                {"path": path, "reason": reason},
            )
        )
        out.detail = f"unreadable: {reason}"

    def _header_error(self, out: ProbeOutput, path: str, exc: GGUFError, size: int) -> int | None:
        if exc.kind == "empty":
            out.add(
                self.finding(
                    "model.empty", Level.ERROR, f"{path} is empty (0 bytes).", {"path": path}
                )
            )
            out.detail = "empty file"
        elif exc.kind == "bad_magic":
            magic = _printable(exc.magic or b"")
            out.add(
                self.finding(
                    "model.bad_magic",
                    Level.ERROR,
                    f"{path} is not a GGUF file (starts with {magic!r}).",
                    {"path": path, "magic": magic},
                )
            )
            out.detail = "not GGUF"
        elif exc.kind in ("invalid", "cut"):
            out.add(
                self.finding(
                    "model.invalid_header",
                    Level.ERROR,
                    f"{path} has a broken GGUF header: {exc.reason}.",
                    {"path": path, "reason": exc.reason},
                )
            )
            out.detail = f"invalid header: {exc.reason}"
        elif exc.kind == "unreadable":
            self._unreadable(out, path, exc.reason)
            return None if exc.reason == "not a regular file" else size
        else:  # "limit": a header too large to check is not evidence of a broken file
            out.detail = f"header not checked: {exc.reason}"
        return size

    def _header_ok(self, out: ProbeOutput, path: str, header: GGUFHeader) -> None:
        missing = missing_shards(path, header.split_count)
        if missing:
            out.add(
                self.finding(
                    "model.missing_shard",
                    Level.ERROR,
                    f"the model is split into {header.split_count} shards and "
                    f"{len(missing)} of them are missing: {', '.join(missing)}",
                    {"path": path, "count": header.split_count, "missing": missing},
                )
            )
            out.detail = f"split model: {len(missing)} of {header.split_count} shards missing"
            return
        if header.truncated:
            out.add(
                self.finding(
                    "model.truncated",
                    Level.ERROR,
                    f"{path} is {header.file_size} bytes but its tensor table needs "
                    f"{header.declared_end} bytes ({_human(header.missing_bytes)} missing).",
                    {
                        "path": path,
                        "size": header.file_size,
                        "expected": header.declared_end,
                        "missing": header.missing_bytes,
                    },
                )
            )
            out.detail = f"truncated: {_human(header.missing_bytes)} missing"
            return
        out.add(
            self.finding(
                "model.ok",
                Level.OK,
                f"GGUF v{header.version}, {header.tensor_count} tensors, "
                f"{_human(header.file_size)}, architecture {header.architecture or 'unknown'}.",
                {
                    "path": path,
                    "size": header.file_size,
                    "version": header.version,
                    "tensors": header.tensor_count,
                    "kv": header.kv_count,
                    "architecture": header.architecture,
                },
            )
        )
        out.detail = f"GGUF v{header.version}, {_human(header.file_size)}"
        if header.unknown_types:
            out.detail += f" (unknown tensor types {list(header.unknown_types)} not sized)"

    # -- other processes ---------------------------------------------------------------------

    @staticmethod
    def _engine_pids(ctx: Context) -> set[int]:
        pids = set(ctx.target.pids)
        # without the engine list, every holder but --pid counts as other
        with contextlib.suppress(Exception):
            pids.update(e.pid for e in target_engines(ctx))
        return pids

    def _check_holders(self, out: ProbeOutput, holders: FileHolders, engine: set[int]) -> None:
        ignore = engine | {os.getpid()}  # our own header read is not a holder
        others_open = sorted(set(holders.open_by) - ignore)
        others_mapped = sorted(set(holders.mapped_by) - ignore)
        if others_open:
            out.add(
                self.finding(
                    "model.open_by_other",
                    Level.INFO,
                    f"Other processes have the model open: {others_open}.",
                    {"pids": others_open},
                )
            )
        if others_mapped:
            out.add(
                self.finding(
                    "model.mapped_by_other",
                    Level.WARNING,
                    f"Other processes map the model: {others_mapped}.",
                    {"pids": others_mapped},
                )
            )
        held = [lk for lk in holders.locks if not lk.blocked]
        waiters = sorted({lk.pid for lk in holders.locks if lk.blocked and lk.pid is not None})
        foreign = [lk for lk in held if lk.pid is None or lk.pid not in ignore]
        if not foreign:
            return
        # a known PID is more useful than an OFD lock's anonymous one
        lock: LockHolder = next((lk for lk in foreign if lk.pid is not None), foreign[0])
        name = _proc_name(lock.pid)
        who = f"PID {lock.pid} ({name or 'unknown'})" if lock.pid is not None else "a process"
        out.add(
            self.finding(
                "model.locked_by_other",
                Level.ERROR,
                f"{who} holds a {lock.kind} {lock.mode} lock on the model"
                + (f"; waiting: {waiters}." if waiters else "."),
                {
                    "holder_pid": lock.pid,
                    "holder_name": name,
                    "kind": lock.kind,
                    "mode": lock.mode,
                    "waiters": waiters,
                },
            )
        )

    def _check_memory(
        self, out: ProbeOutput, size: int, holders: FileHolders | None, engine: set[int]
    ) -> None:
        # An engine that already maps the model has paid for it; comparing again misleads.
        if holders is not None and engine & set(holders.mapped_by):
            return
        try:
            available = int(psutil.virtual_memory().available)
        except (psutil.Error, OSError):
            return
        if available < size:
            out.add(
                self.finding(
                    "model.insufficient_memory",
                    Level.WARNING,
                    f"Available memory ({_human(available)}) is less than the model "
                    f"({_human(size)}).",
                    {"size": size, "available": available},
                )
            )
