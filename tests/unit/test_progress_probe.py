"""The progress probe on real child processes: one loading (CPU, reads), one asleep (stalled),
one that starts serving while watched (became ready), and real mmaps for resident pages."""

from __future__ import annotations

import mmap
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exsa_doctor.context import Context
from exsa_doctor.facts import target_engines
from exsa_doctor.model import Finding
from exsa_doctor.probes.progress import (
    ProgressProbe,
    model_identity,
    port_state,
    resident_model_pages,
)
from exsa_doctor.target import resolve_target
from tests.support import hostile_server as hs

SERVER_SCRIPT = str(Path(hs.__file__).resolve())

LOADER = """
import os, sys
path = sys.argv[1]
print("ready", flush=True)
n = 0
while True:
    with open(path, "rb") as fh:
        while fh.read(65536):
            n += 1
"""

SLEEPER = """
import time
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def children() -> Iterator[hs.Children]:
    kids = hs.Children()
    try:
        yield kids
    finally:
        kids.stop_all()


def make_ctx(
    pid: int, port: int, *, watch_s: float = 0.0, seconds: float = 10.0, logs: tuple[Path, ...] = ()
) -> Context:
    target = resolve_target(
        url=f"http://127.0.0.1:{port}", pids=(pid,), watch_s=watch_s, logs=logs, environ={}
    )
    return Context(target=target, deadline=time.monotonic() + seconds)


def ids(findings: list[Finding]) -> set[str]:
    return {f.id for f in findings}


def test_a_process_reading_and_computing_is_loading(children: hs.Children, tmp_path: Path) -> None:
    blob = tmp_path / "weights.bin"
    blob.write_bytes(os.urandom(1 << 20))
    child = children.python(LOADER, str(blob))
    hs.wait_line(child, b"ready")
    ctx = make_ctx(child.pid, hs.free_port())
    probe = ProgressProbe()
    assert probe.applies(ctx) is None
    out = probe.run(ctx)
    assert "progress.loading" in ids(out.findings)
    assert "progress.stalled" not in ids(out.findings)
    (f,) = [f for f in out.findings if f.id == "progress.loading"]
    assert f.data["cpu_s"] > 0 or f.data["rchar"] > 0
    assert f.data["pids"] == [child.pid]


def test_a_sleeping_process_with_a_closed_port_is_stalled(children: hs.Children) -> None:
    child = children.python(SLEEPER)
    hs.wait_line(child, b"ready")
    ctx = make_ctx(child.pid, hs.free_port())
    out = ProgressProbe().run(ctx)
    assert ids(out.findings) == {"progress.stalled"}
    (f,) = out.findings
    assert f.data["window_s"] > 0
    assert f.data["cpu_s"] < 0.02 and f.data["read_bytes"] == 0
    assert f.data["port_state"] == "refused"


def test_a_growing_log_counts_as_progress(children: hs.Children, tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text("start\n")
    writer = children.python(
        "import sys, time\nprint('ready', flush=True)\n"
        "while True:\n    open(sys.argv[1], 'a').write('line\\n'); time.sleep(0.05)\n",
        str(log),
    )
    sleeper = children.python(SLEEPER)
    hs.wait_line(writer, b"ready")
    hs.wait_line(sleeper, b"ready")
    # the engine itself sleeps; only its log grows (as a log written by a supervisor would)
    ctx = make_ctx(sleeper.pid, hs.free_port(), logs=(log,))
    out = ProgressProbe().run(ctx)
    (f,) = [f for f in out.findings if f.id == "progress.loading"]
    assert f.data["log_bytes"] > 0


def test_an_engine_that_starts_serving_while_watched_became_ready(
    children: hs.Children,
) -> None:
    port = hs.free_port()
    child = children.script(SERVER_SCRIPT, "--port", str(port), "--delay", "1.0")
    ctx = make_ctx(child.pid, port, watch_s=15.0, seconds=20.0)
    probe = ProgressProbe()
    assert probe.applies(ctx) is None
    out = probe.run(ctx)
    found = {f.id: f for f in out.findings}
    assert "progress.became_ready" in found, out.detail
    assert found["progress.became_ready"].data["after_s"] > 0
    steps = [(t["from"], t["to"]) for t in found["progress.transitions"].data["transitions"]]
    assert steps == [("refused", "listening"), ("listening", "healthy")]
    assert [e.event for e in out.timeline] == [
        "progress: refused -> listening",
        "progress: listening -> healthy",
    ]
    # the port opening is a milestone; what the probe saw after it is an observation
    assert [e.kind.value for e in out.timeline] == ["listening", "observation"]
    assert "progress.stalled" not in found


def test_skipped_without_an_engine_or_when_already_serving(children: hs.Children) -> None:
    ctx = Context(
        target=resolve_target(url=f"http://127.0.0.1:{hs.free_port()}", environ={}),
        deadline=time.monotonic() + 5,
    )
    # no --pid and (on a test machine) no exsa-engine process: nothing to watch
    if not target_engines(ctx):
        assert ProgressProbe().applies(ctx) == "no live engine process to watch"
    child = children.python(SLEEPER)
    hs.wait_line(child, b"ready")
    with hs.HostileServer({"/v1/health": hs.exsa_health()}) as srv:
        ready = make_ctx(child.pid, srv.port)
        assert ProgressProbe().applies(ready) is not None
        watching = make_ctx(child.pid, srv.port, watch_s=1.0)
        assert ProgressProbe().applies(watching) is None


def test_resident_pages_of_a_mapped_model(children: hs.Children, tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + os.urandom(4 * 65536))
    child = children.python(
        "import mmap, sys, time\n"
        "fh = open(sys.argv[1], 'rb')\n"
        "m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)\n"
        "total = sum(m[i] for i in range(0, len(m), 4096))\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n",
        str(model),
    )
    hs.wait_line(child, b"ready")
    ident = model_identity(str(model))
    assert ident is not None
    pages = resident_model_pages(child.pid, ident)
    assert pages is not None and pages >= (4 * 65536) // mmap.PAGESIZE
    other = tmp_path / "other.bin"
    other.write_bytes(b"x")
    other_ident = model_identity(str(other))
    assert other_ident is not None
    assert resident_model_pages(child.pid, other_ident) == 0
    assert model_identity(str(tmp_path / "missing")) is None


def test_port_state() -> None:
    assert port_state("127.0.0.1", hs.free_port(), timeout=1.0) == "refused"
    with hs.HostileServer({}) as srv:
        assert port_state("127.0.0.1", srv.port, timeout=1.0) == "listening"


def test_an_engine_already_serving_while_watched_did_not_become_ready(
    children: hs.Children,
) -> None:
    child = children.python(SLEEPER)
    hs.wait_line(child, b"ready")
    with hs.HostileServer({"/v1/health": hs.exsa_health()}) as srv:
        out = ProgressProbe().run(make_ctx(child.pid, srv.port, watch_s=0.5))
    found = ids(out.findings)
    assert "progress.became_ready" not in found
    assert "progress.transitions" not in found
    assert "progress.stalled" not in found  # the port is open
    assert "port healthy" in out.detail


def test_no_stall_verdict_from_a_window_too_short_to_tell(children: hs.Children) -> None:
    child = children.python(SLEEPER)
    hs.wait_line(child, b"ready")
    ctx = make_ctx(child.pid, hs.free_port(), seconds=0.4)
    out = ProgressProbe().run(ctx)
    assert "progress.stalled" not in ids(out.findings)


def _serving(children: hs.Children) -> tuple[subprocess.Popen[bytes], int]:
    """A child that listens on a port of its own (an engine serving elsewhere), and that port."""
    port = hs.free_port()
    child = children.script(SERVER_SCRIPT, "--port", str(port))
    assert hs.wait_until(lambda: port_state("127.0.0.1", port, 0.5) == "listening")
    return child, port


def test_an_engine_serving_on_another_port_after_its_load_is_not_watched(
    children: hs.Children,
) -> None:
    # exsa-engine loads before it binds: listening anywhere means the load is over, so there is
    # no load to watch at the target (the port probe names the other address)
    child, port = _serving(children)
    ctx = make_ctx(child.pid, hs.free_port())
    reason = ProgressProbe().applies(ctx)
    assert reason is not None and f"listens on 127.0.0.1:{port}" in reason, reason
    assert "listens only once its model is loaded" in reason
    # --watch asks to watch it anyway
    assert ProgressProbe().applies(make_ctx(child.pid, hs.free_port(), watch_s=1.0)) is None


def test_an_engine_that_binds_before_loading_is_watched_wherever_it_listens(
    children: hs.Children,
) -> None:
    # llama-server binds first, then loads: listening elsewhere says nothing about its load
    child, _port = _serving(children)
    target = resolve_target(
        url=f"http://127.0.0.1:{hs.free_port()}",
        pids=(child.pid,),
        profile="llama-server",
        environ={},
    )
    ctx = Context(target=target, deadline=time.monotonic() + 10)
    assert ProgressProbe().applies(ctx) is None
