"""The bounded HTTP exchange on real sockets: framings, a body cut short, a head that never ends."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from exsa_doctor.httpcheck import BoundedExchange, HTTPFailure, check_health
from exsa_doctor.target import resolve_target
from tests.support import hostile_server as hs

HEALTHY = b'{"status": "healthy", "model_loaded": true}'


def raw(payload: bytes) -> hs.Behaviour:
    def run(conn: socket.socket, req: hs.Request, stop: threading.Event) -> None:
        conn.sendall(payload)

    return run


def health_of(payload: bytes) -> tuple[str, str, str]:
    """(outcome, state or '', body error) of one health check against a server sending this."""
    with hs.HostileServer({"*": raw(payload)}) as srv:
        target = resolve_target(url=srv.url, environ={})
        obs = check_health(target, time.monotonic() + 5, connect_s=1.0, read_s=2.0)
    return obs.outcome, obs.answer.state.value if obs.answer else "", obs.body_error


def chunked(body: bytes, *, newline: bytes = b"\r\n") -> bytes:
    head = newline.join([b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"", b""])
    half = len(body) // 2
    chunks = [body[:half], body[half:]]
    out = b"".join(b"%x;ext=1" % len(c) + newline + c + newline for c in chunks)
    return head + out + b"0" + newline + newline


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_a_chunked_body_is_put_together(newline: bytes) -> None:
    assert health_of(chunked(HEALTHY, newline=newline)) == ("answered", "ready", "")


def test_an_informational_answer_is_skipped() -> None:
    final = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(HEALTHY) + HEALTHY
    assert health_of(b"HTTP/1.1 100 Continue\r\n\r\n" + final) == ("answered", "ready", "")


def test_a_body_cut_short_of_its_length_is_said_so() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + HEALTHY
    outcome, _state, error = health_of(cut)
    assert outcome == "answered" and error == "connection closed mid-body (not HTTP)"


def test_a_broken_chunk_size_is_not_http() -> None:
    broken = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + HEALTHY
    assert health_of(broken)[2] == "connection closed mid-body (not HTTP)"


def test_a_head_that_never_ends_is_not_http() -> None:
    endless = b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * 40_000 + b"\r\n"
    assert health_of(endless)[0] == "not_http"


def test_a_status_line_that_is_not_http_is_not_http() -> None:
    assert health_of(b"HTTP/9 OK\r\n\r\n")[0] == "not_http"


def test_a_post_carries_its_body_and_length() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with hs.HostileServer({"*": raw(answer)}) as srv:
        target = resolve_target(url=srv.url, environ={})
        with BoundedExchange(target, time.monotonic() + 5, connect_s=1, read_s=2) as ex:
            status, _headers = ex.open("POST", "/v1/generate", {}, b'{"prompt": "x"}')
            assert (status, b"".join(ex.body())) == (200, b"ok")
    (req,) = srv.requests
    assert (req.method, req.path, req.body) == ("POST", "/v1/generate", b'{"prompt": "x"}')
    assert req.headers["content-length"] == "15" and req.headers["connection"] == "close"


def test_a_passed_deadline_is_a_connect_timeout() -> None:
    target = resolve_target(url=f"http://127.0.0.1:{hs.free_port()}", environ={})
    with pytest.raises(HTTPFailure) as err:
        BoundedExchange(target, time.monotonic() - 1, connect_s=1, read_s=1).open("GET", "/", {})
    assert (err.value.failure.kind, err.value.failure.phase) == ("timeout", "connect")
