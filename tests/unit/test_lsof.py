"""The `lsof -F` parser on recorded samples and arbitrary text, and `run_lsof` against real lsof."""

from __future__ import annotations

import socket
import stat
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exsa_doctor.oslayer.lsof import (
    LsofError,
    LsofRecord,
    lsof_path,
    parse_fields,
    run_lsof,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "lsof"


def load(name: str) -> list[LsofRecord]:
    return parse_fields((FIXTURES / name).read_bytes().decode("utf-8"))


def test_linux_loopback_listeners() -> None:
    recs = load("linux_listen_loopback.txt")
    assert [(r.fd, r.type, r.name, r.tcp_state) for r in recs] == [
        ("3", "IPv4", "127.0.0.1:59019", "LISTEN"),
        ("4", "IPv6", "[::1]:59019", "LISTEN"),
    ]
    for r in recs:
        assert (r.pid, r.ppid, r.command, r.uid, r.login) == (19440, 19437, "python3", 0, "root")
        assert r.access == "u"
        assert r.lock is None
        assert r.is_listening


def test_linux_wildcard_listeners() -> None:
    recs = load("linux_listen_wildcard.txt")
    assert [(r.type, r.name) for r in recs] == [("IPv4", "*:50253"), ("IPv6", "*:50253")]


def test_linux_flock_and_mmap() -> None:
    recs = load("linux_model_flock_mmap.txt")
    assert len(recs) == 3
    mapped = [r for r in recs if r.is_mapped]
    assert [r.fd for r in mapped] == ["mem"]
    assert mapped[0].access is None  # lsof prints a blank mode for mappings
    assert all(r.lock == "W" for r in recs)
    assert all(r.name == "/tmp/model.gguf" and r.size == 8192 and r.type == "REG" for r in recs)
    assert {r.inode for r in recs} == {2146391}


def test_nul_terminated_output() -> None:
    recs = load("linux_listen_nul.txt")
    assert recs == [
        LsofRecord(
            pid=19557,
            command="python3",
            uid=0,
            login="root",
            fd="3",
            access="u",
            type="IPv4",
            name="127.0.0.1:54523",
        )
    ]


def test_macos_stale_engine() -> None:
    (rec,) = load("macos_listen_3000_stale_engine.txt")
    assert (rec.pid, rec.ppid, rec.command, rec.uid, rec.login) == (
        17939,
        1,
        "exsa-engine",
        501,
        "ahammed",
    )
    assert (rec.name, rec.tcp_state, rec.type) == ("127.0.0.1:3000", "LISTEN", "IPv4")


def test_macos_dual_stack_two_processes() -> None:
    recs = load("macos_listen_dual_stack.txt")
    assert [(r.pid, r.command, r.type, r.name) for r in recs] == [
        (4021, "node", "IPv6", "*:3000"),
        (4021, "node", "IPv4", "*:3000"),
        (18112, "exsa-engine", "IPv6", "[::1]:3011"),
    ]
    # process fields do not leak from one process set into the next
    assert [r.ppid for r in recs] == [3977, 3977, 18090]


def test_macos_model_holders() -> None:
    recs = load("macos_model_holders.txt")
    by_pid: dict[int, list[LsofRecord]] = {}
    for r in recs:
        by_pid.setdefault(r.pid, []).append(r)
    assert sorted(by_pid) == [17939, 18112, 18150]
    assert [r.fd for r in by_pid[17939] if r.is_mapped] == ["txt"]
    assert [r.lock for r in by_pid[18150]] == ["W"]
    assert [r.access for r in by_pid[18112]] == ["r"]
    assert all(r.size == 1541165952 for r in recs)


def test_process_sets_without_files_are_kept() -> None:
    recs = load("macos_pids_only.txt")
    assert recs == [LsofRecord(pid=17939), LsofRecord(pid=18112)]


def test_plain_fd_column_style_is_split() -> None:
    recs = parse_fields("p10\nf3uW\nn/m.gguf\nf4r\nn/m.gguf\nf5-R\n")
    assert [(r.fd, r.access, r.lock) for r in recs] == [
        ("3", "u", "W"),
        ("4", "r", None),
        ("5", None, "R"),
    ]


def test_garbage_lines_are_skipped() -> None:
    text = "f3\nnorphan\npabc\nf4\np12\n\r\nc\nu-1\nfcwd\ntDIR\nsnot-a-size\nT\nTST=\nzzz\n"
    assert parse_fields(text) == [LsofRecord(pid=12, command="", fd="cwd", type="DIR")]


_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
_value = st.text(
    alphabet=st.characters(blacklist_characters="\n\x00\r", blacklist_categories=_SURROGATES),
    max_size=20,
).filter(lambda s: s.strip() == s and s != "")
_records = st.builds(
    LsofRecord,
    pid=st.integers(min_value=0, max_value=2**31),
    command=st.one_of(st.none(), _value),
    uid=st.one_of(st.none(), st.integers(min_value=0, max_value=2**32)),
    login=st.one_of(st.none(), _value),
    fd=st.one_of(st.none(), st.sampled_from(["cwd", "txt", "mem", "0", "12", "DEL"])),
    access=st.one_of(st.none(), st.sampled_from(["r", "w", "u"])),
    lock=st.one_of(st.none(), st.sampled_from(sorted("NrRwWuUxX"))),
    type=st.one_of(st.none(), st.sampled_from(["REG", "IPv4", "IPv6", "DIR"])),
    inode=st.one_of(st.none(), st.integers(min_value=0, max_value=2**63)),
    size=st.one_of(st.none(), st.integers(min_value=0, max_value=2**63)),
    name=st.one_of(st.none(), _value),
    tcp_state=st.one_of(st.none(), st.sampled_from(["LISTEN", "ESTABLISHED", "CLOSED"])),
)


def _format(records: list[LsofRecord], sep: str) -> str:
    """Write records the way `lsof -F` does: process fields once per process set."""
    out: list[str] = []
    last_pid: int | None = None
    for r in records:
        if r.pid != last_pid:
            out.append(f"p{r.pid}")
            for ident, value in (("c", r.command), ("u", r.uid), ("L", r.login), ("R", r.ppid)):
                if value is not None:
                    out.append(f"{ident}{value}")
            last_pid = r.pid
        out.append(f"f{r.fd}")
        out.append(f"a{r.access or ' '}")
        out.append(f"l{r.lock or ' '}")
        for ident, value in (("t", r.type), ("s", r.size), ("i", r.inode), ("n", r.name)):
            if value is not None:
                out.append(f"{ident}{value}")
        if r.tcp_state:
            out.append(f"TST={r.tcp_state}")
            out.append("TQR=0")
    return sep.join(out) + sep


@settings(max_examples=150, deadline=None)
@given(st.lists(_records, max_size=6), st.sampled_from(["\n", "\x00"]))
def test_round_trip(records: list[LsofRecord], sep: str) -> None:
    # one process set per pid, process fields the same for all its files, every record has an fd
    seen: dict[int, LsofRecord] = {}
    shaped: list[LsofRecord] = []
    for r in records:
        first = seen.setdefault(r.pid, r)
        if shaped and shaped[-1].pid != r.pid and r.pid in {s.pid for s in shaped}:
            continue
        shaped.append(
            LsofRecord(
                pid=r.pid,
                command=first.command,
                uid=first.uid,
                login=first.login,
                ppid=first.ppid,
                fd=r.fd or "3",
                access=r.access,
                lock=r.lock,
                type=r.type,
                inode=r.inode,
                size=r.size,
                name=r.name,
                tcp_state=r.tcp_state,
            )
        )
    assert parse_fields(_format(shaped, sep)) == shaped


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises(text: str) -> None:
    for rec in parse_fields(text):
        assert isinstance(rec.pid, int) and rec.pid >= 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    parse_fields(data.decode("utf-8", errors="replace"))


needs_lsof = pytest.mark.skipif(lsof_path() is None, reason="lsof is not installed")


@needs_lsof
def test_run_lsof_sees_a_real_listener() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        recs = run_lsof([f"-iTCP:{port}", "-sTCP:LISTEN"], timeout=10)
        fileno = s.fileno()
    import os

    mine = [r for r in recs if r.pid == os.getpid()]
    assert [(r.fd, r.name, r.tcp_state, r.type) for r in mine] == [
        (str(fileno), f"127.0.0.1:{port}", "LISTEN", "IPv4")
    ]
    assert mine[0].uid == os.getuid()


@needs_lsof
def test_run_lsof_nothing_found_is_empty() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run_lsof([f"-iTCP:{port}", "-sTCP:LISTEN"], timeout=10) == []


@needs_lsof
def test_run_lsof_bad_option_is_failed() -> None:
    with pytest.raises(LsofError) as info:
        run_lsof(["--no-such-option"], timeout=10)
    assert info.value.kind == "failed"
    assert "lsof" in str(info.value)


def test_run_lsof_missing(tmp_path: Path) -> None:
    with pytest.raises(LsofError) as info:
        run_lsof(["-iTCP:1"], timeout=1, executable=str(tmp_path / "no-lsof-here"))
    assert info.value.kind == "missing"


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-lsof"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_run_lsof_timeout_kills_a_hung_lsof(tmp_path: Path) -> None:
    # exec: the sleeping process IS the child, so killing it closes the pipes at once
    exe = _script(tmp_path, "exec sleep 30")
    with pytest.raises(LsofError) as info:
        run_lsof([], timeout=0.3, executable=exe)
    assert info.value.kind == "timeout"


def test_run_lsof_output_cap(tmp_path: Path) -> None:
    exe = _script(tmp_path, "exec yes p1")
    with pytest.raises(LsofError) as info:
        run_lsof([], timeout=10, executable=exe, max_bytes=100_000)
    assert info.value.kind == "too_large"
