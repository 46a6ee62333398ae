"""The processes probe against real engine processes: running, young, zombie, orphaned, stopped,
in disk sleep, several on one model, and a --pid that exited.

Engine identity is real: the children run the Python interpreter through a link named
`exsa-engine` (the profile identifies the executable's basename), or the stand-in engine
(`python -m exsa_doctor.demo.standin`, which runs under the name `exsa-engine`). Every process is
stopped by PID in a fixture.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from exsa_doctor.context import Context
from exsa_doctor.model import Finding
from exsa_doctor.probes.base import ProbeOutput
from exsa_doctor.probes.processes import ProcessesProbe
from exsa_doctor.target import resolve_target

ENGINE_SCRIPT = r"""
import ctypes, os, socket, sys, time
mode = os.environ.get("ENGINE_MODE", "listen")
ready = os.environ.get("READY_FILE")

def say(text):
    if ready:
        with open(ready + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(ready + ".tmp", ready)
    print(text, flush=True)

if mode == "exit":
    sys.exit(0)
if mode == "vfork":
    # the parent of a vfork sleeps uninterruptibly (state D) until the child execs or exits
    libc = ctypes.CDLL(None)
    say("vfork")
    if libc.vfork() == 0:
        libc.pause()
        libc._exit(0)
    libc.pause()
host = os.environ.get("HOST", "127.0.0.1")
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
if mode in ("listen", "bind"):
    s.bind((host, int(os.environ.get("PORT", "0"))))
    if mode == "listen":
        s.listen()
    say(str(s.getsockname()[1]))
else:
    say("0")
while True:
    time.sleep(3600)
"""

LAUNCHER = r"""
import os, subprocess, sys
# start the engine in its own session and leave without waiting: the engine is orphaned
child = subprocess.Popen(sys.argv[1:], start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
"""


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def status_of(pid: int) -> str | None:
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return None


def _gone(pid: int) -> Callable[[], bool]:
    return lambda: status_of(pid) in (None, psutil.STATUS_ZOMBIE)


def _reaped(pid: int) -> Callable[[], bool]:
    return lambda: status_of(pid) is None


@dataclass
class Engines:
    """Starts engine-like processes and stops every one of them by PID."""

    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # not our children (orphans, vfork children)

    @property
    def exe(self) -> str:
        link = self.tmp / "bin" / "exsa-engine"
        if not link.exists():
            link.parent.mkdir(exist_ok=True)
            link.symlink_to(sys.executable)
            (self.tmp / "engine.py").write_text(ENGINE_SCRIPT)
        return str(link)

    def _env(self, mode: str, ready: Path, **env: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST", "MODEL_PATH")}
        return {**base, "ENGINE_MODE": mode, "READY_FILE": str(ready), **env}

    def start(self, mode: str = "listen", *, foreign: bool = False, **env: str) -> tuple[int, int]:
        """An `exsa-engine` child (`foreign`: the same program under the interpreter's own name,
        which no profile identifies); returns (pid, port) once ready (port 0: no socket)."""
        ready = self.tmp / f"ready-{len(self.procs)}-{time.monotonic_ns()}"
        exe = self.exe
        proc = subprocess.Popen(
            [sys.executable if foreign else exe, str(self.tmp / "engine.py")],
            env=self._env(mode, ready, **env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        if mode == "exit":
            return proc.pid, 0
        wait_for(ready.exists, what="the engine to get ready")
        text = ready.read_text()
        return proc.pid, int(text) if text.isdigit() else 0

    def start_orphan(self, mode: str = "listen", **env: str) -> tuple[int, int]:
        """An engine whose launcher exited: re-parented to PID 1 or a subreaper."""
        ready = self.tmp / f"ready-orphan-{time.monotonic_ns()}"
        launcher = subprocess.run(
            [sys.executable, "-c", LAUNCHER, self.exe, str(self.tmp / "engine.py")],
            env=self._env(mode, ready, **env),
            capture_output=True,
            timeout=60,
            check=True,
        )
        pid = int(launcher.stdout)
        self.pids.append(pid)
        wait_for(ready.exists, what="the orphan to get ready")
        return pid, int(ready.read_text())

    def start_standin(self, model: Path, port: int, **env: str) -> int:
        """The stand-in exsa-engine serving `model` on `port`."""
        full = {
            **self._env("", self.tmp / "unused"),
            "MODEL_PATH": str(model),
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "EXSA_STANDIN_LOAD_S": "0",
            **env,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "exsa_doctor.demo.standin"],
            env=full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc.pid

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # orphans are reaped by their new parent (PID 1 or a subreaper), which we cannot wait
        # for; give it a moment, and accept a zombie if that parent never reaps (containers)
        for pid in self.pids:
            wait_for(_gone(pid), 30, f"PID {pid} to go")
            with contextlib.suppress(AssertionError):
                wait_for(_reaped(pid), 5, f"PID {pid} to be reaped")


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    eng = Engines(tmp_path)
    try:
        yield eng
    finally:
        eng.stop_all()


def run_probe(
    pids: tuple[int, ...] = (), port: int = 1, profile: str | None = None, budget: float = 10.0
) -> dict[str, list[Finding]]:
    return run_probe_out(pids, port, profile, budget)[0]


def run_probe_out(
    pids: tuple[int, ...] = (), port: int = 1, profile: str | None = None, budget: float = 10.0
) -> tuple[dict[str, list[Finding]], ProbeOutput]:
    target = resolve_target(url=f"http://127.0.0.1:{port}", pids=pids, profile=profile, environ={})
    ctx = Context(target=target, deadline=time.monotonic() + budget)
    out = ProcessesProbe().run(ctx)
    by_id: dict[str, list[Finding]] = {}
    for f in out.findings:
        by_id.setdefault(f.id, []).append(f)
    return by_id, out


def one(found: dict[str, list[Finding]], fid: str) -> dict[str, Any]:
    assert fid in found, f"{fid} missing; got {sorted(found)}"
    assert len(found[fid]) == 1, found[fid]
    return dict(found[fid][0].data)


# ------------------------------------------------------------------------------------ tests


def test_running_instance_named_by_pid(engines: Engines) -> None:
    pid, _port = engines.start("listen")
    found, out = run_probe_out(pids=(pid,))
    data = one(found, "processes.running")
    assert data["pid"] == pid
    assert pid in data["pids"]
    inst = next(i for i in data["instances"] if i["pid"] == pid)
    assert inst["ppid"] == os.getpid()
    assert inst["parent_alive"] is True
    assert inst["orphaned"] is False
    assert inst["state"] in ("running", "sleeping")
    assert inst["user"] == psutil.Process().username()
    assert inst["cmdline"][0].endswith("exsa-engine")
    assert inst["threads"] >= 1 and inst["rss"] > 0 and inst["cpu_s"] >= 0
    assert 0 <= inst["age_s"] < 60
    assert set(inst) >= {
        "pid",
        "ppid",
        "parent_alive",
        "orphaned",
        "state",
        "age_s",
        "cpu_s",
        "rss",
        "threads",
        "model",
        "port",
        "user",
        "cmdline",
    }
    young = one(found, "processes.young")
    assert young["pid"] == pid and 0 <= young["age_s"] < 60
    for absent in ("processes.none", "processes.target_exited", "processes.stopped"):
        assert absent not in found
    # other programs' zombies and orphans (other tests' engines) may exist; ours is neither
    for fid in ("processes.zombie", "processes.orphaned"):
        assert all(pid not in f.data["pids"] for f in found.get(fid, []))
    events = [e for e in out.timeline if f"PID {pid}" in e.event]
    assert len(events) == 1
    assert events[0].event == f"engine process started (PID {pid})"
    assert events[0].kind.value == "start"
    assert abs(events[0].t - psutil.Process(pid).create_time()) < 0.01


def test_found_by_profile_without_pid(engines: Engines) -> None:
    pid, _port = engines.start("listen", PORT="0")
    found = run_probe()
    data = one(found, "processes.running")
    assert pid in data["pids"]
    assert "processes.none" not in found


def test_configured_port_and_model_from_environment(engines: Engines, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    pid, _ = engines.start("sleep", PORT="4711", MODEL_PATH=str(model))
    data = one(run_probe(pids=(pid,)), "processes.running")
    inst = next(i for i in data["instances"] if i["pid"] == pid)
    assert (inst["port"], inst["model"]) == (4711, str(model))


def test_target_pid_that_exited(engines: Engines) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)  # reaped: the PID no longer exists
    found = run_probe(pids=(proc.pid,))
    assert one(found, "processes.target_exited") == {"pid": proc.pid}
    assert one(found, "processes.none")["profiles"] == ["exsa-engine"]
    assert "processes.running" not in found


def test_zombie_is_not_running(engines: Engines) -> None:
    pid, _ = engines.start("exit")
    # we are its parent and do not reap it: a real zombie that still shows up by name
    wait_for(lambda: status_of(pid) == psutil.STATUS_ZOMBIE, what="the zombie")
    found = run_probe(pids=(pid,))
    zombie = one(found, "processes.zombie")
    assert zombie["pid"] == pid and pid in zombie["pids"]
    assert zombie["ppid"] == os.getpid()
    assert one(found, "processes.target_exited") == {"pid": pid}
    assert "processes.running" not in found
    assert "processes.none" in found


def test_orphan(engines: Engines) -> None:
    pid, _ = engines.start_orphan("listen")
    proc = psutil.Process(pid)
    assert proc.ppid() != os.getpid()
    found = run_probe(pids=(pid,))
    orphan = one(found, "processes.orphaned")
    assert orphan["pid"] == pid and pid in orphan["pids"]  # (other orphans may exist)
    inst = next(i for i in one(found, "processes.running")["instances"] if i["pid"] == pid)
    assert inst["orphaned"] is True


def test_child_with_live_parent_is_not_orphaned(engines: Engines) -> None:
    pid, _ = engines.start("sleep")
    found = run_probe(pids=(pid,))
    # other tests' orphaned engines may be listed; ours has a live parent (this process)
    assert all(pid not in f.data["pids"] for f in found.get("processes.orphaned", []))
    inst = next(i for i in one(found, "processes.running")["instances"] if i["pid"] == pid)
    assert (inst["orphaned"], inst["parent_alive"]) == (False, True)


def test_stopped(engines: Engines) -> None:
    pid, _ = engines.start("sleep")
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: status_of(pid) == psutil.STATUS_STOPPED, what="SIGSTOP to take effect")
    found = run_probe(pids=(pid,))
    assert one(found, "processes.stopped") == {"pid": pid}
    # stopped is still alive: it is running in the process sense, and listed as stopped
    inst = next(i for i in one(found, "processes.running")["instances"] if i["pid"] == pid)
    assert inst["state"] == "stopped"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="vfork D state is Linux's")
def test_disk_sleep(engines: Engines) -> None:
    pid, _ = engines.start("vfork")
    wait_for(lambda: status_of(pid) == psutil.STATUS_DISK_SLEEP, what="the vfork wait")
    # the vfork child is not our child: remember it so the fixture kills it by PID
    wait_for(lambda: bool(psutil.Process(pid).children()), what="the vfork child")
    engines.pids.extend(c.pid for c in psutil.Process(pid).children())
    found = run_probe(pids=(pid,))
    assert one(found, "processes.disk_sleep") == {"pid": pid}


def test_multiple_instances_sharing_a_model(engines: Engines, tmp_path: Path) -> None:
    from exsa_doctor.demo.standin.ggufmake import write_gguf

    model = tmp_path / "shared.gguf"
    write_gguf(model, n_tensors=1, tensor_elems=1024)
    link = tmp_path / "link-to-shared.gguf"
    link.symlink_to(model)
    a = engines.start_standin(model, port=0)
    b = engines.start_standin(link, port=0)  # the same file by another name
    found = run_probe(pids=(a, b))
    running = one(found, "processes.running")
    assert set(running["pids"]) >= {a, b}
    assert running["pid"] == max((a, b), key=lambda p: (psutil.Process(p).create_time(), p))
    assert {a, b} <= set(one(found, "processes.multiple")["pids"])
    shared = [f.data for f in found["processes.shared_model"] if a in f.data["pids"]]
    assert len(shared) == 1
    assert set(shared[0]["pids"]) >= {a, b}
    assert shared[0]["model"] == os.path.realpath(model)


def test_no_engine_of_the_profile() -> None:
    # no vLLM runs here; the probe says so and names the profile it looked for
    found = run_probe(profile="vllm")
    assert one(found, "processes.none")["profiles"] == ["vllm"]
    assert "processes.running" not in found


def test_pid_1_itself_is_not_an_orphan() -> None:
    # PPID 0: no parent at all (an engine run as a container's init), not a dead parent
    from exsa_doctor.oslayer.procs import describe

    info = describe(1)
    assert info is not None
    assert info.ppid == 0
    assert info.orphaned is False
