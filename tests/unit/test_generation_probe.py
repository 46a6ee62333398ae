"""The generation probe against real servers: tokens, zero tokens, a stalled stream, 503s."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from exsa_doctor.context import Context
from exsa_doctor.model import Finding
from exsa_doctor.probes.generation import GenerationProbe
from exsa_doctor.target import resolve_target
from tests.support import hostile_server as hs


def make_ctx(
    url: str, *, generate: bool | None = True, profile: str | None = None, seconds: float = 10.0
) -> Context:
    target = resolve_target(url=url, generate=generate, profile=profile, environ={})
    return Context(target=target, deadline=time.monotonic() + seconds)


def generate(url: str, profile: str | None = None, seconds: float = 10.0) -> Finding:
    # `seconds`: the run's deadline, which bounds how long a stalled stream is waited for
    probe = GenerationProbe()
    ctx = make_ctx(url, profile=profile, seconds=seconds)
    assert probe.applies(ctx) is None
    out = probe.run(ctx)
    assert len(out.findings) == 1, [f.id for f in out.findings]
    assert out.timeline and out.timeline[0].event.startswith("generation: ")
    return out.findings[0]


def test_tokens_are_counted_and_timed() -> None:
    with hs.HostileServer({"/v1/generate": hs.exsa_tokens(["Hel", "lo", "!"])}) as srv:
        f = generate(srv.url)
        req = srv.requests[0]
    assert f.id == "generation.ok"
    assert f.data["tokens"] == 3
    assert 0 <= f.data["ttft_ms"] <= f.data["total_ms"]
    assert f.data["complete"] is True
    # the profile's own request went out: POST with exsa's tiny max_tokens
    assert req.method == "POST"
    assert json.loads(req.body)["sampling_params"]["max_tokens"] == 8


def test_zero_tokens() -> None:
    with hs.HostileServer({"/v1/generate": hs.exsa_tokens([])}) as srv:
        f = generate(srv.url)
    assert f.id == "generation.zero_tokens"
    assert f.data["events"] == 1
    assert f.data["total_ms"] >= 0


def test_a_stream_closed_without_any_event_is_zero_tokens() -> None:
    with hs.HostileServer({"/v1/generate": hs.sse([])}) as srv:
        f = generate(srv.url)
    assert f.id == "generation.zero_tokens"
    assert f.data["events"] == 0


def test_stalled_stream() -> None:
    with hs.HostileServer({"/v1/generate": hs.sse([], hang=True)}) as srv:
        f = generate(srv.url, seconds=2.0)
    assert f.id == "generation.stalled"
    assert f.data["tokens"] == 0
    assert f.data["waited_s"] > 0


def test_no_answer_at_all_is_stalled() -> None:
    with hs.HostileServer({"/v1/generate": hs.silence()}) as srv:
        f = generate(srv.url, seconds=2.0)
    assert f.id == "generation.stalled"
    assert f.data["status_code"] is None


@pytest.mark.parametrize(
    ("behaviour", "fid", "code"),
    [
        (hs.json_answer(503, {"error": "Server is at capacity"}), "generation.capacity", 503),
        (hs.json_answer(503, {"error": "No model loaded"}), "generation.no_model", 503),
        (hs.json_answer(500, {"error": "inference failed"}), "generation.http_error", 500),
        (hs.json_answer(400, {"error": "invalid parameters"}), "generation.http_error", 400),
    ],
    ids=["capacity", "no-model", "500", "400"],
)
def test_error_statuses(behaviour: Any, fid: str, code: int) -> None:
    with hs.HostileServer({"/v1/generate": behaviour}) as srv:
        f = generate(srv.url)
    assert f.id == fid
    assert f.data["status_code"] == code
    assert f.data["error"]


def test_error_event_inside_the_stream() -> None:
    with hs.HostileServer({"/v1/generate": hs.sse(['{"error": "model crashed"}'])}) as srv:
        f = generate(srv.url)
    assert f.id == "generation.http_error"
    assert f.data["error"] == "model crashed"


def test_refused_is_an_http_error_without_status() -> None:
    f = generate(f"http://127.0.0.1:{hs.free_port()}")
    assert f.id == "generation.http_error"
    assert f.data["status_code"] is None
    assert "refused" in f.data["error"]


def test_llama_server_completion_json() -> None:
    answer = hs.json_answer(200, {"content": " there", "tokens_predicted": 8, "stop": True})
    with hs.HostileServer({"/completion": answer}) as srv:
        f = generate(srv.url, profile="llama-server")
        body = json.loads(srv.requests[0].body)
    assert f.id == "generation.ok" and f.data["tokens"] == 8
    assert body["n_predict"] == 8


def test_skipped_unless_health_is_ready() -> None:
    port = hs.free_port()
    reason = GenerationProbe().applies(make_ctx(f"http://127.0.0.1:{port}", generate=None))
    assert reason is not None and "refused" in reason
    assert GenerationProbe().applies(make_ctx(f"http://127.0.0.1:{port}", generate=False))
    routes = {"/v1/health": hs.exsa_health(), "/v1/generate": hs.exsa_tokens(["a"])}
    with hs.HostileServer(routes) as srv:
        ctx = make_ctx(srv.url, generate=None)
        probe = GenerationProbe()
        assert probe.applies(ctx) is None
        assert probe.run(ctx).findings[0].id == "generation.ok"
    with hs.HostileServer({"/v1/health": hs.exsa_health(model_loaded=False)}) as srv:
        assert GenerationProbe().applies(make_ctx(srv.url, generate=None)) is not None


def test_an_error_status_whose_body_never_ends_is_an_http_error() -> None:
    def slow_503(conn: Any, req: Any, stop: Any) -> None:
        conn.sendall(hs.head(503, {"Content-Type": "application/json", "Content-Length": "100"}))
        conn.sendall(b'{"error": ')
        stop.wait(60)

    with hs.HostileServer({"/v1/generate": slow_503}) as srv:
        f = generate(srv.url, seconds=2.0)
    assert f.id == "generation.http_error"
    assert f.data["status_code"] == 503
