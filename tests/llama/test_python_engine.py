"""The Python engine on llama.cpp (llama-cpp-python's `python -m llama_cpp.server`), live.

Needs an interpreter with `llama-cpp-python[server]` installed (it builds llama.cpp, minutes):
`EXSA_LLAMA_CPP_PYTHON=/path/to/venv/bin/python`. Without it these tests are skipped.

Diagnosed without `--profile`: detected from the process, healthy when it serves, port-in-use
with a fix that starts *this* engine (run as printed), auth-required with `--api_key`, and `run`
recognises it from its command line. Every process is stopped by PID (or by the process group
of our own child) in a fixture or `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest
from llama_helpers import Squatter, free_port, poll, stop_pid

from exsa_doctor.detect import refine_target
from exsa_doctor.model import Diagnosis
from exsa_doctor.runner import target_vars
from exsa_doctor.target import Target, resolve_target

pytestmark = pytest.mark.llama


def _cached_python() -> Path:
    """The venv python scripts/build-llama-cpp-python.sh builds (its pinned version)."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "build-llama-cpp-python.sh"
    match = re.search(r'^VERSION="([^"]+)"', script.read_text(encoding="utf-8"), re.M)
    version = match.group(1) if match else "unknown"
    root = os.environ.get("EXSA_LLAMA_CACHE") or str(Path.home() / ".cache" / "exsa-doctor")
    return Path(root) / f"llama-cpp-python-{version}" / "venv" / "bin" / "python"


@pytest.fixture(scope="session")
def engine_python() -> Path:
    explicit = os.environ.get("EXSA_LLAMA_CPP_PYTHON")
    path = Path(explicit) if explicit else _cached_python()
    if not path.is_file():
        hint = "build it with: bash scripts/build-llama-cpp-python.sh"
        if os.environ.get("CI"):
            pytest.fail(f"no llama-cpp-python build at {path} (CI is set; {hint})", pytrace=False)
        pytest.skip(f"no llama-cpp-python build at {path}; {hint}")
    probe = subprocess.run(
        [str(path), "-c", "import llama_cpp.server"], capture_output=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"{path} cannot import llama_cpp.server")
    return path


@pytest.fixture
def start_engine(
    engine_python: Path, tmp_path: Path
) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(
        model: Path, port: int, extra: Sequence[str] = ()
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"engine-{port}-{len(started)}.log"
        argv = [str(engine_python), "-m", "llama_cpp.server", "--model", str(model)]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "256", *extra]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        started.append(proc)
        return proc, log

    try:
        yield start
    finally:
        for proc in started:
            stop_pid(proc)


def _models_status(port: int) -> int | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def _serving(proc: subprocess.Popen[bytes], port: int, want: int = 200) -> None:
    def ok() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the engine exited {proc.returncode} before it served")
        return _models_status(port) == want

    poll(ok, 120, f"the Python engine on {port} to answer /v1/models {want}")


def diagnose_auto(
    url: str, logs: Sequence[Path] = (), model: Path | None = None
) -> tuple[Target, Diagnosis]:
    from exsa_doctor import probes
    from exsa_doctor.api import diagnose

    target = resolve_target(
        url=url, profile="auto", logs=tuple(logs), model=model, timeout_s=20.0, environ={}
    )
    target = refine_target(target, auto_profile=True)
    return target, diagnose(target, probes=probes.select())


def _explain(d: Diagnosis) -> str:
    return "\n".join(
        [f"verdict={d.verdict.value}", *(f"  {f.id} {dict(f.data)}" for f in d.findings)]
    )


def _commands(d: Diagnosis, cause_id: str) -> list[str]:
    (cause,) = [c for c in d.causes if c.id == cause_id]
    return [c for step in cause.remediation for c in step.commands]


def _path_with(python: Path) -> dict[str, str]:
    """PATH where `python3` is the engine's interpreter, as in the user's activated venv."""
    bindir = python.parent
    if not (bindir / "python3").exists():
        pytest.skip(f"no python3 next to {python}")
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_detected_and_healthy_and_its_ready_check_ends(
    start_engine: Callable[..., tuple[subprocess.Popen[bytes], Path]], tiny_model: Path
) -> None:
    port = free_port()
    proc, log = start_engine(tiny_model, port)
    _serving(proc, port)

    target, diagnosis = diagnose_auto(f"http://127.0.0.1:{port}", logs=(log,))
    assert target.profile.name == "llama-cpp-python", target.profile_reason
    assert str(proc.pid) in target.profile_reason
    assert diagnosis.verdict.value == "healthy", _explain(diagnosis)
    (gen,) = [f for f in diagnosis.findings if f.id == "generation.ok"]
    assert gen.data["tokens"] > 0
    if shutil.which("curl") and shutil.which("timeout"):
        ready = target_vars(target)["ready_check"]
        assert subprocess.run(["bash", "-c", ready], timeout=90, check=False).returncode == 0


def test_port_in_use_fix_starts_this_engine_as_printed(
    start_engine: Callable[..., tuple[subprocess.Popen[bytes], Path]],
    squatter: Callable[[int], Squatter],
    engine_python: Path,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    port = free_port()
    squat = squatter(port)
    proc, log = start_engine(tiny_model, port)
    poll(lambda: proc.poll() is not None, 120, "the engine to give up on the taken port")
    assert "error while attempting to bind" in log.read_text(errors="replace")

    target, diagnosis = diagnose_auto(f"http://127.0.0.1:{port}", logs=(log,), model=tiny_model)
    assert target.profile.name == "llama-cpp-python", target.profile_reason
    assert diagnosis.causes[0].id == "port-in-use", _explain(diagnosis)
    commands = _commands(diagnosis, "port-in-use")
    assert f"kill {squat.pid}   # only if it is yours" in commands
    assert not any("exsa-engine" in c or "llama-server" in c for c in commands), commands
    (free_start,) = [c for c in commands if c.startswith("PORT=$(")]
    assert "python3 -m llama_cpp.server" in free_start

    # run the printed command: it picks a free port and the engine serves there
    out = tmp_path / "printed.log"
    with out.open("wb") as fh:
        printed = subprocess.Popen(
            ["bash", "-c", free_start],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=_path_with(engine_python),
            start_new_session=True,
        )
    try:

        def serving_port() -> int | None:
            text = out.read_text(errors="replace")
            marker = "Uvicorn running on http://127.0.0.1:"
            if marker not in text:
                return None
            return int(text.split(marker, 1)[1].split()[0])

        poll(lambda: serving_port() is not None or printed.poll() is not None, 120, "serving")
        got = serving_port()
        assert got is not None and got != port, out.read_text(errors="replace")[-2000:]
        assert _models_status(got) == 200
    finally:
        # our own child's process group: bash and the engine it started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(printed.pid, signal.SIGTERM)
        try:
            printed.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(printed.pid, signal.SIGKILL)
            printed.wait(timeout=20)


def test_api_key_is_auth_required_and_the_keyed_request_works(
    start_engine: Callable[..., tuple[subprocess.Popen[bytes], Path]], tiny_model: Path
) -> None:
    key = "py-key-42"
    port = free_port()
    proc, _log = start_engine(tiny_model, port, extra=["--api_key", key])
    _serving(proc, port, want=401)  # its readiness route wants the key too

    target, diagnosis = diagnose_auto(f"http://127.0.0.1:{port}")
    assert target.profile.name == "llama-cpp-python"
    assert diagnosis.causes[0].id == "auth-required", _explain(diagnosis)
    assert any(f.id == "health.auth_required" for f in diagnosis.findings)
    text = " ".join(
        s.text for c in diagnosis.causes if c.id == "auth-required" for s in c.remediation
    )
    assert "--api_key" in text and "API_KEY" in text
    if shutil.which("curl") is None:
        pytest.skip("no curl to run the printed fix with")
    (keyed,) = [c for c in _commands(diagnosis, "auth-required") if "$API_KEY" in c]
    done = subprocess.run(
        ["bash", "-c", keyed],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "API_KEY": key},
        check=False,
    )
    assert done.returncode == 0 and json.loads(done.stdout)["choices"], done.stdout


def test_run_recognises_it_from_its_command_line(engine_python: Path, tiny_model: Path) -> None:
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exsa_doctor",
            "run",
            "--port",
            "auto",
            "--ready-timeout",
            "120",
            "--then",
            "curl -sf $EXSA_URL/v1/models",
            "--",
            str(engine_python),
            "-m",
            "llama_cpp.server",
            "--model",
            str(tiny_model),
            "--n_ctx",
            "256",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        out, err = runner.communicate(timeout=240)
    finally:
        if runner.poll() is None:
            stop_pid(runner)  # type: ignore[arg-type]
    assert runner.returncode == 0, out + err
    assert "(llama-cpp-python)" in err, err
    assert json.loads(out)["object"] == "list"
    leftover = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(tiny_model) in " ".join(p.info["cmdline"] or [])
        and "llama_cpp.server" in " ".join(p.info["cmdline"] or [])
    ]
    assert not leftover, leftover
