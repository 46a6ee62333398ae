"""Who has one file open, memory-mapped or locked: `holders_of(path, deadline)`.

Linux reads procfs in one pass: `/proc/locks` (global, readable by anyone, so a lock holder shows
even when its process is hidden from us), then for each process `/proc/PID/fd` (links) and
`/proc/PID/maps` (mappings). A process that maps the model and closed its descriptor, which is
what llama.cpp does after `mmap`, appears only in `maps`; psutil's `open_files()` misses it.

Other systems (macOS, BSD) ask `lsof -F` (parsed by `oslayer.lsof`); lsof cannot tell flock from
POSIX locks and never shows waiters.

Nothing here raises for an unreadable process: it is counted in `FileHolders.hidden`. The walk
checks the deadline between processes and says so (`complete=False`) when it stops early.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

from exsa_doctor.oslayer.types import FileHolders, LockHolder

_PROC = "/proc"
_MAX_MAPS_BYTES = 32 * 1024 * 1024  # a JVM or browser may map a lot; stop reading past this
_LSOF_DEFAULT_TIMEOUT = 5.0


def holders_of(
    path: str,
    deadline: float | None,
    pids: Iterable[int] | None = None,
    *,
    locks: LockTable | None = None,
) -> FileHolders:
    """Processes that have `path` open, mapped or locked.

    `deadline` is a `time.monotonic()` value (None: no limit). `pids` restricts the per-process
    walk (open/mapped) to those processes; locks are always read for the whole system because
    the lock table is one cheap global read (`locks`: one already read, on Linux).
    """
    if sys.platform.startswith("linux") and os.path.isdir(f"{_PROC}/self/fd"):
        return holders_procfs(path, deadline, pids, proc_root=_PROC, locks=locks)
    return holders_lsof(path, deadline, pids)


# ----------------------------------------------------------------------------- Linux / procfs


FileId = tuple[int, int, int]  # device major, device minor, inode: how /proc/locks names a file
_MAX_LOCKS_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class LockTable:
    """The system's advisory locks (`/proc/locks`, read and parsed once): holders and waiters."""

    entries: tuple[tuple[FileId, LockHolder], ...] = ()

    def on(self, file: FileId) -> list[LockHolder]:
        """Every lock and waiter on one file, in the table's order."""
        return [holder for where, holder in self.entries if where == file]

    def waited_for_by(self, pid: int) -> list[FileId]:
        """The files on which `pid` waits for a lock (`->` lines)."""
        return [where for where, h in self.entries if h.blocked and h.pid == pid]


def lock_table(text: str) -> LockTable:
    """`/proc/locks` text as a `LockTable`. Malformed lines are skipped.

    Lines look like `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`, waiters like
    `1: -> FLOCK  ADVISORY  WRITE 999 fd:01:5678 0 EOF`; the device is `MAJ:MIN` in hex, the
    inode decimal. OFD locks show pid -1 (no owning process).
    """
    found: list[tuple[FileId, LockHolder]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or not parts[0].endswith(":"):
            continue
        blocked = parts[1] == "->"
        fields = parts[2:] if blocked else parts[1:]
        # kind, class (ADVISORY/MANDATORY/ACTIVE/BREAKING...), mode, pid, dev:ino, start, end
        if len(fields) < 5:
            continue
        kind, _cls, mode, pid_s, where = fields[:5]
        bits = where.split(":")
        if len(bits) != 3:
            continue
        try:
            file = (int(bits[0], 16), int(bits[1], 16), int(bits[2]))
            pid = int(pid_s)
        except ValueError:
            continue
        holder = LockHolder(pid=pid if pid > 0 else None, kind=kind, mode=mode, blocked=blocked)
        found.append((file, holder))
    return LockTable(tuple(found))


def read_lock_table(proc_root: str = _PROC) -> LockTable:
    """The system's lock table now (Linux; raises OSError where there is none to read)."""
    text, _ = _read_bounded(f"{proc_root}/locks", _MAX_LOCKS_BYTES)
    return lock_table(text.decode("ascii", errors="replace"))


def parse_proc_locks(text: str, dev_major: int, dev_minor: int, inode: int) -> list[LockHolder]:
    """Locks on one file from `/proc/locks` text (see `lock_table`)."""
    return lock_table(text).on((dev_major, dev_minor, inode))


def file_id(path: str) -> FileId | None:
    """How `/proc/locks` and `/proc/PID/maps` name the file at `path`; None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


def _read_bounded(path: str, limit: int) -> tuple[bytes, bool]:
    """Read up to `limit` bytes; the bool says whether the whole file was read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        total = 0
        while total < limit:
            data = os.read(fd, min(1 << 20, limit - total))
            if not data:
                return b"".join(chunks), True
            chunks.append(data)
            total += len(data)
        return b"".join(chunks), os.read(fd, 1) == b""
    finally:
        os.close(fd)


def _maps_match(data: bytes, dev_token: bytes, path_tokens: tuple[bytes, ...]) -> bool:
    """Whether `/proc/PID/maps` text maps our file.

    A line is `start-end perms offset MAJ:MIN INODE   PATH`. The device and inode identify the
    file whatever its path (spaces, renames); the path is a fallback for overlay filesystems,
    where maps shows the lower layer's device and inode. A deleted file shows `PATH (deleted)`:
    that is another inode, and the path tokens end at the newline so it does not match.
    """
    if dev_token in data:
        for line in data.splitlines():
            fields = line.split(None, 5)
            if len(fields) >= 5 and b" ".join(fields[3:5]) + b" " == dev_token[1:]:
                return True
    return any(token in data for token in path_tokens)


def holders_procfs(
    path: str,
    deadline: float | None,
    pids: Iterable[int] | None = None,
    *,
    proc_root: str = _PROC,
    locks: LockTable | None = None,
) -> FileHolders:
    """The procfs walk behind `holders_of` on Linux."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return FileHolders(
            path=path,
            complete=False,
            method="procfs",
            notes=(f"cannot stat {path}: {exc.strerror or exc}",),
        )
    major, minor, inode = os.major(st.st_dev), os.minor(st.st_dev), st.st_ino
    real = os.path.realpath(path)
    names = {os.path.abspath(path), real}
    base = os.path.basename(real)
    notes: list[str] = []

    on_file: list[LockHolder] = []
    try:
        table = locks if locks is not None else read_lock_table(proc_root)
        on_file = table.on((major, minor, inode))
    except OSError as exc:
        notes.append(f"cannot read {proc_root}/locks: {exc.strerror or exc}")

    if pids is None:
        try:
            candidates = sorted(int(e) for e in os.listdir(proc_root) if e.isdigit())
        except OSError as exc:
            return FileHolders(
                path=path,
                locks=tuple(on_file),
                complete=False,
                method="procfs",
                notes=(*notes, f"cannot list {proc_root}: {exc.strerror or exc}"),
            )
    else:
        candidates = sorted(set(pids))

    dev_token = f" {major:02x}:{minor:02x} {inode} ".encode()
    path_tokens = tuple(b" " + n.encode("utf-8", "surrogateescape") + b"\n" for n in names)
    open_by: list[int] = []
    mapped_by: list[int] = []
    hidden = 0
    complete = True
    for done, pid in enumerate(candidates):
        if deadline is not None and time.monotonic() >= deadline:
            complete = False
            notes.append(f"deadline reached after {done} of {len(candidates)} processes")
            break
        denied = False
        fd_dir = f"{proc_root}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:
            denied = True
            fds = []
        except OSError:  # exited, or not a process directory
            fds = []
        for fd in fds:
            link = f"{fd_dir}/{fd}"
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target in names:
                open_by.append(pid)
                break
            # Same name elsewhere: another mount namespace, a bind mount or a symlinked
            # directory. Only then pay for a stat, which compares the inode itself.
            if target.startswith("/") and os.path.basename(target) == base:
                try:
                    lst = os.stat(link)
                except OSError:
                    continue
                if (lst.st_dev, lst.st_ino) == (st.st_dev, st.st_ino):
                    open_by.append(pid)
                    break
        try:
            data, whole = _read_bounded(f"{proc_root}/{pid}/maps", _MAX_MAPS_BYTES)
        except PermissionError:
            denied = True
        except OSError:
            pass
        else:
            if not whole:
                notes.append(f"maps of pid {pid} larger than {_MAX_MAPS_BYTES} bytes, read in part")
            if _maps_match(data, dev_token, path_tokens):
                mapped_by.append(pid)
        if denied:
            hidden += 1
    if hidden:
        why = "run as root to see them" if os.geteuid() != 0 else "not dumpable, or sandboxed"
        notes.append(f"{hidden} processes hidden by permissions ({why})")
    return FileHolders(
        path=path,
        open_by=tuple(open_by),
        mapped_by=tuple(mapped_by),
        locks=tuple(on_file),
        complete=complete,
        hidden=hidden,
        method="procfs",
        notes=tuple(notes),
    )


# ----------------------------------------------------------------------------- lsof (macOS, BSD)


def _lock_mode(char: str) -> str:
    # lsof: r/R read lock (partial/whole file), w/W write, u read+write, x/X SCO, N Solaris NFS
    if char in "rR":
        return "READ"
    if char in "wWuU":
        return "WRITE"
    return "UNKNOWN"


def holders_lsof(
    path: str,
    deadline: float | None,
    pids: Iterable[int] | None = None,
    *,
    executable: str | None = None,
) -> FileHolders:
    """`lsof -nP -w -Fpcfnlt -- PATH`, turned into `FileHolders`.

    lsof cannot say flock from fcntl locks (kind "UNKNOWN") and shows no waiters. Running it as
    a normal user hides other users' processes without a count, hence the note.
    """
    from exsa_doctor.oslayer.lsof import LsofError, run_lsof

    timeout = _LSOF_DEFAULT_TIMEOUT if deadline is None else deadline - time.monotonic()
    if timeout <= 0:
        return FileHolders(
            path=path,
            complete=False,
            method="lsof",
            notes=("deadline passed before lsof could run",),
        )
    try:
        records = run_lsof(["--", path], timeout, fields="pcfnlt", executable=executable)
    except LsofError as exc:
        return FileHolders(path=path, complete=False, method="lsof", notes=(f"lsof: {exc}",))
    wanted = None if pids is None else set(pids)
    open_by: list[int] = []
    mapped_by: list[int] = []
    locks: list[LockHolder] = []
    for rec in records:
        if rec.fd is None or (wanted is not None and rec.pid not in wanted):
            continue
        if rec.is_mapped or rec.fd == "DEL":
            if rec.pid not in mapped_by:
                mapped_by.append(rec.pid)
        elif rec.fd.isdigit() and rec.pid not in open_by:
            open_by.append(rec.pid)
        if rec.lock is not None:
            # one lock shows on every record of the file (the fd and its mapping): keep one
            lock = LockHolder(pid=rec.pid, kind="UNKNOWN", mode=_lock_mode(rec.lock))
            if lock not in locks:
                locks.append(lock)
    notes: tuple[str, ...] = ()
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        notes = ("lsof as a normal user does not show other users' processes",)
    return FileHolders(
        path=path,
        open_by=tuple(sorted(open_by)),
        mapped_by=tuple(sorted(mapped_by)),
        locks=tuple(locks),
        method="lsof",
        notes=notes,
    )


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file: by inode when both exist, else by absolute path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(os.fspath(a)) == os.path.abspath(os.fspath(b))
