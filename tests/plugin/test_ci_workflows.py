"""The workflows in docs/ci.md, run as written, with the environment each CI system sets.

The pytest command of each workflow (GitHub Actions, GitLab CI, Jenkins) is read from the docs
and run in a fresh project folder whose `tests/engine` holds a passing test, a test that kills
its engine (by the PID the fixture gave it) and one that finds it dead. Only the engine command
is replaced (by the stand-in engine) and the interpreter (by this one). Then the places the
workflow names are checked: the job summary, the JUnit file, the artifacts folder.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from exsa_doctor.demo.standin.ggufmake import write_gguf

DOC = Path(__file__).resolve().parents[2] / "docs" / "ci.md"
STANDIN = f"{sys.executable} -m exsa_doctor.demo.standin"

ENGINE_TESTS = """
import os, signal, time
import httpx

def test_generates(exsa_engine):
    r = httpx.post(exsa_engine + "/v1/generate", json={"prompt": "Hi", "sampling_params": {"max_tokens": 4}}, timeout=30)
    assert r.status_code == 200

def test_kills_the_engine(exsa_engine):
    os.kill(exsa_engine.pid, signal.SIGKILL)
    time.sleep(0.2)
    httpx.get(exsa_engine + "/v1/health", timeout=5)

def test_finds_it_dead(exsa_engine):
    pass
"""
FAILED = [
    "tests/engine/test_engine.py::test_kills_the_engine",
    "tests/engine/test_engine.py::test_finds_it_dead",
]


def section(title: str) -> str:
    """The first fenced block under the `## title` heading of docs/ci.md."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    block = re.search(r"```\w*\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, f"no code block under ## {title}"
    return block.group(1)


def pytest_argv(block: str) -> list[str]:
    """The workflow's pytest command: this interpreter, the documented arguments."""
    match = re.search(r"(\S*python3?) -m pytest ([^'\n]+)", block)
    assert match is not None, block
    return [sys.executable, "-m", "pytest", *shlex.split(match.group(2))]


def engine_variable(block: str) -> str:
    match = re.search(r"EXSA_ENGINE_CMD\s*[:=]\s*'?([^'\n]+)'?", block)
    assert match is not None, "the workflow names the engine command in EXSA_ENGINE_CMD"
    return match.group(1).strip()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "checkout"
    (folder / "tests" / "engine").mkdir(parents=True)
    (folder / "tests" / "engine" / "test_engine.py").write_text(ENGINE_TESTS)
    write_gguf(tmp_path / "model.gguf")
    return folder


def clean_env(tmp_path: Path) -> dict[str, str]:
    """This machine's environment without any CI's variables, and a model for the stand-in."""
    ci_prefixes = ("GITHUB_", "GITLAB_", "CI_", "RUNNER_", "JENKINS_", "BUILD_", "JOB_")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(ci_prefixes) and k not in ("CI", "WORKSPACE", "EXSA_ENGINE_CMD")
    }
    env.update(MODEL_PATH=str(tmp_path / "model.gguf"), EXSA_STANDIN_LOAD_S="0.3")
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def check_junit(junit: Path) -> None:
    """Each failed test's `<failure>` carries the report and the log; properties the facts."""
    cases = {c.get("name"): c for c in ET.parse(junit).iter("testcase")}
    assert cases["test_generates"].find("failure") is None
    assert not [p for p in cases["test_generates"].iter("property")]
    for name in ("test_kills_the_engine", "test_finds_it_dead"):
        failure = cases[name].find("failure")
        assert failure is not None
        text = failure.text or ""
        assert "exsa-doctor report" in text and "exsa-doctor: engine log" in text
        assert "was killed by signal 9 (SIGKILL)" in text
        assert "engine-not-running" in text
        props = {p.get("name"): p.get("value") for p in cases[name].iter("property")}
        assert props["exsa-doctor.cause"] == "engine-not-running"
        assert props["exsa-doctor.signal"] == "SIGKILL"
        assert props["exsa-doctor.died-during"] == FAILED[0]


def check_artifacts(reports: Path) -> None:
    failures = sorted(p.name for p in (reports / "failures").iterdir())
    assert len(failures) == 2 and "test_kills_the_engine" in failures[0], failures
    logs = sorted((reports / "engines").glob("*/engine.log"))
    assert len(logs) == 1  # the session's engine; the one after the death was never needed
    assert "Server listening on" in logs[0].read_text()


def test_github_actions_workflow(project: Path, tmp_path: Path) -> None:
    block = section("GitHub Actions")
    assert engine_variable(block)
    runner_temp = tmp_path / "runner" / "_temp"
    summary = runner_temp / "_runner_file_commands" / "step_summary_0c8d2f6e"
    summary.parent.mkdir(parents=True)
    env = clean_env(tmp_path)
    env.update(
        CI="true",
        GITHUB_ACTIONS="true",
        GITHUB_WORKFLOW="engine-tests",
        GITHUB_JOB="engine-tests",
        GITHUB_WORKSPACE=str(project),
        RUNNER_OS="Linux",
        RUNNER_TEMP=str(runner_temp),
        GITHUB_STEP_SUMMARY=str(summary),
        EXSA_ENGINE_CMD=STANDIN,
    )
    argv = pytest_argv(block)
    done = run(argv, project, env)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 passed" in done.stdout and "2 failed" in done.stdout
    written = summary.read_text()
    assert re.findall(r"^### ❌ `([^`]+)`", written, re.MULTILINE) == FAILED
    assert "test_generates" not in written
    assert "engine-not-running" in written and "<details><summary>Engine log" in written
    check_junit(project / argv[argv.index("--junitxml") + 1])
    upload = re.search(r"path: (\S+)", block)
    assert upload is not None
    check_artifacts(project / upload.group(1))


def test_github_actions_run_then_reports_to_the_job_summary(project: Path, tmp_path: Path) -> None:
    """The `exsa-doctor run --then` steps: the test script fails, its report reaches the summary."""
    text = DOC.read_text(encoding="utf-8")
    run_line = re.search(r"run: (exsa-doctor run .*)", text)
    report_line = re.search(r"run: (cat reports/report\.md .*)", text)
    assert run_line is not None and report_line is not None
    head, engine = run_line.group(1).split(" -- ", 1)
    then = re.search(r"--then '([^']+)'", head)
    assert then is not None
    script = project / then.group(1)
    script.write_text('#!/bin/sh\nkill -KILL "$EXSA_PID"\nsleep 0.5\nexit 1\n')
    script.chmod(0o755)
    summary = tmp_path / "step_summary"
    env = clean_env(tmp_path)
    env.update(CI="true", GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary))
    argv = [
        sys.executable,
        "-m",
        "exsa_doctor",
        *shlex.split(head)[1:],
        "--",
        *shlex.split(STANDIN),
    ]
    assert engine.startswith("./")  # the documented engine, replaced by the stand-in here
    done = run(argv, project, env)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "was killed by signal 9 (SIGKILL)" in done.stderr
    step = run(["/bin/sh", "-c", report_line.group(1)], project, env)
    assert step.returncode == 0, step.stderr
    written = summary.read_text()
    assert "engine-not-running" in written and "request failed" in written


def test_gitlab_ci_job(project: Path, tmp_path: Path) -> None:
    block = section("GitLab CI")
    assert engine_variable(block)
    env = clean_env(tmp_path)
    env.update(
        CI="true",
        GITLAB_CI="true",
        CI_SERVER="yes",
        CI_PROJECT_DIR=str(project),
        CI_JOB_NAME="engine-tests",
        CI_JOB_ID="4242",
        CI_PIPELINE_ID="77",
        EXSA_ENGINE_CMD=STANDIN,
    )
    done = run(pytest_argv(block), project, env)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    junit = re.search(r"junit: (\S+)", block)
    paths = re.search(r"paths: \[(\S+)\]", block)
    assert junit is not None and paths is not None
    check_junit(project / junit.group(1))
    check_artifacts(project / paths.group(1))


def test_jenkins_pipeline(project: Path, tmp_path: Path) -> None:
    block = section("Jenkins")
    assert engine_variable(block)
    env = clean_env(tmp_path)
    env.update(
        JENKINS_URL="http://jenkins.example.com:8080/",
        BUILD_NUMBER="17",
        BUILD_ID="17",
        BUILD_URL="http://jenkins.example.com:8080/job/engine-tests/17/",
        JOB_NAME="engine-tests",
        WORKSPACE=str(project),
        EXSA_ENGINE_CMD=STANDIN,
    )
    done = run(pytest_argv(block), project, env)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    junit = re.search(r"junit '([^']+)'", block)
    archived = re.search(r"archiveArtifacts artifacts: '([^'*]+)\*\*'", block)
    assert junit is not None and archived is not None
    check_junit(project / junit.group(1))
    check_artifacts(project / archived.group(1))
