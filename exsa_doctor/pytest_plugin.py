"""pytest plugin (entry point `pytest11`): the `exsa_engine` fixture and a report on failure.

`--exsa-engine CMD` names the command that starts the engine. The `exsa_engine` fixture starts
it through `exsa-doctor run --port auto` (the same preflight, readiness wait and teardown as on
the command line), yields the engine's base URL, and stops it after the test. When a test that
used the fixture fails, the doctor diagnoses the engine and attaches its Markdown report to the
test report: a section shown with `-rA` and on failures, and a JUnit `<property>`.

Loaded in every pytest run of an environment where exsa-doctor is installed, so it imports
nothing heavy at module level and does nothing unless the fixture is used.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

_URL_KEY = pytest.StashKey[str]()
_START_TIMEOUT_S = 120.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("exsa-doctor")
    group.addoption(
        "--exsa-engine",
        action="store",
        default=None,
        metavar="CMD",
        help="Command that starts the engine for the exsa_engine fixture (e.g. 'exsa-engine').",
    )
    group.addoption(
        "--exsa-ready-timeout",
        action="store",
        type=float,
        default=_START_TIMEOUT_S,
        help="Seconds the exsa_engine fixture waits for the engine to be ready (default 120).",
    )


class _EngineRun:
    """One `exsa-doctor run` in the background, held open by its `--then` until released."""

    def __init__(self, command: str, folder: Path, ready_timeout: float) -> None:
        self.folder = folder
        self.url_file = folder / "url"
        self.release_file = folder / "release"
        # --then writes the URL, then holds the engine until the fixture releases it; the loop
        # ends by itself after a day so nothing can be left behind forever
        hold = (
            f'printf %s "$EXSA_URL" > {shlex.quote(str(self.url_file))}; n=0; '
            f"while [ ! -e {shlex.quote(str(self.release_file))} ] && [ $n -lt 864000 ]; "
            "do sleep 0.1; n=$((n+1)); done"
        )
        argv = [
            sys.executable,
            "-m",
            "exsa_doctor",
            "run",
            "--port",
            "auto",
            "--ready-timeout",
            f"{ready_timeout:g}",
            "--report-dir",
            str(folder),
            "--then",
            hold,
            "--",
            *shlex.split(command),
        ]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=(folder / "run.stderr").open("wb")
        )

    def wait_url(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.url_file.exists():
                text = self.url_file.read_text().strip()
                if text:
                    return text
            if self.proc.poll() is not None:
                return None
            time.sleep(0.05)
        return None

    def failure_text(self) -> str:
        report = self.folder / "report.md"
        if report.exists():
            return report.read_text(errors="replace")
        return (self.folder / "run.stderr").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.release_file.touch()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.terminate()  # our own child: run tears the engine down on SIGTERM
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def exsa_engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """Start the engine given by `--exsa-engine` on a free port; yield its base URL."""
    command = request.config.getoption("--exsa-engine") or os.environ.get("EXSA_ENGINE_CMD")
    if not command:
        pytest.skip("no engine command: pass --exsa-engine CMD (or set EXSA_ENGINE_CMD)")
    ready_timeout = float(request.config.getoption("--exsa-ready-timeout"))
    with tempfile.TemporaryDirectory(prefix="exsa-engine-") as tmp:
        run = _EngineRun(str(command), Path(tmp), ready_timeout)
        try:
            url = run.wait_url(ready_timeout + 30)
            if url is None:
                pytest.fail(
                    "exsa-doctor: the engine did not come up\n\n" + run.failure_text(),
                    pytrace=False,
                )
            request.node.stash[_URL_KEY] = url
            yield url
        finally:
            run.stop()


def _diagnosis_markdown(url: str) -> str:
    from exsa_doctor import api
    from exsa_doctor.render import render_as

    return render_as(api.diagnose(api.make_target(url=url, timeout_s=8.0)), "markdown")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    url = item.stash.get(_URL_KEY, None)
    if url is None or report.when != "call" or not report.failed:
        return report
    try:
        text = _diagnosis_markdown(url)
    except Exception as exc:  # a report that cannot be made must not hide the test's failure
        text = f"exsa-doctor could not diagnose {url}: {type(exc).__name__}: {exc}"
    report.sections.append(("exsa-doctor report", text))
    item.user_properties.append(("exsa-doctor", text))
    return report
