"""The CI flow end to end with the real llama-server: `pytest --exsa-engine 'llama-server -m ...'`.

An inner pytest session (pytester, in a subprocess) runs tests against a real llama-server that
the plugin starts once for the session, as a CI job would. One inner test kills the engine by the
PID the fixture gave it (SIGKILL, or SIGSEGV as a crash would); the reports attached to that test
and to the next one must name why it died, with the engine's own log lines and the moment the
test failed in the evidence. A test that fails while the engine is healthy must be told so, and
the GitHub job summary must hold the report of each failed test and nothing for passing ones.

Every engine the inner session starts is torn down by the plugin; the outer test checks, by PID,
that none is left.
"""

from __future__ import annotations

import os
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.llama
pytest_plugins = ["pytester"]

HELPERS = """
import os
import httpx

def record(engine):
    with open(os.environ["PIDS_FILE"], "a") as fh:
        fh.write(f"{engine.pid}\\n")

def complete(engine):
    return httpx.post(engine + "/completion", json={"prompt": "Hello", "n_predict": 4}, timeout=60)
"""


@pytest.fixture
def engine_command(llama_server_bin: Path, tiny_model: Path, server_flags: tuple[str, ...]) -> str:
    return shlex.join([str(llama_server_bin), "-m", str(tiny_model), *server_flags])


@pytest.fixture
def inner_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The PID file inner tests write, and the job summary file, as GitHub Actions sets it."""
    for key in [k for k in os.environ if k.startswith("LLAMA_ARG_")]:
        monkeypatch.delenv(key)  # llama-server would read them
    pids = tmp_path / "pids.txt"
    summary = tmp_path / "runner-temp" / "_runner_file_commands" / "step_summary_1"
    summary.parent.mkdir(parents=True)
    monkeypatch.setenv("PIDS_FILE", str(pids))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("CI", "true")
    return pids, summary


def run_session(
    pytester: pytest.Pytester, command: str, reports: Path, junit: Path
) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        f"--exsa-engine={command}",
        f"--exsa-report-dir={reports}",
        f"--junitxml={junit}",
        "--tb=short",
        timeout=600,
    )


def props_by_test(junit: Path) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for case in ET.parse(junit).iter("testcase"):
        out[case.get("name", "")] = {
            p.get("name", ""): p.get("value", "") for p in case.iter("property")
        }
    return out


def models_loaded(reports: Path) -> list[int]:
    """For each engine the session started: how many times its log says the model loaded."""
    return [
        len(re.findall(r"\bmodel loaded\s*$", (d / "engine.log").read_text(), re.MULTILINE))
        for d in sorted((reports / "engines").iterdir())
    ]


def summary_headings(summary: Path) -> list[str]:
    return re.findall(r"^### ❌ `([^`]+)`", summary.read_text(), re.MULTILINE)


def assert_gone(pids: list[int]) -> None:
    left = [p for p in set(pids) if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not left, f"llama-server processes left after the session: {left}"


def test_five_tests_one_model_load_and_a_kill_reported_by_that_test_and_the_next(
    pytester: pytest.Pytester, engine_command: str, inner_env: tuple[Path, Path], tmp_path: Path
) -> None:
    pids_file, summary = inner_env
    pytester.makepyfile(
        helpers=HELPERS,
        test_engine="""
import os, signal, time
from helpers import record, complete

def test_1_generates(exsa_engine):
    record(exsa_engine)
    assert complete(exsa_engine).status_code == 200

def test_2_fails_while_the_engine_is_healthy(exsa_engine):
    record(exsa_engine)
    assert complete(exsa_engine).json()["content"] == "an answer a random model never gives"

def test_3_generates_again(exsa_engine):
    record(exsa_engine)
    assert complete(exsa_engine).status_code == 200

def test_4_kills_the_engine(exsa_engine):
    record(exsa_engine)
    os.kill(exsa_engine.pid, signal.SIGKILL)  # the PID the fixture gave us, nothing else
    time.sleep(0.2)
    complete(exsa_engine)

def test_5_finds_it_dead(exsa_engine):
    record(exsa_engine)
""",
    )
    reports, junit = tmp_path / "reports", tmp_path / "junit.xml"
    result = run_session(pytester, engine_command, reports, junit)
    result.assert_outcomes(passed=2, failed=3)
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 4 and len(set(pids)) == 1, pids  # test 5's body never ran
    assert models_loaded(reports) == [1]  # one engine, one model load for the session

    props = props_by_test(junit)
    healthy = props["test_2_fails_while_the_engine_is_healthy"]
    assert healthy["exsa-doctor.verdict"] == "healthy"
    assert "was running and answered its health route" in healthy["exsa-doctor.engine"]
    assert "exsa-doctor.cause" not in healthy

    killed, found = props["test_4_kills_the_engine"], props["test_5_finds_it_dead"]
    for story in (killed, found):
        assert story["exsa-doctor.cause"] == "engine-not-running"
        assert story["exsa-doctor.signal"] == "SIGKILL"
        assert story["exsa-doctor.died-during"] == "test_engine.py::test_4_kills_the_engine"
        assert story["exsa-doctor.pid"] == str(pids[0])
        assert "OOM" in story["exsa-doctor.oom-killer"]  # the kernel log was asked
        report = story["exsa-doctor"]
        assert "processes.target_exited" in report  # the top cause's evidence
        assert "request failed" in report  # the failure time on the engine's timeline
        assert "listening on" in report  # the engine's own log lines (timeline and tail)
        assert re.search(r"test failed at\*\*: \d{4}-\d\d-\d\dT", report)
    assert "during this test" in killed["exsa-doctor.engine"]
    assert "earlier, during test_engine.py::test_4_kills_the_engine" in found["exsa-doctor.engine"]

    assert summary_headings(summary) == [
        "test_engine.py::test_2_fails_while_the_engine_is_healthy",
        "test_engine.py::test_4_kills_the_engine",
        "test_engine.py::test_5_finds_it_dead",
    ]
    written = summary.read_text()
    assert "test_1_generates" not in written and "test_3_generates_again" not in written
    assert len(list((reports / "failures").iterdir())) == 3
    assert_gone(pids)


def test_a_crash_is_reported_and_the_next_engine_loads_the_model_afresh(
    pytester: pytest.Pytester, engine_command: str, inner_env: tuple[Path, Path], tmp_path: Path
) -> None:
    pids_file, summary = inner_env
    pytester.makepyfile(
        helpers=HELPERS,
        test_engine="""
import os, signal, time
from helpers import record, complete

def test_1_crashes_the_engine(exsa_engine):
    record(exsa_engine)
    os.kill(exsa_engine.pid, signal.SIGSEGV)  # what a crash in the engine looks like
    time.sleep(0.2)
    complete(exsa_engine)

def test_2_finds_it_dead(exsa_engine):
    record(exsa_engine)

def test_3_a_fresh_engine_generates(exsa_engine):
    record(exsa_engine)
    assert complete(exsa_engine).status_code == 200
""",
    )
    reports, junit = tmp_path / "reports", tmp_path / "junit.xml"
    result = run_session(pytester, engine_command, reports, junit)
    result.assert_outcomes(passed=1, failed=2)
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2 and pids[0] != pids[1]
    assert models_loaded(reports) == [1, 1]  # the first engine, and the fresh one
    props = props_by_test(junit)
    for name in ("test_1_crashes_the_engine", "test_2_finds_it_dead"):
        story = props[name]
        assert story["exsa-doctor.signal"] == "SIGSEGV"
        assert story["exsa-doctor.exit-status"] == "-11"
        assert "segmentation fault" in story["exsa-doctor.engine"]
        assert story["exsa-doctor.cause"] == "engine-not-running"
        assert "exsa-doctor.oom-killer" not in story  # the kernel log is asked about SIGKILL only
    assert "started afresh" in props["test_2_finds_it_dead"]["exsa-doctor.next"]
    assert summary_headings(summary) == [
        "test_engine.py::test_1_crashes_the_engine",
        "test_engine.py::test_2_finds_it_dead",
    ]
    assert_gone(pids)
