"""How an engine we started ended, and the diagnosis at the moment its client failed.

The kernel's OOM-killer record is read from recorded `/dev/kmsg` text (a real OOM kill cannot be
staged safely); exits, signals and the diagnosis with the engine's log, PID and failure time are
made for real with the stand-in engine, started by `api.run` and signalled by its PID only.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from exsa_doctor import api
from exsa_doctor.demo.standin.ggufmake import write_gguf
from exsa_doctor.model import Verdict
from exsa_doctor.oslayer.kernel import KernelRecord, kmsg_message, oom_lines, read_kmsg
from exsa_doctor.supervise.postmortem import (
    EngineExit,
    describe_status,
    failure_target,
    kernel_log_name,
    log_tail,
)

STANDIN = [sys.executable, "-m", "exsa_doctor.demo.standin"]

# What the kernel writes when its OOM killer ends a process (Linux 6.x, one record per line)
KMSG_OOM = [
    b"4,1201,5120437,-;llama-server invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|"
    b"__GFP_COMP), order=0, oom_score_adj=0",
    b"6,1230,5120501,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,"
    b"mems_allowed=0,global_oom,task_memcg=/user.slice,task=llama-server,pid=4242,uid=1000",
    b"3,1231,5120502,-;Out of memory: Killed process 4242 (llama-server) total-vm:9876543kB, "
    b"anon-rss:7654321kB, file-rss:1024kB, shmem-rss:0kB, UID:1000 pgtables:15000kB "
    b"oom_score_adj:0\n SUBSYSTEM=memory",
    b"3,1240,5130000,-;Out of memory: Killed process 42421 (python3) total-vm:1kB",
]


def test_kmsg_records_are_read_as_their_message() -> None:
    assert kmsg_message(KMSG_OOM[2]).startswith("Out of memory: Killed process 4242 (llama-server)")
    assert "SUBSYSTEM" not in kmsg_message(KMSG_OOM[2])  # continuation lines are dictionary


def test_only_the_lines_that_name_the_pid_are_kept() -> None:
    messages = [kmsg_message(r) for r in KMSG_OOM]
    found = oom_lines(messages, 4242)
    assert len(found) == 2
    assert found[0].startswith("oom-kill:") and "pid=4242" in found[0]
    assert found[1].startswith("Out of memory: Killed process 4242 ")
    assert oom_lines(messages, 424) == []  # a prefix of another PID is not that PID
    assert oom_lines(messages, 42421) == [
        "Out of memory: Killed process 42421 (python3) total-vm:1kB"
    ]


def test_an_unreadable_kernel_log_says_why(tmp_path: Path) -> None:
    reason = read_kmsg(tmp_path / "no-such-kmsg")
    assert isinstance(reason, str) and "does not exist" in reason


def test_the_real_kernel_log_is_read_or_says_why() -> None:
    result = read_kmsg()
    assert isinstance(result, (list, str))
    if isinstance(result, list):
        assert all(isinstance(m, str) and "\n" not in m for m in result)


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (None, "is still running"),
        (0, "exited with code 0"),
        (3, "exited with code 3"),
        (-signal.SIGKILL, "was killed by signal 9 (SIGKILL)"),
        (-signal.SIGSEGV, "was killed by signal 11 (SIGSEGV: segmentation fault)"),
    ],
)
def test_an_exit_status_in_words(status: int | None, words: str) -> None:
    assert describe_status(status) == words


def test_a_sigkill_is_told_apart_from_the_oom_killer() -> None:
    oom = EngineExit(
        4242, -9, KernelRecord(4242, lines=("Out of memory: Killed process 4242 (x)",))
    )
    assert oom.signal_name == "SIGKILL"
    assert "the kernel's OOM killer killed it: Out of memory" in (oom.kernel_note() or "")
    other = EngineExit(4242, -9, KernelRecord(4242))
    assert "no OOM-killer record for PID 4242" in (other.kernel_note() or "")
    hidden = EngineExit(4242, -9, KernelRecord(4242, unreadable="/dev/kmsg is not readable"))
    assert "whether the OOM killer sent the SIGKILL is unknown" in (hidden.kernel_note() or "")
    assert EngineExit(4242, 1).kernel_note() is None


def test_the_kernel_record_is_diagnosed_as_one_more_log() -> None:
    """An OOM kill the kernel recorded ranks out-of-memory first, through the log signatures."""
    pid = 4242
    messages = [kmsg_message(r) for r in KMSG_OOM]
    ended = EngineExit(pid, -9, KernelRecord(pid, lines=tuple(oom_lines(messages, pid))))
    base = api.make_target(url="http://127.0.0.1:9", profile="llama-server", timeout_s=5)
    target = failure_target(base, log=None, pid=pid, failed_at=time.time(), ended=ended)
    assert target.pids == (pid,)
    assert [str(p) for p in target.logs] == [kernel_log_name(pid)]
    diagnosis = api.diagnose(target, probes=["logs"])
    assert "logs.oom" in {f.id for f in diagnosis.findings}
    assert diagnosis.causes[0].id == "out-of-memory"


def test_the_log_tail_is_bounded_and_starts_on_a_whole_line(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text("".join(f"line {n:05d}\n" for n in range(5000)))
    tail = log_tail(log, lines=30, max_bytes=1000)
    assert tail[-1] == "line 04999"
    assert all(line.startswith("line ") and len(line) == 10 for line in tail)
    assert len(tail) == 30
    assert log_tail(tmp_path / "missing.log") == []


# ----------------------------------------------------------------- a real engine, really ended


@pytest.fixture
def standin_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    model = tmp_path / "model.gguf"
    write_gguf(model)
    monkeypatch.setenv("MODEL_PATH", str(model))
    monkeypatch.setenv("EXSA_STANDIN_LOAD_S", "0.3")
    return model


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_running_engine_is_alive_and_answers(standin_env: Path, tmp_path: Path) -> None:
    with api.run(STANDIN, port_auto=True, ready_timeout_s=60, report_dir=tmp_path / "r") as engine:
        assert engine.exit_status() is None and engine.ended() is None
        assert engine.engine_log == engine.log == tmp_path / "r" / "engine.log"
        live = engine.liveness()
        assert live.alive and live.answered and live.serving
        assert "ready" in live.detail
        failed_at = time.time()
        diagnosis = api.diagnose_engine(engine, failed_at=failed_at)
        assert diagnosis.verdict is Verdict.HEALTHY, [c.id for c in diagnosis.causes[:3]]
        assert diagnosis.failed_at == failed_at
        assert diagnosis.target.pids == (engine.pid,)
        assert diagnosis.target.logs == (str(engine.engine_log),)
        assert "logs.failed_after_ready" in {f.id for f in diagnosis.findings}


def test_a_killed_engine_is_reaped_and_diagnosed_with_its_log_pid_and_failure_time(
    standin_env: Path,
) -> None:
    """The temporary log is still there inside the block; the engine is no zombie of ours."""
    with api.run(STANDIN, port_auto=True, ready_timeout_s=60) as engine:
        assert engine.log is None and engine.engine_log is not None  # temporary, until the end
        os.kill(engine.pid, signal.SIGSEGV)  # our own child, by its PID
        deadline = time.monotonic() + 10
        while engine.exit_status() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        live = engine.liveness()
        assert not live.alive and live.status == -signal.SIGSEGV
        ended = engine.ended()
        assert ended is not None and ended.signal_name == "SIGSEGV" and ended.kernel is None
        failed_at = time.time()
        diagnosis = api.diagnose_engine(engine, failed_at=str(failed_at))
        assert _gone(engine.pid)
        found = {f.id: f for f in diagnosis.findings}
        assert "processes.target_exited" in found
        assert "zombie" not in found["processes.target_exited"].summary  # reaped first
        assert "logs.listening" in found  # the engine's own log was read
        assert diagnosis.failed_at == pytest.approx(failed_at)
        assert diagnosis.causes[0].id == "engine-not-running"
        assert any(e.source == "client" for e in diagnosis.timeline)


def test_diagnose_engine_wants_an_engine_run_started() -> None:
    stray = api.RunningEngine("http://127.0.0.1:9", "127.0.0.1", 9, 1, "exsa-engine", None)
    with pytest.raises(api.UsageError, match=r"api\.run"):
        api.diagnose_engine(stray)
    assert stray.exit_status() is None
    assert not stray.liveness().answered
