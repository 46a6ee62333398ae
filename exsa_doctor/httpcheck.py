"""Bounded HTTP to the engine: the health request and the client the generation probe streams with.

Every step is bounded: connect and read timeouts, a total wall deadline enforced on every socket
read (a server sending one byte a second cannot keep us), and at most 64 KiB of health body read.
A failure before any HTTP answer is classified (`describe_failure`): refused, timeout (connect,
write or read phase), reset, not HTTP, or another error. `check_health` makes one health
observation; the run's one observation is a shared fact (`facts.health`).
"""

from __future__ import annotations

import errno
import ssl
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from exsa_doctor.parsers.health import (
    MAX_BODY_BYTES,
    HealthAnswer,
    HealthState,
    classify_health,
)
from exsa_doctor.target import Target

CONNECT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 2.0
# Total wall budget of the one health request: connect, headers and body together.
HEALTH_BUDGET_S = 2.5


# --- bounded HTTP -------------------------------------------------------------------------


class ByteCounter:
    """How many bytes the server sent on a connection: tells "closed silently" from "not HTTP"."""

    def __init__(self) -> None:
        self.received = 0
        self.first_bytes = b""


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read and write is cut at one wall deadline.

    httpx's read timeout applies to each read on its own; a server that sends one byte per second
    would never trip it. Capping each operation's timeout by what is left of a total deadline does.
    """

    def __init__(self, inner: httpcore.NetworkStream, deadline: float, counter: ByteCounter):
        self._inner = inner
        self._deadline = deadline
        self._counter = counter

    def _left(self, timeout: float | None, exc: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise exc("the total deadline of the request passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))
        if data and len(self._counter.first_bytes) < 64:
            self._counter.first_bytes += data[: 64 - len(self._counter.first_bytes)]
        self._counter.received += len(data)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, self._left(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(inner, self._deadline, self._counter)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, deadline: float, counter: ByteCounter):
        self._inner = httpcore.SyncBackend()
        self._deadline = deadline
        self._counter = counter

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ConnectTimeout("the total deadline of the request passed")
        stream = self._inner.connect_tcp(
            host,
            port,
            left if timeout is None else min(timeout, left),
            local_address,
            socket_options,
        )
        return _DeadlineStream(stream, self._deadline, self._counter)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not supported here")


def bounded_client(
    deadline: float, *, connect_s: float, read_s: float
) -> tuple[httpx.Client, ByteCounter]:
    """An httpx client whose requests all end by `deadline` (time.monotonic), and its byte count.

    No proxies from the environment (the engine is local; a proxy would answer for it), no
    retries, one connection.
    """
    counter = ByteCounter()
    # verify=False: this transport's own pool (and the TLS context httpx would build for it
    # from the CA bundle) is replaced just below, so loading the bundle is wasted work, and a
    # bundle the user cannot read (PermissionError) would crash every HTTP probe.
    transport = httpx.HTTPTransport(retries=0, trust_env=False, verify=False)
    pool = httpcore.ConnectionPool(
        max_connections=1,
        retries=0,
        network_backend=_DeadlineBackend(deadline, counter),
    )
    # httpx has no public hook for the network backend; the transport's pool is the one seam.
    # Fail loudly (a crashed-probe row) rather than silently lose the total deadline.
    if not hasattr(transport, "_pool"):  # pragma: no cover - guards an httpx upgrade
        raise RuntimeError("this httpx version has no transport pool to bound")
    transport._pool.close()
    transport._pool = pool
    timeout = httpx.Timeout(connect=connect_s, read=read_s, write=read_s, pool=connect_s)
    client = httpx.Client(transport=transport, timeout=timeout, trust_env=False)
    return client, counter


@dataclass(frozen=True)
class TransportFailure:
    """Why a request got no HTTP answer: refused, timeout, reset, not_http or error."""

    kind: str
    phase: str
    reason: str


def _errno_in_chain(exc: BaseException) -> int | None:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    return None


def describe_failure(exc: httpx.HTTPError, counter: ByteCounter) -> TransportFailure:
    """Map an httpx error (before any HTTP status was read) to what it means for an engine."""
    code = _errno_in_chain(exc)
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return TransportFailure("timeout", "connect", "no TCP connection within the timeout")
    if isinstance(exc, httpx.WriteTimeout):
        return TransportFailure("timeout", "write", "could not send the request in time")
    if isinstance(exc, httpx.TimeoutException):
        return TransportFailure("timeout", "read", "no complete answer within the timeout")
    if isinstance(exc, httpx.ConnectError):
        if code == errno.ECONNREFUSED:
            return TransportFailure("refused", "connect", "connection refused")
        if code in (errno.ECONNRESET, errno.ECONNABORTED):
            return TransportFailure("reset", "connect", "connection reset")
        return TransportFailure("error", "connect", f"cannot connect: {text}")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        if counter.received == 0:
            return TransportFailure("reset", "read", "connection closed without an answer")
        return TransportFailure("not_http", "read", "not HTTP")
    return TransportFailure("error", "request", text)


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


def check_health(
    target: Target,
    deadline: float,
    *,
    connect_s: float,
    read_s: float,
    max_bytes: int = MAX_BODY_BYTES,
) -> HealthObservation:
    """One GET of the target's health endpoint, finished by `deadline` (time.monotonic)."""
    url = target.endpoint(target.profile.health.path)
    try:
        client, counter = bounded_client(deadline, connect_s=connect_s, read_s=read_s)
    except httpx.HTTPError as exc:
        return HealthObservation(url, time.time(), "error", 0.0, reason=str(exc))
    # timed from here: building the client (an SSL context) is not the engine's latency
    started_wall = time.time()
    started = time.monotonic()

    def ms() -> float:
        return round((time.monotonic() - started) * 1000.0, 2)

    status: int | None = None
    headers: dict[str, str] = {}
    latency = 0.0
    body = bytearray()
    truncated = False
    try:
        with (
            client,
            client.stream(
                "GET",
                url,
                headers={
                    "Accept": "application/json, text/plain, */*",
                    "Accept-Encoding": "identity",
                },
            ) as resp,
        ):
            status = resp.status_code
            latency = ms()
            headers = {k.lower(): v for k, v in resp.headers.items()}
            declared = _int(headers.get("content-length"))
            for chunk in resp.iter_raw():
                room = max_bytes - len(body)
                body += chunk[:room]
                if len(chunk) > room or (
                    declared is not None and declared > max_bytes and len(body) >= max_bytes
                ):
                    truncated = True
                    break
    except httpx.HTTPError as exc:
        failure = describe_failure(exc, counter)
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
                first_bytes=counter.first_bytes,
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
        answer = classify_health(target.profile.health, status, bytes(body))
        return HealthObservation(
            url,
            started_wall,
            "answered",
            latency,
            answer=answer,
            status_code=status,
            reason=answer.reason,
            body_error=f"connection closed mid-body ({failure.reason})",
            headers=headers,
        )
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
        headers=headers,
    )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
