"""The deadline contract: `diagnose` finishes within its timeout + 0.5 s, whatever hangs.

Two ways to hang, both real: a probe whose `run` never returns (Python threads cannot be killed,
so the runner must give up on it and report `timeout`), and the whole CLI facing a server that
accepts TCP connections but never answers while the `py-spy` on PATH never returns.

The bounds asserted here are the contract's own numbers (timeout + 0.5 s), measured by the
process under test (`duration_s`) or around one in-process call; they are correctness bounds of
the deadline, not speed benchmarks. Interpreter start-up gets a generous separate allowance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from exsa_doctor import probes as registry
from exsa_doctor.api import diagnose
from exsa_doctor.context import Context
from exsa_doctor.detect import refine_target
from exsa_doctor.model import ProbeStatus
from exsa_doctor.probes.base import Probe, ProbeOutput
from exsa_doctor.render.json import render as render_json
from exsa_doctor.target import resolve_target
from tests.robustness.conftest import Procs, accepts, alive, free_port, wait_until

DEADLINE_SLACK_S = 0.5  # the contract: finished within --timeout + 0.5 s
# Starting Python and importing the CLI happen before the run's clock starts; on two shared
# cores that can take seconds. This allowance only catches a run that ignores its deadline.
INTERPRETER_ALLOWANCE_S = 12.0


class HangingProbe(Probe):
    """Test-only probe: `run` blocks for 60 s (until the test releases it)."""

    name = "hang-for-test"
    title = "A probe that hangs (test only)"
    timeout_s = 120.0  # only the run's deadline can stop it
    emits = ()
    release = threading.Event()

    def run(self, ctx: Context) -> ProbeOutput:
        self.release.wait(60.0)
        return ProbeOutput()


@pytest.fixture
def hanging_probe() -> Iterator[HangingProbe]:
    HangingProbe.release.clear()
    try:
        yield HangingProbe()
    finally:
        HangingProbe.release.set()  # let the abandoned thread end instead of lingering 60 s


def test_hanging_probe_is_a_timeout_row_and_the_run_ends_on_time(
    hanging_probe: HangingProbe,
) -> None:
    timeout = 2.0
    port = free_port()
    target = refine_target(
        resolve_target(url=f"http://127.0.0.1:{port}", timeout_s=timeout, environ={}),
        auto_profile=True,
    )
    probes = [*registry.select(), hanging_probe]
    started = time.monotonic()
    diagnosis = diagnose(target, probes=probes)
    elapsed = time.monotonic() - started

    assert elapsed <= timeout + DEADLINE_SLACK_S, f"diagnose took {elapsed:.2f} s"
    assert diagnosis.duration_s <= timeout + DEADLINE_SLACK_S
    rows = {p.name: p for p in diagnosis.probes}
    assert rows["hang-for-test"].status is ProbeStatus.TIMEOUT, rows["hang-for-test"]
    assert "did not finish" in rows["hang-for-test"].detail
    # every real probe still has its row, and none of them crashed
    assert set(rows) == {*registry.probe_names(), "hang-for-test"}
    crashed = {n: r.detail for n, r in rows.items() if r.status is ProbeStatus.CRASHED}
    assert not crashed, crashed
    # the report is still a whole, valid document
    doc = json.loads(render_json(diagnosis))
    assert {p["name"]: p["status"] for p in doc["probes"]}["hang-for-test"] == "timeout"


class CrashingProbe(Probe):
    """Test-only probe: `run` raises, as a probe with a bug would."""

    name = "crash-for-test"
    title = "A probe that raises (test only)"
    timeout_s = 5.0

    def run(self, ctx: Context) -> ProbeOutput:
        raise ZeroDivisionError("a bug in a probe")


class SlowProbe(Probe):
    """Test-only probe: takes 2 s, well within its own 5 s timeout."""

    name = "slow-for-test"
    title = "A slow but well-behaved probe (test only)"
    timeout_s = 5.0
    release = threading.Event()

    def run(self, ctx: Context) -> ProbeOutput:
        self.release.wait(2.0)
        out = ProbeOutput()
        out.detail = "took its time"
        return out


class QuickTimeoutProbe(HangingProbe):
    """Test-only probe: hangs, and declares a 1 s timeout of its own."""

    name = "hang-1s-for-test"
    timeout_s = 1.0


def test_a_probes_own_timeout_counts_from_its_start_not_from_when_the_runner_looks(
    hanging_probe: HangingProbe,
) -> None:
    # The slow probe is listed first: the runner waits 2 s for it. The hanging probe's own
    # 1 s timeout must still end at 1 s after the start, not 1 s after that wait.
    port = free_port()
    target = resolve_target(url=f"http://127.0.0.1:{port}", timeout_s=10.0, environ={})
    SlowProbe.release.clear()
    started = time.monotonic()
    diagnosis = diagnose(target, probes=[SlowProbe(), QuickTimeoutProbe()])
    elapsed = time.monotonic() - started
    rows = {p.name: p for p in diagnosis.probes}
    assert rows["slow-for-test"].status is ProbeStatus.OK, rows
    assert rows["hang-1s-for-test"].status is ProbeStatus.TIMEOUT, rows
    # done when the slow probe is done: 2 s, not 2 s + 1 s
    assert elapsed <= 2.0 + DEADLINE_SLACK_S, f"diagnose took {elapsed:.2f} s"


def test_a_crashing_probe_is_a_row_and_the_others_still_report() -> None:
    port = free_port()
    target = resolve_target(url=f"http://127.0.0.1:{port}", timeout_s=5.0, environ={})
    diagnosis = diagnose(target, probes=[*registry.select(["port", "health"]), CrashingProbe()])
    rows = {p.name: p for p in diagnosis.probes}
    crash = rows["crash-for-test"]
    assert crash.status is ProbeStatus.CRASHED
    assert "ZeroDivisionError: a bug in a probe" in crash.detail
    assert "test_deadlines.py" in crash.detail  # where, for the bug report
    assert rows["port"].status is ProbeStatus.OK and rows["health"].status is ProbeStatus.OK
    assert diagnosis.finding("health.refused") is not None
    json.loads(render_json(diagnosis))


STALLED_SERVER = """
import socket, sys, time
port = int(sys.argv[1])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(64)
srv.settimeout(1.0)
held = []  # accepted, never read, never answered
end = time.monotonic() + 600
while time.monotonic() < end:
    try:
        conn, _ = srv.accept()
    except (socket.timeout, OSError):
        continue
    held.append(conn)
"""

FAKE_PY_SPY = """#!{python}
# A py-spy that never returns and shrugs off SIGTERM: only SIGKILL by PID ends it.
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(os.path.join({piddir!r}, str(os.getpid())), "w") as fh:
    fh.write(" ".join(sys.argv))
time.sleep(600)
"""


def _fake_py_spy(bindir: Path, piddir: Path) -> None:
    bindir.mkdir()
    piddir.mkdir()
    script = bindir / "py-spy"
    script.write_text(FAKE_PY_SPY.format(python=sys.executable, piddir=str(piddir)))
    script.chmod(0o755)


def _start_stalled_engine(procs: Procs, tmp_path: Path, port: int) -> int:
    """A Python process named `exsa-engine` (so it is positively identified as an engine, and
    a Python one, which the stack probe dumps with py-spy) that accepts and never answers."""
    server = tmp_path / "stalled_server.py"
    server.write_text(STALLED_SERVER)
    engine = tmp_path / "engine-bin" / "exsa-engine"
    engine.parent.mkdir()
    engine.symlink_to(os.path.realpath(sys.executable))
    proc = procs.start([str(engine), str(server), str(port)], stdout=subprocess.DEVNULL)

    def listening() -> bool:
        assert proc.poll() is None, f"the stalled server exited with {proc.returncode}"
        return accepts(port)

    wait_until(listening, 20.0, f"the stalled server on port {port}")
    return proc.pid


def test_stalled_server_and_hung_py_spy_cli_finishes_within_timeout(
    procs: Procs, tmp_path: Path
) -> None:
    timeout = 3.0
    port = free_port()
    bindir, piddir = tmp_path / "fakebin", tmp_path / "py-spy-pids"
    _fake_py_spy(bindir, piddir)
    engine_pid = _start_stalled_engine(procs, tmp_path, port)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    for var in ("EXSA_URL", "PORT", "MODEL_PATH"):
        env.pop(var, None)
    out_path, err_path = tmp_path / "report.json", tmp_path / "stderr.txt"
    argv = [
        sys.executable,
        "-m",
        "exsa_doctor",
        "diagnose",
        "--url",
        f"http://127.0.0.1:{port}",
        "--timeout",
        f"{timeout:g}",
        "--format",
        "json",
    ]
    seen_children: set[int] = set()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.monotonic()
        proc = procs.start(argv, env=env, stdout=out, stderr=err, cwd=tmp_path)
        limit = started + timeout + DEADLINE_SLACK_S + INTERPRETER_ALLOWANCE_S
        while proc.poll() is None and time.monotonic() < limit:
            # whatever the doctor launches (py-spy) is registered for cleanup by PID
            try:
                kids = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                kids = []
            for kid in kids:
                if kid.pid not in seen_children:
                    seen_children.add(kid.pid)
                    procs.adopt(kid.pid)
            time.sleep(0.02)
        wall = time.monotonic() - started
    for pidfile in piddir.iterdir():
        procs.adopt(int(pidfile.name))
    assert proc.poll() is not None, f"diagnose still running after {wall:.1f} s"
    stderr = err_path.read_text(errors="replace")
    assert "Traceback" not in stderr, stderr

    assert proc.returncode in (1, 3), f"exit {proc.returncode}; stderr: {stderr}"
    doc = json.loads(out_path.read_text())
    assert doc["duration_s"] <= timeout + DEADLINE_SLACK_S, doc["duration_s"]
    assert wall <= timeout + DEADLINE_SLACK_S + INTERPRETER_ALLOWANCE_S
    rows = {p["name"]: p for p in doc["probes"]}
    assert not [r for r in rows.values() if r["status"] == "crashed"], rows
    ids = {f["id"] for f in doc["findings"]}
    # the stalled server: the health request timed out (a finding) or the probe did (a row)
    assert "health.timeout" in ids or rows["health"]["status"] == "timeout", (ids, rows)
    # the stalled process was identified as an engine, so the stack probe had to deal with it
    # (other engine instances on this machine may be listed too: `pids`, not `pid`)
    running = [f["data"] for f in doc["findings"] if f["id"] == "processes.running"]
    assert running and engine_pid in running[0]["pids"], ids
    spies = sorted(int(p.name) for p in piddir.iterdir())
    assert spies, f"the fake py-spy was never started; stack probe: {rows['stack']}"
    stack = rows["stack"]
    dumps = [f for f in doc["findings"] if f["id"] == "stack.dump"]
    assert stack["status"] == "timeout" or any(
        "py-spy did not finish" in str(d["data"].get("error")) for d in dumps
    ), (stack, dumps)


def test_hung_py_spy_is_not_left_behind(procs: Procs, tmp_path: Path) -> None:
    """The doctor starts py-spy, so it must not leave a hung one running after it exits.

    Three stalled Python engines: the stack probe dumps each in turn, so a py-spy is still
    running when the run's deadline comes; the doctor must stop it before it exits.
    """
    timeout = 3.0
    bindir, piddir = tmp_path / "fakebin", tmp_path / "py-spy-pids"
    _fake_py_spy(bindir, piddir)
    ports = [free_port() for _ in range(3)]
    for i, port in enumerate(ports):
        sub = tmp_path / f"engine{i}"
        sub.mkdir()
        _start_stalled_engine(procs, sub, port)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    argv = [
        sys.executable,
        "-m",
        "exsa_doctor",
        "diagnose",
        "--url",
        f"http://127.0.0.1:{ports[0]}",
        "--timeout",
        f"{timeout:g}",
        "--format",
        "json",
        "--probe",
        "processes",
        "--probe",
        "health",
        "--probe",
        "stack",
    ]
    proc = procs.start(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=timeout + DEADLINE_SLACK_S + INTERPRETER_ALLOWANCE_S)
    finally:
        spies = [int(p.name) for p in piddir.iterdir()]
        for pid in spies:
            procs.adopt(pid)
    assert spies, "the fake py-spy was never started"
    # the doctor has exited: what it killed is gone (reaped by init) within a short poll
    end = time.monotonic() + 2.0
    while [pid for pid in spies if alive(pid)] and time.monotonic() < end:
        time.sleep(0.05)
    left = {pid: psutil.Process(pid).cmdline() for pid in spies if alive(pid)}
    assert not left, f"py-spy processes left running after diagnose exited: {left}"
