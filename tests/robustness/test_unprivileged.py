"""`diagnose` as an unprivileged user (`nobody`) next to root-owned processes.

Support runs the doctor without root: the port may be held by another user's process, the model
locked by one. The doctor must say what it can see, say what permissions hide and how to reveal
it, and never crash.

How the test becomes `nobody`: this machine's Python lives under /root (mode 0700), so
`runuser -u nobody -- python` cannot even start the interpreter. Instead the test forks a child
that imports everything, runs one diagnosis as root (which loads whatever is imported lazily),
then drops to uid/gid 65534 with no supplementary groups and runs the real diagnosis. The JSON
report comes back through a pipe. The child only reads files every user can read: the model
lives in a fresh 0755 directory under /tmp.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import pkgutil
import select
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

import exsa_doctor
from tests.robustness.conftest import Procs, accepts, free_port, wait_until

NOBODY = 65534
CHILD_TIMEOUT_S = 90.0  # two diagnoses on shared cores; a hang guard, not a speed claim
DIAGNOSIS_TIMEOUT_S = 10.0
MAX_REPORT_BYTES = 16 << 20

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork") or os.geteuid() != 0,
    reason="needs root to start root-owned holders and to drop to nobody",
)


def _import_everything() -> None:
    """Import every exsa_doctor module (not `__main__`s, which run the CLI)."""
    for mod in pkgutil.walk_packages(exsa_doctor.__path__, "exsa_doctor."):
        if mod.name.rsplit(".", 1)[-1] != "__main__":
            importlib.import_module(mod.name)
    import httpx  # noqa: F401
    import psutil  # noqa: F401


def _one_diagnosis(url: str, model: str | None) -> str:
    from exsa_doctor import probes
    from exsa_doctor.api import diagnose
    from exsa_doctor.detect import refine_target
    from exsa_doctor.render.json import render
    from exsa_doctor.target import resolve_target

    target = refine_target(
        resolve_target(
            url=url,
            model=Path(model) if model else None,
            timeout_s=DIAGNOSIS_TIMEOUT_S,
            environ={},
        ),
        auto_profile=True,
    )
    return render(diagnose(target, probes=probes.select()))


def _child(url: str, model: str | None, fd: int) -> None:
    """In the forked child: warm up as root, drop to nobody, diagnose, send the JSON, exit."""
    payload: dict[str, Any]
    try:
        _import_everything()
        _one_diagnosis(url, model)  # as root: loads lazily imported modules and data files
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        if os.geteuid() != NOBODY or os.getegid() != NOBODY or os.getgroups():
            raise RuntimeError("could not drop privileges")
        payload = {"uid": os.getuid(), "report": json.loads(_one_diagnosis(url, model))}
    except BaseException:  # everything goes back to the test, nothing escapes the child
        payload = {"error": traceback.format_exc()}
    data = json.dumps(payload).encode()
    with contextlib.suppress(OSError):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    os._exit(0)


def diagnose_as_nobody(url: str, model: str | None) -> dict[str, Any]:
    """The JSON report of a diagnosis run as `nobody`, from a forked child."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:
            os.close(read_fd)
            _child(url, model, write_fd)
        finally:
            os._exit(1)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    try:
        size = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"diagnosis as nobody unfinished after {CHILD_TIMEOUT_S} s")
            ready, _, _ = select.select([read_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            size += len(chunk)
            assert size < MAX_REPORT_BYTES, "report too large"
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            # our own child, by its PID: it either finished writing or overran its time
            end = time.monotonic() + 5.0
            while done == 0 and time.monotonic() < end:
                time.sleep(0.05)
                done, _status = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    payload: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    assert "error" not in payload, "the child failed:\n" + str(payload.get("error"))
    assert payload.get("uid") == NOBODY, payload.keys()
    report: dict[str, Any] = payload["report"]
    return report


def _findings(report: dict[str, Any], fid: str) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["id"] == fid]


def _no_crash(report: dict[str, Any]) -> None:
    crashed = {p["name"]: p["detail"] for p in report["probes"] if p["status"] == "crashed"}
    assert not crashed, f"probes crashed as nobody: {crashed}"


def _explain(report: dict[str, Any]) -> str:
    rows = ", ".join(f"{p['name']}:{p['status']}" for p in report["probes"])
    found = "; ".join(f"{f['id']} {f['data']}" for f in report["findings"])
    return f"\nprobes {rows}\nfindings {found}"


def test_port_held_by_root_listener(procs: Procs, world_dir: Path) -> None:
    port = free_port()
    served = world_dir / "served"
    served.mkdir()
    listener = procs.start(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(served),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        assert listener.poll() is None, f"the root listener exited with {listener.returncode}"
        return accepts(port)

    wait_until(up, 20.0, f"the root-owned listener on port {port}")

    report = diagnose_as_nobody(f"http://127.0.0.1:{port}", None)

    _no_crash(report)
    why = _explain(report)
    reveal = f"sudo lsof -nP -iTCP:{port} -sTCP:LISTEN"
    # the port is taken ...
    listening = _findings(report, "port.listening")
    assert listening, why
    assert listening[0]["data"]["pid"] is None, why  # nobody cannot see root's process
    assert "port.not_listening" not in {f["id"] for f in report["findings"]}, why
    # ... its owner is hidden by permissions, and the report says how to reveal it
    hidden = _findings(report, "port.owner_hidden")
    assert hidden, why
    assert hidden[0]["data"]["reveal"] == reveal, why
    assert hidden[0]["data"]["uid"] == 0, why
    assert hidden[0]["data"]["user"] == "root", why
    commands = [
        c for cause in report["causes"] for r in cause["remediation"] for c in r["commands"]
    ]
    assert reveal in commands, f"no cause tells the user to run {reveal!r}" + why
    # and the doctor did not claim to know the listener's PID
    assert listener.pid not in {f["data"].get("pid") for f in report["findings"]}, why


HOLDER = """
import fcntl, sys, time
fh = open(sys.argv[1], "rb")
fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def test_model_locked_by_root_process(procs: Procs, world_dir: Path) -> None:
    from exsa_doctor.demo.standin.ggufmake import write_gguf

    model = world_dir / "model.gguf"
    write_gguf(model)
    model.chmod(0o644)
    holder = procs.start(
        [sys.executable, "-c", HOLDER, str(model)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert holder.stdout is not None
    ready, _, _ = select.select([holder.stdout], [], [], 20.0)
    assert ready and holder.stdout.readline().strip() == "locked", "the holder did not lock"
    # the lock is real: a non-blocking attempt of ours fails
    with model.open("rb") as fh, pytest.raises(BlockingIOError):
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    report = diagnose_as_nobody(f"http://127.0.0.1:{free_port()}", str(model))

    _no_crash(report)
    why = _explain(report)
    assert _findings(report, "model.ok"), why  # nobody can read the model itself
    locked = _findings(report, "model.locked_by_other")
    assert locked, why
    assert locked[0]["data"]["holder_pid"] == holder.pid, why
    assert locked[0]["data"]["kind"] == "FLOCK", why
    assert locked[0]["data"]["mode"] == "WRITE", why  # LOCK_EX
