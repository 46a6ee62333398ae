"""Who listens on a TCP port (and who merely bound it), behind one function per question.

`listeners_of(port)` answers on every platform; how depends on the OS:

- Linux: the kernel's socket table, then socket inodes mapped to PIDs through `/proc/*/fd`.
  The table comes from sock_diag netlink, which (kernel >= 6.8) also reports sockets that are
  *bound but not listening*: they refuse connections yet block `bind()`, and `/proc/net/tcp`
  does not show them. When netlink is unavailable (seccomp, old kernels) `/proc/net/tcp{,6}` is
  parsed instead. The inode walk reads each process's fd directory at most once, stops as soon
  as every wanted inode is found and checks the deadline as it goes; sockets whose owner could
  not be read (another user's process) come back with `pid=None, owner_hidden=True` and the uid
  from the kernel table.
- macOS and others: `psutil.net_connections`, which needs root on macOS; when it is denied,
  `lsof -nP -iTCP:PORT` (which shows one's own processes' sockets without root).

`listening_ports_of(pids)` says what each given process listens on; `resolve_localhost(host)`
gives getaddrinfo's address order (the order a client tries them in).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import psutil

from exsa_doctor.oslayer.types import Listener, ListenerScan

# Kernel TCP states (include/net/tcp_states.h).
_TCP_CLOSE = 7
_TCP_LISTEN = 10
# Dump-request bit for bound-only sockets (Linux >= 6.8); older kernels ignore it.
_TCP_BOUND_INACTIVE = 13

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_INET_DIAG_SKV6ONLY = 11
_NLMSG_HDR = struct.Struct("=IHHII")
_DIAG_REQ = struct.Struct("=BBBBI")
_DIAG_MSG_LEN = 72  # struct inet_diag_msg
_DIAG_MIN_LEN = 6  # enough of inet_diag_msg to read the local port
_SPORT = struct.Struct(">H")
_MAX_NETLINK_BYTES = 64 * 1024 * 1024  # a runaway dump must not eat memory

_PROC_TCP_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class _Sock:
    """One row of the kernel's TCP table that interests us (LISTEN or bound-only)."""

    family: str
    address: str
    port: int
    state: str  # "LISTEN" | "BOUND"
    inode: int | None
    uid: int | None
    v6only: bool | None = None


# ---------------------------------------------------------------- address decoding


def decode_proc_address(hex_addr: str, byteorder: str = sys.byteorder) -> str:
    """An address as `/proc/net/tcp{,6}` prints it (hex, 32-bit words in host order) -> text.

    IPv4 is one word, IPv6 four; each word is the kernel's `__be32` printed as a host integer,
    so on little-endian machines the bytes of every word are reversed.
    """
    raw = bytes.fromhex(hex_addr)
    if len(raw) not in (4, 16):
        raise ValueError(f"not an IPv4/IPv6 address: {hex_addr!r}")
    if byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    return _v6_text(raw)


def _v6_text(raw: bytes) -> str:
    """IPv6 text, with a v4-mapped address written `::ffff:127.0.0.1` on every Python version."""
    addr = ipaddress.IPv6Address(raw)
    mapped = addr.ipv4_mapped
    return f"::ffff:{mapped}" if mapped is not None else str(addr)


def _normal(text: str) -> str:
    """An address in the one spelling this module uses (no zone id, v4-mapped dotted)."""
    text = text.split("%", 1)[0]
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        return text
    return _v6_text(parsed.packed) if parsed.version == 6 else str(parsed)


# ---------------------------------------------------------------- Linux: kernel socket table


class SockDiag:
    """One sock_diag netlink socket, the only one in exsa-doctor: dumps of the kernel's TCP table.

    `listeners_of` opens one for a scan; `wait` keeps one open and asks it every 30 ms whether a
    port listens (`listens_on`), which costs about half of a refused TCP connect. Raises OSError
    (no netlink: seccomp, another OS) or ValueError (a malformed answer) for the caller to fall
    back on.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dump(self, family: int, states: int, limit: int | None = None) -> Iterator[bytes]:
        """The `inet_diag_msg` payloads of one family's TCP sockets in `states` (a bitmask of
        1 << state); ValueError past `limit` sockets (a table too large to ask cheaply)."""
        for data, start, end in self._answer(family, states, limit, 1 << 20):
            yield data[start:end]

    def listens_on(self, families: Iterable[int], port: int, limit: int) -> bool:
        """Whether a TCP socket of one of `families` listens on `port` (the local port only).

        Asked every 30 ms by `wait`: the answer is read in place, without copying a message.
        """
        found = False
        for family in families:
            for data, start, _end in self._answer(family, 1 << _TCP_LISTEN, limit, 65536):
                # inet_diag_msg: family, state, timer, retrans, then the big-endian sport
                if _SPORT.unpack_from(data, start + 4)[0] == port:
                    found = True  # read on to the end of the answer, keeping the socket in step
        return found

    def _answer(
        self, family: int, states: int, limit: int | None, bufsize: int
    ) -> Iterator[tuple[bytes, int, int]]:
        """Send one dump request; yield (buffer, start, end) of each message payload."""
        if self._sock is None:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
            self._sock.settimeout(1.0)  # the kernel answers at once; silence means no sock_diag
        self._seq += 1
        req = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, states) + bytes(48)
        hdr = _NLMSG_HDR.pack(
            _NLMSG_HDR.size + len(req),
            _SOCK_DIAG_BY_FAMILY,
            _NLM_F_REQUEST | _NLM_F_DUMP,
            self._seq,
            0,
        )
        self._sock.sendto(hdr + req, (0, 0))
        total = seen = 0
        while True:
            data = self._sock.recv(bufsize)
            total += len(data)
            if not data or total > _MAX_NETLINK_BYTES:
                raise OSError("sock_diag dump ended unexpectedly")
            off = 0
            while off + _NLMSG_HDR.size <= len(data):
                length, msg_type, _flags, seq, _pid = _NLMSG_HDR.unpack_from(data, off)
                if length < _NLMSG_HDR.size:
                    raise ValueError("bad netlink message")
                start, end = off + _NLMSG_HDR.size, off + length
                off += (length + 3) & ~3
                if seq != self._seq:
                    continue  # the tail of an earlier, abandoned answer
                if msg_type == _NLMSG_DONE:
                    return
                if msg_type == _NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", data, start)
                    raise OSError(-errno, "sock_diag request refused")
                seen += 1
                if limit is not None and seen > limit:
                    raise ValueError("too many sockets to ask cheaply")
                if end - start >= _DIAG_MIN_LEN:
                    yield data, start, end

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _diag_dump(family: int, states: int) -> list[_Sock]:
    """TCP sockets of one family in `states` (a bitmask of 1 << state) via sock_diag netlink."""
    with SockDiag() as diag:
        return [s for s in map(_parse_diag_msg, diag.dump(family, states)) if s is not None]


def _parse_diag_msg(payload: bytes) -> _Sock | None:
    if len(payload) < _DIAG_MSG_LEN:
        return None
    family, state = payload[0], payload[1]
    sport = struct.unpack_from(">H", payload, 4)[0]
    if family == socket.AF_INET:
        address = str(ipaddress.IPv4Address(payload[8:12]))
    elif family == socket.AF_INET6:
        address = _v6_text(payload[8:24])
    else:
        return None
    dst = payload[24:40]
    uid, inode = struct.unpack_from("=II", payload, 64)
    if state == _TCP_LISTEN:
        kind = "LISTEN"
    elif state == _TCP_CLOSE and not any(dst):
        kind = "BOUND"
    else:
        return None
    v6only: bool | None = None
    off = _DIAG_MSG_LEN
    while off + 4 <= len(payload):
        rta_len, rta_type = struct.unpack_from("=HH", payload, off)
        if rta_len < 4:
            break
        if rta_type == _INET_DIAG_SKV6ONLY and rta_len >= 5:
            v6only = bool(payload[off + 4])
        off += (rta_len + 3) & ~3
    return _Sock(
        family="ipv6" if family == socket.AF_INET6 else "ipv4",
        address=address,
        port=sport,
        state=kind,
        inode=inode or None,
        uid=uid,
        v6only=v6only if family == socket.AF_INET6 else None,
    )


def _netlink_table() -> list[_Sock]:
    states = (1 << _TCP_LISTEN) | (1 << _TCP_BOUND_INACTIVE)
    out = _diag_dump(socket.AF_INET, states)
    try:
        out += _diag_dump(socket.AF_INET6, states)
    except OSError as exc:
        # a kernel without IPv6 has no IPv6 sockets; anything else is a real failure
        if exc.errno not in (2, 97, 93):  # ENOENT, EAFNOSUPPORT, EPROTONOSUPPORT
            raise
    return out


def parse_proc_net_tcp(text: str, family: str) -> list[_Sock]:
    """LISTEN and bound-only rows of a `/proc/net/tcp` or `/proc/net/tcp6` text. Never raises."""
    out: list[_Sock] = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        try:
            local_addr, local_port = parts[1].rsplit(":", 1)
            remote_addr, remote_port = parts[2].rsplit(":", 1)
            state = int(parts[3], 16)
            address = decode_proc_address(local_addr)
            port = int(local_port, 16)
            uid = int(parts[7])
            inode = int(parts[9])
            remote_zero = int(remote_addr, 16) == 0 and int(remote_port, 16) == 0
        except ValueError:
            continue
        if state == _TCP_LISTEN:
            kind = "LISTEN"
        elif state == _TCP_CLOSE and remote_zero:
            kind = "BOUND"
        else:
            continue
        out.append(_Sock(family, address, port, kind, inode or None, uid))
    return out


def _procfs_table() -> list[_Sock]:
    out: list[_Sock] = []
    for path, family in (("/proc/net/tcp", "ipv4"), ("/proc/net/tcp6", "ipv6")):
        try:
            with open(path, encoding="ascii", errors="replace") as fh:
                text = fh.read(_PROC_TCP_MAX_BYTES)
        except OSError:
            continue  # no IPv6 in this kernel
        out += parse_proc_net_tcp(text, family)
    return out


def _linux_table() -> tuple[list[_Sock], str]:
    try:
        return _netlink_table(), "sock_diag"
    except (OSError, ValueError):
        return _procfs_table(), "procfs"


# ---------------------------------------------------------------- Linux: inode -> PID


@dataclass
class _Walk:
    owners: dict[int, int]
    complete: bool
    scanned: int
    denied: int


def _numeric_pids() -> list[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    # newest first: the processes people ask about (engines, tests) are usually recent ones
    return sorted((int(n) for n in names if n.isdigit()), reverse=True)


def _socket_inodes_of(pid: int) -> Iterator[int]:
    """Socket inodes in one process's fd table; raises PermissionError/FileNotFoundError."""
    with os.scandir(f"/proc/{pid}/fd") as entries:
        for entry in entries:
            try:
                target = os.readlink(entry.path)
            except OSError:
                continue  # the fd closed while we looked
            if target.startswith("socket:["):
                try:
                    yield int(target[8:-1])
                except ValueError:
                    continue


def _owners_of(
    inodes: set[int], deadline: float | None, pids: Iterable[int] | None = None
) -> _Walk:
    """Map socket inodes to the first PID holding each; stop once all are found."""
    walk = _Walk(owners={}, complete=True, scanned=0, denied=0)
    wanted = set(inodes)
    if not wanted:
        return walk
    for pid in _numeric_pids() if pids is None else pids:
        if deadline is not None and time.monotonic() >= deadline:
            walk.complete = False
            break
        walk.scanned += 1
        try:
            for inode in _socket_inodes_of(pid):
                if inode in wanted:
                    walk.owners[inode] = pid
                    wanted.discard(inode)
        except PermissionError:
            walk.denied += 1
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
            continue  # exited meanwhile
        except OSError:
            walk.denied += 1
        if not wanted:
            break
    return walk


def _linux_listeners(port: int, deadline: float | None) -> ListenerScan:
    table, method = _linux_table()
    mine = [s for s in table if s.port == port]
    walk = _owners_of({s.inode for s in mine if s.inode}, deadline)
    listeners = []
    for s in mine:
        pid = walk.owners.get(s.inode) if s.inode else None
        listeners.append(
            Listener(
                family=s.family,
                address=s.address,
                port=s.port,
                state=s.state,
                inode=s.inode,
                uid=s.uid,
                pid=pid,
                # not found although the walk finished: a process we may not look into has it
                owner_hidden=pid is None and walk.complete,
                v6only=s.v6only,
            )
        )
    note = f"scanned {walk.scanned} processes"
    if walk.denied:
        note += f", {walk.denied} hidden by permissions"
    if method == "procfs":
        note += "; sock_diag unavailable, bound-only sockets may be invisible"
    return ListenerScan(
        port=port,
        listeners=tuple(_sorted(listeners)),
        complete=walk.complete,
        method=method,
        note=note,
        scanned=walk.scanned,
    )


def _sorted(listeners: Iterable[Listener]) -> list[Listener]:
    return sorted(listeners, key=lambda ls: (ls.state != "LISTEN", ls.family, ls.address))


# ---------------------------------------------------------------- portable: psutil, lsof


def _psutil_listeners(port: int) -> ListenerScan:
    """psutil's view; raises psutil.AccessDenied where the OS needs root for it (macOS)."""
    listeners = []
    for conn in psutil.net_connections(kind="tcp"):
        laddr = conn.laddr
        if not laddr or laddr.port != port or conn.raddr:
            continue
        if conn.status == psutil.CONN_LISTEN:
            state = "LISTEN"
        elif conn.status in (psutil.CONN_CLOSE, psutil.CONN_NONE):
            state = "BOUND"
        else:
            continue
        address = _normal(str(laddr.ip))
        listeners.append(
            Listener(
                family="ipv6" if conn.family == socket.AF_INET6 else "ipv4",
                address=address,
                port=port,
                state=state,
                inode=None,
                uid=None,
                pid=conn.pid,
                owner_hidden=conn.pid is None,
            )
        )
    return ListenerScan(port=port, listeners=tuple(_sorted(listeners)), method="psutil")


def lsof_address(name: str, kind: str | None) -> tuple[str, str, int] | None:
    """(family, address, port) of an lsof socket name (`*:3000`, `[::1]:3000`); None if remote."""
    if "->" in name or ":" not in name:
        return None
    host, _, port_text = name.rpartition(":")
    if not port_text.isdigit():
        return None
    family = "ipv6" if (kind or "").upper() == "IPV6" or host.startswith("[") else "ipv4"
    host = host.strip("[]").split("%", 1)[0]
    if host == "*":
        host = "::" if family == "ipv6" else "0.0.0.0"
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        return None
    address = _v6_text(parsed.packed) if parsed.version == 6 else str(parsed)
    return family, address, int(port_text)


def _lsof_listeners(port: int, deadline: float | None) -> ListenerScan:
    from exsa_doctor.oslayer.lsof import run_lsof

    timeout = 5.0 if deadline is None else max(0.1, deadline - time.monotonic())
    records = run_lsof([f"-iTCP:{port}"], timeout=timeout, fields="pcuLftnT")
    listeners = []
    seen: set[tuple[int, str, str]] = set()
    for rec in records:
        parsed = lsof_address(rec.name or "", rec.type)
        if parsed is None or parsed[2] != port:
            continue
        if rec.tcp_state == "LISTEN":
            state = "LISTEN"
        elif rec.tcp_state in ("CLOSED", None):
            state = "BOUND"
        else:
            continue
        key = (rec.pid, parsed[1], state)
        if key in seen:  # one socket shared by several fds of the same process
            continue
        seen.add(key)
        listeners.append(
            Listener(
                family=parsed[0],
                address=parsed[1],
                port=port,
                state=state,
                inode=None,
                uid=rec.uid,
                pid=rec.pid,
            )
        )
    return ListenerScan(
        port=port,
        listeners=tuple(_sorted(listeners)),
        method="lsof",
        note="lsof without root shows only your own processes' sockets",
    )


def _portable_listeners(port: int, deadline: float | None) -> ListenerScan:
    from exsa_doctor.oslayer.lsof import LsofError

    try:
        return _psutil_listeners(port)
    except psutil.AccessDenied:
        pass
    try:
        return _lsof_listeners(port, deadline)
    except LsofError as exc:
        return ListenerScan(
            port=port,
            listeners=(),
            complete=False,
            method="none",
            note=f"psutil needs root here and lsof failed: {exc}",
        )


# ---------------------------------------------------------------- public API


def listeners_of(port: int, deadline: float | None = None) -> ListenerScan:
    """Every TCP socket listening on (or bound to) `port`, with its owner where visible.

    `deadline` is a `time.monotonic()` value; when the owner walk reaches it the scan says
    `complete=False` and the owners not found yet are left as None (not marked hidden).
    """
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not 1-65535")
    if sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd"):
        return _linux_listeners(port, deadline)
    return _portable_listeners(port, deadline)


def listening_ports_of(
    pids: Iterable[int], deadline: float | None = None
) -> dict[int, list[tuple[str, int]]]:
    """What each PID listens on: `{pid: [(address, port), ...]}`; unknown or hidden -> `[]`."""
    wanted = list(dict.fromkeys(pids))
    result: dict[int, list[tuple[str, int]]] = {pid: [] for pid in wanted}
    if not wanted:
        return result
    if sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd"):
        table, _ = _linux_table()
        by_inode = {s.inode: s for s in table if s.state == "LISTEN" and s.inode}
        for pid in wanted:
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                for inode in _socket_inodes_of(pid):
                    sock = by_inode.get(inode)
                    if sock is not None:
                        result[pid].append((sock.address, sock.port))
            except OSError:
                continue
    else:
        for pid in wanted:
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            for conn in conns:
                if conn.status == psutil.CONN_LISTEN and conn.laddr:
                    result[pid].append((_normal(str(conn.laddr.ip)), conn.laddr.port))
    return {pid: sorted(set(addrs), key=lambda a: (a[1], a[0])) for pid, addrs in result.items()}


def resolve_localhost(host: str, timeout: float = 2.0) -> list[str]:
    """The addresses `host` resolves to, in getaddrinfo's order (the order clients try).

    Runs in a daemon thread so a hanging resolver cannot hold the caller past `timeout`;
    an unresolvable host or a timeout gives `[]`.
    """
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return [_normal(host.strip("[]"))]
    box: list[list[str]] = []

    def work() -> None:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            box.append([])
            return
        ordered: list[str] = []
        for info in infos:
            addr = _normal(str(info[4][0]))
            if addr not in ordered:
                ordered.append(addr)
        box.append(ordered)

    thread = threading.Thread(target=work, name="resolve-localhost", daemon=True)
    thread.start()
    thread.join(timeout)
    return box[0] if box else []
