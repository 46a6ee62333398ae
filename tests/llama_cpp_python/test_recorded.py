"""The llama-cpp-python profile on material captured from the real server (no build needed).

fixtures/engines/llama-cpp-python/ holds the logs and answers of version 0.3.36 (SOURCES.md says
how each was made). These tests pin what the profile reads from them, so a profile edit that
stops matching the real wording fails here, on any machine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from exsa_doctor.detect import profile_from_log
from exsa_doctor.parsers.health import HealthState, classify_health
from exsa_doctor.parsers.logs import parse_log
from exsa_doctor.parsers.sse import GenerationDecoder
from exsa_doctor.profiles import all_builtin, load_builtin

HERE = Path(__file__).resolve().parents[2] / "fixtures" / "engines"
FIXTURES = HERE / "llama-cpp-python"
LCP = load_builtin("llama-cpp-python")
LOGS = ("healthy.log", "bind-failed.log", "model-missing.log", "model-truncated.log")


def text_of(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def hits(name: str) -> dict[str, list[re.Match[str]]]:
    """Marker name -> its matches in the fixture (only markers that matched)."""
    lines = text_of(name).splitlines()
    found: dict[str, list[re.Match[str]]] = {}
    for marker, rx in LCP.compiled_markers().items():
        matches = [m for line in lines if (m := rx.search(line))]
        if matches:
            found[marker] = matches
    return found


def responses() -> dict[str, Any]:
    data = json.loads((FIXTURES / "responses.json").read_text(encoding="utf-8"))
    return dict(data["responses"])


def test_healthy_log_reads_as_one_clean_start_in_order() -> None:
    found = hits("healthy.log")
    assert len(found["start"]) == 1
    assert found["model_loading"][0].group("path") == "/tmp/lcp-cap/tiny.gguf"
    (listening,) = found["listening"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", listening.group("address"))
    for fatal in ("bind_failed", "model_error", "oom", "mmap_failed", "panic"):
        assert fatal not in found, (fatal, [m.string for m in found[fatal]])
    lines = text_of("healthy.log").splitlines()
    markers = LCP.compiled_markers()

    def first(name: str) -> int:
        return next(i for i, line in enumerate(lines) if markers[name].search(line))

    assert first("start") == first("model_loading") < first("model_loaded") < first("listening")
    assert first("listening") < first("shutdown")


def test_healthy_log_parses_to_one_run_that_listens() -> None:
    report = parse_log(text_of("healthy.log").encode(), LCP)
    assert report.timestamp_format == "none"
    (run,) = report.runs
    assert run.bind_failure is None and not run.fatal
    assert [e.marker for e in run.events if e.marker == "listening"] == ["listening"]


def test_bind_failure_names_host_port_and_errno() -> None:
    report = parse_log(text_of("bind-failed.log").encode(), LCP)
    failure = report.bind_failure
    assert failure is not None
    assert (failure.host, failure.port, failure.errno) == ("127.0.0.1", 46109, 98)
    assert "address already in use" in failure.line
    # it loaded the model first (load-then-bind), and never listened
    found = hits("bind-failed.log")
    assert "model_loaded" in found and "listening" not in found and "model_error" not in found


def test_missing_model_is_the_traceback_s_value_error() -> None:
    found = hits("model-missing.log")
    (error,) = found["model_error"]
    assert error.group("path") == "/tmp/lcp-cap/no-such-model.gguf"
    assert "panic" in found  # the traceback header
    # the check is Python's own, before llama.cpp opens anything
    assert "model_loading" not in found and "listening" not in found


def test_truncated_model_names_llama_cpp_s_reason_first() -> None:
    report = parse_log(text_of("model-truncated.log").encode(), LCP)
    errors = [e for e in report.events if e.marker == "model_error"]
    assert "not within the file bounds" in errors[0].groups["reason"]
    assert errors[-1].line.startswith("ValueError: Failed to load model from file: ")
    assert errors[-1].groups["file"] == "/tmp/lcp-cap/truncated.gguf"


@pytest.mark.parametrize("name", ["healthy.log", "bind-failed.log", "model-missing.log"])
def test_detected_from_its_log(name: str) -> None:
    found = profile_from_log(text_of(name), list(all_builtin()))
    assert found is not None and found[0].name == "llama-cpp-python", found


def test_truncated_model_log_alone_is_no_evidence_for_any_engine() -> None:
    """Its one llama-cpp-python line (`ValueError: Failed to load model from file`) is a model
    error, and llama.cpp's `error loading model` line before it is every llama.cpp engine's: one
    kind of line each, a tie, which detection counts as nothing rather than a wrong engine."""
    assert profile_from_log(text_of("model-truncated.log"), list(all_builtin())) is None


@pytest.mark.parametrize(
    ("engine", "name"),
    [
        ("vllm", "bind-failed.log"),
        ("vllm", "start.log"),
        ("llama-server", "model-truncated.log"),
        ("llama-server", "healthy.log"),
    ],
)
def test_other_engines_logs_are_not_taken_for_it(engine: str, name: str) -> None:
    """vLLM shares uvicorn's lines and llama-server llama.cpp's: neither log may read as ours."""
    text = (HERE / engine / name).read_text(encoding="utf-8")
    found = profile_from_log(text, list(all_builtin()))
    assert found is not None and found[0].name == engine, found


def test_models_route_is_the_readiness_check() -> None:
    recorded = responses()
    ready = recorded["ready_GET_/v1/models"]
    answer = classify_health(LCP.health, ready["status"], json.dumps(ready["body"]).encode())
    assert answer.state is HealthState.READY
    missing = recorded["ready_GET_/health"]
    assert missing["status"] == 404  # there is no /health: the profile must not ask for it
    assert LCP.health.path == "/v1/models"
    # while loading and while hung, nothing answers at all: load-then-bind
    assert recorded["while_loading_GET_/v1/models"]["status"] is None
    assert LCP.bind_order == "load-then-bind"


def test_completion_answer_counts_its_tokens() -> None:
    completion = responses()["POST_/v1/completions"]
    assert json.loads(LCP.generation.body) == completion["request"]
    decoder = GenerationDecoder(LCP.generation.kind, "application/json")
    decoder.feed(json.dumps(completion["body"]).encode())
    decoder.close()
    assert completion["body"]["usage"]["completion_tokens"] == 8
    assert decoder.tally.reported == 8 and decoder.tally.tokens == 8


def test_process_match_and_flags() -> None:
    exe = "/root/.cache/exsa-doctor/llama-cpp-python-0.3.36/venv/bin/python"
    argv = [exe, "-m", "llama_cpp.server", "--model", "/m.gguf", "--host", "0.0.0.0"]
    argv += ["--port=8011"]
    assert LCP.matches_process("python", exe, argv)
    assert LCP.port_from({}, argv) == 8011
    assert LCP.model_from({}, argv) == "/m.gguf" and LCP.host_from({}, argv) == "0.0.0.0"
    # the port, host and model its __main__ and settings read from the environment
    env = {"PORT": "8123", "HOST": "127.0.0.1", "MODEL": "/env.gguf"}
    bare = [exe, "-m", "llama_cpp.server"]
    assert LCP.port_from(env, bare) == 8123 and LCP.model_from(env, bare) == "/env.gguf"
    assert LCP.port_from({}, bare) is None and LCP.default_port == 8000
    uv = ["/usr/bin/python3", "/v/bin/uvicorn", "--factory", "llama_cpp.server.app:create_app"]
    assert LCP.matches_process("uvicorn", "/usr/bin/python3.11", uv)
    for other in (
        ["vim", "llama_cpp/server/app.py"],
        ["/usr/bin/python3", "-m", "pytest", "tests/test_llama_cpp_server.py"],
        ["/usr/bin/python3", "-m", "llama_cpp.server_tools"],
        ["/usr/bin/python3", "-m", "vllm.entrypoints.openai.api_server", "--port", "8000"],
    ):
        assert not LCP.matches_process(other[0], other[0], other), other
