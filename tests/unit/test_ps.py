"""`exsa-doctor ps` on real processes: a running stand-in, an orphan and a real zombie.

Every process a test starts is stopped (and reaped, where it is ours) by PID in a `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from exsa_doctor.demo.standin.ggufmake import write_gguf
from tests.support.net import free_port, listening, wait_for

CLI_TIMEOUT_S = 120


def kill_if_same(pid: int, create_time: float) -> None:
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) <= 0.01:
            proc.kill()


def ps_json() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "exsa_doctor", "ps", "--format", "json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def row(listing: dict[str, Any], pid: int) -> dict[str, Any]:
    rows = [r for r in listing["instances"] if r["pid"] == pid]
    assert len(rows) == 1, f"PID {pid} not listed once: {listing['instances']}"
    found: dict[str, Any] = rows[0]
    return found


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    write_gguf(path)
    return path


def standin_env(model: Path, port: int) -> dict[str, str]:
    return dict(
        os.environ,
        MODEL_PATH=str(model),
        PORT=str(port),
        HOST="127.0.0.1",
        EXSA_STANDIN_LOAD_S="0.2",
    )


def test_ps_lists_a_running_instance_with_port_model_and_memory(
    model: Path, tmp_path: Path
) -> None:
    port = free_port()
    engine = subprocess.Popen(
        [sys.executable, "-m", "exsa_doctor.demo.standin"],
        env=standin_env(model, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: listening(port))
        r = row(ps_json(), engine.pid)
        assert r["profile"] == "exsa-engine"
        assert r["ppid"] == os.getpid()
        assert (r["parent_alive"], r["orphaned"], r["zombie"]) == (True, False, False)
        assert f"127.0.0.1:{port}" in r["ports"]
        assert r["configured_port"] == port
        assert r["model"] == str(model)
        assert r["rss_bytes"] > 0
        assert r["age_s"] >= 0
        text = subprocess.run(
            [sys.executable, "-m", "exsa_doctor", "ps"],
            check=False,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        ).stdout
        line = next(x for x in text.splitlines() if x.startswith(f"{engine.pid} "))
        assert f"127.0.0.1:{port}" in line and "exsa-engine" in line
    finally:
        engine.kill()
        engine.wait(timeout=30)


def test_a_zombie_is_shown_as_a_zombie(tmp_path: Path) -> None:
    # a real engine is recognised by its executable's name: a copy of `sleep` named exsa-engine
    fake = tmp_path / "exsa-engine"
    sleep_bin = shutil.which("sleep")
    assert sleep_bin is not None
    shutil.copy(sleep_bin, fake)
    proc = subprocess.Popen([str(fake), "60"])
    try:
        os.kill(proc.pid, signal.SIGKILL)
        # not reaped on purpose: it stays a zombie until the finally below
        wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE)
        r = row(ps_json(), proc.pid)
        assert r["zombie"] is True
        assert r["state"] == "zombie"
        assert r["rss_bytes"] is None
        assert r["ports"] == []
        text = subprocess.run(
            [sys.executable, "-m", "exsa_doctor", "ps"],
            check=False,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        ).stdout
        assert f"PID {proc.pid} is a zombie" in text
        line = next(x for x in text.splitlines() if x.startswith(f"{proc.pid} "))
        assert "zombie" in line and "running" not in line and "sleeping" not in line
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_an_orphaned_instance_is_marked_orphaned(model: Path, tmp_path: Path) -> None:
    port = free_port()
    # the launcher shell starts the engine in the background and exits: the engine is orphaned
    launcher = subprocess.run(
        [
            "/bin/sh",
            "-c",
            '"$@" >/dev/null 2>&1 </dev/null & echo $!',
            "sh",
            sys.executable,
            "-m",
            "exsa_doctor.demo.standin",
        ],
        check=True,
        capture_output=True,
        text=True,
        env=standin_env(model, port),
        timeout=60,
    )
    pid = int(launcher.stdout.strip())
    created = psutil.Process(pid).create_time()
    try:
        wait_for(lambda: listening(port))
        r = row(ps_json(), pid)
        assert r["orphaned"] is True
        assert r["ppid"] != os.getpid()
        assert r["zombie"] is False
        assert f"127.0.0.1:{port}" in r["ports"]
    finally:
        kill_if_same(pid, created)
