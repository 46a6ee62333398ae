"""`exsa-doctor run` with the real stand-in engine: preflight, start, wait, --then, teardown.

Processes are checked by PID (plus creation time) before and after; every process a test starts,
or learns about from `run`, is stopped by PID in a `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from exsa_doctor.demo.standin.ggufmake import write_gguf
from exsa_doctor.profiles import load_builtin
from exsa_doctor.supervise.run import (
    RunOptions,
    RunUsageError,
    bind_check,
    choose_port_host,
    engine_command,
    preflight,
)

CLI_TIMEOUT_S = 120
STANDIN = [sys.executable, "-m", "exsa_doctor.demo.standin"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gone(pid: int, create_time: float | None = None) -> bool:
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.01:
            return True
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_if_ours(pid: int, create_time: float | None) -> None:
    """Stop a process this test caused, by PID, only if it is still that process."""
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        if create_time is None or abs(proc.create_time() - create_time) <= 0.01:
            proc.kill()


def wait_for(predicate: object, timeout_s: float = 60.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    write_gguf(path)
    return path


def run_env(model: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    return dict(
        os.environ,
        MODEL_PATH=str(model),
        EXSA_STANDIN_LOAD_S="0.3",
        TMPDIR=str(temp),  # run's own temp log dir goes here, so the test can see it removed
        **extra,
    )


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exsa_doctor", "run", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
    )


@pytest.mark.parametrize("code", [0, 7])
def test_then_exit_code_passes_through_and_nothing_is_left(
    code: int, model: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "seen.json"
    probe = (
        "import json, os, urllib.request; "
        "h = json.loads(urllib.request.urlopen(os.environ['EXSA_URL'] + '/v1/health', timeout=5)"
        ".read()); "
        f"json.dump(dict(pid=int(os.environ['EXSA_PID']), port=int(os.environ['EXSA_PORT']), "
        f"url=os.environ['EXSA_URL'], status=h['status']), open({str(seen)!r}, 'w'))"
    )
    then = f'{sys.executable} -c "{probe}" && exit {code}'
    engine_pid = None
    try:
        done = run_cli(["--port", "auto", "--then", then, "--", *STANDIN], run_env(model, tmp_path))
        facts = json.loads(seen.read_text())
        engine_pid = facts["pid"]
        assert done.returncode == code, done.stderr
        assert facts["status"] == "healthy"  # --then ran only once the engine was ready
        assert facts["url"] == f"http://127.0.0.1:{facts['port']}"
        assert gone(engine_pid)
        assert bind_check("127.0.0.1", facts["port"]) is None  # the port is free again
        assert "no process of its group remains" in done.stderr
        assert list((tmp_path / "tmp").iterdir()) == []  # the temporary log dir was removed
    finally:
        if engine_pid is not None:
            kill_if_ours(engine_pid, None)


def test_a_squatter_on_the_port_is_refused_with_its_pid_named(model: Path, tmp_path: Path) -> None:
    port = free_port()
    squatter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time\n"
            "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(4)\n"
            "print('listening', flush=True); time.sleep(120)",
            str(port),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert squatter.stdout is not None
        assert squatter.stdout.readline().strip() == "listening"
        done = run_cli(
            ["--port", str(port), "--then", "exit 0", "--", *STANDIN], run_env(model, tmp_path)
        )
        assert done.returncode == 1, done.stderr
        assert "preflight refused to start the engine" in done.stderr
        assert f"port 127.0.0.1:{port} is taken" in done.stderr
        assert f"PID {squatter.pid} (" in done.stderr
        assert "starting" not in done.stderr  # nothing was started
        assert squatter.poll() is None  # and the squatter was not touched
    finally:
        squatter.kill()
        squatter.wait(timeout=30)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_run_mid_then_tears_everything_down(
    signum: int, code: int, model: Path, tmp_path: Path
) -> None:
    ids = tmp_path / "ids"
    then = f"echo $EXSA_PID $$ > {ids}.tmp && mv {ids}.tmp {ids} && sleep 60"
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exsa_doctor",
            "run",
            "--port",
            "auto",
            "--then",
            then,
            "--",
            *STANDIN,
        ],
        env=run_env(model, tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    tracked: list[tuple[int, float]] = []
    try:
        wait_for(ids.exists)
        engine_pid, shell_pid = (int(x) for x in ids.read_text().split())
        shell = psutil.Process(shell_pid)
        wait_for(lambda: bool(shell.children()))
        sleeper = shell.children()[0]
        engine = psutil.Process(engine_pid)
        tracked = [(p.pid, p.create_time()) for p in (engine, shell, sleeper)]
        assert engine.ppid() == runner.pid
        runner.send_signal(signum)
        _, err = runner.communicate(timeout=CLI_TIMEOUT_S)
        assert runner.returncode == code, err
        for pid, created in tracked:
            assert gone(pid, created), f"PID {pid} survived the teardown"
        assert f"{signal.Signals(signum).name} received" in err
        assert "no process of its group remains" in err
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(timeout=30)
        for pid, created in tracked:
            kill_if_ours(pid, created)


def test_start_up_failure_is_diagnosed_and_reported(model: Path, tmp_path: Path) -> None:
    report_dir = tmp_path / "reports"
    env = run_env(model, tmp_path, EXSA_STANDIN_MODE="model-error")
    done = run_cli(
        ["--port", "auto", "--report-dir", str(report_dir), "--then", "exit 0", "--", *STANDIN],
        env,
    )
    match = re.search(r"process up \(PID (\d+)\)", done.stderr) or re.search(
        r"process exited \(PID (\d+)", done.stderr
    )
    assert match is not None, done.stderr
    engine_pid = int(match.group(1))
    try:
        assert done.returncode == 1, done.stderr
        assert f"the engine (PID {engine_pid}) exited with exit code 1" in done.stderr
        assert "logs.model_error" in done.stderr  # the diagnosis read the engine's log
        report = json.loads((report_dir / "report.json").read_text())
        ids = {f["id"] for f in report["findings"]}
        assert "logs.model_error" in ids
        assert "processes.target_exited" in ids
        assert (report_dir / "report.md").read_text().strip()
        assert "not within the file bounds" in (report_dir / "engine.log").read_text()
        assert gone(engine_pid)
    finally:
        kill_if_ours(engine_pid, None)


def test_log_option_keeps_the_engine_log_where_asked(model: Path, tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    done = run_cli(
        ["--port", "auto", "--log", str(log), "--then", "exit 0", "--", *STANDIN],
        run_env(model, tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert "Server listening" in log.read_text()
    assert "Server shut down gracefully" in log.read_text()  # SIGTERM, not SIGKILL


def test_without_report_dir_the_log_tail_is_printed_and_the_temp_dir_removed(
    model: Path, tmp_path: Path
) -> None:
    env = run_env(model, tmp_path, EXSA_STANDIN_MODE="model-error")
    done = run_cli(["--port", "auto", "--", *STANDIN], env)
    assert done.returncode == 1, done.stderr
    assert "lines of the engine log" in done.stderr
    assert "|" in done.stderr and "Failed to initialize inference engine" in done.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_bad_model_is_refused_before_anything_starts(tmp_path: Path) -> None:
    truncated = tmp_path / "cut.gguf"
    size = write_gguf(tmp_path / "full.gguf")
    write_gguf(truncated, truncate_to=size // 2)
    done = run_cli(["--port", "auto", "--", *STANDIN], run_env(truncated, tmp_path))
    assert done.returncode == 1
    assert f"the model {truncated} is truncated" in done.stderr
    assert "starting" not in done.stderr


def test_usage_errors_exit_2(model: Path, tmp_path: Path) -> None:
    env = run_env(model, tmp_path)
    assert run_cli(["--port", "auto"], env).returncode == 2  # no engine command
    bad = run_cli(["--port", "eighty", "--", *STANDIN], env)
    assert bad.returncode == 2 and "--port" in bad.stderr
    missing = run_cli(["--port", "auto", "--", str(tmp_path / "no-such-engine")], env)
    assert missing.returncode == 2 and "cannot start" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("reuse", [False, True])
def test_a_bound_socket_that_does_not_listen_is_refused(reuse: bool) -> None:
    # a bound, non-listening socket refuses connections, yet it holds the port: it may listen
    # later (vLLM binds first, listens after the load), and one of the two servers will lose
    with socket.socket() as holder:
        if reuse:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        port = int(holder.getsockname()[1])
        # a plain test bind misses the SO_REUSEADDR case on Linux; the socket table does not
        assert (bind_check("127.0.0.1", port) is None) is reuse
        problems = preflight(port, "127.0.0.1", None)
        assert [p.kind for p in problems] == ["port"]
        assert problems[0].pids == (os.getpid(),)
        assert "(bound)" in problems[0].message
    assert preflight(port, "127.0.0.1", None) == []


def test_the_port_reaches_each_engine_its_own_way() -> None:
    env: dict[str, str] = {}
    args, out = engine_command(load_builtin("exsa-engine"), ["exsa-engine"], "127.0.0.1", 4100, env)
    assert args == ["exsa-engine"]
    assert (out["PORT"], out["HOST"]) == ("4100", "127.0.0.1")
    args, out = engine_command(
        load_builtin("llama-server"), ["llama-server", "-m", "m.gguf"], "127.0.0.1", 4101, env
    )
    assert args == ["llama-server", "-m", "m.gguf", "--port", "4101", "--host", "127.0.0.1"]
    args, out = engine_command(load_builtin("ollama"), ["ollama", "serve"], "127.0.0.1", 4102, env)
    assert out["OLLAMA_HOST"] == "127.0.0.1:4102"


def test_a_port_that_contradicts_the_engines_own_flag_is_a_usage_error() -> None:
    opts = RunOptions(argv=["llama-server", "--port", "9000"], port=9001)
    with pytest.raises(RunUsageError, match="contradicts"):
        choose_port_host(opts, load_builtin("llama-server"))
    same = RunOptions(argv=["llama-server", "--port", "9000"], port=9000)
    assert choose_port_host(same, load_builtin("llama-server")) == (9000, "127.0.0.1")
