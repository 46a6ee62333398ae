"""The stand-in engine behaves like exsa-engine where the doctor looks (engines.md).

Every test starts the real stand-in process on a free port; the `engine` fixture stops each one
by PID (SIGTERM, then SIGKILL) even when the test fails.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from exsa_doctor.demo.scenarios import _engine_argv
from exsa_doctor.demo.standin.engine import (
    LoadError,
    StandinError,
    check_bounds,
    config_from,
    read_layout,
)
from exsa_doctor.demo.standin.ggufmake import write_gguf, write_not_gguf

LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (?: INFO| WARN|ERROR|DEBUG) exsa_engine: .*$"
)

Start = Callable[..., "subprocess.Popen[bytes]"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.05)


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    write_gguf(path)
    return path


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Start]:
    started: list[subprocess.Popen[bytes]] = []
    files = []

    def start(
        model: Path | None,
        *,
        port: int = 0,
        mode: str = "ok",
        load_s: float = 0.1,
        log: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "PORT", "HOST")}
        env = {k: v for k, v in env.items() if not k.startswith("EXSA_")}
        if model is not None:
            env["MODEL_PATH"] = str(model)
        env["PORT"] = str(port)
        out = open(log or tmp_path / "engine.log", "ab")  # noqa: SIM115
        files.append(out)
        popen = subprocess.Popen(
            _engine_argv(mode, load_s),  # the scenarios' own command line for the stand-in
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        started.append(popen)
        return popen

    try:
        yield start
    finally:
        for popen in reversed(started):
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
                try:
                    popen.wait(3)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait(3)
        for fh in files:
            fh.close()


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------------------- pure parts


def test_config_from_env_defaults_and_flags() -> None:
    assert config_from({}) is None
    cfg = config_from({"MODEL_PATH": "/m.gguf"})
    assert cfg is not None
    assert (cfg.host, cfg.port, cfg.mode, cfg.context_size) == ("127.0.0.1", 3000, "ok", 4096)
    cfg = config_from({"MODEL_PATH": "/m", "PORT": "x", "EXSA_STANDIN_MODE": "hang"}, load_s=2)
    assert cfg is not None and (cfg.port, cfg.mode, cfg.load_s) == (3000, "hang", 2)
    with pytest.raises(StandinError):
        config_from({"MODEL_PATH": "/m", "EXSA_STANDIN_MODE": "nonsense"})
    with pytest.raises(StandinError):
        config_from({"MODEL_PATH": "/m", "EXSA_STANDIN_LOAD_S": "soon"})


def test_read_layout_finds_every_tensor_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    size = write_gguf(path, n_tensors=3, tensor_types=("F32", "Q8_0"))
    layout = read_layout(path.read_bytes())
    assert [t.name for t in layout.tensors] == ["blk.0.weight", "blk.1.weight", "blk.2.weight"]
    assert max(t.start + t.nbytes for t in layout.tensors) == size
    check_bounds(layout, size)
    with pytest.raises(LoadError, match=r"tensor 'blk\.2\.weight' data is not within the file"):
        check_bounds(layout, size - 1)


def test_read_layout_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    write_not_gguf(path)
    with pytest.raises(LoadError, match="invalid magic"):
        read_layout(path.read_bytes())
    with pytest.raises(LoadError):
        read_layout(b"GGUF\x03\x00\x00\x00\xff")


# ---------------------------------------------------------------------------- processes


def test_missing_model_path_env(engine: Start, tmp_path: Path) -> None:
    proc = engine(None)
    assert proc.wait(20) == 1
    text = read(tmp_path / "engine.log")
    assert "MODEL_PATH environment variable must be set" in text
    lines = text.splitlines()
    assert all(LINE.match(line) for line in lines), lines
    assert "Starting Exsa-Engine v0.1.0" in lines[0]


@pytest.mark.parametrize("kind", ["missing", "not-gguf"])
def test_model_validation_failure(engine: Start, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "m.gguf"
    if kind == "not-gguf":
        write_not_gguf(path)
    proc = engine(path)
    assert proc.wait(20) == 1
    text = read(tmp_path / "engine.log")
    assert re.search(r"ERROR exsa_engine: Model validation failed: .+", text)
    assert f"Please ensure the model file exists at: {path}" in text
    assert "Starting HTTP server" not in text


def test_truncated_model_fails_with_llama_cpp_error(engine: Start, tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    size = write_gguf(path)
    write_gguf(path, truncate_to=size // 2)
    proc = engine(path)
    assert proc.wait(20) == 1
    text = read(tmp_path / "engine.log")
    assert "Model validation passed" in text
    assert re.search(
        r"llama_model_load: error loading model: tensor '[^']+' data is not within the file "
        r"bounds, model is corrupted or incomplete",
        text,
    )
    assert "ERROR exsa_engine: Failed to initialize inference engine:" in text


def test_loads_before_binding_then_serves_and_shuts_down(
    engine: Start, model: Path, tmp_path: Path
) -> None:
    port = free_port()
    proc = engine(model, port=port, load_s=1.5)
    log = tmp_path / "engine.log"
    wait_for(lambda: "llama_model_loader: loaded meta data" in read(log))
    # while it loads: the model is mapped, the port refuses connections
    maps = Path(f"/proc/{proc.pid}/maps")
    if maps.exists():
        assert str(model) in maps.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1.0)
    wait_for(lambda: healthy(port))
    body = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2.0).json()
    assert body["status"] == "healthy" and body["model_loaded"] is True
    assert set(body) >= {
        "status",
        "version",
        "model_loaded",
        "model_path",
        "context_size",
        "gpu_layers",
        "active_requests",
        "queue_size",
        "queue_capacity",
        "uptime_seconds",
    }
    assert body["model_path"] == str(model)
    status = httpx.get(f"http://127.0.0.1:{port}/v1/status", timeout=2.0).json()
    assert status["status"] == "running"

    events = _generate(port, max_tokens=5)
    assert [e["done"] for e in events] == [False] * 5 + [True]
    assert all(e["token"] for e in events[:-1]) and events[-1]["token"] == ""
    bad = httpx.post(f"http://127.0.0.1:{port}/v1/generate", json={"prompt": ""}, timeout=2.0)
    assert bad.status_code == 400 and "error" in bad.json()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    text = read(log)
    order = [
        "Starting Exsa-Engine v",
        "  Path: ",
        "Model validation passed: ",
        "Model loaded successfully",
        "Starting HTTP server on 127.0.0.1:",
        f"Server listening on http://127.0.0.1:{port}",
        "Received generation request with prompt length: 5 chars",
        "Generation complete: cached_tokens=",
        "Server shut down gracefully",
    ]
    positions = [text.find(marker) for marker in order]
    assert all(p >= 0 for p in positions), dict(zip(order, positions, strict=True))
    assert positions == sorted(positions)
    assert all(LINE.match(line) for line in text.splitlines() if "exsa_engine" in line)


def _generate(port: int, max_tokens: int) -> list[dict[str, object]]:
    body = {"prompt": "Hello", "sampling_params": {"max_tokens": max_tokens}}
    with httpx.stream(
        "POST", f"http://127.0.0.1:{port}/v1/generate", json=body, timeout=5.0
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[5:]) for line in resp.iter_lines() if line.startswith("data:")]


def test_bind_failure_reports_the_real_errno(engine: Start, model: Path, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        proc = engine(model, port=port)
        assert proc.wait(20) == 1
    text = read(tmp_path / "engine.log")
    assert re.search(
        rf"ERROR exsa_engine: Failed to bind to 127\.0\.0\.1:{port}: "
        r"Address already in use \(os error 98\)",
        text,
    )
    assert "Server listening" not in text


def test_zero_tokens_and_overloaded_modes(engine: Start, model: Path, tmp_path: Path) -> None:
    zero, busy = free_port(), free_port()
    engine(model, port=zero, mode="zero-tokens", log=tmp_path / "zero.log")
    engine(model, port=busy, mode="overloaded", log=tmp_path / "busy.log")
    wait_for(lambda: healthy(zero) and healthy(busy))
    assert _generate(zero, max_tokens=8) == [{"token": "", "done": True}]
    health = httpx.get(f"http://127.0.0.1:{busy}/v1/health", timeout=2.0).json()
    assert health["status"] == "overloaded"
    resp = httpx.post(f"http://127.0.0.1:{busy}/v1/generate", json={"prompt": "Hello"}, timeout=2.0)
    assert resp.status_code == 503
    assert resp.json() == {"error": "Server is at capacity"}


@pytest.mark.parametrize(
    ("mode", "line"),
    [
        ("model-error", r"llama_model_load: error loading model: tensor '[^']+' data is not"),
        ("oom", r"failed to allocate buffer of size \d+"),
        ("mmap-fail", r"llama_model_load: error loading model: mmap failed: "),
    ],
)
def test_failing_load_modes(
    engine: Start, model: Path, tmp_path: Path, mode: str, line: str
) -> None:
    proc = engine(model, mode=mode)
    assert proc.wait(20) == 1
    text = read(tmp_path / "engine.log")
    assert re.search(line, text), text
    assert "ERROR exsa_engine: Failed to initialize inference engine: " in text
    assert "Starting HTTP server" not in text
    if mode == "mmap-fail":
        assert "(simulated)" not in text  # the RLIMIT_AS cap made mmap fail for real


def test_flock_mode_blocks_while_another_process_holds_the_lock(engine: Start, model: Path) -> None:
    if not Path("/proc/locks").exists():
        pytest.skip("needs /proc/locks (Linux)")
    port = free_port()
    with open(model, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        proc = engine(model, port=port, mode="flock")
        inode = os.stat(model).st_ino

        def waiting() -> bool:
            return any(
                "->" in ln and ln.split()[5] == str(proc.pid) and ln.endswith(f":{inode} 0 EOF")
                for ln in Path("/proc/locks").read_text().splitlines()
            )

        wait_for(waiting)
        assert proc.poll() is None and not healthy(port)
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    wait_for(lambda: healthy(port))


def test_hang_mode_stops_making_progress_and_never_binds(
    engine: Start, model: Path, tmp_path: Path
) -> None:
    import psutil

    port = free_port()
    proc = engine(model, port=port, mode="hang", load_s=0.3)
    log = tmp_path / "engine.log"
    wait_for(lambda: "llama_model_loader: loaded meta data" in read(log))
    ps = psutil.Process(proc.pid)

    def cpu() -> float:
        t = ps.cpu_times()
        return float(t.user + t.system)

    samples = [cpu()]

    def still() -> bool:
        time.sleep(0.3)
        samples.append(cpu())
        return samples[-1] == samples[-2]

    wait_for(still)
    assert proc.poll() is None
    assert not healthy(port)
    assert "Server listening" not in read(log)


def test_the_standin_runs_under_the_engines_name_in_the_same_process(
    engine: Start, model: Path
) -> None:
    # the exsa-engine profile knows the stand-in only as it knows the real engine: by its name
    import psutil

    from exsa_doctor.oslayer.procs import identify
    from exsa_doctor.profiles import all_builtin, load_builtin

    assert load_builtin("exsa-engine").cmdline_regexes == ()
    port = free_port()
    proc = engine(model, port=port, load_s=0.2)
    wait_for(lambda: healthy(port))
    info = psutil.Process(proc.pid).as_dict(["name", "exe", "cmdline"])
    assert Path(info["cmdline"][0]).name == "exsa-engine", info
    assert info["cmdline"][1:3] == ["-m", "exsa_doctor.demo.standin"]
    found = identify(info, all_builtin())
    assert found is not None and found.name == "exsa-engine"
