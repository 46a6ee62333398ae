"""Scenarios against the real llama.cpp `llama-server` (built by scripts/build-llama-server.sh).

Each test builds a real situation (a real server on a real port, a real squatter, a missing or
truncated model file) and asserts on the diagnosis exsa-doctor makes of it, not on our own
stand-ins. `run` and `wait` are driven through the real CLI in a subprocess.

The 503 "Loading model" phase of a tiny model lasts a fraction of a second. To hold it open for as
long as a test needs, the model path is a symlink to a FIFO: llama-server binds, answers 503, and
its first (pre-fit) open of the model blocks on the FIFO. The test then points the symlink at the
real model and opens/closes the FIFO's write end; the pre-fit pass fails harmlessly on the empty
read ("encountered an error while trying to fit params"), the real load opens the real model and
the server becomes ready. Verified on build 11434.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from llama_helpers import LlamaServer, Squatter, free_port, poll, stop_pid

from exsa_doctor.detect import refine_target
from exsa_doctor.model import Diagnosis, Finding
from exsa_doctor.target import Target, resolve_target

pytestmark = pytest.mark.llama

StartLlama = Callable[..., LlamaServer]


def run_diagnosis(
    url: str,
    *,
    logs: tuple[Path, ...] = (),
    model: Path | None = None,
    profile: str = "llama-server",
    timeout_s: float = 20.0,
) -> tuple[Target, Diagnosis]:
    target = resolve_target(
        url=url, profile=profile, logs=logs, model=model, timeout_s=timeout_s, environ={}
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


def test_healthy_server_is_healthy_and_generates(start_llama: StartLlama, tiny_model: Path) -> None:
    server = start_llama(tiny_model)
    server.wait_ready()
    # generation counted through llama-server's own completion endpoint
    answer = httpx.post(
        server.url + "/completion", json={"prompt": "Hello", "n_predict": 8}, timeout=30
    ).json()
    assert answer["tokens_predicted"] > 0

    _target, diagnosis = run_diagnosis(server.url, logs=(server.log,), model=tiny_model)
    assert diagnosis.verdict.value == "healthy", explain(diagnosis)
    (gen,) = findings(diagnosis, "generation.ok")
    assert gen.data["tokens"] > 0
    assert {"health.ok", "port.listening_engine", "model.ok", "logs.listening"} <= ids(diagnosis)
    (engine,) = findings(diagnosis, "port.listening_engine")
    assert engine.data["pid"] == server.pid and engine.data["profile"] == "llama-server"


def test_port_taken_by_another_process(
    start_llama: StartLlama, squatter: Callable[[int], Squatter], tiny_model: Path
) -> None:
    port = free_port()
    squat = squatter(port)
    server = start_llama(tiny_model, port=port)
    assert server.wait_exit() != 0
    assert "couldn't bind HTTP server socket" in server.log_text()

    _target, diagnosis = run_diagnosis(
        f"http://127.0.0.1:{port}", logs=(server.log,), model=tiny_model
    )
    top = diagnosis.causes[0]
    assert top.id == "port-in-use", explain(diagnosis)
    (owner,) = findings(diagnosis, "port.owned_by_other")
    assert owner.data["pid"] == squat.pid
    assert {"port.owned_by_other", "logs.bind_failed"} <= {e.finding for e in top.evidence}
    (bind,) = findings(diagnosis, "logs.bind_failed")
    assert int(bind.data["port"]) == port
    assert any(str(squat.pid) in step.text for step in top.remediation), top.remediation


def test_missing_model(start_llama: StartLlama, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    server = start_llama(missing)
    assert server.wait_exit() != 0
    assert "exiting due to model loading error" in server.log_text()

    _target, diagnosis = run_diagnosis(server.url, logs=(server.log,), model=missing)
    assert diagnosis.causes[0].id == "model-missing-or-invalid", explain(diagnosis)
    (gone,) = findings(diagnosis, "model.missing")
    assert gone.data["path"] == str(missing)
    assert findings(diagnosis, "logs.model_error")


def test_truncated_model_is_named_truncated(start_llama: StartLlama, truncated_copy: Path) -> None:
    server = start_llama(truncated_copy)
    assert server.wait_exit() != 0
    assert "not within the file bounds" in server.log_text()

    _target, diagnosis = run_diagnosis(server.url, logs=(server.log,), model=truncated_copy)
    assert diagnosis.causes[0].id == "model-missing-or-invalid", explain(diagnosis)
    (cut,) = findings(diagnosis, "model.truncated")
    assert cut.data["path"] == str(truncated_copy)
    assert cut.data["size"] == truncated_copy.stat().st_size
    assert cut.data["missing"] > 0 and cut.data["expected"] > cut.data["size"]


def test_diagnose_pointed_at_the_wrong_port(start_llama: StartLlama, tiny_model: Path) -> None:
    server = start_llama(tiny_model)
    server.wait_ready()
    wrong = free_port()

    _target, diagnosis = run_diagnosis(f"http://127.0.0.1:{wrong}")
    assert diagnosis.causes[0].id == "wrong-address", explain(diagnosis)
    (other,) = findings(diagnosis, "port.engine_on_other_port")
    assert other.data["pid"] == server.pid
    assert int(other.data["port"]) == server.port
    assert str(server.port) in other.data["url"]
    assert any(
        str(server.port) in step.text or any(str(server.port) in c for c in step.commands)
        for step in diagnosis.causes[0].remediation
    )


def test_profile_auto_detected_from_the_running_process(
    start_llama: StartLlama, tiny_model: Path
) -> None:
    server = start_llama(tiny_model)
    server.wait_ready()

    target, diagnosis = run_diagnosis(server.url, profile="auto")
    assert target.profile.name == "llama-server"
    assert f"PID {server.pid}" in target.profile_reason
    assert f"listening on port {server.port}" in target.profile_reason
    # the model comes from the process's own -m
    assert target.model == tiny_model
    assert diagnosis.target.profile == "llama-server"
    assert diagnosis.target.profile_reason == target.profile_reason
    assert diagnosis.verdict.value == "healthy", explain(diagnosis)


def test_localhost_resolving_to_the_other_family(start_llama: StartLlama, tiny_model: Path) -> None:
    from exsa_doctor.oslayer.sockets import resolve_localhost

    resolved = resolve_localhost("localhost")
    if not resolved:
        pytest.skip("localhost does not resolve here")
    other = "::1" if ":" not in resolved[0] else "127.0.0.1"
    if other in resolved:
        pytest.skip(f"localhost resolves to both families here ({resolved})")
    try:
        port = free_port(other)
    except OSError:
        pytest.skip(f"no {other} on this machine")
    server = start_llama(tiny_model, port=port, host=other)
    server.wait_ready()

    _target, diagnosis = run_diagnosis(f"http://localhost:{port}")
    assert diagnosis.causes[0].id == "wrong-address", explain(diagnosis)
    (mismatch,) = findings(diagnosis, "port.localhost_mismatch")
    assert resolved[0] in str(mismatch.data["resolved"])
    assert other in str(mismatch.data["listening"])
    assert mismatch.data["working_url"] == server.url
    # the URL it names really works
    assert httpx.get(str(mismatch.data["working_url"]) + "/health", timeout=5).status_code == 200


# ------------------------------------------------- the 503 "Loading model" phase, live


@dataclass
class HeldLoad:
    """A llama-server held in its loading phase until `release()`."""

    server: LlamaServer
    link: Path
    fifo: Path
    real_model: Path

    def release(self) -> None:
        tmp = self.link.with_suffix(".swap")
        tmp.symlink_to(self.real_model)
        tmp.replace(self.link)  # atomic: the next open sees the real model
        # the server's pending open is the reader: opening the write end cannot block
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)


@pytest.fixture
def held_load(start_llama: StartLlama, tiny_model: Path, tmp_path: Path) -> Iterator[HeldLoad]:
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "model.gguf"
    link.symlink_to(fifo)
    server = start_llama(link)
    held = HeldLoad(server=server, link=link, fifo=fifo, real_model=tiny_model)

    def loading() -> bool:
        if server.proc.poll() is not None:
            pytest.fail(f"llama-server exited early:\n{server.log_text()[-2000:]}")
        answer = server.health()
        return answer is not None and answer[0] == 503

    poll(loading, 30, "llama-server to answer 503 while it loads")
    try:
        yield held
    finally:
        # never leave the server blocked on the FIFO
        with contextlib.suppress(OSError):
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)


def test_diagnose_during_the_loading_phase(held_load: HeldLoad) -> None:
    server = held_load.server
    status, body = server.health() or (0, b"")
    assert status == 503 and b"Loading model" in body
    _target, diagnosis = run_diagnosis(server.url, logs=(server.log,), model=held_load.real_model)
    (loading,) = findings(diagnosis, "health.loading")
    assert loading.data["status_code"] == 503
    assert diagnosis.verdict.value != "healthy", explain(diagnosis)
    assert "generation.ok" not in ids(diagnosis)


def test_a_pasted_503_from_the_loading_phase_reads_as_the_race(
    held_load: HeldLoad, tmp_path: Path
) -> None:
    # The client's side of the seed's race, from the real engine: a request sent while the model
    # loads gets llama-server's own 503 reply. Pasted on its own (support's view: no engine, no
    # server log), it names the race, quotes the reply, and the fix is to wait for readiness.
    server = held_load.server
    reply = httpx.post(
        server.url + "/completion", json={"prompt": "Hello", "n_predict": 4}, timeout=10
    )
    assert reply.status_code == 503, reply.text
    pasted = tmp_path / "client.txt"
    pasted.write_text(
        f'$ curl -sS -X POST {server.url}/completion -d \'{{"prompt": "Hello"}}\'\n'
        + reply.text
        + "\n",
        encoding="utf-8",
    )
    from exsa_doctor.api_offline import offline_diagnosis

    diagnosis = offline_diagnosis([pasted])
    assert diagnosis.causes[0].id == "race-condition", explain(diagnosis)
    (during,) = findings(diagnosis, "logs.request_during_load")
    assert during.data["line"] == reply.text.strip()
    # the reply names its engine: the fix polls llama-server's health route and starts it
    assert diagnosis.target.profile == "llama-server", diagnosis.target.profile_reason
    steps = diagnosis.causes[0].remediation
    commands = [c for step in steps for c in step.commands]
    assert any("/health" in c and "/v1/health" not in c for c in commands), commands
    assert any("-- llama-server -m " in c for c in commands), commands
    assert "ready" in " ".join(step.text for step in steps)


def _exsa_doctor(*args: str) -> subprocess.Popen[str]:
    """The real CLI in a child process; plain-line progress on stderr (no TTY, no colour)."""
    return subprocess.Popen(
        [sys.executable, "-m", "exsa_doctor", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "NO_COLOR": "1", "TERM": "dumb"},
    )


def _read_until(proc: subprocess.Popen[str], needle: str, timeout_s: float) -> list[str]:
    """stderr lines of `proc` up to the first containing `needle` (fails at the deadline)."""
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if not ready:
            continue
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    pytest.fail(f"no {needle!r} from exsa-doctor within {timeout_s} s; got: {seen}")
    raise AssertionError("unreachable")


def test_wait_returns_only_after_the_loading_phase(held_load: HeldLoad) -> None:
    server = held_load.server
    waiter = _exsa_doctor(
        "wait",
        "--url",
        server.url,
        "--profile",
        "llama-server",
        "--timeout",
        "120",
        "--log",
        str(server.log),
    )
    try:
        before = _read_until(waiter, "loading", 60)
        # it saw the 503 and keeps waiting: the load is held, so it cannot be ready yet
        assert waiter.poll() is None, before
        assert server.health() is not None and server.health()[0] == 503  # type: ignore[index]
        held_load.release()
        _out, err = waiter.communicate(timeout=120)
        assert waiter.returncode == 0, "".join(before) + err
        assert server.health() == (200, b'{"status":"ok"}')
        assert "healthy" in err or "ready" in err, err
    finally:
        stop_pid(waiter)


# ------------------------------------------------- run --profile llama-server --port auto


_THEN = (
    "import json, os, sys, urllib.request\n"
    "url = os.environ['EXSA_URL'] + '/completion'\n"
    "req = urllib.request.Request(url, data=json.dumps({'prompt': 'Hello', 'n_predict': 8})"
    ".encode(), headers={'Content-Type': 'application/json'})\n"
    "body = json.load(urllib.request.urlopen(req, timeout=30))\n"
    "json.dump({'pid': int(os.environ['EXSA_PID']), 'port': int(os.environ['EXSA_PORT']),"
    " 'url': os.environ['EXSA_URL'], 'tokens': body['tokens_predicted']},"
    " open(sys.argv[1], 'w'))\n"
)


def _port_is_free(port: int) -> bool:
    """Free for the next server: bind + listen as servers do, with SO_REUSEADDR (the closed
    connections' TIME_WAIT entries on the port must not count, nothing may listen on it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        except OSError:
            return False
    return True


def test_run_starts_waits_and_tears_down(
    llama_server_bin: Path, server_flags: tuple[str, ...], tiny_model: Path, tmp_path: Path
) -> None:
    report = tmp_path / "then.json"
    script = tmp_path / "then.py"
    script.write_text(_THEN, encoding="utf-8")
    log = tmp_path / "engine.log"
    runner = _exsa_doctor(
        "run",
        "--profile",
        "llama-server",
        "--port",
        "auto",
        "--log",
        str(log),
        "--ready-timeout",
        "120",
        "--then",
        f"{sys.executable} {script} {report}",
        "--",
        str(llama_server_bin),
        "-m",
        str(tiny_model),
        *server_flags,
    )
    engine_pid: int | None = None
    try:
        out, err = runner.communicate(timeout=240)
        assert runner.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
        seen = json.loads(report.read_text(encoding="utf-8"))
        engine_pid = seen["pid"]
        assert seen["tokens"] > 0
        assert seen["url"] == f"http://127.0.0.1:{seen['port']}"
        text = log.read_text(encoding="utf-8", errors="replace")
        assert f"listening on http://127.0.0.1:{seen['port']}" in text
        # torn down: the engine is gone (not even a zombie of ours) and its port is free again
        assert not psutil.pid_exists(seen["pid"]) or (
            psutil.Process(seen["pid"]).status() == psutil.STATUS_ZOMBIE
        )
        assert _port_is_free(seen["port"])
    finally:
        if runner.poll() is None:
            stop_pid(runner)
        _stop_leftover(engine_pid, llama_server_bin)


def _stop_leftover(pid: int | None, binary: Path) -> None:
    """If a failed run left its engine behind, stop that one PID (checked to be our binary)."""
    if pid is None or not psutil.pid_exists(pid):
        return
    with contextlib.suppress(psutil.Error, ProcessLookupError):
        if psutil.Process(pid).exe() == str(binary.resolve()):
            os.kill(pid, signal.SIGKILL)
