"""Bounded HTTP to the engine: the health request and the exchange the generation probe streams.

One request per connection, HTTP/1.1, written on the socket module alone (no client library:
an engine on this machine needs none of their pooling, proxies or HTTP/2, and importing one
cost a sixth of `diagnose`'s start-up). Every step is bounded: the connect and each read by
their own timeouts, and all of them by one wall deadline, so a server sending one byte a second
cannot keep us; at most 64 KiB of health body is read, and headers past 16 KiB are not HTTP.

A request that gets no (complete) answer fails with `HTTPFailure`, whose `TransportFailure`
says what that means for an engine: refused, timeout (connect, write or read phase), reset, not
HTTP, or another error. `check_health` makes one health observation; the run's one observation
is a shared fact (`facts.health`).
"""

from __future__ import annotations

import errno
import re
import socket
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from exsa_doctor.parsers.health import (
    MAX_BODY_BYTES,
    HealthAnswer,
    HealthState,
    classify_health,
)
from exsa_doctor.target import Target

if TYPE_CHECKING:
    import ssl

CONNECT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 2.0
# Total wall budget of the one health request: connect, headers and body together.
HEALTH_BUDGET_S = 2.5
MAX_HEAD_BYTES = 16 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?: [^\r\n]*)?")
_HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?")


# --- bounded HTTP -------------------------------------------------------------------------


@dataclass(frozen=True)
class TransportFailure:
    """Why a request got no HTTP answer: refused, timeout, reset, not_http or error."""

    kind: str
    phase: str
    reason: str


class HTTPFailure(Exception):
    """A request that got no (complete) answer; `failure` says what that means for an engine."""

    def __init__(self, failure: TransportFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


def _timed_out(phase: str) -> HTTPFailure:
    reason = {
        "connect": "no TCP connection within the timeout",
        "write": "could not send the request in time",
    }.get(phase, "no complete answer within the timeout")
    return HTTPFailure(TransportFailure("timeout", phase, reason))


class BoundedExchange:
    """One request and its answer on a connection of its own, every step cut at `deadline`.

    `open` connects, sends and reads the status line and headers; `body` yields the body as it
    comes (de-chunked, never content-decoded). Both raise `HTTPFailure`. Use as a context
    manager: the connection is closed on leaving. `sock`, a plain-HTTP connection already made
    (the one `wait` just connected to see the port open), is used instead of connecting again.
    """

    def __init__(
        self,
        target: Target,
        deadline: float,
        *,
        connect_s: float,
        read_s: float,
        sock: socket.socket | None = None,
    ) -> None:
        self.target = target
        self.deadline = deadline  # time.monotonic()
        self.connect_s = connect_s
        self.read_s = read_s
        self.received = 0  # bytes the server sent: tells "closed silently" from "not HTTP"
        self.first_bytes = b""
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self._sock: socket.socket | None = None
        self._given = sock
        self._buffer = b""
        self._eof = False

    def __enter__(self) -> BoundedExchange:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for sock in (self._sock, self._given):
            if sock is not None:
                sock.close()
        self._sock = self._given = None

    # -- steps ------------------------------------------------------------------------------

    def _left(self, phase: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _timed_out(phase)
        return left

    def _connect(self) -> socket.socket:
        target = self.target
        if self._given is not None:
            if target.scheme != "https":
                sock, self._given = self._given, None
                sock.setblocking(True)
                return sock
            self._given.close()  # TLS starts on a connection of its own
            self._given = None
        timeout = min(self.connect_s, self._left("connect"))
        try:
            sock = socket.create_connection((target.host, target.port), timeout=timeout)
        except TimeoutError:
            raise _timed_out("connect") from None
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                failure = TransportFailure("refused", "connect", "connection refused")
            elif exc.errno in (errno.ECONNRESET, errno.ECONNABORTED):
                failure = TransportFailure("reset", "connect", "connection reset")
            else:
                failure = TransportFailure("error", "connect", f"cannot connect: {exc}")
            raise HTTPFailure(failure) from None
        if target.scheme != "https":
            return sock
        try:
            sock.settimeout(min(self.connect_s, self._left("connect")))
            return _tls_context().wrap_socket(sock, server_hostname=target.host)
        except TimeoutError:
            sock.close()
            raise _timed_out("connect") from None
        except OSError as exc:
            sock.close()
            failure = TransportFailure("error", "connect", f"cannot connect: {exc}")
            raise HTTPFailure(failure) from None

    def _recv(self) -> bytes:
        assert self._sock is not None
        self._sock.settimeout(min(self.read_s, self._left("read")))
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            raise _timed_out("read") from None
        except OSError:
            raise self._broken() from None
        if data and len(self.first_bytes) < 64:
            self.first_bytes += data[: 64 - len(self.first_bytes)]
        self.received += len(data)
        return data

    def _broken(self) -> HTTPFailure:
        """The connection ended or broke before the answer was whole."""
        if self.received == 0:
            return HTTPFailure(
                TransportFailure("reset", "read", "connection closed without an answer")
            )
        return HTTPFailure(TransportFailure("not_http", "read", "not HTTP"))

    def _fill(self) -> bool:
        """Read more into the buffer; False at the end of the stream."""
        if self._eof:
            return False
        data = self._recv()
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def open(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, str]]:
        """Connect, send the request, read the answer's status and headers (names lowercased)."""
        self._sock = self._connect()
        target = self.target
        host = f"[{target.host}]" if ":" in target.host else target.host
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{target.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += ["Connection: close", "User-Agent: exsa-doctor"]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        self._sock.settimeout(min(self.read_s, self._left("write")))
        try:
            self._sock.sendall(request)
        except TimeoutError:
            raise _timed_out("write") from None
        except OSError:
            pass  # a server may answer and close before reading it all: read what it said
        while True:
            status, fields = self._read_head()
            if not 100 <= status < 200 or status == 101:
                self.status, self.headers = status, fields
                return status, fields

    def _read_head(self) -> tuple[int, dict[str, str]]:
        while True:
            end = _HEAD_END.search(self._buffer)
            if end is not None:
                break
            if len(self._buffer) > MAX_HEAD_BYTES or not self._fill():
                raise self._broken()
        head, self._buffer = self._buffer[: end.start()], self._buffer[end.end() :]
        lines = head.split(b"\n")
        status = _STATUS_LINE.fullmatch(lines[0].rstrip(b"\r"))
        if status is None:
            raise self._broken()
        fields: dict[str, str] = {}
        for raw in lines[1:]:
            line = _HEADER_LINE.fullmatch(raw.rstrip(b"\r"))
            if line is None:
                raise self._broken()
            name = line[1].decode("ascii").lower()
            value = line[2].decode("latin-1")
            fields[name] = f"{fields[name]}, {value}" if name in fields else value
        return int(status[1]), fields

    def body(self) -> Iterator[bytes]:
        """The body as it arrives: by Content-Length, chunked, or until the server closes."""
        status = self.status
        if status is None or status in (204, 304):
            return
        coding = self.headers.get("transfer-encoding", "").lower()
        if coding.rsplit(",", 1)[-1].strip() == "chunked":
            yield from self._chunked()
            return
        length = self.headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise self._broken()
            yield from self._sized(int(length))
            return
        while self._buffer or self._fill():
            piece, self._buffer = self._buffer, b""
            yield piece

    def _sized(self, length: int) -> Iterator[bytes]:
        while length > 0:
            if not self._buffer and not self._fill():
                raise self._broken()  # closed before the declared length
            piece, self._buffer = self._buffer[:length], self._buffer[length:]
            length -= len(piece)
            yield piece

    def _chunked(self) -> Iterator[bytes]:
        while True:
            line = self._line()
            size = _CHUNK_SIZE.fullmatch(line)
            if size is None:
                raise self._broken()
            count = int(size[1], 16)
            if count == 0:
                return  # trailers are not read: nothing after the last chunk matters here
            yield from self._sized(count)
            if self._line() != b"":
                raise self._broken()

    def _line(self) -> bytes:
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_HEAD_BYTES or not self._fill():
                raise self._broken()
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.rstrip(b"\r")


def _tls_context() -> ssl.SSLContext:
    """TLS without certificate checks: the engine is local, often with a self-made certificate."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _decode_body(raw: bytes, encoding: str, limit: int) -> bytes:
    """Undo gzip/deflate without ever producing more than `limit` bytes (no zip bombs)."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return raw
    if enc in ("gzip", "deflate", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS if "gzip" in enc else zlib.MAX_WBITS
        try:
            return zlib.decompressobj(wbits).decompress(raw, limit + 1)
        except zlib.error:
            return raw
    return raw


# --- the health observation -----------------------------------------------------------------


@dataclass(frozen=True)
class HealthObservation:
    """One health request and what it meant. `outcome`: answered, refused, timeout, reset,
    not_http or error; `answer` is set when an HTTP answer was classified."""

    url: str
    t: float  # wall-clock time the request started
    outcome: str
    latency_ms: float
    answer: HealthAnswer | None = None
    status_code: int | None = None
    phase: str = ""
    timeout_s: float = 0.0
    reason: str = ""
    truncated: bool = False
    body_error: str = ""
    first_bytes: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        # A cut body (over 64 KiB) can still be ready: a body regex matched in the first part,
        # or a profile that asks only for the status code. A cut JSON is BAD_BODY already.
        return (
            self.answer is not None
            and self.answer.state is HealthState.READY
            and not self.body_error
        )

    @property
    def connected(self) -> bool:
        """A TCP connection was made (someone listens), whatever it answered."""
        return self.outcome not in ("refused", "error") and not (
            self.outcome == "timeout" and self.phase == "connect"
        )

    @property
    def label(self) -> str:
        """A one-word state for timelines: refused, timeout, reset, not_http, ready, loading..."""
        if self.outcome != "answered" or self.answer is None:
            return self.outcome
        if self.body_error:
            return "bad_body"
        return self.answer.state.value


def request_path(path: str) -> str:
    """A profile's path as a request target (`/` added when the profile left it out)."""
    return path if path.startswith("/") else "/" + path


def check_health(
    target: Target,
    deadline: float,
    *,
    connect_s: float,
    read_s: float,
    max_bytes: int = MAX_BODY_BYTES,
) -> HealthObservation:
    """One GET of the target's health endpoint, finished by `deadline` (time.monotonic)."""
    path = target.profile.health.path
    url = target.endpoint(path)
    started_wall = time.time()
    started = time.monotonic()

    def ms() -> float:
        return round((time.monotonic() - started) * 1000.0, 2)

    status: int | None = None
    headers: dict[str, str] = {}
    latency = 0.0
    body = bytearray()
    truncated = False
    exchange = BoundedExchange(target, deadline, connect_s=connect_s, read_s=read_s)
    try:
        with exchange:
            status, headers = exchange.open(
                "GET",
                request_path(path),
                {"Accept": "application/json, text/plain, */*", "Accept-Encoding": "identity"},
            )
            latency = ms()
            declared = _int(headers.get("content-length"))
            for chunk in exchange.body():
                room = max_bytes - len(body)
                body += chunk[:room]
                if len(chunk) > room or (
                    declared is not None and declared > max_bytes and len(body) >= max_bytes
                ):
                    truncated = True
                    break
    except HTTPFailure as exc:
        failure = exc.failure
        if status is None:
            timeout_s = 0.0
            if failure.kind == "timeout":
                timeout_s = (
                    connect_s
                    if failure.phase == "connect"
                    else round(time.monotonic() - started, 2)
                )
            return HealthObservation(
                url,
                started_wall,
                failure.kind,
                ms(),
                status_code=None,
                phase=failure.phase,
                timeout_s=timeout_s,
                reason=failure.reason,
                first_bytes=exchange.first_bytes,
            )
        if failure.kind == "timeout":
            # The status line came, the body never finished: a dripping or hung handler.
            return HealthObservation(
                url,
                started_wall,
                "timeout",
                ms(),
                status_code=status,
                phase="read",
                timeout_s=round(time.monotonic() - started, 2),
                reason=f"HTTP {status} but the body did not finish in time",
                headers=headers,
            )
        # the status line came and the body broke off: classify what did arrive, as it came
        body_error = f"connection closed mid-body ({failure.reason})"
        raw = bytes(body)
    else:
        body_error = ""
        raw = _decode_body(bytes(body), headers.get("content-encoding", ""), max_bytes)
    answer = classify_health(target.profile.health, status, raw[:max_bytes])
    return HealthObservation(
        url,
        started_wall,
        "answered",
        latency,
        answer=answer,
        status_code=status,
        reason=answer.reason,
        truncated=truncated,
        body_error=body_error,
        headers=headers,
    )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
