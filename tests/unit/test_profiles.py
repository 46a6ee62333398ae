"""Engine profiles against what the engines really print and answer.

llama-server: material captured live from the real server (fixtures/engines/llama-server/,
build 11434). Ollama and vLLM: no server can be run here, so their material is rebuilt from their
public sources (fixtures/engines/{ollama,vllm}/SOURCES.md says from where). Each test reads the
recorded bytes and checks the profile's regexes and health meaning on them.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from exsa_doctor.detect import profile_from_log, refine_target
from exsa_doctor.parsers.health import HealthState, classify_health
from exsa_doctor.parsers.sse import GenerationDecoder
from exsa_doctor.profiles import (
    Profile,
    ProfileError,
    all_builtin,
    load_builtin,
    profile_from_mapping,
)
from exsa_doctor.target import resolve_target

ENGINES = Path(__file__).resolve().parents[2] / "fixtures" / "engines"


def lines_of(engine: str, name: str) -> list[str]:
    return (ENGINES / engine / name).read_text(encoding="utf-8").splitlines()


def responses(engine: str) -> dict[str, Any]:
    data = json.loads((ENGINES / engine / "responses.json").read_text(encoding="utf-8"))
    return dict(data["responses"])


def hits(profile: Profile, lines: list[str]) -> dict[str, list[re.Match[str]]]:
    """Marker name -> the matches in `lines` (only markers that matched)."""
    found: dict[str, list[re.Match[str]]] = {}
    for name, rx in profile.compiled_markers().items():
        matches = [m for line in lines if (m := rx.search(line))]
        if matches:
            found[name] = matches
    return found


# ------------------------------------------------------------------ llama-server (live capture)

LLAMA = load_builtin("llama-server")


def test_llama_server_healthy_log_reads_as_one_clean_start() -> None:
    found = hits(LLAMA, lines_of("llama-server", "healthy.log"))
    assert len(found["start"]) == 1
    assert found["model_loading"][0].group("path") == "/tmp/tiny.gguf"
    assert "model_loaded" in found
    (listening,) = found["listening"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", listening.group("address"))
    for fatal in ("bind_failed", "model_error", "oom", "mmap_failed", "panic", "zero_tokens"):
        assert fatal not in found, (fatal, [m.string for m in found[fatal]])


def test_llama_server_marker_order_matches_the_capture() -> None:
    lines = lines_of("llama-server", "healthy.log")
    markers = LLAMA.compiled_markers()

    def first(name: str) -> int:
        return next(i for i, line in enumerate(lines) if markers[name].search(line))

    assert first("start") < first("model_loading") < first("model_loaded") < first("listening")


def test_llama_server_bind_failure_names_host_and_port() -> None:
    lines = lines_of("llama-server", "bind-failed.log")
    found = hits(LLAMA, lines)
    with_port = [m for m in found["bind_failed"] if m.group("port")]
    assert [(m.group("host"), m.group("port")) for m in with_port] == [("127.0.0.1", "44519")]
    # the second line ("exiting due to HTTP server error") matches too, without a port
    assert len(found["bind_failed"]) == 2
    # it exits before loading: no model line, no listening line
    for absent in ("model_loading", "model_loaded", "model_error", "listening"):
        assert absent not in found


@pytest.mark.parametrize("name", ["model-missing.log", "model-truncated.log"])
def test_llama_server_model_failures(name: str) -> None:
    found = hits(LLAMA, lines_of("llama-server", name))
    assert "model_loading" in found
    assert "model_error" in found
    assert "model_loaded" not in found and "listening" not in found and "bind_failed" not in found
    paths = {m.group("path") for m in found["model_error"] if m.group("path")}
    assert paths == {found["model_loading"][0].group("path")}


def test_llama_server_truncated_model_reason_says_so() -> None:
    found = hits(LLAMA, lines_of("llama-server", "model-truncated.log"))
    reasons = [m.group("reason") for m in found["model_error"] if m.group("reason")]
    assert reasons and all("not within the file bounds" in r for r in reasons)


def test_llama_server_lines_carry_elapsed_timestamps() -> None:
    assert LLAMA.timestamp_format == "elapsed"
    for name in ("healthy.log", "bind-failed.log", "model-missing.log", "model-truncated.log"):
        for line in lines_of("llama-server", name):
            assert re.match(r"\d+\.\d{2}\.\d{3}\.\d{3} [IWEDT] ", line), line


def test_llama_server_health_bodies() -> None:
    recorded = responses("llama-server")
    loading = recorded["health_loading"]
    assert loading["path"] == LLAMA.health.path
    answer = classify_health(LLAMA.health, loading["status"], loading["body"].encode())
    assert (answer.state, answer.status_code) == (HealthState.LOADING, 503)
    assert answer.reason == "Loading model"
    for key in ("health_ok", "v1_health_ok"):
        ok = recorded[key]
        answer = classify_health(LLAMA.health, ok["status"], ok["body"].encode())
        assert answer.state is HealthState.READY, key
        assert answer.body_status == "ok"


def test_llama_server_completion_body_counts_its_tokens() -> None:
    completion = responses("llama-server")["completion"]
    assert completion["path"] == LLAMA.generation.path
    assert json.loads(LLAMA.generation.body) == json.loads(completion["request"])
    decoder = GenerationDecoder(LLAMA.generation.kind, completion["content_type"])
    decoder.feed(completion["body"].encode())
    decoder.close()
    predicted = json.loads(completion["body"])["tokens_predicted"]
    assert predicted == 8
    assert decoder.tally.reported == predicted and decoder.tally.tokens == predicted


def test_llama_server_process_and_flags() -> None:
    argv = [
        "/root/.cache/exsa-doctor/llama-server-11434.0.0/llama-server",
        "-m",
        "/m/x.gguf",
        "--host",
        "127.0.0.1",
        "--port",
        "40123",
        "-c",
        "256",
    ]
    assert LLAMA.matches_process("llama-server", argv[0], argv)
    assert LLAMA.port_from({}, argv) == 40123
    assert LLAMA.host_from({}, argv) == "127.0.0.1"
    assert LLAMA.model_from({}, argv) == "/m/x.gguf"
    assert LLAMA.port_from({"LLAMA_ARG_PORT": "9001"}, [argv[0]]) == 9001
    assert LLAMA.model_from({}, [argv[0], "--model=/m/y.gguf"]) == "/m/y.gguf"
    # merely mentioning the engine is no identification
    assert not LLAMA.matches_process("less", "/usr/bin/less", ["less", "llama-server.log"])


# ------------------------------------------------------------------ Ollama (rebuilt from source)

OLLAMA = load_builtin("ollama")


@pytest.mark.parametrize("name", ["start.log", "start-runner-era.log"])
def test_ollama_start_logs(name: str) -> None:
    found = hits(OLLAMA, lines_of("ollama", name))
    assert len(found["start"]) == 1
    (listening,) = found["listening"]
    assert listening.group("address") == "127.0.0.1:11434"
    assert re.fullmatch(r"\d+\.\d+\.\d+", listening.group("version"))
    assert "model_loaded" in found
    assert not {"bind_failed", "model_error", "panic"} & found.keys()


def test_ollama_bind_failure() -> None:
    found = hits(OLLAMA, lines_of("ollama", "bind-failed.log"))
    (m,) = found["bind_failed"]
    assert m.group("address") == "127.0.0.1:11434"
    assert m.group("reason") == "address already in use"


@pytest.mark.parametrize("name", ["model-failed.log", "model-failed-runner-era.log"])
def test_ollama_model_failures(name: str) -> None:
    found = hits(OLLAMA, lines_of("ollama", name))
    assert "model_error" in found
    assert "model_loaded" not in found


def test_ollama_health_answers() -> None:
    recorded = responses("ollama")
    root = recorded["root"]
    assert root["path"] == OLLAMA.health.path == "/"
    assert classify_health(OLLAMA.health, 200, root["body"].encode()).state is HealthState.READY
    # a 200 that is not Ollama's greeting is not an Ollama that is ready
    version = recorded["version"]
    assert classify_health(OLLAMA.health, 200, version["body"].encode()).state is (
        HealthState.BAD_BODY
    )
    missing = recorded["health_404"]
    answer = classify_health(OLLAMA.health, missing["status"], missing["body"].encode())
    assert answer.state is HealthState.HTTP_ERROR and answer.status_code == 404


def test_ollama_process() -> None:
    exe = "/usr/local/bin/ollama"
    assert OLLAMA.matches_process("ollama", exe, [exe, "serve"])
    assert OLLAMA.host_from({"OLLAMA_HOST": "0.0.0.0:11500"}, [exe, "serve"]) == "0.0.0.0:11500"


# ------------------------------------------------------------------ vLLM (rebuilt from source)

VLLM = load_builtin("vllm")


@pytest.mark.parametrize("name", ["start.log", "start-old.log"])
def test_vllm_start_logs(name: str) -> None:
    found = hits(VLLM, lines_of("vllm", name))
    assert len(found["start"]) == 1
    (loading,) = found["model_loading"]
    assert not loading.group("path").endswith("...")
    assert "model_loaded" in found
    (listening,) = found["listening"]
    assert re.fullmatch(r"0\.0\.0\.0:80(00|11)", listening.group("address"))
    assert not {"bind_failed", "model_error", "panic", "oom"} & found.keys()


def test_vllm_start_line_is_not_the_listening_line() -> None:
    lines = lines_of("vllm", "start.log")
    markers = VLLM.compiled_markers()
    listening = [line for line in lines if markers["listening"].search(line)]
    assert listening and not any(markers["start"].search(line) for line in listening)


def test_vllm_failures() -> None:
    bind = hits(VLLM, lines_of("vllm", "bind-failed.log"))
    assert "bind_failed" in bind and "panic" in bind  # the traceback header
    engine = hits(VLLM, lines_of("vllm", "engine-failed.log"))
    assert len(engine["model_error"]) == 2 and "oom" in engine
    missing = hits(VLLM, lines_of("vllm", "model-missing.log"))
    assert "model_error" in missing and "listening" not in missing


def test_vllm_health_answers() -> None:
    recorded = responses("vllm")
    ok, dead = recorded["health_ok"], recorded["health_dead"]
    assert ok["path"] == dead["path"] == VLLM.health.path
    assert classify_health(VLLM.health, ok["status"], b"").state is HealthState.READY
    answer = classify_health(VLLM.health, dead["status"], b"")
    assert answer.state is HealthState.HTTP_ERROR and answer.status_code == 503


def test_vllm_process() -> None:
    argv = [
        "/usr/bin/python3",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/m",
        "--port",
        "8011",
    ]
    assert VLLM.matches_process("python3", "/usr/bin/python3.12", argv)
    assert VLLM.port_from({}, argv) == 8011 and VLLM.model_from({}, argv) == "/m"
    exe = "/usr/local/bin/vllm"
    assert VLLM.matches_process("vllm", exe, [exe, "serve", "m"])


# ------------------------------------------------------------------ detection from a log


@pytest.mark.parametrize(
    ("engine", "name"),
    [
        ("llama-server", "healthy.log"),
        ("llama-server", "bind-failed.log"),
        ("llama-server", "model-missing.log"),
        ("llama-server", "model-truncated.log"),
        ("ollama", "start.log"),
        ("ollama", "bind-failed.log"),
        ("ollama", "model-failed.log"),
        ("vllm", "start.log"),
        ("vllm", "bind-failed.log"),
        ("vllm", "engine-failed.log"),
    ],
)
def test_profile_from_log_names_the_engine(engine: str, name: str) -> None:
    text = (ENGINES / engine / name).read_text(encoding="utf-8")
    found = profile_from_log(text, list(all_builtin()))
    assert found is not None and found[0].name == engine


def test_profile_from_log_gives_up_on_an_unknown_log() -> None:
    assert profile_from_log("hello\nworld\n", list(all_builtin())) is None


def test_refine_target_detects_from_the_log(unused_port: int) -> None:
    log = ENGINES / "llama-server" / "model-missing.log"
    target = resolve_target(url=f"http://127.0.0.1:{unused_port}", logs=(log,), environ={})
    assert target.profile.name == "exsa-engine"
    refined = refine_target(target, auto_profile=True)
    assert refined.profile.name == "llama-server"
    assert str(log) in refined.profile_reason and "markers" in refined.profile_reason


def test_refine_target_keeps_an_explicit_profile(unused_port: int) -> None:
    log = ENGINES / "ollama" / "start.log"
    target = resolve_target(
        url=f"http://127.0.0.1:{unused_port}", logs=(log,), profile="vllm", environ={}
    )
    refined = refine_target(replace(target, model=Path("/m")), auto_profile=False)
    assert (refined.profile.name, refined.profile_reason) == ("vllm", "from --profile")


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_bind_order_is_one_of_the_known_orders_and_says_when_listening_means_loaded() -> None:
    assert {p.name: p.listens_when_loaded for p in all_builtin()} == {
        "exsa-engine": True,
        "llama-server": False,
        "llama-cpp-python": True,
        "ollama": False,
        "vllm": True,
    }
    import tomllib

    import exsa_doctor.profiles as profiles_pkg

    raw = tomllib.loads((Path(profiles_pkg.__file__).parent / "exsa-engine.toml").read_text())
    assert profile_from_mapping(raw).bind_order == "load-then-bind"
    with pytest.raises(ProfileError, match="bind_order"):
        profile_from_mapping({**raw, "bind_order": "load-and-bind"})
