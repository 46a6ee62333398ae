"""How `wait` asks whether the engine is ready: the kernel's socket table, a connect, one GET.

Cheap and prompt, because `wait` asks every 30 ms for as long as a model takes to load:

- `ListenWatch`: for a loopback target on Linux, whether anything listens on the port, from the
  kernel's socket table (`oslayer.sockets.SockDiag`, kept open): about half the CPU of a refused
  TCP connect, and no RST to process.
- `try_connect`: a plain TCP connect (a blocking one on loopback, bounded by SO_SNDTIMEO).
- `get_health`: one HTTP GET of the profile's health path over the socket that just connected
  (`httpcheck.BoundedExchange`, no second connect), at most `MAX_BODY_BYTES` of body.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

from exsa_doctor.httpcheck import BoundedExchange, HTTPFailure, request_path
from exsa_doctor.oslayer.sockets import SockDiag
from exsa_doctor.parsers.health import MAX_BODY_BYTES
from exsa_doctor.target import Target

_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY}
_BLOCKING_CONNECT = sys.platform.startswith("linux")
_MAX_DIAG_SOCKETS = 2000  # past this many listeners a connect is the cheaper question


def resolve(host: str, port: int) -> list[tuple[int, Any]]:
    """(family, sockaddr) for every address `host` resolves to, in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    seen: list[tuple[int, Any]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if (family, sockaddr) not in seen:
            seen.append((family, sockaddr))
    return seen


def _timeval(seconds: float) -> bytes:
    whole = int(max(0.0, seconds))
    micro = int((max(0.0, seconds) - whole) * 1_000_000)
    return struct.pack("@ll", whole, max(micro, 1 if whole == 0 else 0))


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def try_connect(
    addrs: Sequence[tuple[int, Any]], timeout_s: float
) -> tuple[socket.socket | None, str]:
    """A connected socket to the first address that accepts, or None and why not."""
    reason = "no address"
    for family, sockaddr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # A loopback connect is answered (SYN-ACK or RST) before connect() returns, so on
            # Linux it may block: that saves the poll and the SO_ERROR read, a third of the CPU
            # per try. SO_SNDTIMEO bounds it (Linux applies it to connect) should the SYN be
            # dropped by a full accept queue; the timeout then shows as EINPROGRESS.
            blocking = _BLOCKING_CONNECT and _is_loopback(sockaddr[0])
            if blocking:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout_s))
            sock.setblocking(blocking)
            rc = sock.connect_ex(sockaddr)
            if rc in _IN_PROGRESS and blocking:
                reason = "connect timed out"
                sock.close()
                continue
            if rc in _IN_PROGRESS:
                _, writable, _ = select.select([], [sock], [], timeout_s)
                if not writable:
                    reason = "connect timed out"
                    sock.close()
                    continue
                rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if rc == 0:
                return sock, ""
            reason = os.strerror(rc).lower()
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
        sock.close()
    return None, reason


class ListenWatch:
    """Is anything listening on a local port? Asked of the kernel's socket table (Linux).

    One sock_diag request per question on a netlink socket kept open. Any trouble (no netlink,
    a huge socket table) switches it off for good and callers connect instead.
    """

    def __init__(self, addrs: Sequence[tuple[int, Any]]) -> None:
        # an IPv4 client is also served by a dual-stack IPv6 listener ("::"), so ask both
        families: list[int] = []
        if any(fam == socket.AF_INET for fam, _ in addrs):
            families.append(socket.AF_INET)
        families.append(socket.AF_INET6)
        self.families = families
        local = all(_is_loopback(str(sa[0])) for _, sa in addrs)
        self.usable = bool(addrs) and local and sys.platform.startswith("linux")
        self._diag = SockDiag()

    def listening(self, port: int) -> bool | None:
        """True/False from the kernel, or None when the kernel cannot be asked."""
        if not self.usable:
            return None
        try:
            return self._diag.listens_on(self.families, port, _MAX_DIAG_SOCKETS)
        except (OSError, ValueError):
            self.close()
            self.usable = False
            return None

    def close(self) -> None:
        self._diag.close()


def get_health(
    target: Target, sock: socket.socket | None, timeout_s: float
) -> tuple[int, bytes, str] | str:
    """One GET of the profile's health path: (status, body, Server header) or an error text.

    Plain HTTP reuses `sock` (already connected by `try_connect`); HTTPS opens its own.
    """
    deadline = time.monotonic() + timeout_s
    exchange = BoundedExchange(target, deadline, connect_s=timeout_s, read_s=timeout_s, sock=sock)
    try:
        with exchange:
            status, headers = exchange.open(
                "GET", request_path(target.profile.health.path), {"Accept": "application/json"}
            )
            body = b""
            for chunk in exchange.body():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    break
    except HTTPFailure as exc:
        return f"no HTTP answer: {exc.failure.reason}"
    return status, body[: MAX_BODY_BYTES + 1], headers.get("server", "")
