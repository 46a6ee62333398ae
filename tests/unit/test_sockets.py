"""`listeners_of` and friends against real sockets, in this process and in child processes."""

from __future__ import annotations

import contextlib
import os
import pickle
import platform
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exsa_doctor.oslayer import sockets
from exsa_doctor.oslayer.lsof import lsof_path
from exsa_doctor.oslayer.sockets import (
    decode_proc_address,
    listeners_of,
    listening_ports_of,
    lsof_address,
    parse_proc_net_tcp,
    resolve_localhost,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc path")


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback here")


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = platform.release().split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return False


def sock(
    family: int, host: str, *, listen: bool = True, v6only: bool | None = None
) -> socket.socket:
    s = socket.socket(family)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    s.bind((host, 0))
    if listen:
        s.listen()
    return s


CHILD = """
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam)
s.bind((sys.argv[1], 0))
if sys.argv[2] == 'listen':
    s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.fixture
def child_listener() -> Iterator[Callable[..., tuple[int, int]]]:
    """Start `python -c CHILD host listen|bind`; returns (pid, port); kills every child by PID."""
    procs: list[subprocess.Popen[str]] = []

    def start(host: str, mode: str = "listen") -> tuple[int, int]:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, host, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "child did not report its port"
        return proc.pid, int(proc.stdout.readline())

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def run_as_nobody(fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Run `fn` in a forked child that dropped to uid/gid 65534; return its pickled result.

    A fork (not a new interpreter) because the interpreter lives under /root, which `nobody`
    cannot read.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            data = pickle.dumps(fn())
            with os.fdopen(wfd, "wb") as out:
                out.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([rfd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError("the unprivileged child did not answer")
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rfd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert chunks, f"unprivileged child failed (status {status})"
    return pickle.loads(b"".join(chunks))


# ------------------------------------------------------------------ decoding


@pytest.mark.parametrize(
    ("hex_addr", "order", "expected"),
    [
        ("0100007F", "little", "127.0.0.1"),
        ("7F000001", "big", "127.0.0.1"),
        ("00000000", "little", "0.0.0.0"),
        ("0102A8C0", "little", "192.168.2.1"),
        ("00000000000000000000000001000000", "little", "::1"),
        ("00000000000000000000000000000001", "big", "::1"),
        ("00000000000000000000000000000000", "little", "::"),
        ("0000000000000000FFFF00000100007F", "little", "::ffff:127.0.0.1"),
        ("B80D01200000000000000000FF000000", "little", "2001:db8::ff"),
    ],
)
def test_decode_proc_address(hex_addr: str, order: str, expected: str) -> None:
    assert decode_proc_address(hex_addr, order) == expected


def test_decode_proc_address_rejects_odd_lengths() -> None:
    with pytest.raises(ValueError):
        decode_proc_address("0100", "little")


def test_parse_proc_net_tcp_rows() -> None:
    tail = "00000000:00000000 00:00000000 00000000"
    text = "\n".join(
        [
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid",
            f"   0: 0100007F:0BB8 00000000:0000 0A {tail}   501        0 4242 1 0 100 0 0 10 0",
            f"   1: 0100007F:0BB9 00000000:0000 07 {tail}     0        0 4343 1 0 100 0 0 10 0",
            f"   2: 0100007F:0BB8 0100007F:D431 01 {tail}   501        0 4444 1 0 100 0 0 10 0",
            f"   3: 0100007F:0BBA 0100007F:D431 07 {tail}   501        0 0 1 0 100 0 0 10 0",
            "garbage line",
        ]
    )
    rows = parse_proc_net_tcp(text, "ipv4")
    if sys.byteorder == "little":
        assert [(r.address, r.port, r.state, r.uid, r.inode) for r in rows] == [
            ("127.0.0.1", 3000, "LISTEN", 501, 4242),
            ("127.0.0.1", 3001, "BOUND", 0, 4343),
        ]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=600))
def test_parse_proc_net_tcp_never_raises(text: str) -> None:
    for row in parse_proc_net_tcp(text, "ipv6"):
        assert 0 <= row.port < 65536


@pytest.mark.parametrize(
    ("name", "kind", "expected"),
    [
        ("*:3000", "IPv4", ("ipv4", "0.0.0.0", 3000)),
        ("*:3000", "IPv6", ("ipv6", "::", 3000)),
        ("127.0.0.1:3000", "IPv4", ("ipv4", "127.0.0.1", 3000)),
        ("[::1]:3011", "IPv6", ("ipv6", "::1", 3011)),
        ("[fe80::1%lo0]:3000", "IPv6", ("ipv6", "fe80::1", 3000)),
        ("[::ffff:127.0.0.1]:3000", "IPv6", ("ipv6", "::ffff:127.0.0.1", 3000)),
        ("127.0.0.1:51514->127.0.0.1:3000", "IPv4", None),
        ("localhost:3000", "IPv4", None),
        ("pipe", "FIFO", None),
        ("127.0.0.1:http", "IPv4", None),
    ],
)
def test_lsof_address(name: str, kind: str, expected: tuple[str, str, int] | None) -> None:
    assert lsof_address(name, kind) == expected


# ------------------------------------------------------------------ real sockets, this process


@pytest.mark.parametrize(
    ("family", "host", "fam_name", "address"),
    [
        (socket.AF_INET, "127.0.0.1", "ipv4", "127.0.0.1"),
        (socket.AF_INET, "0.0.0.0", "ipv4", "0.0.0.0"),
        pytest.param(socket.AF_INET6, "::1", "ipv6", "::1", marks=needs_ipv6),
        pytest.param(
            socket.AF_INET6, "::ffff:127.0.0.1", "ipv6", "::ffff:127.0.0.1", marks=needs_ipv6
        ),
    ],
)
def test_listener_in_this_process(family: int, host: str, fam_name: str, address: str) -> None:
    with sock(family, host) as s:
        port = s.getsockname()[1]
        scan = listeners_of(port, deadline=time.monotonic() + 30)
        assert scan.complete
        rows = [
            (ls.family, ls.address, ls.port, ls.state, ls.pid, ls.owner_hidden)
            for ls in scan.listeners
        ]
        assert rows == [(fam_name, address, port, "LISTEN", os.getpid(), False)]
        assert scan.listeners[0].uid == os.getuid()


@needs_ipv6
@linux_only
@pytest.mark.parametrize("v6only", [True, False])
def test_wildcard_v6_reports_v6only(v6only: bool) -> None:
    with sock(socket.AF_INET6, "::", v6only=v6only) as s:
        scan = listeners_of(s.getsockname()[1])
    (ls,) = scan.listeners
    assert (ls.address, ls.family, ls.pid) == ("::", "ipv6", os.getpid())
    if scan.method == "sock_diag":
        assert ls.v6only is v6only


def test_closed_port_has_no_listeners() -> None:
    with sock(socket.AF_INET, "127.0.0.1", listen=False) as s:
        port = s.getsockname()[1]
    scan = listeners_of(port)
    assert scan.listeners == ()
    assert scan.complete


@linux_only
def test_bound_not_listening() -> None:
    with sock(socket.AF_INET, "127.0.0.1", listen=False) as s:
        port = s.getsockname()[1]
        scan = listeners_of(port)
        if scan.method != "sock_diag" or not _kernel_at_least(6, 8):
            pytest.skip("this kernel does not report bound-only sockets (needs sock_diag, >= 6.8)")
        assert [(ls.state, ls.address, ls.pid) for ls in scan.listeners] == [
            ("BOUND", "127.0.0.1", os.getpid())
        ]


def test_bad_port_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="1-65535"):
        listeners_of(0)


# ------------------------------------------------------------------ child processes


def test_listener_in_a_child(child_listener: Callable[..., tuple[int, int]]) -> None:
    pid, port = child_listener("127.0.0.1")
    scan = listeners_of(port, deadline=time.monotonic() + 30)
    assert [(ls.pid, ls.address, ls.state) for ls in scan.listeners] == [
        (pid, "127.0.0.1", "LISTEN")
    ]
    assert pid != os.getpid()


@linux_only
def test_bound_not_listening_child(child_listener: Callable[..., tuple[int, int]]) -> None:
    if not _kernel_at_least(6, 8):
        pytest.skip("bound-only sockets are reported by sock_diag from Linux 6.8")
    pid, port = child_listener("127.0.0.1", "bind")
    scan = listeners_of(port)
    if scan.method != "sock_diag":
        pytest.skip("sock_diag unavailable here")
    assert [(ls.pid, ls.state) for ls in scan.listeners] == [(pid, "BOUND")]
    # and it really does block a second bind, the symptom we report it for
    with socket.socket() as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", port))


@needs_ipv6
def test_two_children_two_families_same_port(
    child_listener: Callable[..., tuple[int, int]],
) -> None:
    pid4, port = child_listener("127.0.0.1")
    # a second child on ::1 with the same port, started by hand because the port is fixed now
    code = CHILD.replace("s.bind((sys.argv[1], 0))", "s.bind((sys.argv[1], int(sys.argv[3])))")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "::1", "listen", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready
        assert int(proc.stdout.readline()) == port
        scan = listeners_of(port)
        got = {(ls.family, ls.address, ls.pid) for ls in scan.listeners}
        assert got == {("ipv4", "127.0.0.1", pid4), ("ipv6", "::1", proc.pid)}
        assert listening_ports_of([pid4, proc.pid]) == {
            pid4: [("127.0.0.1", port)],
            proc.pid: [("::1", port)],
        }
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_listening_ports_of_unknown_pid(child_listener: Callable[..., tuple[int, int]]) -> None:
    pid, port = child_listener("127.0.0.1")
    with sock(socket.AF_INET, "127.0.0.1", listen=False):  # bound-only is not "listening on"
        result = listening_ports_of([pid, os.getpid()])
    assert result == {pid: [("127.0.0.1", port)], os.getpid(): []}


@linux_only
def test_deadline_passed_marks_incomplete(child_listener: Callable[..., tuple[int, int]]) -> None:
    _pid, port = child_listener("127.0.0.1")
    scan = listeners_of(port, deadline=time.monotonic() - 1)
    assert not scan.complete
    (ls,) = scan.listeners
    # not found because we stopped, not because it is hidden
    assert (ls.pid, ls.owner_hidden, ls.state) == (None, False, "LISTEN")


@linux_only
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
def test_unprivileged_sees_owner_hidden(child_listener: Callable[..., tuple[int, int]]) -> None:
    _pid, port = child_listener("127.0.0.1")

    def check() -> tuple[Any, ...]:
        scan = listeners_of(port, deadline=time.monotonic() + 20)
        return scan.complete, [(ls.pid, ls.owner_hidden, ls.uid, ls.state) for ls in scan.listeners]

    complete, rows = run_as_nobody(check)
    assert complete
    assert rows == [(None, True, 0, "LISTEN")]


# ------------------------------------------------------------------ the portable (macOS) path


def test_psutil_path_on_a_real_listener(child_listener: Callable[..., tuple[int, int]]) -> None:
    pid, port = child_listener("127.0.0.1")
    scan = sockets._psutil_listeners(port)
    assert scan.method == "psutil"
    assert [(ls.pid, ls.address, ls.state) for ls in scan.listeners] == [
        (pid, "127.0.0.1", "LISTEN")
    ]


@pytest.mark.skipif(lsof_path() is None, reason="lsof is not installed")
def test_lsof_path_on_real_listeners(child_listener: Callable[..., tuple[int, int]]) -> None:
    pid, port = child_listener("0.0.0.0")
    # a client connection to it: its sockets also match -iTCP:PORT and must be left out
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        scan = sockets._lsof_listeners(port, time.monotonic() + 20)
    assert scan.method == "lsof"
    assert [(ls.pid, ls.family, ls.address, ls.state, ls.uid) for ls in scan.listeners] == [
        (pid, "ipv4", "0.0.0.0", "LISTEN", os.getuid())
    ]


# ------------------------------------------------------------------ name resolution


def test_resolve_localhost_follows_getaddrinfo() -> None:
    expected: list[str] = []
    for info in socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM):
        addr = str(info[4][0]).split("%", 1)[0]
        if addr not in expected:
            expected.append(addr)
    got = resolve_localhost("localhost")
    assert got == expected
    assert set(got) <= {"127.0.0.1", "::1"}


def test_resolve_literal_and_unknown() -> None:
    assert resolve_localhost("127.0.0.1") == ["127.0.0.1"]
    assert resolve_localhost("[::1]") == ["::1"]
    assert resolve_localhost("no-such-host.invalid", timeout=5) == []


@linux_only
@pytest.mark.parametrize("table", ["_procfs_table", "_netlink_table"])
@pytest.mark.parametrize(
    ("family", "host", "fam_name"),
    [
        (socket.AF_INET, "127.0.0.1", "ipv4"),
        pytest.param(socket.AF_INET6, "::1", "ipv6", marks=needs_ipv6),
        pytest.param(socket.AF_INET6, "::ffff:127.0.0.1", "ipv6", marks=needs_ipv6),
    ],
)
def test_kernel_tables_agree_with_the_socket(
    table: str, family: int, host: str, fam_name: str
) -> None:
    # both Linux sources (the fallback /proc/net/tcp{,6} and sock_diag) see our real listener,
    # with the inode that /proc/self/fd shows for it and our uid
    with sock(family, host) as s:
        port = s.getsockname()[1]
        inode = os.fstat(s.fileno()).st_ino
        rows = [r for r in getattr(sockets, table)() if r.port == port]
    assert [(r.family, r.address, r.state, r.inode, r.uid) for r in rows] == [
        (fam_name, host, "LISTEN", inode, os.getuid())
    ]
