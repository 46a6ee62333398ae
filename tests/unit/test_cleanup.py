"""`exsa-doctor cleanup` on real processes: orphaned stand-ins, a foreign listener, lookalikes.

Every test scopes cleanup with `--port` or `--model` to resources it made itself, so it can never
touch processes of other test runs on the machine. Every process a test starts is stopped by PID
(and creation time) in a `finally`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from exsa_doctor.demo.standin.ggufmake import write_gguf
from exsa_doctor.supervise.cleanup import make_plan
from tests.support.net import free_port, listening, wait_for

CLI_TIMEOUT_S = 120
Ident = tuple[int, float]


def alive(ident: Ident) -> bool:
    try:
        proc = psutil.Process(ident[0])
        return abs(proc.create_time() - ident[1]) <= 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_orphan(argv: list[str], env: dict[str, str]) -> Ident:
    """Start `argv` from a launcher shell that exits at once: the process is orphaned."""
    launcher = subprocess.run(
        ["/bin/sh", "-c", '"$@" >/dev/null 2>&1 </dev/null & echo $!', "sh", *argv],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    pid = int(launcher.stdout.strip())
    return pid, psutil.Process(pid).create_time()


@pytest.fixture
def started() -> Iterator[list[Ident]]:
    """Processes a test started; each is killed by PID (if still the same process) at the end."""
    idents: list[Ident] = []
    yield idents
    for pid, created in idents:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) <= 0.01:
                proc.kill()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    write_gguf(path)
    return path


def orphan_engine(model: Path, port: int, started: list[Ident]) -> Ident:
    env = dict(
        os.environ,
        MODEL_PATH=str(model),
        PORT=str(port),
        HOST="127.0.0.1",
        EXSA_STANDIN_LOAD_S="0.2",
    )
    ident = start_orphan([sys.executable, "-m", "exsa_doctor.demo.standin"], env)
    started.append(ident)
    wait_for(lambda: listening(port))
    return ident


def cleanup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exsa_doctor", "cleanup", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def test_cleanup_stops_an_orphaned_instance_on_the_port(model: Path, started: list[Ident]) -> None:
    port = free_port()
    engine = orphan_engine(model, port, started)
    done = cleanup("--port", str(port), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"stop PID {engine[0]}" in done.stdout
    assert "orphaned" in done.stdout
    assert f"listens on port {port}" in done.stdout
    assert "owned by you" in done.stdout  # why it is safe
    assert f"PID {engine[0]}: terminated" in done.stdout
    assert f"port {port} is free" in done.stdout
    assert not alive(engine)
    assert not listening(port)


def test_cleanup_by_model_waits_until_it_is_no_longer_mapped(
    model: Path, started: list[Ident]
) -> None:
    engine = orphan_engine(model, free_port(), started)
    maps = Path(f"/proc/{engine[0]}/maps")
    if maps.exists():
        assert str(model) in maps.read_text()  # the stand-in maps its model, like llama.cpp
    done = cleanup("--model", str(model), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"stop PID {engine[0]}" in done.stdout
    assert "is no longer held by the stopped instances" in done.stdout
    assert not alive(engine)


def test_a_foreign_listener_and_lookalikes_are_never_signalled(
    model: Path, started: list[Ident]
) -> None:
    port = free_port()
    env = dict(os.environ, PORT=str(port), MODEL_PATH=str(model))
    foreign = start_orphan(
        [
            sys.executable,
            "-c",
            "import socket, sys, time\n"
            "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(4)\n"
            "time.sleep(120)",
            str(port),
        ],
        env,
    )
    started.append(foreign)
    # processes whose command lines merely mention the engine, configured for the same port
    editor = start_orphan(
        [sys.executable, "-c", "import time; time.sleep(120)", "vim", "exsa-engine.log"], env
    )
    shell = start_orphan(["/bin/sh", "-c", "sleep 120; : exsa-engine --port $PORT"], env)
    started.extend([editor, shell])
    wait_for(lambda: listening(port))
    done = cleanup("--port", str(port), "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no stale engine instance to stop" in done.stdout
    assert f"PID {foreign[0]}:" in done.stdout
    assert "not an engine instance: never signalled" in done.stdout
    for ident in (editor, shell):
        assert f"PID {ident[0]}" not in done.stdout
    assert f"port {port} is held by a process that is not an engine instance" in done.stderr
    for ident in (foreign, editor, shell):
        assert alive(ident), f"PID {ident[0]} was signalled"
    assert listening(port)


def test_dry_run_signals_nothing(model: Path, started: list[Ident]) -> None:
    port = free_port()
    engine = orphan_engine(model, port, started)
    done = cleanup("--port", str(port), "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dry run, nothing will be signalled" in done.stdout
    assert f"stop PID {engine[0]}" in done.stdout
    assert "cleanup report" not in done.stdout
    assert alive(engine)
    assert listening(port)


def test_without_a_terminal_and_without_yes_nothing_is_signalled(
    model: Path, started: list[Ident]
) -> None:
    port = free_port()
    engine = orphan_engine(model, port, started)
    done = cleanup("--port", str(port))
    assert done.returncode == 1
    assert f"stop PID {engine[0]}" in done.stdout
    assert "--yes" in done.stderr
    assert alive(engine)


def test_the_plan_skips_an_instance_whose_pid_was_reused(model: Path, started: list[Ident]) -> None:
    from dataclasses import replace

    from exsa_doctor.supervise.cleanup import execute

    port = free_port()
    engine = orphan_engine(model, port, started)
    plan = make_plan(port, None)
    assert [t.pid for t in plan.targets] == [engine[0]]
    # the same PID with another start time: what a reused PID looks like to the re-check
    plan.targets[0] = replace(plan.targets[0], create_time=plan.targets[0].create_time - 100.0)
    report = execute(plan, grace_s=1.0)
    assert report.outcomes == []
    assert report.skipped and report.skipped[0][0] == engine[0]
    assert alive(engine)
