"""`wait` re-decides the engine from what answers (issue 9, item 3), on real sockets.

A small HTTP server in a thread plays an engine the profile did not expect: it answers every
route 200 `{"status":"ok"}` (llama-server's words), with or without llama-server's
`Server: llama.cpp` header. The wait starts with the default profile (exsa-engine, whose ready
word is "healthy") as `--profile auto` leaves it when no process tells.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from exsa_doctor.profiles import load_builtin
from exsa_doctor.supervise.explain import summary
from exsa_doctor.supervise.wait import Outcome, WaitRequest, wait_ready
from exsa_doctor.target import resolve_target


def _server(server_header: str | None) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status":"ok"}'
            self.send_response_only(200)
            if server_header is not None:
                self.send_header("Server", server_header)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def version_string(self) -> str:
            return server_header or "plain"

        def log_message(self, *args: object) -> None:
            return None

    return Handler


def _serve(server_header: str | None) -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), _server(server_header))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def llama_like() -> Iterator[int]:
    yield from _serve("llama.cpp")


@pytest.fixture
def anonymous_ok() -> Iterator[int]:
    yield from _serve(None)


def _wait(port: int, profile: str = "auto", timeout_s: float = 5.0) -> tuple[Outcome, str, str]:
    target = resolve_target(url=f"http://127.0.0.1:{port}", profile=profile, environ={})
    result = wait_ready(WaitRequest(target=target, timeout_s=timeout_s, auto_detect=False))
    final = result.target.profile.name if result.target is not None else "?"
    return result.outcome, final, summary(result)


def test_a_server_header_switches_to_that_engine_and_its_ok_is_ready(llama_like: int) -> None:
    outcome, profile, said = _wait(llama_like)
    assert outcome is Outcome.READY, said
    assert profile == "llama-server"


def test_its_own_words_switch_too_without_a_header(anonymous_ok: int) -> None:
    # {"status":"ok"} is llama-server's ready answer (a status value, not a bare 200)
    outcome, profile, said = _wait(anonymous_ok)
    assert outcome is Outcome.READY, said
    assert profile == "llama-server"


def test_a_profile_the_user_named_is_kept(llama_like: int) -> None:
    outcome, profile, said = _wait(llama_like, profile="exsa-engine", timeout_s=1.0)
    assert outcome is Outcome.TIMEOUT
    assert profile == "exsa-engine"
    # a 200 in another engine's words is not called a slow load
    assert "longer --timeout" not in said
    assert "not in exsa-engine's words" in said and "--profile" in said


def test_default_profile_reason_counts_as_detected() -> None:
    from exsa_doctor.supervise.wait import profile_is_detected

    auto = resolve_target(url="http://127.0.0.1:9", profile="auto", environ={})
    named = resolve_target(url="http://127.0.0.1:9", profile="exsa-engine", environ={})
    assert profile_is_detected(auto)
    assert not profile_is_detected(named)
    custom = replace(
        auto,
        profile=replace(load_builtin("exsa-engine"), source="x (customised on the command line)"),
    )
    assert not profile_is_detected(custom)
