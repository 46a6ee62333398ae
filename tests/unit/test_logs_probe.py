"""LogsProbe on real log files in tmp_path: huge, binary, unreadable, racing, failing, anchored."""

from __future__ import annotations

import calendar
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from exsa_doctor.context import Context
from exsa_doctor.facts import last_log_start, log_report, target_engines
from exsa_doctor.model import Finding
from exsa_doctor.parsers.logs import HEAD_BYTES, MAX_TAIL_BYTES, LogReport
from exsa_doctor.probes.base import ProbeOutput
from exsa_doctor.probes.logs import LogsProbe
from exsa_doctor.target import resolve_target

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "logs"
FINDINGS_DOC = (ROOT / "docs" / "findings.md").read_text(encoding="utf-8")


def utc(y: int, mo: int, d: int, h: int, mi: int, s: float) -> float:
    return calendar.timegm((y, mo, d, h, mi, 0, 0, 0, 0)) + s


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{round(t % 1 * 1e6):06d}Z"


def exsa_line(t: float, message: str, level: str = "INFO") -> str:
    return f"{iso(t)} {level:>5} exsa_engine: {message}\n"


def make_ctx(
    logs: Sequence[Path],
    *,
    url: str = "http://127.0.0.1:3000",
    failed_at: str | None = None,
    profile: str | None = None,
    pids: Sequence[int] = (),
) -> Context:
    target = resolve_target(
        url=url, logs=list(logs), failed_at=failed_at, profile=profile, pids=list(pids), environ={}
    )
    return Context(target=target, deadline=time.monotonic() + 5)


def run_probe(ctx: Context) -> tuple[dict[str, Finding], ProbeOutput]:
    probe = LogsProbe()
    assert probe.applies(ctx) is None
    out = probe.run(ctx)
    for f in out.findings:
        assert f.id in probe.emits and f"`{f.id}`" in FINDINGS_DOC
        json.dumps(dict(f.data))  # the report must be able to serialise every value
    return {f.id: f for f in out.findings}, out


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def healthy_run(t0: float, port: int = 3000, host: str = "127.0.0.1") -> str:
    return (
        exsa_line(t0, "Starting Exsa-Engine v0.1.0")
        + exsa_line(t0 + 0.01, "Model validation passed: /models/q.gguf")
        + exsa_line(t0 + 12.0, "✅ Model loaded successfully with dynamic loading capability")
        + exsa_line(t0 + 12.001, f"Starting HTTP server on {host}:{port}")
        + exsa_line(t0 + 12.002, f"✅ Server listening on http://{host}:{port}")
    )


# ---------------------------------------------------------------------------------- basics


def test_skipped_without_logs() -> None:
    ctx = make_ctx([])
    assert LogsProbe().applies(ctx) == "no --log given"
    assert LogsProbe.timeout_s <= 3 and LogsProbe.__doc__


def test_every_emitted_id_is_in_the_contract() -> None:
    logs_section = FINDINGS_DOC.split("## logs", 1)[1].split("\n## ", 1)[0]
    documented = {
        line.split("`")[1] for line in logs_section.splitlines() if line.startswith("| `logs.")
    }
    assert set(LogsProbe.emits) == documented


def test_missing_file_and_directory_are_findings(tmp_path: Path) -> None:
    _found, out = run_probe(make_ctx([tmp_path / "absent.log", tmp_path]))
    missing = [f for f in out.findings if f.id == "logs.missing"]
    assert [(f.data["path"], f.data["reason"]) for f in missing] == [
        (str(tmp_path / "absent.log"), "no such file"),
        (str(tmp_path), "is a directory"),
    ]
    assert out.detail == "no log could be read"


def test_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.log"
    os.mkfifo(fifo)
    found, _ = run_probe(make_ctx([fifo]))
    assert found["logs.missing"].data["reason"].startswith("not a regular file")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may traverse (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="exsa-doctor-logs-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _probe_as_nobody(log: Path) -> list[list[Any]]:
    """Run the probe in a forked child that dropped root for nobody (65534); its findings."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out = LogsProbe().run(make_ctx([log]))
            payload = json.dumps([[f.id, dict(f.data)] for f in out.findings]).encode()
            os.write(write_end, payload)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    result: list[list[Any]] = json.loads(b"".join(chunks))
    return result


def test_unreadable_file_is_a_finding(open_dir: Path) -> None:
    log = write(open_dir / "secret.log", healthy_run(1.7e9))
    log.chmod(0o000)
    if os.geteuid() != 0:
        found, _ = run_probe(make_ctx([log]))
        assert found["logs.missing"].data["reason"] == "permission denied"
        return
    # root reads anything: read it as nobody
    assert _probe_as_nobody(log) == [
        ["logs.missing", {"path": str(log), "reason": "permission denied"}]
    ]


def test_binary_file_gives_no_findings_and_no_crash(tmp_path: Path) -> None:
    log = tmp_path / "core.bin"
    log.write_bytes(bytes(range(256)) * 4096 + os.urandom(1 << 16))
    found, out = run_probe(make_ctx([log]))
    assert found == {}
    assert "no engine markers" in out.detail


# ---------------------------------------------------------------------------------- size


def test_fifty_megabyte_log_with_the_markers_at_the_end(tmp_path: Path) -> None:
    t0 = time.time() - 3600
    log = tmp_path / "big.log"
    filler = exsa_line(t0 - 7200, "Received generation request with prompt length: 5 chars")
    with log.open("w", encoding="utf-8") as fh:
        fh.write(exsa_line(t0 - 7300, "Starting Exsa-Engine v0.0.9"))
        block = filler * 1000
        while fh.tell() < 50 << 20:
            fh.write(block)
        fh.write(healthy_run(t0, port=3000))
    assert log.stat().st_size >= 50 << 20
    ctx = make_ctx([log])
    found, _out = run_probe(ctx)
    assert found["logs.started"].data["version"] == "0.1.0"
    assert found["logs.started"].data["t"] == pytest.approx(t0, abs=1e-5)
    assert found["logs.listening"].data["address"] == "127.0.0.1:3000"
    assert found["logs.restarts"].data["count"] == 2  # the one in the head and the newest
    assert "logs.listening_other_address" not in found
    report = log_report(ctx, log)
    assert isinstance(report, LogReport)
    assert report.bytes_parsed <= HEAD_BYTES + MAX_TAIL_BYTES
    assert report.skipped_bytes > 48 << 20


def test_twenty_megabyte_single_line(tmp_path: Path) -> None:
    log = tmp_path / "one-line.log"
    with log.open("wb") as fh:
        fh.write(b"=" * (20 << 20))
    found, _ = run_probe(make_ctx([log]))
    assert found == {}
    t0 = time.time() - 30
    with log.open("a", encoding="utf-8") as fh:
        fh.write("\n" + healthy_run(t0))
    found, _ = run_probe(make_ctx([log]))
    assert found["logs.listening"].data["t"] == pytest.approx(t0 + 12.002, abs=1e-5)


# ---------------------------------------------------------------------------------- race


def test_race_failed_before_ready(tmp_path: Path) -> None:
    t = utc(2025, 11, 23, 23, 41, 53.0)
    log = write(tmp_path / "server.log", healthy_run(t))
    failed = iso(t + 3.0)
    found, out = run_probe(make_ctx([log], failed_at=failed))
    before = found["logs.failed_before_ready"]
    assert before.data["failed_at"] == pytest.approx(t + 3.0)
    assert before.data["ready_at"] == pytest.approx(t + 12.002)
    assert before.data["gap_s"] == pytest.approx(9.002, abs=1e-3)
    assert "logs.failed_after_ready" not in found
    assert found["logs.model_loaded"].data["load_s"] == pytest.approx(11.99, abs=1e-3)
    events = [(round(e.t, 3), e.source, e.event) for e in out.timeline]
    assert (round(t, 3), "log", "engine started (version 0.1.0)") in events
    assert (round(t + 12.002, 3), "log", "listening on 127.0.0.1:3000") in events


def test_seed_race_fixture(tmp_path: Path) -> None:
    found, _ = run_probe(
        make_ctx(
            [FIXTURES / "exsa-engine" / "race.log"],
            url="http://127.0.0.1:32841",
            failed_at="2025-11-23T23:41:56.127Z",
        )
    )
    assert found["logs.failed_before_ready"].data["gap_s"] == pytest.approx(9.087, abs=1e-3)


def test_failed_after_ready(tmp_path: Path) -> None:
    t = utc(2025, 11, 23, 10, 0, 0)
    log = write(tmp_path / "server.log", healthy_run(t))
    found, _ = run_probe(make_ctx([log], failed_at=iso(t + 30)))
    after = found["logs.failed_after_ready"]
    assert after.data == {"failed_at": pytest.approx(t + 30), "ready_at": pytest.approx(t + 12.002)}
    assert "logs.failed_before_ready" not in found


def test_failed_in_a_run_that_never_listened(tmp_path: Path) -> None:
    t = utc(2025, 11, 23, 10, 0, 0)
    text = (
        healthy_run(t)
        + exsa_line(t + 100, "Starting Exsa-Engine v0.1.0")
        + exsa_line(
            t + 100.2,
            "Failed to bind to 127.0.0.1:3000: Address already in use (os error 98)",
            "ERROR",
        )
    )
    log = write(tmp_path / "server.log", text)
    found, _ = run_probe(make_ctx([log], failed_at=iso(t + 101)))
    before = found["logs.failed_before_ready"]
    assert before.data["ready_at"] is None and before.data["gap_s"] is None
    # a failure during the first run compares with the first run's listening time
    found, _ = run_probe(make_ctx([log], failed_at=iso(t + 50)))
    assert found["logs.failed_after_ready"].data["ready_at"] == pytest.approx(t + 12.002)


# ---------------------------------------------------------------------------------- states


def test_bind_failure(tmp_path: Path) -> None:
    found, out = run_probe(
        make_ctx([FIXTURES / "exsa-engine" / "bind-failed.log"], url="http://127.0.0.1:47051")
    )
    bind = found["logs.bind_failed"]
    assert bind.data["address"] == "127.0.0.1:47051"
    assert (bind.data["errno"], bind.data["port"]) == (98, 47051)
    assert bind.status.value == "error"
    assert "logs.started_never_listened" not in found  # a fatal line explains the silence
    assert "logs.loading_in_progress" not in found
    assert any(e.event.startswith("bind failed: 127.0.0.1:47051") for e in out.timeline)


@pytest.mark.parametrize(
    ("name", "fid", "key", "value"),
    [
        (
            "model-missing.log",
            "logs.model_error",
            "reason",
            "Model error: Model file not found: /tmp/b1cap/nope.gguf",
        ),
        ("model-path-unset.log", "logs.model_path_unset", None, None),
        (
            "mmap-failed.log",
            "logs.mmap_failed",
            "line",
            "llama_model_load: error loading model: mmap failed: Cannot allocate memory",
        ),
        (
            "oom.log",
            "logs.oom",
            "line",
            "ggml_backend_cpu_buffer_type_alloc_buffer: failed to "
            "allocate buffer of size 1073741824",
        ),
    ],
)
def test_fatal_lines(name: str, fid: str, key: str | None, value: str | None) -> None:
    found, _ = run_probe(make_ctx([FIXTURES / "exsa-engine" / name]))
    assert fid in found
    assert found[fid].data["t"] is not None
    if key:
        assert found[fid].data[key] == value
    assert "logs.started_never_listened" not in found
    if name == "mmap-failed.log":
        assert "logs.oom" not in found


def test_panic_and_zero_tokens(tmp_path: Path) -> None:
    t = time.time() - 60
    text = (
        healthy_run(t)
        + exsa_line(t + 20, "speculative: 0 tokens generated")
        + "thread 'tokio-runtime-worker' panicked at src/inference/engine.rs:475:9:\n"
        + "called `Option::unwrap()` on a `None` value\n"
    )
    found, _ = run_probe(make_ctx([write(tmp_path / "s.log", text)]))
    assert found["logs.panic"].data["line"].startswith("thread 'tokio-runtime-worker' panicked")
    assert found["logs.panic"].data["t"] == pytest.approx(t + 20, abs=1e-5)  # inherited
    assert found["logs.zero_tokens"].data["t"] == pytest.approx(t + 20, abs=1e-5)
    assert "logs.shutdown" not in found


def test_shutdown_only_when_it_is_the_last_event(tmp_path: Path) -> None:
    found, _ = run_probe(
        make_ctx([FIXTURES / "exsa-engine" / "healthy.log"], url="http://127.0.0.1:32841")
    )
    assert found["logs.shutdown"].data["t"] == pytest.approx(utc(2026, 11, 26, 17, 24, 6.639989))
    t = time.time() - 100
    text = (
        healthy_run(t)
        + exsa_line(t + 50, "Server shut down gracefully")
        + exsa_line(t + 60, "Starting Exsa-Engine v0.1.0")
    )
    found, _ = run_probe(make_ctx([write(tmp_path / "s.log", text)]))
    assert "logs.shutdown" not in found  # that shutdown belongs to the previous run
    assert found["logs.restarts"].data["count"] == 2


def test_started_never_listened_and_still_loading(tmp_path: Path) -> None:
    t = time.time() - 5
    text = exsa_line(t, "Starting Exsa-Engine v0.1.0") + exsa_line(
        t + 0.01, "Model validation passed: /models/q.gguf"
    )
    found, out = run_probe(make_ctx([write(tmp_path / "s.log", text)]))
    assert 4 <= found["logs.started_never_listened"].data["since_s"] < 120
    assert 4 <= found["logs.loading_in_progress"].data["since_s"] < 120
    assert found["logs.model_validated"].data["t"] == pytest.approx(t + 0.01, abs=1e-5)
    assert "validated" in out.detail


def test_an_old_load_is_not_in_progress(tmp_path: Path) -> None:
    t = time.time() - 1200
    text = exsa_line(t, "Starting Exsa-Engine v0.1.0") + exsa_line(
        t + 0.01, "Model validation passed: /models/q.gguf"
    )
    found, _ = run_probe(make_ctx([write(tmp_path / "s.log", text)]))
    assert found["logs.started_never_listened"].data["since_s"] >= 1199
    assert "logs.loading_in_progress" not in found


def test_fatal_line_in_a_second_log_counts(tmp_path: Path) -> None:
    t = time.time() - 5
    stdout = write(
        tmp_path / "out.log",
        exsa_line(t, "Starting Exsa-Engine v0.1.0")
        + exsa_line(t + 0.01, "Model validation passed: /m.gguf"),
    )
    stderr = write(
        tmp_path / "err.log",
        "llama_model_load: error loading model: tensor 'x' data is not within the "
        "file bounds, model is corrupted or incomplete\n",
    )
    found, _ = run_probe(make_ctx([stdout, stderr]))
    assert found["logs.model_error"].data["log"] == str(stderr)
    assert found["logs.model_error"].data["tensor"] == "x"
    assert found["logs.model_error"].data["problem"] == "truncated"
    assert "logs.started_never_listened" not in found
    assert "logs.loading_in_progress" not in found
    assert found["logs.started"].data["log"] == str(stdout)


# ---------------------------------------------------------------------------------- address


@pytest.mark.parametrize(
    ("url", "listen", "expected_url"),
    [
        ("http://127.0.0.1:3000", "127.0.0.1:3001", "http://127.0.0.1:3001"),
        ("http://127.0.0.1:3000", "[::1]:3000", "http://[::1]:3000"),
        ("http://192.168.1.5:3000", "127.0.0.1:3000", "http://127.0.0.1:3000"),
        ("http://localhost:3000", "0.0.0.0:3010", "http://localhost:3010"),
        ("http://127.0.0.1:3000", "0.0.0.0:3000", None),
        ("http://localhost:3000", "127.0.0.1:3000", None),
        ("http://127.0.0.1:3000", "[::]:3000", None),
        ("http://myhost:3000", "10.0.0.7:3000", None),  # a name we do not resolve: no opinion
    ],
)
def test_listening_on_another_address(
    tmp_path: Path, url: str, listen: str, expected_url: str | None
) -> None:
    t = time.time() - 60
    text = exsa_line(t, "Starting Exsa-Engine v0.1.0") + exsa_line(
        t + 1, f"✅ Server listening on http://{listen}"
    )
    found, _ = run_probe(make_ctx([write(tmp_path / "s.log", text)], url=url))
    assert found["logs.listening"].data["address"] == listen
    other = found.get("logs.listening_other_address")
    if expected_url is None:
        assert other is None
    else:
        assert other is not None and other.data == {"address": listen, "url": expected_url}


# ---------------------------------------------------------------------------------- llama-server


LLAMA_LOG = (
    "0.00.000.844 I srv  llama_server: initializing ...\n"
    "0.00.008.159 I srv    load_model: loading model '/tmp/tiny.gguf'\n"
    "0.01.220.827 I srv  llama_server: model loaded\n"
    "0.01.227.813 I srv  llama_server: listening on http://127.0.0.1:8080\n"
)


def test_elapsed_log_anchored_on_file_mtime(tmp_path: Path) -> None:
    log = write(tmp_path / "llama.log", LLAMA_LOG)
    mtime = time.time() - 30
    os.utime(log, (mtime, mtime))
    found, _ = run_probe(make_ctx([log], url="http://127.0.0.1:8080", profile="llama-server"))
    start = mtime - 1.227813 + 0.000844
    assert found["logs.started"].data["t"] == pytest.approx(start, abs=1e-4)
    assert found["logs.model_loaded"].data["load_s"] == pytest.approx(1.212668, abs=1e-3)
    assert found["logs.listening"].data["t"] == pytest.approx(mtime, abs=1e-4)


@pytest.fixture
def fake_llama_server() -> Iterator[psutil.Process]:
    """A process whose argv[0] is llama-server: the engine walk identifies it by that name."""
    proc = subprocess.Popen(["bash", "-c", "exec -a llama-server sleep 300"])
    try:
        deadline = time.monotonic() + 10
        p = psutil.Process(proc.pid)
        while time.monotonic() < deadline and p.cmdline()[:1] != ["llama-server"]:
            time.sleep(0.02)
        yield p
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_elapsed_log_anchored_on_the_engine_create_time(
    tmp_path: Path, fake_llama_server: psutil.Process
) -> None:
    created = fake_llama_server.create_time()
    log = write(tmp_path / "llama.log", LLAMA_LOG)
    # the file was last written a little after its newest stamp, as with real output buffering
    mtime = created + 1.227813 + 1.5
    os.utime(log, (mtime, mtime))
    ctx = make_ctx(
        [log], url="http://127.0.0.1:8080", profile="llama-server", pids=[fake_llama_server.pid]
    )
    assert [e.pid for e in target_engines(ctx)] == [fake_llama_server.pid]
    found, _ = run_probe(ctx)
    assert found["logs.started"].data["t"] == pytest.approx(created + 0.000844, abs=1e-4)
    assert last_log_start(ctx) == pytest.approx(created + 0.000844, abs=1e-4)


def test_engine_that_cannot_have_written_the_log_is_not_the_anchor(
    tmp_path: Path, fake_llama_server: psutil.Process
) -> None:
    log = write(tmp_path / "llama.log", LLAMA_LOG)
    mtime = fake_llama_server.create_time() - 3600  # written an hour before the process existed
    os.utime(log, (mtime, mtime))
    ctx = make_ctx(
        [log], url="http://127.0.0.1:8080", profile="llama-server", pids=[fake_llama_server.pid]
    )
    found, _ = run_probe(ctx)
    assert found["logs.started"].data["t"] == pytest.approx(mtime - 1.227813 + 0.000844, abs=1e-4)


def test_llama_server_without_timestamps(tmp_path: Path) -> None:
    found, out = run_probe(
        make_ctx(
            [FIXTURES / "llama-server" / "old-build.log"],
            url="http://127.0.0.1:8080",
            profile="llama-server",
            failed_at="2025-11-23T10:00:00Z",
        )
    )
    assert found["logs.started"].data == {
        "t": None,
        "version": "4179",
        "log": str(FIXTURES / "llama-server" / "old-build.log"),
    }
    assert found["logs.listening"].data["address"] == "127.0.0.1:8080"
    assert "logs.failed_before_ready" not in found and "logs.failed_after_ready" not in found
    assert out.timeline == [] and "no timestamps" in out.detail


# ---------------------------------------------------------------------------------- shared


def test_last_start_time_is_the_newest_across_logs_and_memoised(tmp_path: Path) -> None:
    a = write(tmp_path / "a.log", healthy_run(utc(2025, 1, 1, 0, 0, 0)))
    b = write(tmp_path / "b.log", healthy_run(utc(2025, 1, 2, 0, 0, 0)))
    ctx = make_ctx([a, tmp_path / "gone.log", b])
    assert last_log_start(ctx) == pytest.approx(utc(2025, 1, 2, 0, 0, 0))
    b.write_text("")  # a second call reads nothing again
    assert last_log_start(ctx) == pytest.approx(utc(2025, 1, 2, 0, 0, 0))
    assert last_log_start(make_ctx([])) is None


@pytest.mark.parametrize(
    ("log", "kinds"),
    [
        (
            "healthy.log",
            [
                ("engine started (version 0.1.0)", "start"),
                ("model validated", "model-validated"),
                ("model loaded", "model-loaded"),
                ("starting HTTP server on 127.0.0.1:32841", "http-starting"),
                ("listening on 127.0.0.1:32841", "listening"),
                ("shut down", "shutdown"),
            ],
        ),
        ("bind-failed.log", [("bind failed: 127.0.0.1:47051", "bind-failed")]),
        # the causal chain's root: its kind is its signature's stage (the model, or fatal)
        ("model-error.log", [("error: the model file is truncated", "model-error")]),
        ("mmap-failed.log", [("error: mapping the model file (mmap)", "model-error")]),
        ("oom.log", [("error: allocating a buffer", "error")]),
    ],
)
def test_timeline_events_carry_the_milestone_of_their_line(
    log: str, kinds: list[tuple[str, str]]
) -> None:
    _, out = run_probe(make_ctx([FIXTURES / "exsa-engine" / log]))
    for words, kind in kinds:
        (event,) = [e for e in out.timeline if e.event.startswith(words)]
        assert event.kind.value == kind, (words, event)


@pytest.mark.parametrize(
    ("host", "noted"),
    [
        ("33.206.101.72", True),  # a specific address: it may not be on the engine's machine
        ("fe80::1", True),
        ("127.0.0.1", False),  # loopback and wildcards are on every machine
        ("0.0.0.0", False),
        ("my-box.local", False),  # a name resolves there, not here
    ],
)
def test_offline_a_reasonless_bind_to_a_specific_address_is_noted(
    tmp_path: Path, host: str, noted: bool
) -> None:
    from exsa_doctor.api_offline import offline_findings

    log = write(
        tmp_path / "pasted.log",
        f"couldn't bind to server socket: hostname={host} port=8898\n",
    )
    found = {f.id: f for f in offline_findings(log)}
    assert "logs.bind_failed" in found
    assert ("logs.bind_specific_host" in found) is noted
    if noted:
        assert found["logs.bind_specific_host"].data["host"] == host
        assert found["logs.bind_specific_host"].data["port"] == 8898


def test_offline_a_bind_failure_with_a_reason_is_not_second_guessed(tmp_path: Path) -> None:
    from exsa_doctor.api_offline import offline_findings

    log = write(
        tmp_path / "pasted.log",
        "srv  init: couldn't bind HTTP server socket, hostname: 10.1.2.3, port: 8080\n"
        "error: listen tcp 10.1.2.3:8080: bind: address already in use\n",
    )
    found = {f.id: f for f in offline_findings(log)}
    assert found["logs.bind_failed"].data["errno"] == 98  # the later line says why
    assert "logs.bind_specific_host" not in found


# ------------------------------------------------------------ a context that could not be created

CONTEXT_FAILURE = """\
build: 6400 (b1a2c3d4) with cc (GCC) 13.2.0 for x86_64-linux-gnu
llama_model_loader: loaded meta data with 30 key-value pairs and 291 tensors from /m/big.gguf
load_tensors: loading model tensors, this can take a while... (mmap = true)
load_tensors:   CPU_Mapped model buffer size =  4685.30 MiB
llama_context: constructing llama_context
common_init_from_params: failed to create context with model '/m/big.gguf'
srv    load_model: failed to load model, '/m/big.gguf'
main: exiting due to model loading error
"""


def test_offline_a_context_failure_without_a_reason_is_read_at_its_stage(tmp_path: Path) -> None:
    from exsa_doctor.api_offline import offline_diagnosis

    log = write(tmp_path / "pasted.log", CONTEXT_FAILURE)
    diagnosis = offline_diagnosis([log])
    found = {f.id: f for f in diagnosis.findings}
    # the first consequence line names the stage: after the weights, at the context
    assert found["logs.context_failed"].data["path"] == "/m/big.gguf"
    assert "logs.load_failed" not in found
    assert "logs.reason_logged" not in found
    # the weights were read: the model file is not what it points at
    assert diagnosis.causes[0].id in ("out-of-memory", "unrecognised-error"), [
        (c.id, c.probability) for c in diagnosis.causes
    ]
    (oom,) = [c for c in diagnosis.causes if c.id == "out-of-memory"]
    fix = " ".join(step.text for step in oom.remediation)
    assert "could not create the model's context" in fix and "context size" in fix, fix
    assert "failed to create context with model '/m/big.gguf'" in fix, fix


def test_offline_ollamas_wrapped_context_failure_keeps_its_stage(tmp_path: Path) -> None:
    from exsa_doctor.api_offline import offline_findings

    log = write(
        tmp_path / "pasted.log",
        "Error: llama runner process has terminated: error:failed to create context with model "
        "'/root/.ollama/models/blobs/sha256-c4e0'\n",
    )
    found = {f.id: f for f in offline_findings(log)}
    assert "logs.context_failed" in found
    assert "logs.load_failed" not in found  # not read as Ollama's bare runner exit


def test_offline_a_context_failure_with_its_reason_is_explained_by_it(tmp_path: Path) -> None:
    from exsa_doctor.api_offline import offline_findings

    text = CONTEXT_FAILURE.replace(
        "llama_context: constructing llama_context\n",
        "llama_context: constructing llama_context\n"
        "llama_kv_cache_unified: failed to allocate buffer for kv cache\n",
    )
    found = {f.id: f for f in offline_findings(write(tmp_path / "pasted.log", text))}
    assert found["logs.oom"].data["stage"] == "kv-cache"
    assert "logs.context_failed" not in found  # a consequence the root explains


def test_offline_a_pasted_reply_names_its_engine_and_its_address(tmp_path: Path) -> None:
    # llama-server's reply while it loads is its own wording: the engine is llama-server, and
    # with no --url its default address is the one the fix's commands use (not exsa-engine's)
    from exsa_doctor.api_offline import offline_diagnosis

    log = write(
        tmp_path / "pasted.log",
        '{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}\n',
    )
    diagnosis = offline_diagnosis([log])
    assert diagnosis.target.profile == "llama-server"
    assert "loading_reply" in diagnosis.target.profile_reason
    assert diagnosis.target.port == 8080 and diagnosis.target.url == "http://127.0.0.1:8080"
    assert diagnosis.causes[0].id == "race-condition"


@pytest.mark.parametrize(
    "line",
    [
        'Error: Post "http://127.0.0.1:11500/api/pull": dial tcp 127.0.0.1:11500: '
        "connect: connection refused",
        "Error: could not connect to ollama app, is it running?",
    ],
    ids=["go-error", "newer-wording"],
)
def test_offline_a_pasted_ollama_run_names_ollama_and_starts_its_server(
    tmp_path: Path, line: str
) -> None:
    # `ollama run` failing to reach its server is Ollama's own command line: the engine is
    # Ollama, and whichever cause ranks, starting the engine means `ollama serve`, not another
    # engine's command; where the CLI printed the address, the commands use it
    from exsa_doctor.api_offline import offline_diagnosis

    diagnosis = offline_diagnosis([write(tmp_path / "pasted.log", line + "\n")])
    assert diagnosis.target.profile == "ollama"
    assert "own_client" in diagnosis.target.profile_reason
    assert "logs.client_cli_unreachable" in {f.id for f in diagnosis.findings}
    (stopped,) = [c for c in diagnosis.causes if c.id == "engine-not-running"]
    commands = [cmd for step in stopped.remediation for cmd in step.commands]
    assert any("ollama serve" in cmd for cmd in commands), commands
    if "11500" in line:
        assert diagnosis.target.url == "http://127.0.0.1:11500"


def test_offline_an_undetected_paste_keeps_the_default_engine(tmp_path: Path) -> None:
    from exsa_doctor.api_offline import offline_diagnosis

    # no address in the paste: the port can come only from the default engine
    log = write(tmp_path / "pasted.log", "curl: (7) Couldn't connect to server\n")
    diagnosis = offline_diagnosis([log])
    assert diagnosis.target.profile == "exsa-engine"
    assert diagnosis.target.port == 3000


def findings_in(tmp_path: Path, text: str) -> dict[str, Finding]:
    """The findings of `text` read offline as a pasted log, by id."""
    from exsa_doctor.api_offline import offline_findings

    return {f.id: f for f in offline_findings(write(tmp_path / "pasted.log", text))}


# ------------------------------------------------------- a model the Hugging Face Hub refused

GATED_VLLM = """\
INFO 08-14 10:02:11 api_server.py:585] vLLM API server version 0.10.1
INFO 08-14 10:02:11 api_server.py:586] args: Namespace(model='meta-llama/Llama-3.1-8B-Instruct')
Traceback (most recent call last):
  File "/usr/local/lib/python3.12/site-packages/huggingface_hub/utils/_http.py", line 409, in hf_raise_for_status
    response.raise_for_status()
requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json
The above exception was the direct cause of the following exception:
huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-66bc)
Cannot access gated repo for url https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json.
Access to model meta-llama/Llama-3.1-8B-Instruct is restricted. You must have access to it and be authenticated to access it. Please log in.
"""


def test_offline_a_gated_hub_repo_is_a_missing_credential_not_a_missing_model(
    tmp_path: Path,
) -> None:
    from exsa_doctor.api_offline import offline_diagnosis

    diagnosis = offline_diagnosis([write(tmp_path / "vllm.log", GATED_VLLM)])
    found = {f.id: f for f in diagnosis.findings}
    assert found["logs.hub_unauthorized"].data["signature"] == "hf.gated-repo"
    assert "logs.model_error" not in found
    top = diagnosis.causes[0]
    assert top.id == "auth-required", [(c.id, c.probability) for c in diagnosis.causes]
    fix = " ".join(step.text for step in top.remediation)
    assert "accept its licence" in fix and "HF_TOKEN" in fix, fix
    # the engine's own API key has nothing to do with it: those steps are left out
    assert "Send the key the engine was started with" not in fix, fix
    assert any("huggingface-cli whoami" in c for step in top.remediation for c in step.commands)


def test_offline_a_hub_403_names_the_repo(tmp_path: Path) -> None:
    line = (
        "(APIServer pid=1) requests.exceptions.HTTPError: 403 Client Error: Forbidden for url: "
        "https://huggingface.co/google/gemma-2-9b-it/resolve/main/config.json\n"
    )
    found = findings_in(tmp_path, line)
    assert found["logs.hub_unauthorized"].data["repo"] == "google/gemma-2-9b-it"


@pytest.mark.parametrize(
    ("line", "not_this", "but_this"),
    [
        # the Hub answers 401 for a repo that does not exist, too: that is the missing model's row
        (
            "huggingface_hub.utils._errors.RepositoryNotFoundError: 401 Client Error. "
            "Repository Not Found for url: https://huggingface.co/api/models/nobody/no-such-model",
            "logs.hub_unauthorized",
            "logs.model_error",
        ),
        # quay and Docker Hub answer 'unauthorized' for an image that does not exist (renamed)
        (
            "Error: initializing source docker://quay.io/x/rocm-fedora:latest: reading manifest "
            "latest in quay.io/x/rocm-fedora: unauthorized: access to the requested resource is "
            "not authorized",
            "logs.client_unauthorized",
            "logs.unrecognised_error",
        ),
    ],
    ids=["missing-repo-not-gated", "registry-not-engine-key"],
)
def test_offline_a_line_that_sounds_like_another_cause_is_read_as_its_own(
    tmp_path: Path, line: str, not_this: str, but_this: str
) -> None:
    found = set(findings_in(tmp_path, line + "\n"))
    assert not_this not in found
    assert but_this in found


# ----------------------------------------- rows taught by training logs, rounds 8 and 9


@pytest.mark.parametrize(
    ("line", "finding", "data"),
    [
        # clap 4 and clap 2-3, as Rust servers print them
        (
            "error: unexpected argument '--ctx-size' found",
            "logs.bad_argument",
            {"flag": "--ctx-size"},
        ),
        (
            "error: Found argument '--gpu' which wasn't expected, or isn't valid in this context",
            "logs.bad_argument",
            {"flag": "--gpu"},
        ),
        (
            "error: invalid value 'abc' for '--port <PORT>': invalid digit found in string",
            "logs.bad_argument",
            {"flag": "--port <PORT>", "value": "abc"},
        ),
        (
            "ERROR: ggml-cuda was compiled without support for the current GPU architecture.",
            "logs.gpu_error",
            {},
        ),
        (
            "ERROR:root:Model type gemma3n not supported.",
            "logs.unknown_architecture",
            {"arch": "gemma3n"},
        ),
        (
            "RuntimeError: Failed to load 'ggml-cuda' from [.../llama_cpp/lib, .../llama_cpp/bin]",
            "logs.missing_library",
            {"library": "ggml-cuda"},
        ),
        (
            "ERROR Could not load engine: Could not load library "
            '"C:\\\\Jan\\\\engines\\\\cortex.llamacpp\\\\engine.dll"',
            "logs.missing_library",
            {"library": "C:\\\\Jan\\\\engines\\\\cortex.llamacpp\\\\engine.dll"},
        ),
        (
            "ValueError: invalid literal for int() with base 10: 'tcp://10.0.0.7:80'",
            "logs.bad_argument",
            {"flag": "VLLM_PORT", "value": "tcp://10.0.0.7:80"},
        ),
        (
            "invoking the NVIDIA Container Runtime Hook directly (e.g. specifying the docker "
            "--gpus flag) is not supported.",
            "logs.gpu_error",
            {},
        ),
        ("Error loading models: TypeError: fetch failed", "logs.client_refused", {}),
        # a 404 from the engine's own address is a wrong path, not a failed download
        (
            "Error: 404 Client Error: Not Found for url: http://localhost:11434/generate",
            "logs.client_not_found",
            {},
        ),
        (
            "docker: Error response from daemon: driver failed programming external connectivity "
            "on endpoint x (f1e7): Bind for 0.0.0.0:8080 failed: port is already allocated.",
            "logs.bind_failed",
            {"host": "0.0.0.0", "port": 8080},
        ),
        ("Instrucción ilegal (`core' generado)", "logs.illegal_instruction", {}),
        ("Ungültiger Maschinenbefehl (Speicherabzug geschrieben)", "logs.illegal_instruction", {}),
        (
            "error loading model: unrecognized tensor type 4",
            "logs.unsupported_format",
            {"what": "4"},
        ),
        # a version-1 file is too old, not too new (node-llama-cpp's wording)
        (
            "Error: GGUF version 1 is not supported by llama.cpp anymore",
            "logs.model_error",
            {"problem": "old-gguf"},
        ),
        (
            "java.lang.IllegalArgumentException: File is not in GGUF format",
            "logs.model_error",
            {"problem": "not-gguf"},
        ),
        (
            "Check failed: (__e == VK_SUCCESS) is false: Vulkan Error, code=-2: VK_ERROR_OUT_OF_DEVICE_MEMORY",
            "logs.oom",
            {"device_kind": "gpu"},
        ),
        # ---- round 9
        # llama.cpp's loader names the check since 2024
        (
            "llama_model_load: error loading model: check_tensor_dims: tensor "
            "'blk.0.attn_qkv.weight' not found",
            "logs.unsupported_format",
            {"tensor": "blk.0.attn_qkv.weight"},
        ),
        # Ollama's answer to a client, as JSON
        ('Error: HTTP Error (500): {"error":"invalid version"}', "logs.unsupported_format", {}),
        (
            "ValueError: `num_heads` must be divisible by `num_shards` "
            "(got `num_heads`: 71 and `num_shards`: 2",
            "logs.bad_argument",
            {"flag": "--num-shard", "n": "71", "size": "2"},
        ),
        (
            "AssertionError: Can't find /home/u/llama-2-70b-chat/config.json",
            "logs.model_error",
            {"path": "/home/u/llama-2-70b-chat/config.json", "problem": "no-such-file"},
        ),
        (
            "This may mean that you forgot to add '/v1' to the end of your 'apiBase' in "
            "config.json.",
            "logs.client_not_found",
            {},
        ),
        ("ERROR: response: <Response [404]>", "logs.client_not_found", {}),
        (
            "ValueError: [address=0.0.0.0:48516, pid=3387590] Invalid model URI /data/models/x",
            "logs.model_error",
            {"path": "/data/models/x", "problem": "no-such-file"},
        ),
        (
            "Exception: can't find model.tok_embeddings.weight in GGUF file!",
            "logs.unsupported_format",
            {"tensor": "model.tok_embeddings.weight"},
        ),
        (
            "RuntimeError: Can not found rewrite for architectures: "
            "['Qwen2VLForConditionalGeneration']",
            "logs.unknown_architecture",
            {"arch": "Qwen2VLForConditionalGeneration"},
        ),
        (
            "[2024-06-03 18:48:03.977] [error] [WASI-NN] GGML backend: Model file not found.",
            "logs.model_error",
            {"problem": "no-such-file"},
        ),
        # a Rust client's 403 from the Hub (mistral.rs's hf-hub)
        (
            'Could not get file "tokenizer.json" from API: RequestError(Status(403, '
            "Response[status: 403, status_text: Forbidden, url: "
            "https://huggingface.co/meta-llama/Meta-Llama-3.1-8B-Instruct/resolve/main/tokenizer.json]))",
            "logs.hub_unauthorized",
            {"repo": "meta-llama/Meta-Llama-3.1-8B-Instruct"},
        ),
        # ---- round 10: Ollama's own command line could not reach its server
        (
            'Error: Post "http://127.0.0.1:11434/api/pull": dial tcp 127.0.0.1:11434: '
            "connect: connection refused",
            "logs.client_cli_unreachable",
            {"host": "127.0.0.1", "port": "11434"},
        ),
        (
            'Error: Head "http://[::1]:11434/": dial tcp [::1]:11434: connectex: No connection '
            "could be made because the target machine actively refused it.",
            "logs.client_cli_unreachable",
            {"host": "[::1]", "port": "11434"},
        ),
        (
            "Error: could not connect to ollama app, is it running?",
            "logs.client_cli_unreachable",
            {},
        ),
        (
            "Error: could not connect to ollama server, run 'ollama serve' to start it",
            "logs.client_cli_unreachable",
            {},
        ),
        # a GGUF with no general.architecture key is not a language model (no engine knows '')
        (
            "llama_model_load: error loading model: error loading model architecture: "
            "unknown model architecture: ''",
            "logs.model_error",
            {"problem": "no-architecture"},
        ),
        # 2023 GGML containers: an older one than the engine reads, then a newer one
        (
            "ggml-alpaca-7b-q4.bin: invalid model file (bad magic [got 0x67676d66 want 0x67676a74])",
            "logs.model_error",
            {"problem": "old-ggml", "magic": "67676d66", "want": "67676a74"},
        ),
        (
            "m.gguf: invalid model file (bad magic [got 0x46554747 want 0x67676a74])",
            "logs.unsupported_format",
            {"magic": "46554747"},
        ),
        # Ollama's runner exiting without a reason is its own finding, not llama.cpp's failed load
        (
            "Error: llama runner process has terminated: signal: aborted (core dumped)",
            "logs.runner_exited",
            {"status": "signal: aborted (core dumped)"},
        ),
        ("llama_load_model_from_file: failed to load model", "logs.load_failed", {}),
        # a GGUF read by a loader older than GGUF (the reverse of an old GGML file)
        (
            'Failed to load LLaMA model from "m.gguf": invalid magic number 46554747 (GGUF)',
            "logs.unsupported_format",
            {"magic": "46554747"},
        ),
        # ---- round 10, taught by fresh14 once it was measured
        (
            ': ArgumentValidation("`max_input_tokens`(65537) must be < `max_total_tokens`(65536)")',
            "logs.bad_argument",
            {"reason": "`max_input_tokens`(65537) must be < `max_total_tokens`(65536)"},
        ),
        (
            "RuntimeError: ('Quantization scheme is not supported for ', 'the current GPU. "
            "Min capability: 80. ', 'Current capability: 70.')",
            "logs.gpu_error",
            {"need": "80", "have": "70"},
        ),
        (
            "error loading model: llama.cpp: tensor 'x' should not be 1004666880-dimensional",
            "logs.model_error",
            {"problem": "invalid", "dims": "1004666880"},
        ),
        ("no backends are loaded", "logs.missing_library", {}),
        (
            'Ollama error 503 Service Unavailable: {"error":"Server overloaded, please retry '
            'shortly (ref: aaa65c70)"}',
            "logs.overloaded",
            {},
        ),
        (
            "TVMError: Check failed: (output_res.IsOk()) is false: Insufficient GPU memory error: "
            "The available single GPU memory is 20584.716 MB, which is less than the sum",
            "logs.oom",
            {"device_kind": "gpu", "free": "20584.716"},
        ),
        (
            "RuntimeError: Cannot find libraries: libmlc_llm_module.so",
            "logs.missing_library",
            {"library": "libmlc_llm_module.so"},
        ),
        (
            'Cannot find vicuna-v1-7b lib in preferred path "dist/v/v_metal_float16.dylib"',
            "logs.model_error",
            {"problem": "no-such-file", "path": "dist/v/v_metal_float16.dylib"},
        ),
        (
            'Cannot find "mlc-chat-config.json" in path ""dist"/RedPajama-INCITE-Chat-3B',
            "logs.model_error",
            {"problem": "no-such-file"},
        ),
        (
            "There was a problem when trying to write in your cache folder "
            "(/.cache/huggingface/hub). You should set the environment variable "
            "TRANSFORMERS_CACHE to a writable directory.",
            "logs.permission_denied",
            {"path": "/.cache/huggingface/hub", "what": "path"},
        ),
        (
            "No LM Runtime found for model format 'gguf' !",
            "logs.illegal_instruction",
            {"feature": "AVX2", "format": "gguf"},
        ),
    ],
)
def test_offline_taught_rows_read_their_detail(
    tmp_path: Path, line: str, finding: str, data: dict[str, object]
) -> None:
    found = findings_in(tmp_path, line + "\n")
    assert finding in found, sorted(found)
    for key, value in data.items():
        assert found[finding].data[key] == value, found[finding].data


def test_offline_a_hub_401_then_repository_not_found_is_a_missing_repo(
    tmp_path: Path,
) -> None:
    from exsa_doctor.api_offline import offline_diagnosis

    # huggingface_hub's traceback for a repo that does not exist: the raw 401, then the reason
    text = (
        "requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: "
        "https://huggingface.co/api/models/nobody/no-such-model\n"
        "The above exception was the direct cause of the following exception:\n"
        "huggingface_hub.utils._errors.RepositoryNotFoundError: 401 Client Error. "
        "Repository Not Found for url: https://huggingface.co/api/models/nobody/no-such-model.\n"
    )
    diagnosis = offline_diagnosis([write(tmp_path / "hub.log", text)])
    found = {f.id: f for f in diagnosis.findings}
    # the 401 is evidence both ways; the missing repo's own line is the root
    assert "logs.hub_unauthenticated" in found
    assert (
        found["logs.model_error"]
        .data["line"]
        .startswith("huggingface_hub.utils._errors.RepositoryNotFoundError")
    )
    assert (
        found["logs.reason_logged"].data["signature"] == found["logs.model_error"].data["signature"]
    )
    assert diagnosis.causes[0].id == "model-missing-or-invalid", [
        (c.id, c.probability) for c in diagnosis.causes
    ]


def test_offline_gdbs_ptrace_refusal_after_an_assert_is_not_a_permission_problem(
    tmp_path: Path,
) -> None:
    # ggml runs gdb for a backtrace when it aborts; in a container gdb may not attach
    text = (
        "Could not attach to process.  If your uid matches the uid of the target\n"
        "ptrace: Operation not permitted.\n"
        "No stack.\n"
    )
    found = set(findings_in(tmp_path, text))
    assert "logs.permission_denied" not in found
    # the same words from anything else still are one
    assert "logs.permission_denied" in findings_in(tmp_path, "mlock: Operation not permitted\n")


# ------------------------------------------------------------- rows taught by round 9's training


def test_offline_a_modern_rust_panic_is_explained_by_the_line_after_it(tmp_path: Path) -> None:
    from exsa_doctor.api_offline import offline_diagnosis

    # since Rust 1.73 the panic's header names the place and the message follows on its own line
    text = (
        "thread 'main' (16397) panicked at mistralrs-core/src/gguf/content.rs:151:22:\n"
        "called `Result::unwrap()` on an `Err` value: Unknown GGUF architecture `qwen35`\n"
        "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n"
    )
    found = findings_in(tmp_path, text)
    # the reason is the root; the header is the consequence it explains
    assert found["logs.unknown_architecture"].data["arch"] == "qwen35"
    assert found["logs.reason_logged"].data["signature"] == "mistralrs.unknown-gguf-arch"
    top = offline_diagnosis([write(tmp_path / "rust.log", text)]).causes[0]
    assert top.id == "unsupported-architecture"
    assert any("qwen35" in e.summary for e in top.evidence_for)


def test_offline_nccls_plugin_probe_is_not_a_missing_library(tmp_path: Path) -> None:
    # every NCCL start looks for an optional network plugin and logs its absence at INFO
    line = (
        "omega:18302:18445 [0] NCCL INFO NET/Plugin: Plugin load returned 2 : libnccl-net.so: "
        "cannot open shared object file: No such file or directory : when loading libnccl-net.so\n"
    )
    assert "logs.missing_library" not in findings_in(tmp_path, line)
    # the row still reads a library that is missing
    real = "error while loading shared libraries: libnccl.so.2: cannot open shared object file\n"
    assert findings_in(tmp_path, real)["logs.missing_library"].data["library"] == "libnccl.so.2"
