"""`exsa-doctor wait` against real processes: the stand-in engine, real ports, real logs.

Every process a test starts is stopped by PID in a `finally`, even when the test fails.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from exsa_doctor.demo.standin.ggufmake import write_gguf
from exsa_doctor.supervise.report import SilentReporter
from exsa_doctor.supervise.transport import resolve, try_connect
from exsa_doctor.supervise.wait import Outcome, WaitRequest, wait_ready
from exsa_doctor.target import resolve_target

CLI_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_pid(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process this test started, by its PID, and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    write_gguf(path)
    return path


def start_standin(
    model: Path, port: int, log: Path, mode: str = "ok", load_s: float = 0.2
) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        MODEL_PATH=str(model),
        PORT=str(port),
        HOST="127.0.0.1",
        EXSA_STANDIN_MODE=mode,
        EXSA_STANDIN_LOAD_S=str(load_s),
    )
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "exsa_doctor.demo.standin"],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def run_wait(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exsa_doctor", "wait", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env or dict(os.environ),
    )


def health(port: int) -> tuple[int, dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def test_wait_returns_0_once_the_engine_is_healthy(model: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "engine.log"
    engine = start_standin(model, port, log, load_s=1.5)
    try:
        done = run_wait("--url", f"http://127.0.0.1:{port}", "--timeout", "60")
        assert done.returncode == 0, done.stderr
        # it returned because the engine is ready, not before: it answers healthy right now
        status, body = health(port)
        assert (status, body["status"]) == (200, "healthy")
        assert "Server listening" in log.read_text()
        # the phases it went through, one plain line per change (stderr is not a TTY here)
        assert f"process up (PID {engine.pid}) · port closed" in done.stderr
        assert "port open · healthy" in done.stderr
        assert "ready:" in done.stderr
        assert done.stdout == ""
    finally:
        stop_pid(engine)


def test_wait_stops_early_when_the_engine_dies_during_start_up(tmp_path: Path) -> None:
    truncated = tmp_path / "cut.gguf"
    size = write_gguf(tmp_path / "full.gguf")
    write_gguf(truncated, truncate_to=size // 2)
    port = free_port()
    log = tmp_path / "engine.log"
    engine = start_standin(truncated, port, log, load_s=5.0)
    try:
        env = dict(os.environ, MODEL_PATH=str(truncated))  # as the start script exported it
        # a 600 s timeout: only the engine's exit can end this wait within CLI_TIMEOUT_S
        done = run_wait(
            "--url",
            f"http://127.0.0.1:{port}",
            "--timeout",
            "600",
            "--pid",
            str(engine.pid),
            "--log",
            str(log),
            env=env,
        )
        assert done.returncode == 1, done.stderr
        assert f"the engine (PID {engine.pid}) exited" in done.stderr
        assert "timed out" not in done.stderr
        assert "most likely: The model file is missing, unreadable, truncated" in done.stderr
        assert "model.truncated" in done.stderr
        assert "logs.model_error" in done.stderr
    finally:
        stop_pid(engine)


def test_wait_on_a_hung_engine_times_out_naming_the_hang(model: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "engine.log"
    engine = start_standin(model, port, log, mode="hang", load_s=1.0)
    try:
        done = run_wait(
            "--url",
            f"http://127.0.0.1:{port}",
            "--timeout",
            "5",
            "--pid",
            str(engine.pid),
            "--log",
            str(log),
        )
        assert done.returncode == 1, done.stderr
        assert "timed out after 5.0 s" in done.stderr
        assert "The engine looks hung: no CPU time, no reads, no log output" in done.stderr
        assert "hung-during-load" in done.stderr
        # ranked first, not merely listed: the stalled load outweighs "asked before ready"
        assert "most likely: The engine is stuck while loading the model [hung-during-load]" in (
            " ".join(done.stderr.split())
        ), done.stderr
        assert "progress.stalled" in done.stderr
        assert psutil.Process(engine.pid).status() != psutil.STATUS_ZOMBIE  # wait never signals
    finally:
        stop_pid(engine)


def test_wait_for_a_pid_that_is_gone_fails_at_once(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    done = run_wait(
        "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "600", "--pid", str(gone.pid)
    )
    assert done.returncode == 1
    assert f"the engine (PID {gone.pid}) exited" in done.stderr


def test_wait_usage_errors_exit_2() -> None:
    done = run_wait("--timeout", "0")
    assert done.returncode == 2
    assert "--timeout" in done.stderr
    done = run_wait("--url", "ftp://x", "--timeout", "1")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr


class _LoadingThenOk(http.server.BaseHTTPRequestHandler):
    """llama-server's health: 503 "Loading model" for the first answers, then 200 ok."""

    loading_answers = 3
    served = 0

    def do_GET(self) -> None:
        cls = type(self)
        cls.served += 1
        if cls.served <= cls.loading_answers:
            body = b'{"error":{"message":"Loading model","type":"unavailable_error","code":503}}'
            self.send_response(503)
        else:
            body = b'{"status":"ok"}'
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def loading_server() -> Iterator[tuple[int, type[_LoadingThenOk]]]:
    handler = type("Handler", (_LoadingThenOk,), {"served": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_503_loading_means_keep_waiting_for_llama_server(
    loading_server: tuple[int, type[_LoadingThenOk]],
) -> None:
    port, handler = loading_server
    target = resolve_target(port=port, profile="llama-server")
    reporter = SilentReporter()
    result = wait_ready(WaitRequest(target=target, timeout_s=30, auto_detect=False), reporter)
    assert result.outcome is Outcome.READY
    assert handler.served == handler.loading_answers + 1  # every 503 was followed by another GET
    assert result.requests == handler.served
    phases = [text for _, text in reporter.lines]
    assert any("port open · loading" in p for p in phases)
    assert phases[-1].endswith("port open · healthy")


def test_a_200_that_is_not_ready_by_the_profile_is_not_ready(
    loading_server: tuple[int, type[_LoadingThenOk]],
) -> None:
    # exsa-engine's profile wants {"status": "healthy"}; `{"status":"ok"}` never is
    port, handler = loading_server
    handler.loading_answers = 0
    target = resolve_target(port=port, profile="exsa-engine")
    result = wait_ready(WaitRequest(target=target, timeout_s=1.0, auto_detect=False))
    assert result.outcome is Outcome.TIMEOUT
    assert result.last_answer is not None
    assert result.last_answer.status_code == 200
    assert "not ready" in result.phases[-1][1]


def test_try_connect_tells_refused_from_open() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = int(listener.getsockname()[1])
        sock, why = try_connect(resolve("127.0.0.1", port), 1.0)
        assert sock is not None and why == ""
        sock.close()
    sock, why = try_connect(resolve("127.0.0.1", port), 1.0)
    assert sock is None
    assert "refused" in why


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sock_diag is Linux only")
@pytest.mark.parametrize(
    ("family", "bind_host", "target_host"),
    [
        (socket.AF_INET, "127.0.0.1", "127.0.0.1"),
        (socket.AF_INET6, "::", "127.0.0.1"),  # a dual-stack listener serves IPv4 clients too
        (socket.AF_INET6, "::1", "::1"),
    ],
)
def test_the_kernel_socket_table_sees_a_listener(
    family: int, bind_host: str, target_host: str
) -> None:
    from exsa_doctor.supervise.transport import ListenWatch

    with socket.socket(family) as listener:
        listener.bind((bind_host, 0))
        port = int(listener.getsockname()[1])
        watch = ListenWatch(resolve(target_host, port))
        try:
            assert watch.listening(port) is False  # bound, not yet listening
            listener.listen(1)
            assert watch.listening(port) is True
            listener.close()
            assert watch.listening(port) is False
        finally:
            watch.close()
