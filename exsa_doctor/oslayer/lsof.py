"""Read `lsof -F` field output: the portable way to see sockets and open files on macOS/BSD.

`lsof -F` prints one field per line (or NUL-separated with `-F0`), each line starting with a
one-character identifier: a *process set* begins with `p` (PID) and carries `c` (command), `u`
(uid), `L` (login), `R` (ppid), `g` (pgid); each *file set* inside it begins with `f` (fd) and
carries `a` (access mode), `l` (lock), `t` (type), `i` (inode), `s` (size), `n` (name) and `T`
(TCP info, `TST=LISTEN`, `TQR=0`, ...). `parse_fields` turns that into one frozen `LsofRecord`
per file; it never raises, whatever the text (unknown or malformed lines are skipped).

`run_lsof` runs lsof with a time limit and an output cap and raises `LsofError` (with a `kind`
a caller can branch on: `missing`, `timeout`, `failed`, `too_large`) instead of hanging.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

# Fields asked for by default: process (pid, command, uid, login, ppid) and file (fd, access,
# lock, type, inode, size/offset, name, TCP info).
DEFAULT_FIELDS = "pcuLRfaltisnT"
DEFAULT_MAX_BYTES = 8 * 1024 * 1024

# Lock characters lsof can report (man lsof, OUTPUT: "the type of lock applied to the file").
LOCK_CHARS = frozenset("NrRwWuUxX")
_ACCESS_CHARS = frozenset("rwu")
# Plain (non -F) FD column style, "3uW": number, access mode, lock. Some callers hand us that.
_FD_WITH_MODE = re.compile(r"^(?P<fd>\d+)(?P<mode>[rwu \-])(?P<lock>[NrRwWuUxX ])?$")


class LsofError(RuntimeError):
    """lsof could not give an answer; `kind` is `missing`, `timeout`, `failed` or `too_large`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class LsofRecord:
    """One open file of one process as lsof reports it; fields lsof did not print are None.

    A process set that has no file sets (only process fields were asked for) gives one record
    with `fd` None, so the process is not lost.
    """

    pid: int
    command: str | None = None
    uid: int | None = None
    login: str | None = None
    ppid: int | None = None
    fd: str | None = None  # "3", "cwd", "txt", "mem", ...
    access: str | None = None  # "r", "w", "u"
    lock: str | None = None  # one of LOCK_CHARS, None when no lock
    type: str | None = None  # "REG", "IPv4", "IPv6", "DIR", ...
    inode: int | None = None
    size: int | None = None
    name: str | None = None
    tcp_state: str | None = None  # "LISTEN", "ESTABLISHED", ... from `TST=`

    @property
    def is_mapped(self) -> bool:
        """Memory-mapped (Linux `mem`) or program text (macOS shows mmapped files as `txt`)."""
        return self.fd in ("mem", "txt") or (self.fd or "").startswith("M")

    @property
    def is_listening(self) -> bool:
        return self.tcp_state == "LISTEN"


def _int_or_none(text: str) -> int | None:
    text = text.strip()
    if text.startswith("0t"):  # lsof's decimal-offset prefix
        text = text[2:]
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        return None
    return int(text)


def _tidy(value: str) -> str | None:
    """lsof prints a blank (" ") for an unknown mode or lock; that means None."""
    return value if value.strip() else None


class _Builder:
    """Accumulates the fields of the current process set and file set."""

    def __init__(self) -> None:
        self.records: list[LsofRecord] = []
        self.proc: dict[str, object] | None = None
        self.file: dict[str, object] | None = None
        self.proc_had_file = False

    def flush_file(self) -> None:
        if self.proc is not None and self.file is not None:
            self.records.append(LsofRecord(**{**self.proc, **self.file}))  # type: ignore[arg-type]
            self.proc_had_file = True
        self.file = None

    def flush_proc(self) -> None:
        self.flush_file()
        if self.proc is not None and not self.proc_had_file:
            self.records.append(LsofRecord(**self.proc))  # type: ignore[arg-type]
        self.proc = None
        self.proc_had_file = False

    def field(self, ident: str, value: str) -> None:
        if ident == "p":
            pid = _int_or_none(value)
            self.flush_proc()
            if pid is not None:
                self.proc = {"pid": pid}
            return
        if self.proc is None:
            return  # fields outside a valid process set carry nothing we can attribute
        if ident == "f":
            self.flush_file()
            self.file = _fd_fields(value)
            return
        if self.file is None:
            self._process_field(ident, value)
        else:
            self._file_field(ident, value)

    def _process_field(self, ident: str, value: str) -> None:
        assert self.proc is not None
        if ident == "c":
            self.proc["command"] = value
        elif ident == "u":
            self.proc["uid"] = _int_or_none(value)
        elif ident == "L":
            self.proc["login"] = value or None
        elif ident == "R":
            self.proc["ppid"] = _int_or_none(value)

    def _file_field(self, ident: str, value: str) -> None:
        assert self.file is not None
        if ident == "a":
            mode = _tidy(value)
            self.file["access"] = mode if mode in _ACCESS_CHARS else None
        elif ident == "l":
            lock = _tidy(value)
            self.file["lock"] = lock if lock is not None and lock in LOCK_CHARS else None
        elif ident == "t":
            self.file["type"] = value or None
        elif ident == "i":
            self.file["inode"] = _int_or_none(value)
        elif ident == "s":
            self.file["size"] = _int_or_none(value)
        elif ident == "n":
            self.file["name"] = value
        elif ident == "T" and value.startswith("ST="):
            self.file["tcp_state"] = value[3:] or None


def _fd_fields(value: str) -> dict[str, object]:
    match = _FD_WITH_MODE.match(value)
    if match is None:
        return {"fd": value or None}
    out: dict[str, object] = {"fd": match["fd"]}
    mode = match["mode"]
    if mode in _ACCESS_CHARS:
        out["access"] = mode
    lock = match["lock"]
    if lock and lock in LOCK_CHARS:
        out["lock"] = lock
    return out


def parse_fields(text: str) -> list[LsofRecord]:
    """Records from `lsof -F` output (NL- or NUL-terminated fields). Never raises."""
    builder = _Builder()
    for raw in re.split(r"[\n\x00]", text):
        line = raw.rstrip("\r")
        if line:
            builder.field(line[0], line[1:])
    builder.flush_proc()
    return builder.records


def lsof_path() -> str | None:
    """Where lsof is (PATH, then the usual places it lives outside PATH), or None."""
    found = shutil.which("lsof")
    if found:
        return found
    for candidate in ("/usr/sbin/lsof", "/usr/bin/lsof", "/sbin/lsof", "/bin/lsof"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def run_lsof(
    args: Sequence[str],
    timeout: float,
    *,
    fields: str = DEFAULT_FIELDS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    executable: str | None = None,
) -> list[LsofRecord]:
    """Run `lsof -nP -w -F<fields> ARGS` for at most `timeout` seconds and parse its output.

    `args` are the selection options only (`["-iTCP:3000", "-sTCP:LISTEN"]`, `["/path/file"]`).
    lsof exits 1 both when nothing matched and on some errors: with no output and nothing but
    warnings on stderr that is an empty answer, otherwise `LsofError("failed")`.
    `executable` overrides where lsof is looked for.
    """
    exe = executable or lsof_path()
    if exe is None:
        raise LsofError("missing", "lsof is not installed (or not on PATH)")
    # -n/-P: no DNS or port-name lookups (they can take seconds); -w: no warnings on stderr
    cmd = [exe, "-nP", "-w", f"-F{fields}", *args]
    out, err, code = _bounded_run(cmd, max(0.05, timeout), max_bytes)
    text = out.decode("utf-8", errors="replace")
    if code not in (0, 1):
        raise LsofError("failed", f"lsof exited with status {code}: {_first_line(err)}")
    if code == 1 and not text.strip():
        message = _first_line(err)
        if message and "WARNING" not in message:
            raise LsofError("failed", f"lsof failed: {message}")
        return []
    return parse_fields(text)


def _first_line(err: bytes) -> str:
    for line in err.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def _bounded_run(cmd: list[str], timeout: float, max_bytes: int) -> tuple[bytes, bytes, int]:
    """Run `cmd`, reading at most `max_bytes` of stdout within `timeout`; kill it otherwise."""
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
    except OSError as exc:
        raise LsofError("missing", f"cannot run lsof: {exc.strerror or exc}") from None
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    chunks: dict[int, list[bytes]] = {1: [], 2: []}
    sizes = {1: 0, 2: 0}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, 1)
    sel.register(proc.stderr, selectors.EVENT_READ, 2)
    try:
        open_streams = 2
        while open_streams:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LsofError("timeout", f"lsof did not finish within {timeout:g} s")
            for key, _ in sel.select(left):
                data = os.read(key.fd, 65536)
                stream = int(key.data)
                if not data:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                sizes[stream] += len(data)
                if stream == 1 and sizes[1] > max_bytes:
                    raise LsofError("too_large", f"lsof printed more than {max_bytes} bytes")
                if stream == 2 and sizes[2] > 65536:
                    continue  # keep only the start of stderr; it is for the message
                chunks[stream].append(data)
        code = proc.wait(max(0.05, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise LsofError("timeout", f"lsof did not exit within {timeout:g} s") from None
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return b"".join(chunks[1]), b"".join(chunks[2]), code
