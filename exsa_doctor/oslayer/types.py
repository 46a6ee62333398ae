"""Plain records the operating-system layer returns; no behaviour, no OS calls."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProcessInfo:
    """One process as seen from outside. Fields the OS hid from us are None."""

    pid: int
    ppid: int | None
    name: str
    exe: str | None
    cmdline: tuple[str, ...]
    username: str | None
    uid: int | None
    create_time: float | None
    state: str  # running, sleeping, disk-sleep, stopped, zombie, idle, dead, unknown
    parent_alive: bool
    orphaned: bool  # parent exited: re-parented to PID 1 or to a subreaper
    cpu_time_s: float | None
    rss_bytes: int | None
    threads: int | None
    environ_hidden: bool = False


@dataclass(frozen=True)
class EngineProcess:
    """A process positively identified as an engine instance by a profile."""

    info: ProcessInfo
    profile: str
    model: str | None  # from its command line or environment
    configured_port: int | None  # from its command line or environment
    configured_host: str | None

    @property
    def pid(self) -> int:
        return self.info.pid


@dataclass(frozen=True)
class Listener:
    """A TCP socket on a port: listening, or bound but not (yet) listening."""

    family: str  # "ipv4" | "ipv6"
    address: str  # "127.0.0.1", "::1", "0.0.0.0", "::"
    port: int
    state: str  # "LISTEN" | "BOUND" (bound, not listening: refuses connections, blocks bind())
    inode: int | None
    uid: int | None
    pid: int | None  # None when permissions hide the owner
    owner_hidden: bool = False
    # IPV6_V6ONLY of an IPv6 socket (None: unknown or IPv4); a "::" listener without it also
    # accepts IPv4 connections
    v6only: bool | None = None


@dataclass(frozen=True)
class ListenerScan:
    """All sockets on one port, and whether the scan was complete."""

    port: int
    listeners: tuple[Listener, ...]
    complete: bool = True  # False when the deadline cut the PID walk short
    method: str = ""  # "sock_diag", "procfs", "psutil", "lsof"
    note: str = ""
    scanned: int = 0  # processes whose fd tables were read to find the owners


@dataclass(frozen=True)
class LockHolder:
    """An advisory lock on a file (flock/POSIX), as /proc/locks or lsof reports it."""

    pid: int | None
    kind: str  # "FLOCK" | "POSIX" | "OFDLCK"
    mode: str  # "WRITE" | "READ"
    blocked: bool = False  # a waiter (`->` lines in /proc/locks), not a holder


@dataclass(frozen=True)
class FileHolders:
    """Who has one file open, mapped or locked."""

    path: str
    open_by: tuple[int, ...] = ()
    mapped_by: tuple[int, ...] = ()
    locks: tuple[LockHolder, ...] = ()
    complete: bool = True
    hidden: int = 0  # processes we could not inspect (permission denied)
    method: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
