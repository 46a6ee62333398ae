"""Every fix command, for every built-in engine, parses as shell and names no other engine
(issue 9, item 4). Commands come from the cause table and the profile's [commands] table."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from exsa_doctor.causes import load_causes
from exsa_doctor.demo.standin.ggufmake import write_gguf
from exsa_doctor.model import Finding, Level
from exsa_doctor.profiles import all_builtin, builtin_names, load_builtin
from exsa_doctor.runner import target_vars
from exsa_doctor.scoring import fill
from exsa_doctor.target import resolve_target

_FINDING = re.compile(r"\{([a-z_]+(?:\.[a-z_]+)+):([a-z_]+)\}")


def _value(key: str) -> object:
    if key in ("pid", "holder_pid", "port"):
        return 4242
    if key == "pids":
        return [4242, 4243]
    if key == "cleanup_command":
        return "exsa-doctor cleanup --port 8080"
    if key in ("url", "working_url"):
        return "http://127.0.0.1:8081"
    if key == "health_path":
        return "/health"
    return "/srv/models/a model.gguf" if key in ("path", "parent") else "text"


def _findings_for(template: str) -> dict[str, Finding]:
    by_id: dict[str, Finding] = {}
    for fid, key in _FINDING.findall(template):
        old = dict(by_id[fid].data) if fid in by_id else {}
        old[key] = _value(key)
        by_id[fid] = Finding(fid.split(".")[0], fid, Level.INFO, "x", old)
    return by_id


def _other_engines(name: str) -> set[str]:
    return {exe for p in all_builtin() if p.name != name for exe in p.executables}


@pytest.mark.parametrize("profile", builtin_names())
def test_fix_commands_parse_as_shell_and_name_only_this_engine(profile: str) -> None:
    target = resolve_target(
        url="http://127.0.0.1:8080",
        model=None,
        profile=profile,
        environ={},
    )
    tvars = target_vars(target)
    for key in ("start_command", "run_command", "ready_check"):
        assert key in tvars, f"{profile} has no [commands] {key}"
    others = _other_engines(profile)
    shown = 0
    for cause in load_causes():
        for step in cause.remediation:
            for template in step.commands:
                command = fill(template, _findings_for(template), tvars)
                if command is None:
                    continue
                shown += 1
                shlex.split(command, comments=True)
                check = subprocess.run(
                    ["bash", "-n", "-c", command], capture_output=True, text=True, timeout=10
                )
                assert check.returncode == 0, f"{cause.id}: {command!r}: {check.stderr}"
                words = set(re.findall(r"[A-Za-z0-9_.-]+", command))
                assert not words & others, f"{cause.id} names another engine: {command!r}"
    assert shown > 10


def test_the_free_port_command_prints_a_port_and_starts_the_engine_on_it() -> None:
    # the old example (`exsa-doctor run ... -- true`) printed nothing; this one works
    (cause,) = [c for c in load_causes() if c.id == "port-in-use"]
    (template,) = [
        c for step in cause.remediation for c in step.commands if c.startswith("PORT=$(")
    ]
    target = resolve_target(url="http://127.0.0.1:8080", profile="llama-server", environ={})
    command = fill(template, {}, target_vars(target))
    assert command is not None
    free_port_part = command.split(" && ", 1)[0]
    out = subprocess.run(
        ["bash", "-c", free_port_part + ' && echo "$PORT"'],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert 0 < int(out.stdout.strip()) < 65536
    assert command.endswith('--port "$PORT"'), command


def test_readiness_checks_are_bounded_and_match_the_engines_ready_answer() -> None:
    for profile in all_builtin():
        ready = profile.commands.ready
        assert ready.startswith("timeout "), f"{profile.name}: {ready}"
        # exsa-engine says "healthy"; llama-server says {"status":"ok"} and never "healthy"
        if "healthy" in ready:
            assert "healthy" in profile.health.ready_values, profile.name
    assert "healthy" not in load_builtin("llama-server").commands.ready


def test_filled_values_keep_their_braces() -> None:
    # a JSON body filled into a command must not lose a brace to template unescaping
    body = '{"a": {"b": 1}}'
    assert fill("curl -d '{target:body}' {{x}}", {}, {"body": body}) == f"curl -d '{body}' {{x}}"


# ------------------------------------------------------------ exsa-engine's commands, run as printed


def _engine_on_path(tmp_path: Path) -> dict[str, str]:
    """PATH with an `exsa-engine` that is the stand-in engine (the real one is not here)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "exsa-engine"
    exe.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m exsa_doctor.demo.standin "$@"\n'
    )
    exe.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}


def _start_printed(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            ["bash", "-c", command],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Our own child's process group (bash and the engine it started), by the child's PID."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the readiness check uses curl")
def test_exsa_engine_start_and_ready_check_run_as_printed(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    write_gguf(model)
    env = _engine_on_path(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    target = resolve_target(
        url=f"http://127.0.0.1:{port}", model=model, profile="exsa-engine", environ={}
    )
    tvars = target_vars(target)
    engine = _start_printed(tvars["start_command"], env, tmp_path / "engine.log")
    try:
        ready = subprocess.run(["bash", "-c", tvars["ready_check"]], timeout=120, check=False)
        assert ready.returncode == 0, (tmp_path / "engine.log").read_text(errors="replace")
        assert engine.poll() is None
    finally:
        _stop_group(engine)


def test_exsa_engine_free_port_start_runs_as_printed(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    write_gguf(model)
    env = _engine_on_path(tmp_path)
    target = resolve_target(
        url="http://127.0.0.1:3000", model=model, profile="exsa-engine", environ={}
    )
    (cause,) = [c for c in load_causes() if c.id == "port-in-use"]
    (template,) = [
        c for step in cause.remediation for c in step.commands if c.startswith("PORT=$(")
    ]
    command = fill(template, {}, target_vars(target))
    assert command is not None
    log = tmp_path / "engine.log"
    engine = _start_printed(command, env, log)
    try:
        deadline = time.monotonic() + 60
        while "Server listening on" not in log.read_text(errors="replace"):
            assert engine.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        address = log.read_text(errors="replace").split("Server listening on http://", 1)[1]
        port = int(address.split()[0].rsplit(":", 1)[1])
        assert port != 3000
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=5) as resp:
            assert json.loads(resp.read())["status"] == "healthy"
    finally:
        _stop_group(engine)


def test_exsa_engine_run_command_runs_as_printed(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    write_gguf(model)
    env = _engine_on_path(tmp_path)
    # `exsa-doctor` itself on PATH, as after `pip install`
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    if shutil.which("exsa-doctor", path=env["PATH"]) is None:
        pytest.skip("no exsa-doctor script next to this interpreter")
    target = resolve_target(
        url="http://127.0.0.1:3000", model=model, profile="exsa-engine", environ={}
    )
    command = target_vars(target)["run_command"]
    done = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=180,
        env={**env, "NO_COLOR": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "engine ready at http://127.0.0.1:" in done.stdout
