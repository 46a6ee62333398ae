"""The port probe against real listeners: nobody, the engine, a foreign program, a stale
engine (orphaned, not the --pid, older than a newer instance), a bound-only socket, an owner
hidden by permissions, the engine on another port or family, and `localhost` resolving to the
other family. Every process is started and stopped by PID (the `engines` fixture).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from exsa_doctor.context import Context
from exsa_doctor.model import Finding
from exsa_doctor.oslayer.sockets import resolve_localhost
from exsa_doctor.oslayer.types import Listener, ListenerScan
from exsa_doctor.probes.port import PortProbe, covers
from exsa_doctor.target import resolve_target
from tests.unit.test_processes_probe import Engines
from tests.unit.test_sockets import (
    _has_ipv6,
    _kernel_at_least,
    run_as_nobody,
)

needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback here")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    eng = Engines(tmp_path)
    try:
        yield eng
    finally:
        eng.stop_all()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def make_ctx(
    port: int, host: str = "127.0.0.1", pids: tuple[int, ...] = (), budget: float = 10.0
) -> Context:
    shown = f"[{host}]" if ":" in host else host
    target = resolve_target(url=f"http://{shown}:{port}", pids=pids, environ={})
    return Context(target=target, deadline=time.monotonic() + budget)


def run_port(ctx: Context) -> tuple[dict[str, list[Finding]], Any]:
    out = PortProbe().run(ctx)
    by_id: dict[str, list[Finding]] = {}
    for f in out.findings:
        by_id.setdefault(f.id, []).append(f)
    return by_id, out


def one(found: dict[str, list[Finding]], fid: str) -> dict[str, Any]:
    assert fid in found, f"{fid} missing; got {sorted(found)}"
    assert len(found[fid]) == 1, found[fid]
    return dict(found[fid][0].data)


# ------------------------------------------------------------------------------ coverage table


def L(address: str, v6only: bool | None = None) -> Listener:
    return Listener(
        family="ipv6" if ":" in address else "ipv4",
        address=address,
        port=1,
        state="LISTEN",
        inode=None,
        uid=None,
        pid=None,
        v6only=v6only,
    )


@pytest.mark.parametrize(
    ("listener", "target", "expected"),
    [
        (L("127.0.0.1"), "127.0.0.1", True),
        (L("0.0.0.0"), "127.0.0.1", True),
        (L("::", v6only=False), "127.0.0.1", True),
        (L("::", v6only=True), "127.0.0.1", False),
        (L("::ffff:127.0.0.1"), "127.0.0.1", True),
        (L("::1"), "127.0.0.1", False),
        (L("127.0.0.1"), "::1", False),
        (L("0.0.0.0"), "::1", False),
        (L("::1"), "::1", True),
        (L("::", v6only=True), "::1", True),
        (L("127.0.0.2"), "127.0.0.1", False),
        (L("0.0.0.0"), "0.0.0.0", True),  # a client "connecting to 0.0.0.0" reaches 127.0.0.1
        (L("::"), "::", True),
    ],
)
def test_covers(listener: Listener, target: str, expected: bool) -> None:
    assert covers(listener, target) is expected


def test_covers_follows_the_system_default_when_v6only_is_unknown() -> None:
    assert covers(L("::"), "127.0.0.1", v6only_default=False) is True
    assert covers(L("::"), "127.0.0.1", v6only_default=True) is False


# ------------------------------------------------------------------------------ real listeners


def test_nothing_listens(engines: Engines) -> None:
    pid, _ = engines.start("sleep")  # the instance we mean exists but has no socket
    port = free_port()
    ctx = make_ctx(port, pids=(pid,))
    found, out = run_port(ctx)
    assert set(found) == {"port.not_listening"}
    assert one(found, "port.not_listening")["port"] == port
    assert "nothing listens" in out.detail

    # the scan is memoised for the other probes: asking again does not scan again
    def scan_again() -> ListenerScan:
        raise AssertionError("the port was scanned twice")

    assert ctx.shared(f"listeners:{port}", scan_again).listeners == ()


def test_foreign_program_holds_the_port(engines: Engines) -> None:
    pid, port = engines.start("listen", foreign=True)
    found, out = run_port(make_ctx(port))
    assert set(found) == {"port.listening", "port.owned_by_other"}
    listening = one(found, "port.listening")
    assert listening["pid"] == pid
    assert listening["is_engine"] is False
    assert listening["address"] == f"127.0.0.1:{port}"
    assert listening["family"] == "ipv4"
    other = one(found, "port.owned_by_other")
    proc = psutil.Process(pid)
    assert other["pid"] == pid
    assert other["name"] == proc.name()
    assert other["cmdline"] == proc.cmdline()
    assert other["user"] == proc.username()
    assert other["address"] == f"127.0.0.1:{port}"
    # the listener's start time is on the timeline
    (event,) = [e for e in out.timeline if f"PID {pid}" in e.event]
    assert abs(event.t - proc.create_time()) < 0.01
    assert event.kind.value == "port-holder"


def test_engine_listens(engines: Engines) -> None:
    pid, port = engines.start("listen")
    found, out = run_port(make_ctx(port, pids=(pid,)))
    assert set(found) == {"port.listening", "port.listening_engine"}
    assert one(found, "port.listening")["is_engine"] is True
    engine = one(found, "port.listening_engine")
    assert engine == {
        "pid": pid,
        "name": "exsa-engine",
        "profile": "exsa-engine",
        "address": f"127.0.0.1:{port}",
    }
    assert "the engine listens" in out.detail


def test_standin_engine_listens(engines: Engines, tmp_path: Path) -> None:
    from exsa_doctor.demo.standin.ggufmake import write_gguf

    model = tmp_path / "m.gguf"
    write_gguf(model, n_tensors=1, tensor_elems=1024)
    port = free_port()
    pid = engines.start_standin(model, port=port)
    ctx = make_ctx(port)

    def listening() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0

    deadline = time.monotonic() + 30
    while not listening():
        assert time.monotonic() < deadline, "the stand-in did not start listening"
        assert psutil.pid_exists(pid)
        time.sleep(0.05)
    found, _ = run_port(ctx)
    assert one(found, "port.listening_engine")["pid"] == pid
    assert "port.held_by_stale_instance" not in found
    assert "port.owned_by_other" not in found


def test_orphaned_engine_on_its_own_port_is_not_stale(engines: Engines) -> None:
    # issue 9: an engine re-parented to init (started with `&` by a script that exited) that
    # listens on its own port is the engine the user means, not a stale one
    pid, port = engines.start_orphan("listen")
    assert psutil.Process(pid).ppid() != os.getpid()
    found, _ = run_port(make_ctx(port))
    assert one(found, "port.listening_engine")["pid"] == pid
    assert "port.held_by_stale_instance" not in found


def test_engine_that_is_not_the_named_pid_is_stale(engines: Engines) -> None:
    old, port = engines.start("listen")
    meant, _ = engines.start("sleep")
    found, _ = run_port(make_ctx(port, pids=(meant,)))
    stale = one(found, "port.held_by_stale_instance")
    assert stale["pid"] == old
    assert f"--pid {meant}" in stale["why"]
    assert "port.not_listening" not in found


def test_older_instance_is_stale_when_a_newer_one_wants_the_port(engines: Engines) -> None:
    port = free_port()
    old, got = engines.start("listen", PORT=str(port))
    assert got == port
    newer, _ = engines.start("sleep", PORT=str(port))  # configured for the port, cannot have it
    assert psutil.Process(newer).create_time() >= psutil.Process(old).create_time()
    if psutil.Process(newer).create_time() == psutil.Process(old).create_time():
        pytest.skip("both started within the clock's resolution")
    found, _ = run_port(make_ctx(port))
    stale = one(found, "port.held_by_stale_instance")
    assert stale["pid"] == old
    assert f"PID {newer}" in stale["why"]


def test_newest_instance_is_not_stale(engines: Engines) -> None:
    port = free_port()
    engines.start("sleep", PORT=str(port))  # an older instance that never got the port
    pid, _ = engines.start("listen", PORT=str(port))
    found, _ = run_port(make_ctx(port))
    assert one(found, "port.listening_engine")["pid"] == pid
    assert "port.held_by_stale_instance" not in found


@linux_only
def test_bound_not_listening(engines: Engines) -> None:
    if not _kernel_at_least(6, 8):
        pytest.skip("bound-only sockets are visible through sock_diag from Linux 6.8")
    meant, _ = engines.start("sleep")
    pid, port = engines.start("bind", foreign=True)
    found, out = run_port(make_ctx(port, pids=(meant,)))
    if "sock_diag" not in out.detail:
        pytest.skip("sock_diag unavailable here")
    assert set(found) == {"port.bound_not_listening", "port.not_listening"}
    bound = one(found, "port.bound_not_listening")
    assert (bound["pid"], bound["address"]) == (pid, f"127.0.0.1:{port}")


@linux_only
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
def test_owner_hidden_from_an_unprivileged_user(engines: Engines) -> None:
    _pid, port = engines.start("listen", foreign=True)

    def check() -> list[tuple[str, dict[str, Any]]]:
        found, _ = run_port(make_ctx(port, budget=20))
        return [(fid, dict(f.data)) for fid, fs in found.items() for f in fs]

    rows = dict(run_as_nobody(check))
    assert set(rows) == {"port.listening", "port.owner_hidden"}
    hidden = rows["port.owner_hidden"]
    assert hidden == {
        "uid": 0,
        "user": "root",
        "address": f"127.0.0.1:{port}",
        "reveal": f"sudo lsof -nP -iTCP:{port} -sTCP:LISTEN",
    }
    assert rows["port.listening"]["pid"] is None


def test_engine_on_another_port(engines: Engines) -> None:
    pid, other = engines.start("listen")
    port = free_port()
    found, _ = run_port(make_ctx(port, pids=(pid,)))
    assert set(found) == {"port.engine_on_other_port"}
    data = one(found, "port.engine_on_other_port")
    assert data["pid"] == pid
    assert data["address"] == f"127.0.0.1:{other}"
    assert data["port"] == other
    assert data["url"] == f"http://127.0.0.1:{other}"
    assert data["health_path"] == "/v1/health"


@needs_ipv6
def test_engine_on_the_other_family(engines: Engines) -> None:
    pid, port = engines.start("listen", HOST="::1")
    found, _ = run_port(make_ctx(port, host="127.0.0.1", pids=(pid,)))
    data = one(found, "port.engine_on_other_port")
    assert (data["address"], data["url"]) == (f"[::1]:{port}", f"http://[::1]:{port}")
    assert "port.listening" not in found


@needs_ipv6
def test_localhost_resolves_to_the_family_the_engine_does_not_use(engines: Engines) -> None:
    resolved = resolve_localhost("localhost")
    if not resolved:
        pytest.skip("localhost does not resolve here")
    first = resolved[0]
    other_host = "::1" if first == "127.0.0.1" else "127.0.0.1"
    if other_host in resolved:
        pytest.skip("localhost resolves to both families here; the client falls back")
    pid, port = engines.start("listen", HOST=other_host)
    found, _ = run_port(make_ctx(port, host="localhost", pids=(pid,)))
    shown = f"[{other_host}]" if ":" in other_host else other_host
    assert one(found, "port.localhost_mismatch") == {
        "resolved": resolved,
        "listening": [f"{shown}:{port}"],
        "working_url": f"http://{shown}:{port}",
    }
    assert "port.not_listening" not in found
    assert "port.engine_on_other_port" not in found


@needs_ipv6
@linux_only
@pytest.mark.parametrize("v6only", [False, True])
def test_wildcard_ipv6_listener_and_v6only(v6only: bool) -> None:
    with socket.socket(socket.AF_INET6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        s.bind(("::", 0))
        s.listen()
        port = s.getsockname()[1]
        found, _ = run_port(make_ctx(port, pids=(os.getpid(),)))
    if v6only:
        # IPv4 clients are refused: nothing listens on 127.0.0.1 for them
        assert "port.listening" not in found
        assert one(found, "port.not_listening")["other_addresses"] == [f"[::]:{port}"]
    else:
        assert one(found, "port.listening")["address"] == f"[::]:{port}"


def test_deadline_gives_scan_incomplete(engines: Engines) -> None:
    _pid, port = engines.start("listen", foreign=True)
    ctx = make_ctx(port, budget=0.1)  # the probe keeps 0.2 s back: its walk starts too late
    found, out = run_port(ctx)
    data = one(found, "port.scan_incomplete")
    assert data["scanned"] == 0
    assert "incomplete" in out.detail


def test_applies_only_to_this_machine() -> None:
    probe = PortProbe()
    assert probe.applies(make_ctx(3000, host="localhost")) is None
    assert probe.applies(make_ctx(3000, host="127.0.0.1")) is None
    reason = probe.applies(make_ctx(3000, host="192.0.2.7"))  # TEST-NET-1: never local
    assert reason is not None and "not this machine" in reason
