"""A small, real TCP/HTTP server that misbehaves on purpose, for probe tests.

Listens on 127.0.0.1 on an ephemeral port, in threads of the test process (`HostileServer`), or
as its own process (`python tests/support/hostile_server.py --mode exsa-healthy --port N
--delay S`) when a test needs a PID that becomes ready later. Stdlib only.

Each route is a behaviour: a function `(conn, request, stop)` that writes whatever it likes on the
raw socket: well-formed JSON, invalid JSON, 50 MB, one byte a second, garbage that is not HTTP,
a reset, a 503, an SSE stream with tokens, with none, or one that stalls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    method: str = ""
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Behaviour = Callable[[socket.socket, Request, threading.Event], None]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def read_request(conn: socket.socket, limit: int = 64 * 1024) -> Request:
    """Read one request (head and Content-Length body), bounded in bytes and time."""
    conn.settimeout(3.0)
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ") if lines and lines[0] else []
    req = Request(method=parts[0] if parts else "", path=parts[1] if len(parts) > 1 else "")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        req.headers[name.strip().lower()] = value.strip()
    length = int(req.headers.get("content-length", "0") or 0)
    body = rest
    while len(body) < min(length, limit):
        chunk = conn.recv(4096)
        if not chunk:
            break
        body += chunk
    req.body = body
    return req


def head(status: int, headers: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- behaviours -----------------------------------------------------------------------------


def respond(status: int, body: bytes, content_type: str = "application/json") -> Behaviour:
    def run(conn: socket.socket, req: Request, stop: threading.Event) -> None:
        conn.sendall(
            head(
                status,
                {
                    "Content-Type": content_type,
                    "Content-Length": str(len(body)),
                    "Connection": "close",
                },
            )
            + body
        )

    return run


def json_answer(status: int, obj: Any) -> Behaviour:
    return respond(status, json.dumps(obj).encode())


def exsa_health(status: str = "healthy", model_loaded: bool = True) -> Behaviour:
    return json_answer(
        200,
        {
            "status": status,
            "version": "0.1.0",
            "model_loaded": model_loaded,
            "model_path": "/models/m.gguf",
            "context_size": 4096,
            "gpu_layers": 0,
            "active_requests": 0,
            "queue_size": 0,
            "queue_capacity": 16,
            "uptime_seconds": 5,
        },
    )


def llama_loading() -> Behaviour:
    return json_answer(
        503, {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
    )


def huge(total: int = 50 * 1024 * 1024, sent: list[int] | None = None) -> Behaviour:
    """A 200 whose body is `total` bytes (sent until done, the client leaves, or stop).

    `sent`, when given, receives the number of body bytes the client accepted before leaving.
    """

    def run(conn: socket.socket, req: Request, stop: threading.Event) -> None:
        conn.sendall(head(200, {"Content-Type": "application/json", "Content-Length": str(total)}))
        block = b"[" * 65536
        count = 0
        try:
            while count < total and not stop.is_set():
                conn.sendall(block[: total - count])
                count += len(block[: total - count])
        finally:
            if sent is not None:
                sent.append(count)

    return run


def drip(*, headers_too: bool = False, interval: float = 1.0) -> Behaviour:
    """One byte per `interval`: of the body (after full headers), or of the headers as well."""

    def run(conn: socket.socket, req: Request, stop: threading.Event) -> None:
        whole = head(200, {"Content-Type": "application/json", "Content-Length": "1000"})
        if not headers_too:
            conn.sendall(whole)
            whole = b"{" + b" " * 998 + b"}"
        for i in range(len(whole)):
            conn.sendall(whole[i : i + 1])
            if stop.wait(interval):
                return

    return run


def garbage() -> Behaviour:
    """Something that is not HTTP at all, then close (another kind of server on the port)."""

    def run(conn: socket.socket, req: Request, stop: threading.Event) -> None:
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02 not http at all\r\n")

    return run


def close_silently() -> Behaviour:
    """Read the request, then close without a word (FIN)."""

    def run(conn: socket.socket, req: Request, stop: threading.Event) -> None:
        return None

    return run


def reset() -> Behaviour:
    """Read the request, then abort the connection (RST)."""

    def run(conn: socket.socket, req: Request, stop: threading.Event) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return run


def silence() -> Behaviour:
    """Read the request and never answer (until the server stops)."""

    def run(conn: socket.socket, req: Request, stop: threading.Event) -> None:
        stop.wait(60)

    return run


def sse(
    datas: list[str],
    *,
    hang: bool = False,
    interval: float = 0.0,
    content_type: str = "text/event-stream",
    status: int = 200,
) -> Behaviour:
    """An event stream: one `data:` event per item, then close, or hang open (`hang`)."""

    def run(conn: socket.socket, req: Request, stop: threading.Event) -> None:
        conn.sendall(
            head(
                status,
                {"Content-Type": content_type, "Cache-Control": "no-cache", "Connection": "close"},
            )
        )
        for data in datas:
            conn.sendall(f"data: {data}\n\n".encode())
            if interval and stop.wait(interval):
                return
        if hang:
            stop.wait(60)

    return run


def exsa_tokens(tokens: list[str]) -> Behaviour:
    datas = [json.dumps({"token": t, "done": False}) for t in tokens]
    return sse([*datas, json.dumps({"token": "", "done": True})])


# --- the server -----------------------------------------------------------------------------


class HostileServer:
    """A threaded server; `routes` maps a path (or "*") to a behaviour. Use as a context manager."""

    def __init__(
        self, routes: Mapping[str, Behaviour], *, raw: Behaviour | None = None, port: int = 0
    ):
        self.routes = dict(routes)
        self.raw = raw  # acts before reading any request (garbage banners)
        self.stop_event = threading.Event()
        self.requests: list[Request] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        for s in [self._sock, *self._conns]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._thread.join(5)

    def _accept_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.raw is not None:
                self.raw(conn, Request(), self.stop_event)
                return
            req = read_request(conn)
            self.requests.append(req)
            behaviour = self.routes.get(req.path) or self.routes.get("*")
            if behaviour is None:
                behaviour = json_answer(404, {"error": "not found"})
            behaviour(conn, req, self.stop_event)
        except OSError:
            pass  # the client went away: part of the game
        finally:
            with contextlib.suppress(OSError):
                conn.close()


def free_port() -> int:
    """A port nothing listens on right now (bound to 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main(argv: list[str] | None = None) -> int:
    """Run as a process: wait `--delay` seconds (a loading engine), then serve exsa-healthy."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--mode", choices=["exsa-healthy"], default="exsa-healthy")
    args = parser.parse_args(argv)
    time.sleep(args.delay)
    server = HostileServer(
        {"/v1/health": exsa_health(), "/v1/generate": exsa_tokens(["Hi"])}, port=args.port
    )
    print("listening", flush=True)
    with server:
        server.stop_event.wait(120)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --- child processes for tests ----------------------------------------------------------------


class Children:
    """Child processes a test starts; `stop_all` kills and reaps each one by its own PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def python(self, code: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def script(self, path: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, path, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()


def wait_line(proc: subprocess.Popen[bytes], expected: bytes, timeout: float = 20.0) -> None:
    """Block until the child prints a line starting with `expected` (or fail after `timeout`)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child {proc.pid} exited before printing {expected!r}")
        if line.startswith(expected):
            return
    raise AssertionError(f"child {proc.pid} did not print {expected!r} in {timeout} s")


def wait_until(check: Callable[[], bool], timeout: float = 20.0, every: float = 0.02) -> bool:
    """Poll `check` until it holds or `timeout` passes; the result says which."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()
