"""Issue 9 with the real llama-server, on a machine where more than one engine runs.

Every case is diagnosed without `--profile` (the engine is detected), as a new user would:

- a server a script started with `&` (re-parented when the script exits) that serves fine is
  healthy, not a stale instance;
- the script race (start in the background, ask at once, fail) is a race with `--failed-at`;
- two servers on one model: asking about either names that one, never its neighbour;
- a port held by a foreign program while a neighbour llama-server runs elsewhere: the fix names
  the holder, and neither the fix nor the timeline borrows the neighbour;
- `wait` started before the server accepts llama-server's `{"status":"ok"}`;
- `run` beside a neighbour that maps the same model starts (no preflight refusal);
- a server started with `--api-key`, asked without one: `auth-required`, with a fix that works.

Servers a test starts directly are stopped by the `start_llama` fixture; servers a launcher
orphans are stopped by PID in the `orphans` fixture (checked to be our binary first).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest
from llama_helpers import LlamaServer, Squatter, free_port, poll, stop_pid

from exsa_doctor.detect import refine_target
from exsa_doctor.model import Diagnosis, Finding
from exsa_doctor.target import Target, resolve_target

pytestmark = pytest.mark.llama

StartLlama = Callable[..., LlamaServer]

# start "$@" in the background with its output in $1 and exit at once: the server is orphaned
_LAUNCHER = 'log="$1"; shift; "$@" >"$log" 2>&1 </dev/null & echo $!'


def diagnose_auto(
    url: str,
    *,
    logs: Sequence[Path] = (),
    failed_at: str | None = None,
    model: Path | None = None,
) -> tuple[Target, Diagnosis]:
    """The library path `exsa-doctor diagnose` takes, with the profile left to detection."""
    from exsa_doctor import probes
    from exsa_doctor.api import diagnose

    target = resolve_target(
        url=url,
        profile="auto",
        logs=tuple(logs),
        failed_at=failed_at,
        model=model,
        timeout_s=20.0,
        environ={},
    )
    target = refine_target(target, auto_profile=True)
    return target, diagnose(target, probes=probes.select())


def findings(diagnosis: Diagnosis, fid: str) -> list[Finding]:
    return [f for f in diagnosis.findings if f.id == fid]


def ids(diagnosis: Diagnosis) -> set[str]:
    return {f.id for f in diagnosis.findings}


def explain(diagnosis: Diagnosis) -> str:
    causes = ", ".join(f"{c.id}={c.probability:.2f}" for c in diagnosis.causes[:4])
    rows = "\n".join(f"  {f.id} {dict(f.data)}" for f in diagnosis.findings)
    return f"verdict={diagnosis.verdict.value} causes: {causes}\n{rows}"


def fix_text(diagnosis: Diagnosis, cause_id: str) -> str:
    (cause,) = [c for c in diagnosis.causes if c.id == cause_id]
    return "\n".join("\n".join([step.text, *step.commands]) for step in cause.remediation)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "exsa_doctor", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "NO_COLOR": "1", "TERM": "dumb", **(env or {})},
    )


# ------------------------------------------------------------------ orphaned servers


class Orphans:
    """Servers started by a launcher shell that exits at once: re-parented, as with `&`."""

    def __init__(self, binary: Path, flags: Sequence[str], tmp: Path) -> None:
        self.binary = binary
        self.flags = tuple(flags)
        self.tmp = tmp
        self.pids: list[int] = []

    def start(self, model: Path, port: int) -> tuple[int, Path]:
        log = self.tmp / f"orphan-{port}.log"
        argv = [str(self.binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
        done = subprocess.run(
            ["sh", "-c", _LAUNCHER, "sh", str(log), *argv, *self.flags],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")},
        )
        pid = int(done.stdout.split()[0])
        self.pids.append(pid)
        return pid, log

    def stop_all(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                proc = psutil.Process(pid)
                if proc.exe() != str(self.binary.resolve()):
                    continue  # the PID was reused by something that is not ours
                os.kill(pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except psutil.TimeoutExpired:
                    os.kill(pid, signal.SIGKILL)
                    proc.wait(timeout=10)


@pytest.fixture
def orphans(
    llama_server_bin: Path, server_flags: tuple[str, ...], tmp_path: Path
) -> Iterator[Orphans]:
    launched = Orphans(llama_server_bin, server_flags, tmp_path)
    try:
        yield launched
    finally:
        launched.stop_all()


def _health(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def _ready(url: str, pid: int) -> None:
    def ok() -> bool:
        if not psutil.pid_exists(pid):
            pytest.fail(f"the server PID {pid} exited before it was ready")
        return _health(url) == 200

    poll(ok, 60, f"{url}/health to answer 200")


def test_backgrounded_healthy_server_is_healthy_not_stale(
    orphans: Orphans, tiny_model: Path
) -> None:
    port = free_port()
    pid, _log = orphans.start(tiny_model, port)
    url = f"http://127.0.0.1:{port}"
    _ready(url, pid)
    assert psutil.Process(pid).ppid() != os.getpid()  # re-parented: the launcher has exited

    target, diagnosis = diagnose_auto(url)
    assert target.profile.name == "llama-server"
    assert diagnosis.verdict.value == "healthy", explain(diagnosis)
    assert "port.held_by_stale_instance" not in ids(diagnosis), explain(diagnosis)
    (engine,) = findings(diagnosis, "port.listening_engine")
    assert engine.data["pid"] == pid
    assert findings(diagnosis, "generation.ok")

    # through the CLI: exit 0, and the healthy verdict says how to catch a failure next time
    cli = _cli("diagnose", "--url", url)
    out, err = cli.communicate(timeout=120)
    assert cli.returncode == 0, out + err
    flat = " ".join(out.split())
    assert "HEALTHY" in flat and "--failed-at" in flat and "kill " not in flat


def test_script_race_with_failed_at_is_a_race(
    orphans: Orphans, tiny_model: Path, tmp_path: Path
) -> None:
    # The model is a symlink to a FIFO, so the load lasts until we release it (as a real model's
    # load lasts seconds): the script's request surely fails before the server is ready.
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "model.gguf"
    link.symlink_to(fifo)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    pid, log = orphans.start(link, port)
    try:
        # ask at once, as the script did: refused (not bound yet) or 503 (loading)
        failed_at: float | None = None
        try:
            urllib.request.urlopen(
                urllib.request.Request(
                    url + "/completion",
                    data=json.dumps({"prompt": "Hello", "n_predict": 4}).encode(),
                    headers={"Content-Type": "application/json"},
                ),
                timeout=5,
            )
        except (urllib.error.HTTPError, OSError):
            failed_at = time.time()
        assert failed_at is not None, "the first request cannot succeed while the load is held"
        poll(lambda: _health(url) == 503, 30, "the server to answer 503 while it loads")
        time.sleep(1.5)
    finally:
        swap = link.with_suffix(".swap")
        swap.symlink_to(tiny_model)
        swap.replace(link)
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    _ready(url, pid)
    assert psutil.Process(pid).ppid() != os.getpid()  # orphaned, as after the script exited
    when = dt.datetime.fromtimestamp(failed_at, tz=dt.timezone.utc).isoformat()

    _target, diagnosis = diagnose_auto(url, logs=(log,), failed_at=when)
    assert diagnosis.causes[0].id == "race-condition", explain(diagnosis)
    assert "port.held_by_stale_instance" not in ids(diagnosis), explain(diagnosis)
    assert findings(diagnosis, "logs.failed_before_ready"), explain(diagnosis)
    fix = fix_text(diagnosis, "race-condition")
    assert "exsa-engine" not in fix and "grep -q healthy" not in fix, fix
    assert "llama-server -m " in fix, fix
    # the readiness check printed in the fix ends, here at once: the server is ready
    (cause,) = [c for c in diagnosis.causes if c.id == "race-condition"]
    (check,) = [c for step in cause.remediation for c in step.commands if c.startswith("timeout ")]
    if shutil.which("curl") and shutil.which("timeout"):
        assert subprocess.run(["bash", "-c", check], timeout=90, check=False).returncode == 0


def test_two_servers_sharing_a_model_ask_about_either(
    start_llama: StartLlama, tiny_model: Path
) -> None:
    first = start_llama(tiny_model)
    second = start_llama(tiny_model)
    first.wait_ready()
    second.wait_ready()

    for meant, other in ((first, second), (second, first)):
        target, diagnosis = diagnose_auto(meant.url, logs=(meant.log,))
        assert target.profile.name == "llama-server"
        assert target.model == tiny_model
        assert diagnosis.verdict.value == "healthy", explain(diagnosis)
        (engine,) = findings(diagnosis, "port.listening_engine")
        assert engine.data["pid"] == meant.pid
        (running,) = findings(diagnosis, "processes.running")
        assert running.data["pid"] == meant.pid
        # the neighbour is context (shared model), never the target's timeline
        starts = [e.event for e in diagnosis.timeline if "started" in e.event]
        assert any(str(meant.pid) in s for s in starts), starts
        assert not any(str(other.pid) in s for s in starts), starts
        (shared,) = findings(diagnosis, "processes.shared_model")
        assert set(shared.data["pids"]) == {first.pid, second.pid}


def test_port_held_by_a_foreign_program_beside_a_neighbour(
    start_llama: StartLlama,
    squatter: Callable[[int], Squatter],
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    neighbour_model = tmp_path / "neighbour.gguf"
    shutil.copyfile(tiny_model, neighbour_model)
    neighbour = start_llama(neighbour_model)
    neighbour.wait_ready()
    port = free_port()
    squat = squatter(port)
    failed = start_llama(tiny_model, port=port)
    assert failed.wait_exit() != 0
    assert "couldn't bind HTTP server socket" in failed.log_text()

    target, diagnosis = diagnose_auto(f"http://127.0.0.1:{port}", logs=(failed.log,))
    assert target.profile.name == "llama-server"
    assert diagnosis.causes[0].id == "port-in-use", explain(diagnosis)
    (owner,) = findings(diagnosis, "port.owned_by_other")
    assert owner.data["pid"] == squat.pid
    assert owner.data["cleanup_may_stop"] is False
    fix = fix_text(diagnosis, "port-in-use")
    holder = psutil.Process(squat.pid)
    assert f"PID {squat.pid} of user {holder.username()}" in fix, fix
    assert "socket" in fix  # its command line
    assert f"kill {squat.pid}" in fix
    assert "cleanup will not" in fix
    # the neighbour is not borrowed: not its PID, not its model, not in the timeline
    assert str(neighbour.pid) not in fix and str(neighbour_model) not in fix, fix
    assert target.model != neighbour_model
    assert not any(str(neighbour.pid) in e.event for e in diagnosis.timeline)
    # the holder of the port is on the timeline
    assert any(str(squat.pid) in e.event for e in diagnosis.timeline), diagnosis.timeline
    # every command of the fix parses as shell and names no other engine
    (cause,) = [c for c in diagnosis.causes if c.id == "port-in-use"]
    for step in cause.remediation:
        for command in step.commands:
            check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, timeout=10)
            assert check.returncode == 0, command
            assert "exsa-engine" not in command and "ollama" not in command, command


def test_wait_started_before_the_server_accepts_its_ok(
    start_llama: StartLlama, tiny_model: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    waiter = _cli("wait", "--url", url, "--timeout", "120")
    try:
        # the wait is running (it has reported the closed port) before the server exists
        before = _read_until(waiter, "port closed", 60)
        time.sleep(0.5)
        server = start_llama(tiny_model, port=port)
        _out, rest = waiter.communicate(timeout=150)
        err = "".join(before) + rest
        assert waiter.returncode == 0, err
        assert "engine: llama-server" in err, err
        assert "ready" in err and "longer --timeout" not in err, err
        assert server.health() == (200, b'{"status":"ok"}')
    finally:
        stop_pid(waiter)


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


def test_run_beside_a_neighbour_sharing_the_model(
    start_llama: StartLlama,
    llama_server_bin: Path,
    server_flags: tuple[str, ...],
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    neighbour = start_llama(tiny_model)
    neighbour.wait_ready()
    seen = tmp_path / "then.json"
    script = tmp_path / "then.py"
    script.write_text(
        "import json, os, sys\n"
        "json.dump({'port': int(os.environ['EXSA_PORT']), 'pid': int(os.environ['EXSA_PID'])},"
        " open(sys.argv[1], 'w'))\n",
        encoding="utf-8",
    )
    then = shlex.join([sys.executable, str(script), str(seen)])
    runner = _cli(
        "run",
        "--port",
        "auto",
        "--ready-timeout",
        "120",
        "--then",
        then,
        "--",
        str(llama_server_bin),
        "-m",
        str(tiny_model),
        *server_flags,
    )
    try:
        out, err = runner.communicate(timeout=240)
    finally:
        stop_pid(runner)
    assert runner.returncode == 0, out + err
    assert "preflight refused" not in err, err
    assert "sharing it read-only is fine" in err and str(neighbour.pid) in err, err
    ran = json.loads(seen.read_text(encoding="utf-8"))
    assert ran["port"] != neighbour.port
    # the neighbour was left alone
    assert neighbour.proc.poll() is None and neighbour.health() == (200, b'{"status":"ok"}')
    assert not psutil.pid_exists(ran["pid"]) or (
        psutil.Process(ran["pid"]).status() == psutil.STATUS_ZOMBIE
    )


def test_api_key_demanded_is_auth_required_with_a_fix_that_works(
    start_llama: StartLlama, tiny_model: Path
) -> None:
    key = "test-key-1234"
    server = start_llama(tiny_model, extra=["--api-key", key])
    server.wait_ready()  # /health stays open without the key

    target, diagnosis = diagnose_auto(server.url)
    assert target.profile.name == "llama-server"
    assert diagnosis.causes[0].id == "auth-required", explain(diagnosis)
    assert diagnosis.verdict.value == "unhealthy"
    (refused,) = findings(diagnosis, "generation.auth_required")
    assert refused.data["status_code"] == 401
    fix = fix_text(diagnosis, "auth-required")
    assert "--api-key" in fix and "LLAMA_API_KEY" in fix, fix

    if shutil.which("curl") is None:
        pytest.skip("no curl to run the printed fix with")
    (cause,) = [c for c in diagnosis.causes if c.id == "auth-required"]
    (with_key,) = [c for step in cause.remediation for c in step.commands if "$API_KEY" in c]
    done = subprocess.run(
        ["bash", "-c", with_key],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "API_KEY": key},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "content" in json.loads(done.stdout), done.stdout
