"""One engine per scope, checked before each test, and the engine's story in every failed test.

Each test runs a real inner pytest session (pytester, in a subprocess) against the stand-in
engine. Inner tests write the PID of the engine they got to a file, so the outer test can count
engines and check, by PID, that every one of them is gone when the session ends. An inner test
that kills its engine signals only that PID, which the fixture gave it.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest

from exsa_doctor.demo.standin.ggufmake import write_gguf

pytest_plugins = ["pytester"]

STANDIN = f"{sys.executable} -m exsa_doctor.demo.standin"


@pytest.fixture
def session_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model for the stand-in, and the file inner tests write their engine's PID to."""
    model = tmp_path / "model.gguf"
    write_gguf(model)
    monkeypatch.setenv("MODEL_PATH", str(model))
    monkeypatch.setenv("EXSA_STANDIN_LOAD_S", "0.3")
    pids = tmp_path / "pids.txt"
    monkeypatch.setenv("PIDS_FILE", str(pids))
    return pids


RECORD = """
import os, signal, time
import httpx

def record(engine):
    with open(os.environ["PIDS_FILE"], "a") as fh:
        fh.write(f"{engine.pid}\\n")

def health(engine):
    return httpx.get(engine + "/v1/health", timeout=5)
"""


def pids_seen(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def assert_all_gone(pids: list[int]) -> None:
    left = [p for p in set(pids) if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not left, f"engines still running after the session: {left}"


def properties(junit: Path) -> dict[str, dict[str, list[str]]]:
    """testcase name -> property name -> values."""
    out: dict[str, dict[str, list[str]]] = {}
    for case in ET.parse(junit).iter("testcase"):
        props: dict[str, list[str]] = {}
        for prop in case.iter("property"):
            props.setdefault(prop.get("name", ""), []).append(prop.get("value", ""))
        out[case.get("name", "")] = props
    return out


def failure_texts(junit: Path) -> dict[str, str]:
    return {
        case.get("name", ""): (case.find("failure").text or "")  # type: ignore[union-attr]
        for case in ET.parse(junit).iter("testcase")
        if case.find("failure") is not None
    }


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(f"--exsa-engine={STANDIN}", *args, timeout=300)


# ------------------------------------------------------------------------------------ scope


def test_a_session_of_five_tests_starts_one_engine_and_loads_the_model_once(
    pytester: pytest.Pytester, session_env: Path, tmp_path: Path
) -> None:
    pytester.makepyfile(
        helpers=RECORD,
        test_inner="""
from helpers import record, health

def test_1(exsa_engine):
    record(exsa_engine); assert health(exsa_engine).status_code == 200

def test_2(exsa_engine):
    record(exsa_engine); assert exsa_engine.url == str(exsa_engine) == exsa_engine

def test_3_fails_while_the_engine_is_healthy(exsa_engine):
    record(exsa_engine); assert health(exsa_engine).status_code == 418

def test_4(exsa_engine):
    record(exsa_engine); assert exsa_engine.log.name == "engine.log"

def test_5(exsa_engine):
    record(exsa_engine); assert health(exsa_engine).json()["status"] == "healthy"
""",
    )
    reports = tmp_path / "reports"
    junit = tmp_path / "junit.xml"
    result = run_inner(pytester, f"--exsa-report-dir={reports}", f"--junitxml={junit}")
    result.assert_outcomes(passed=4, failed=1)
    pids = pids_seen(session_env)
    assert len(pids) == 5 and len(set(pids)) == 1, pids  # one engine served all five
    (engine_dir,) = (reports / "engines").iterdir()
    log = (engine_dir / "engine.log").read_text()
    assert log.count("Model loaded successfully") == 1  # the model was loaded once
    # the failing test was told its engine was healthy: the failure is the test's own
    props = properties(junit)["test_3_fails_while_the_engine_is_healthy"]
    assert props["exsa-doctor.verdict"] == ["healthy"]
    assert "answered its health route" in props["exsa-doctor.engine"][0]
    assert props["exsa-doctor.pid"] == [str(pids[0])]
    assert props["exsa-doctor.test-failed-at"][0].endswith("Z")
    for name in ("test_1", "test_2", "test_4", "test_5"):
        assert not any(k.startswith("exsa-doctor") for k in properties(junit)[name])
    assert_all_gone(pids)


@pytest.mark.parametrize(("scope", "engines"), [("module", 2), ("function", 4)])
def test_module_and_function_scopes_start_an_engine_per_module_or_test(
    pytester: pytest.Pytester, session_env: Path, scope: str, engines: int
) -> None:
    body = """
from helpers import record, health

def test_a(exsa_engine):
    record(exsa_engine); assert health(exsa_engine).status_code == 200

def test_b(exsa_engine):
    record(exsa_engine); assert health(exsa_engine).status_code == 200
"""
    pytester.makepyfile(helpers=RECORD, test_one=body, test_two=body)
    result = run_inner(pytester, f"--exsa-engine-scope={scope}")
    result.assert_outcomes(passed=4)
    pids = pids_seen(session_env)
    assert len(set(pids)) == engines, pids
    if scope == "module":
        assert pids[0] == pids[1] and pids[2] == pids[3] and pids[1] != pids[2]
    assert_all_gone(pids)


# ------------------------------------------------------------------------------------ deaths


def test_a_killed_engine_fails_that_test_and_the_next_then_a_fresh_one_serves(
    pytester: pytest.Pytester, session_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = tmp_path / "step_summary"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makepyfile(
        helpers=RECORD,
        test_inner="""
import os, signal, time
from helpers import record, health

def test_1(exsa_engine):
    record(exsa_engine); assert health(exsa_engine).status_code == 200

def test_2_kills_its_engine(exsa_engine):
    record(exsa_engine)
    os.kill(exsa_engine.pid, signal.SIGKILL)
    time.sleep(0.2)
    health(exsa_engine)  # connection refused: the test fails

def test_3_finds_it_dead(exsa_engine):
    record(exsa_engine)

def test_4(exsa_engine):
    record(exsa_engine); assert health(exsa_engine).status_code == 200

def test_5(exsa_engine):
    record(exsa_engine); assert health(exsa_engine).status_code == 200
""",
    )
    junit = tmp_path / "junit.xml"
    result = run_inner(pytester, f"--junitxml={junit}", "--tb=short")
    result.assert_outcomes(passed=3, failed=2)
    pids = pids_seen(session_env)
    first, fresh = pids[0], pids[-1]
    # test_3's body never ran: it failed on finding the engine dead; tests 4 and 5 got a new one
    assert pids == [first, first, fresh, fresh] and fresh != first
    out = result.stdout.str()
    assert "exsa-doctor report" in out
    assert "engine.log" in out

    props = properties(junit)
    killed, found = props["test_2_kills_its_engine"], props["test_3_finds_it_dead"]
    for story in (killed, found):
        assert story["exsa-doctor.cause"] == ["engine-not-running"]
        assert story["exsa-doctor.signal"] == ["SIGKILL"]
        assert story["exsa-doctor.exit-status"] == ["-9"]
        assert story["exsa-doctor.died-during"] == ["test_inner.py::test_2_kills_its_engine"]
        assert story["exsa-doctor.pid"] == [str(first)]
        assert "OOM" in story["exsa-doctor.oom-killer"][0]
        report = story["exsa-doctor"][0]
        assert "processes.target_exited" in report  # the ranked cause's evidence
        assert "request failed" in report  # the failure time on the engine's timeline
        assert "Server listening on" in report  # the engine's own log lines
    assert "during this test" in killed["exsa-doctor.engine"][0]
    assert (
        "earlier, during test_inner.py::test_2_kills_its_engine" in found["exsa-doctor.engine"][0]
    )
    assert "started afresh" in found["exsa-doctor.next"][0]
    texts = failure_texts(junit)
    assert "was killed by signal 9 (SIGKILL)" in texts["test_3_finds_it_dead"]
    assert "exsa-doctor report" in texts["test_2_kills_its_engine"]

    # the job summary holds the report of each failed test and nothing for passing ones
    written = summary.read_text()
    headings = re.findall(r"^### ❌ `([^`]+)`", written, re.MULTILINE)
    assert headings == [
        "test_inner.py::test_2_kills_its_engine",
        "test_inner.py::test_3_finds_it_dead",
    ]
    assert "test_inner.py::test_1" not in written and "test_inner.py::test_4" not in written
    assert_all_gone(pids)


def test_an_engine_killed_by_a_passing_test_is_reported_by_the_next_one(
    pytester: pytest.Pytester, session_env: Path
) -> None:
    pytester.makepyfile(
        helpers=RECORD,
        test_inner="""
import os, signal
from helpers import record

def test_1_kills_and_passes(exsa_engine):
    record(exsa_engine)
    os.kill(exsa_engine.pid, signal.SIGSEGV)

def test_2(exsa_engine):
    record(exsa_engine)
""",
    )
    result = run_inner(pytester, "-rf")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "was killed by signal 11 (SIGSEGV: segmentation fault)" in out
    # seen dying in test_1, or just after it ended: either way test_1 is named
    assert re.search(r"(during|after) test_inner.py::test_1_kills_and_passes", out)
    assert_all_gone(pids_seen(session_env))


# ----------------------------------------------------------------------------------- factory


def test_the_factory_starts_one_engine_per_command_for_the_session(
    pytester: pytest.Pytester, session_env: Path
) -> None:
    pytester.makepyfile(
        helpers=RECORD,
        test_inner=f"""
from helpers import record, health

FAST = {STANDIN!r} + " --load-seconds 0.2"
SLOW = {STANDIN!r} + " --load-seconds 0.4"

def test_two_commands_two_engines(exsa_engine_factory):
    a, b = exsa_engine_factory(FAST), exsa_engine_factory(SLOW)
    record(a); record(b)
    assert a.pid != b.pid and a.port != b.port
    assert health(a).status_code == health(b).status_code == 200

def test_the_same_command_again_is_the_same_engine(exsa_engine_factory):
    record(exsa_engine_factory(FAST))

def test_an_argv_list_works_too(exsa_engine_factory):
    import shlex
    record(exsa_engine_factory(shlex.split(SLOW)))
""",
    )
    result = pytester.runpytest_subprocess(timeout=300)
    result.assert_outcomes(passed=3)
    pids = pids_seen(session_env)
    assert len(pids) == 4 and len(set(pids)) == 2
    assert pids[2] == pids[0] and pids[3] == pids[1]
    assert_all_gone(pids)


# ------------------------------------------------------------------------------- start, input


def test_an_engine_that_cannot_start_is_tried_once_per_scope(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "missing.gguf"))
    summary = tmp_path / "step_summary"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makepyfile(
        test_inner="def test_a(exsa_engine):\n    pass\n\ndef test_b(exsa_engine):\n    pass\n"
    )
    result = run_inner(pytester, "--exsa-ready-timeout=20")
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    assert "the engine did not come up" in out
    assert "model-missing-or-invalid" in out or "Model validation failed" in out
    assert "not tried again in this scope" in out
    assert summary.read_text().count("### ❌") == 1  # one report for one failed start


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--exsa-engine-scope=forever", "invalid choice: 'forever'"),
        ("--exsa-ready-timeout=-1", "--exsa-ready-timeout -1"),
        ("--exsa-engine='unbalanced", "No closing quotation"),
    ],
)
def test_bad_options_are_usage_errors_without_a_traceback(
    pytester: pytest.Pytester, option: str, message: str
) -> None:
    pytester.makepyfile(test_inner="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess(option, timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert message in err
    assert "Traceback" not in err + result.stdout.str()


def test_without_the_fixture_the_plugin_does_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner="def test_x():\n    assert False\n")
    result = pytester.runpytest_subprocess(f"--exsa-engine={STANDIN}", timeout=60)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "exsa-doctor report" not in out and "engines started" not in out


def test_an_engine_command_that_cannot_run_is_a_clear_failure(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytester.makepyfile(test_inner="def test_x(exsa_engine):\n    pass\n")
    missing = tmp_path / "no-such-engine"
    result = pytester.runpytest_subprocess(f"--exsa-engine={missing} -m model.gguf", timeout=120)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "the engine did not come up" in out and str(missing) in out
    assert "Traceback" not in out
    monkeypatch.setenv("EXSA_ENGINE_CMD", "'unbalanced")
    result = pytester.runpytest_subprocess(timeout=120)
    result.assert_outcomes(errors=1)
    assert (
        "EXSA_ENGINE_CMD" in result.stdout.str() and "No closing quotation" in result.stdout.str()
    )


def test_a_report_dir_kept_from_an_earlier_run_keeps_each_runs_logs_apart(
    pytester: pytest.Pytester, session_env: Path, tmp_path: Path
) -> None:
    pytester.makepyfile(helpers=RECORD, test_inner="def test_x(exsa_engine):\n    assert False\n")
    reports = tmp_path / "reports"
    for _ in range(2):
        run_inner(pytester, f"--exsa-report-dir={reports}").assert_outcomes(failed=1)
    logs = sorted((reports / "engines").glob("*/engine.log"))
    assert len(logs) == 2
    assert all(log.read_text().count("Model loaded successfully") == 1 for log in logs)
    assert len(list((reports / "failures").iterdir())) == 2
