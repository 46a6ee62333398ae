"""Scenarios against the real llama-cpp-python server (built by scripts/build-llama-cpp-python.sh).

A second real engine, and a Python one: it loads the model before uvicorn binds (refused while
loading), has no /health (GET /v1/models is its readiness), logs uvicorn's and llama.cpp's lines
without timestamps, and dies with a Python traceback. Each test builds the real situation (a
real server, a real squatter on its port, a missing model, a model path that is a FIFO nobody
writes, so the loader's open() blocks for good) and asserts on the diagnosis exsa-doctor makes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from llama_helpers import LlamaServer, Squatter, free_port, poll

from exsa_doctor.detect import refine_target
from exsa_doctor.model import Diagnosis, Finding
from exsa_doctor.target import Target, resolve_target

pytestmark = pytest.mark.llama

PROFILE = "llama-cpp-python"
StartLcp = Callable[..., LlamaServer]


def run_diagnosis(
    url: str,
    *,
    logs: tuple[Path, ...] = (),
    model: Path | None = None,
    profile: str = PROFILE,
    timeout_s: float = 20.0,
    watch_s: float = 0.0,
) -> tuple[Target, Diagnosis]:
    target = resolve_target(
        url=url,
        profile=profile,
        logs=logs,
        model=model,
        timeout_s=timeout_s,
        watch_s=watch_s,
        environ={},
    )
    target = refine_target(target, auto_profile=profile == "auto")
    from exsa_doctor import probes
    from exsa_doctor.api import diagnose

    return target, diagnose(target, probes=probes.select())


def findings(diagnosis: Diagnosis, fid: str) -> list[Finding]:
    return [f for f in diagnosis.findings if f.id == fid]


def ids(diagnosis: Diagnosis) -> set[str]:
    return {f.id for f in diagnosis.findings}


def explain(diagnosis: Diagnosis) -> str:
    """What to print when an assertion fails: the ranking and the findings."""
    causes = ", ".join(f"{c.id}={c.probability:.2f}" for c in diagnosis.causes[:4])
    rows = "\n".join(f"  {f.id} {dict(f.data)}" for f in diagnosis.findings)
    probe_rows = "\n".join(f"  {p.name}: {p.status.value} {p.detail}" for p in diagnosis.probes)
    return f"verdict={diagnosis.verdict.value} causes: {causes}\n{rows}\nprobes:\n{probe_rows}"


def test_healthy_server_is_healthy_and_generates(start_lcp: StartLcp, tiny_model: Path) -> None:
    server = start_lcp(tiny_model)
    server.wait_ready()
    answer = httpx.post(
        server.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 8}, timeout=60
    ).json()
    assert answer["usage"]["completion_tokens"] > 0

    _target, diagnosis = run_diagnosis(server.url, logs=(server.log,), model=tiny_model)
    assert diagnosis.verdict.value == "healthy", explain(diagnosis)
    (gen,) = findings(diagnosis, "generation.ok")
    assert gen.data["tokens"] > 0
    assert {"health.ok", "port.listening_engine", "model.ok", "logs.listening"} <= ids(diagnosis)
    (engine,) = findings(diagnosis, "port.listening_engine")
    assert engine.data["pid"] == server.pid and engine.data["profile"] == PROFILE
    assert f"Uvicorn running on http://127.0.0.1:{server.port}" in server.log_text()


def test_port_taken_by_another_process(
    start_lcp: StartLcp, squatter: Callable[[int], Squatter], tiny_model: Path
) -> None:
    port = free_port()
    squat = squatter(port)
    server = start_lcp(tiny_model, port=port)
    assert server.wait_exit() != 0
    errno_line = f"[Errno 98] error while attempting to bind on address ('127.0.0.1', {port})"
    assert errno_line in server.log_text()

    _target, diagnosis = run_diagnosis(
        f"http://127.0.0.1:{port}", logs=(server.log,), model=tiny_model
    )
    top = diagnosis.causes[0]
    assert top.id == "port-in-use", explain(diagnosis)
    (owner,) = findings(diagnosis, "port.owned_by_other")
    assert owner.data["pid"] == squat.pid
    assert {"port.owned_by_other", "logs.bind_failed"} <= {e.finding for e in top.evidence}
    (bind,) = findings(diagnosis, "logs.bind_failed")
    assert int(bind.data["port"]) == port and bind.data["errno"] == 98
    assert bind.data["address"] == f"127.0.0.1:{port}"
    assert any(str(squat.pid) in step.text for step in top.remediation), top.remediation


def test_missing_model(start_lcp: StartLcp, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    server = start_lcp(missing)
    assert server.wait_exit() != 0
    text = server.log_text()
    assert "Traceback (most recent call last)" in text
    assert f"ValueError: Model path does not exist: {missing}" in text

    _target, diagnosis = run_diagnosis(server.url, logs=(server.log,), model=missing)
    top = diagnosis.causes[0]
    assert top.id == "model-missing-or-invalid", explain(diagnosis)
    (gone,) = findings(diagnosis, "model.missing")
    assert gone.data["path"] == str(missing)
    (error,) = findings(diagnosis, "logs.model_error")
    # the traceback's own last line, the Python error, is the evidence
    assert error.data["path"] == str(missing)  # the exception's own line, not the source line
    assert "ValueError: Model path does not exist" in error.data["line"]
    assert "logs.model_error" in {e.finding for e in top.evidence}


def test_hung_load_is_diagnosed_with_a_py_spy_stack(start_lcp: StartLcp, tmp_path: Path) -> None:
    # The model path exists but is a FIFO that nobody writes: llama.cpp's open() of it blocks for
    # good inside the ctypes call, before uvicorn ever binds. A real hang, not a SIGSTOP.
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    server = start_lcp(fifo)

    def blocked_on_the_fifo() -> bool:
        if server.proc.poll() is not None:
            pytest.fail(f"the server exited {server.proc.returncode}:\n{server.log_text()}")
        return _waits_for_a_fifo_writer(server.pid)

    poll(blocked_on_the_fifo, 120, "the server to block opening the FIFO model", 0.2)

    target, diagnosis = run_diagnosis(
        f"http://127.0.0.1:{server.port}", logs=(server.log,), profile="auto", watch_s=3.0
    )
    assert target.profile.name == PROFILE, target.profile_reason
    assert f"PID {server.pid}" in target.profile_reason
    assert diagnosis.causes[0].id == "hung-during-load", explain(diagnosis)
    assert findings(diagnosis, "progress.stalled"), explain(diagnosis)
    assert "logs.listening" not in ids(diagnosis)
    dumps = [d for d in findings(diagnosis, "stack.dump") if d.data["pid"] == server.pid]
    assert dumps, explain(diagnosis)
    (dump,) = dumps
    assert dump.data["source"] == "py-spy" and not dump.data["error"], dump.data
    # py-spy names the Python frames the load is stuck under
    assert "llama_cpp" in dump.data["text"] and "__init__" in dump.data["text"], dump.data["text"]
    assert server.proc.poll() is None
    assert server.health() is None  # refused: it never bound


def _waits_for_a_fifo_writer(pid: int) -> bool:
    """A thread of `pid` sleeps in the kernel's FIFO open (`wait_for_partner`, inlined into
    `fifo_open` on some kernels): the open() blocks before any file descriptor exists."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            wchan = (task / "wchan").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        if wchan in ("wait_for_partner", "fifo_open") or "fifo" in wchan:
            return True
    return False


def test_profile_auto_detected_from_the_running_process(
    start_lcp: StartLcp, tiny_model: Path
) -> None:
    server = start_lcp(tiny_model)
    server.wait_ready()

    target, diagnosis = run_diagnosis(server.url, profile="auto")
    assert target.profile.name == PROFILE
    assert f"PID {server.pid}" in target.profile_reason
    assert f"listening on port {server.port}" in target.profile_reason
    # the model comes from the process's own --model
    assert target.model == tiny_model
    assert diagnosis.target.profile == PROFILE
    assert diagnosis.verdict.value == "healthy", explain(diagnosis)


def test_cli_diagnose_auto_json(start_lcp: StartLcp, tiny_model: Path) -> None:
    """The real CLI, no --profile: the JSON report names the engine and its generation."""
    server = start_lcp(tiny_model)
    server.wait_ready()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "exsa_doctor",
            "diagnose",
            "--url",
            server.url,
            "--profile",
            "auto",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["target"]["profile"] == PROFILE
    assert report["verdict"] == "healthy"
    assert any(f["id"] == "generation.ok" for f in report["findings"])
