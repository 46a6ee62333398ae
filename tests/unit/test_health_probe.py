"""The health probe against real misbehaving servers on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from exsa_doctor.context import Context
from exsa_doctor.facts import health as observe_health
from exsa_doctor.model import Finding
from exsa_doctor.probes.health import HealthProbe
from exsa_doctor.target import resolve_target
from tests.support import hostile_server as hs


def make_ctx(url: str, profile: str | None = None, seconds: float = 10.0) -> Context:
    target = resolve_target(url=url, profile=profile, environ={})
    return Context(target=target, deadline=time.monotonic() + seconds)


def run_health(url: str, profile: str | None = None) -> tuple[list[Finding], Any]:
    ctx = make_ctx(url, profile)
    out = HealthProbe().run(ctx)
    return out.findings, out


def only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, [f.id for f in findings]
    return findings[0]


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[hs.HostileServer]:
    routes, raw = request.param
    srv = hs.HostileServer(routes, raw=raw)
    with srv:
        yield srv


def test_healthy_exsa_engine_is_ok_with_body_fields() -> None:
    with hs.HostileServer({"/v1/health": hs.exsa_health()}) as srv:
        findings, out = run_health(srv.url)
    f = only(findings)
    assert f.id == "health.ok"
    assert f.data["status_code"] == 200
    assert f.data["body"]["status"] == "healthy"
    assert f.data["body"]["model_loaded"] is True
    assert f.data["latency_ms"] >= 0
    assert [e.event for e in out.timeline] == ["health: ready"]
    assert out.timeline[0].source == "probe"
    assert out.timeline[0].kind.value == "observation"


def test_refused_when_nothing_listens() -> None:
    port = hs.free_port()
    f = only(run_health(f"http://127.0.0.1:{port}")[0])
    assert f.id == "health.refused"
    assert f.data["url"] == f"http://127.0.0.1:{port}/v1/health"
    assert "latency_ms" in f.data


def test_invalid_json_is_a_bad_body() -> None:
    with hs.HostileServer({"*": hs.respond(200, b"{not json")}) as srv:
        f = only(run_health(srv.url)[0])
    assert f.id == "health.bad_body"
    assert "not a JSON object" in f.data["reason"]


def test_fifty_megabytes_are_not_read() -> None:
    sent: list[int] = []
    with hs.HostileServer({"*": hs.huge(sent=sent)}) as srv:
        ctx = make_ctx(srv.url)
        obs = observe_health(ctx)
        out = HealthProbe().run(ctx)
        assert hs.wait_until(lambda: bool(sent), timeout=10)
    assert obs.truncated
    f = only(out.findings)
    assert f.id == "health.bad_body"
    assert "oversized" in f.data["reason"]
    # the client hung up long before the 50 MB were through
    assert sent[0] < 50 * 1024 * 1024


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "headers"])
def test_a_server_dripping_a_byte_a_second_times_out(headers_too: bool) -> None:
    # Each byte comes well inside the 2 s read timeout: only the total deadline can end this.
    with hs.HostileServer({"*": hs.drip(headers_too=headers_too, interval=1.0)}) as srv:
        ctx = make_ctx(srv.url)
        out = HealthProbe().run(ctx)
    f = only(out.findings)
    assert f.id == "health.timeout"
    assert f.data["phase"] == "read"
    assert f.data["status_code"] == (None if headers_too else 200)
    assert out.timeline[0].event == "health: timeout"


def test_silence_after_the_request_times_out_in_the_read_phase() -> None:
    with hs.HostileServer({"*": hs.silence()}) as srv:
        f = only(run_health(srv.url)[0])
    assert f.id == "health.timeout"
    assert f.data["phase"] == "read"


def test_not_http_is_a_bad_body_saying_so() -> None:
    with hs.HostileServer({}, raw=hs.garbage()) as srv:
        f = only(run_health(srv.url)[0])
    assert f.id == "health.bad_body"
    assert f.data["reason"] == "not HTTP"
    assert f.data["first_bytes"].startswith("SSH-2.0")


@pytest.mark.parametrize("behaviour", [hs.close_silently, hs.reset], ids=["fin", "rst"])
def test_closed_without_an_answer_is_a_reset(behaviour: Any) -> None:
    with hs.HostileServer({"*": behaviour()}) as srv:
        f = only(run_health(srv.url)[0])
    assert f.id == "health.reset"


def test_llama_server_loading_503() -> None:
    with hs.HostileServer({"/health": hs.llama_loading()}) as srv:
        f = only(run_health(srv.url, profile="llama-server")[0])
    assert f.id == "health.loading"
    assert f.data["status_code"] == 503


def test_llama_server_ready() -> None:
    with hs.HostileServer({"/health": hs.json_answer(200, {"status": "ok"})}) as srv:
        f = only(run_health(srv.url, profile="llama-server")[0])
    assert f.id == "health.ok"


def test_ollama_is_ready_by_its_body_text() -> None:
    ok = hs.respond(200, b"Ollama is running", "text/plain")
    with hs.HostileServer({"/": ok}) as srv:
        assert only(run_health(srv.url, profile="ollama")[0]).id == "health.ok"
    with hs.HostileServer({"/": hs.respond(200, b"hello", "text/plain")}) as srv:
        assert only(run_health(srv.url, profile="ollama")[0]).id == "health.bad_body"


@pytest.mark.parametrize(
    ("behaviour", "fid"),
    [
        (hs.json_answer(503, {"error": "Server is at capacity"}), "health.overloaded"),
        (hs.exsa_health(status="overloaded"), "health.overloaded"),
        (hs.exsa_health(model_loaded=False), "health.model_not_loaded"),
        (hs.exsa_health(status="shutting_down"), "health.bad_body"),
        (hs.json_answer(500, {"error": "inference failed"}), "health.http_error"),
        (hs.json_answer(200, {"version": "0.1.0"}), "health.bad_body"),
    ],
    ids=["503-capacity", "overloaded", "no-model", "shutting-down", "500", "no-status"],
)
def test_exsa_answers_by_their_meaning(behaviour: Any, fid: str) -> None:
    with hs.HostileServer({"/v1/health": behaviour}) as srv:
        f = only(run_health(srv.url)[0])
    assert f.id == fid


def test_http_error_carries_status_and_reason() -> None:
    with hs.HostileServer({"/v1/health": hs.json_answer(500, {"error": "boom"})}) as srv:
        f = only(run_health(srv.url)[0])
    assert f.data == {"status_code": 500, "reason": "HTTP 500: boom"}


def test_observation_is_memoised_one_request_for_all_probes() -> None:
    with hs.HostileServer({"/v1/health": hs.exsa_health()}) as srv:
        ctx = make_ctx(srv.url)
        first = observe_health(ctx)
        HealthProbe().run(ctx)
        again = observe_health(ctx)
        assert first is again
        assert len(srv.requests) == 1
        assert srv.requests[0].method == "GET" and srv.requests[0].path == "/v1/health"


def test_connect_phase_timeout_when_the_backlog_is_full() -> None:
    # A listener that never accepts, its backlog filled: further SYNs are dropped.
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(0)
        port = lsock.getsockname()[1]
        for _ in range(8):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            fillers.append(s)
            s.connect_ex(("127.0.0.1", port))
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", port))
            full = False
        except (TimeoutError, BlockingIOError):
            full = True
        finally:
            probe.close()
        if not full:
            pytest.skip("this kernel accepts more connections than the backlog says")
        f = only(run_health(f"http://127.0.0.1:{port}")[0])
        assert f.id == "health.timeout"
        assert f.data["phase"] == "connect"
    finally:
        for s in fillers:
            s.close()
        lsock.close()


def test_a_gzip_body_sent_anyway_is_decoded_within_the_cap() -> None:
    import gzip
    import json

    def gz(conn: Any, req: Any, stop: Any) -> None:
        body = gzip.compress(json.dumps({"status": "healthy", "model_loaded": True}).encode())
        headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Content-Length": str(len(body)),
        }
        conn.sendall(hs.head(200, headers) + body)

    def bomb(conn: Any, req: Any, stop: Any) -> None:
        # 20 MB of spaces in a few KB: decoding must stop at the cap, and not call it JSON
        body = gzip.compress(b"{" + b" " * (20 * 1024 * 1024) + b"}")
        headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Content-Length": str(len(body)),
        }
        conn.sendall(hs.head(200, headers) + body)

    with hs.HostileServer({"/v1/health": gz}) as srv:
        assert only(run_health(srv.url)[0]).id == "health.ok"
        assert srv.requests[0].headers["accept-encoding"] == "identity"
    with hs.HostileServer({"/v1/health": bomb}) as srv:
        assert only(run_health(srv.url)[0]).id == "health.bad_body"
