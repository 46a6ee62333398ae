"""`run --then CMD` when CMD fails: the diagnosis uses the engine's log, its PID and that moment.

The stand-in engine is started by `exsa-doctor run`; the `--then` command signals it by the PID
`run` hands it ($EXSA_PID), our own child's child, never by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from exsa_doctor.demo.standin.ggufmake import write_gguf
from exsa_doctor.target import parse_time

STANDIN = [sys.executable, "-m", "exsa_doctor.demo.standin"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    model = tmp_path / "model.gguf"
    write_gguf(model)
    return dict(os.environ, MODEL_PATH=str(model), EXSA_STANDIN_LOAD_S="0.3")


def run_then(then: str, report_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exsa_doctor", "run", "--port", "auto", "--report-dir",
         str(report_dir), "--then", then, "--", *STANDIN],
        check=False, capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip


def engine_pid(report: dict[str, object]) -> int:
    target = report["target"]
    assert isinstance(target, dict)
    (pid,) = target["pids"]
    return int(pid)


def test_a_then_that_kills_the_engine_gets_its_death_diagnosed(
    env: dict[str, str], tmp_path: Path
) -> None:
    reports = tmp_path / "reports"
    before = time.time()
    done = run_then('kill -KILL "$EXSA_PID"; sleep 0.5; exit 3', reports, env)
    after = time.time()
    assert done.returncode == 3, done.stderr  # --then's code passes through
    assert "--then failed with exit code 3" in done.stderr
    assert "was killed by signal 9 (SIGKILL)" in done.stderr
    assert "OOM" in done.stderr  # the kernel log was asked (or it said why it could not be)
    report = json.loads((reports / "report.json").read_text())
    pid = engine_pid(report)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    assert report["target"]["logs"] == [str(reports / "engine.log")]
    # the moment --then failed, between our start and our end (ISO text, to the millisecond)
    assert before - 0.01 <= parse_time(report["failed_at"]) <= after + 0.01
    assert report["verdict"] == "unhealthy"
    top = report["causes"][0]
    assert top["id"] == "engine-not-running"
    assert "processes.target_exited" in {e["finding"] for e in top["evidence"]}
    assert "last" in done.stderr and "lines of the engine log" in done.stderr
    assert (reports / "report.md").exists()


def test_a_then_that_fails_beside_a_healthy_engine_is_told_so(
    env: dict[str, str], tmp_path: Path
) -> None:
    reports = tmp_path / "reports"
    done = run_then("exit 4", reports, env)
    assert done.returncode == 4, done.stderr
    assert "is still running" in done.stderr
    report = json.loads((reports / "report.json").read_text())
    assert report["verdict"] == "healthy"
    assert report["failed_at"] is not None
    assert report["target"]["logs"] == [str(reports / "engine.log")]
    ids = {f["id"] for f in report["findings"]}
    assert "logs.failed_after_ready" in ids


def test_a_then_that_succeeds_writes_no_report(env: dict[str, str], tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    done = run_then("exit 0", reports, env)
    assert done.returncode == 0, done.stderr
    assert not (reports / "report.json").exists()
    assert "--then failed" not in done.stderr
