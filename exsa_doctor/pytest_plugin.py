"""pytest plugin (entry point `pytest11`): engines for tests, and the engine's story when one fails.

`--exsa-engine CMD` names the command that starts the engine (or `$EXSA_ENGINE_CMD`). The
`exsa_engine` fixture starts it in-process through `api.run` (the preflight, readiness wait and
teardown of `exsa-doctor run`) on a free port and yields its base URL: a `str` that also has
`.url`, `.pid`, `.log`, `.port`, `.command`. The engine lives for the whole session by default
(`--exsa-engine-scope session|module|function`), so the model is loaded once. Before each test
it is checked (alive, its health route answers); a test that finds it dead fails with how and
when it died, and the next test gets a fresh engine. `exsa_engine_factory(command)` starts
further engines from other commands, one per command, stopped at the end of the session.

When a test that used an engine fails, the doctor diagnoses the engine with its own log, its PID
and the moment the test failed, and attaches that report and the log's tail to the failure
(terminal and JUnit `<failure>` text), as JUnit properties, to the GitHub Actions job summary
when `$GITHUB_STEP_SUMMARY` is set, and under `--exsa-report-dir` when given. `docs/ci.md`.

Loaded in every pytest run of an environment where exsa-doctor is installed, so it imports
nothing heavy at module level and does nothing unless a test asks for an engine.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from exsa_doctor.pytest_engines import EngineManager, ManagedEngine

_MANAGER = pytest.StashKey["EngineManager"]()
_USED = pytest.StashKey[list["ManagedEngine"]]()
_BROKEN = pytest.StashKey[str]()
_START_TIMEOUT_S = 120.0
_SCOPES = ("session", "module", "function")


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
        help="Seconds an engine may take to be ready (default 120).",
    )
    group.addoption(
        "--exsa-engine-scope",
        action="store",
        choices=_SCOPES,
        default="session",
        help="How long one exsa_engine lives: the session (default: the model loads once), "
        "each test module, or each test.",
    )
    group.addoption(
        "--exsa-report-dir",
        action="store",
        default=None,
        metavar="DIR",
        help="Where engine logs and each failed test's report go (default: pytest's tmp dir).",
    )


def pytest_configure(config: pytest.Config) -> None:
    timeout = config.getoption("--exsa-ready-timeout")
    if not 0 < float(timeout) <= 86400:  # also refuses NaN
        raise pytest.UsageError(
            f"--exsa-ready-timeout {timeout}: give a number of seconds, more than 0, at most 86400"
        )
    command = config.getoption("--exsa-engine")
    if command is not None:
        try:
            _split_command(str(command), "--exsa-engine")
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    report_dir = config.getoption("--exsa-report-dir")
    if report_dir is not None and Path(report_dir).exists() and not Path(report_dir).is_dir():
        raise pytest.UsageError(f"--exsa-report-dir {report_dir} exists and is not a directory")


def _split_command(command: str, where: str) -> list[str]:
    """The command as argv; ValueError with a message for a person when it cannot be split."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"{where} {command!r}: {exc}") from None
    if not argv:
        raise ValueError(f"{where} is empty: give the command that starts the engine")
    return argv


def _manager(request: pytest.FixtureRequest) -> EngineManager:
    config = request.config
    manager = config.stash.get(_MANAGER, None)
    if manager is None:
        from exsa_doctor.pytest_engines import EngineManager

        option = config.getoption("--exsa-report-dir")
        report_dir = Path(option).resolve() if option else None
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        if report_dir is not None:
            root = report_dir / "engines"
        else:
            factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
            root = factory.mktemp("exsa-engines")
        manager = EngineManager(
            root,
            float(config.getoption("--exsa-ready-timeout")),
            report_dir,
            prefix=f"{worker}-" if worker else "",
        )
        config.stash[_MANAGER] = manager
    return manager


def _engine_for_test(
    request: pytest.FixtureRequest, argv: Sequence[str], scope: str, *, in_setup: bool
) -> str:
    """Start or reuse the engine and check it; a test that cannot have it fails with why."""
    from exsa_doctor.pytest_engines import StartFailed, scope_key

    item = request.node
    manager = _manager(request)
    try:
        managed = manager.engine_for(argv, scope_key(scope, item.nodeid), item.nodeid)
    except StartFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    used = item.stash.setdefault(_USED, [])
    if managed not in used:
        used.append(managed)
    problem = managed.check(item.nodeid)
    if problem is not None:
        message = f"exsa-doctor: {problem}; the doctor's report follows"
        if not in_setup:
            pytest.fail(message, pytrace=False)
        # a setup failure would count as an error: the test itself fails, before its body runs
        item.stash[_BROKEN] = message
    assert managed.engine is not None
    return managed.engine


@pytest.fixture
def exsa_engine(request: pytest.FixtureRequest) -> str:
    """The engine given by `--exsa-engine`, ready and checked; its base URL (a `str`)."""
    command = request.config.getoption("--exsa-engine")
    where = "--exsa-engine"
    if not command:
        command, where = os.environ.get("EXSA_ENGINE_CMD"), "EXSA_ENGINE_CMD"
    if not command:
        pytest.skip("no engine command: pass --exsa-engine CMD (or set EXSA_ENGINE_CMD)")
    try:
        argv = _split_command(str(command), where)
    except ValueError as exc:
        pytest.fail(f"exsa-doctor: {exc}", pytrace=False)
    scope = str(request.config.getoption("--exsa-engine-scope"))
    return _engine_for_test(request, argv, scope, in_setup=True)


@pytest.fixture
def exsa_engine_factory(request: pytest.FixtureRequest) -> Callable[..., str]:
    """Start engines from other commands: `exsa_engine_factory("llama-server -m b.gguf")`.

    One engine per command and scope (`scope="session"` by default, or "module"/"function"),
    checked like `exsa_engine` each time it is asked for, stopped when its scope ends.
    """

    def start(command: str | Sequence[str], *, scope: str = "session") -> str:
        if scope not in _SCOPES:
            raise ValueError(f"scope {scope!r}: one of {', '.join(_SCOPES)}")
        argv = (
            _split_command(command, "exsa_engine_factory")
            if isinstance(command, str)
            else [str(a) for a in command]
        )
        if not argv:
            raise ValueError("exsa_engine_factory: give the command that starts the engine")
        return _engine_for_test(request, argv, scope, in_setup=False)

    return start


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    manager = item.config.stash.get(_MANAGER, None)
    if manager is not None:
        # from now on a death is this test's; one seen during its setup came before it began
        manager.current = item.nodeid
    broken = item.stash.get(_BROKEN, None)
    if broken is not None:
        pytest.fail(broken, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    used = item.stash.get(_USED, None)
    if not used or report.when != "call" or not report.failed:
        return report
    manager = item.config.stash[_MANAGER]
    for managed in used:
        story = managed.failure_report(item.nodeid, failed_at=call.stop)
        _attach(report, "exsa-doctor report", story.as_text())
        if story.tail:
            _attach(report, "exsa-doctor: engine log", story.tail_text())
        item.user_properties.extend(story.properties())
        manager.publish(story)
    return report


def _attach(report: pytest.TestReport, title: str, content: str) -> None:
    """Into the failure text: the terminal shows it, and JUnit's `<failure>` carries it."""
    longrepr = report.longrepr
    add_section = getattr(longrepr, "addsection", None)  # pytest's ExceptionRepr
    if isinstance(longrepr, str):
        report.longrepr = f"{longrepr}\n\n{'-' * 20} {title} {'-' * 20}\n{content}"
    elif callable(add_section):
        add_section(title, content)
    else:
        report.sections.append((title, content))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:
        manager = item.config.stash.get(_MANAGER, None)
        if manager is not None:
            manager.end_scopes(item.nodeid, nextitem.nodeid if nextitem is not None else None)
            manager.current = None
            manager.last_finished = item.nodeid


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    manager = session.config.stash.get(_MANAGER, None)
    if manager is not None:
        manager.close_all()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    manager = terminalreporter.config.stash.get(_MANAGER, None)
    if manager is None or not (manager.published or manager.notes):
        return
    terminalreporter.write_sep("-", "exsa-doctor")
    where = []
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        where.append("the job summary ($GITHUB_STEP_SUMMARY)")
    if manager.report_dir is not None:
        where.append(str(manager.report_dir / "failures"))
    shown = f": {', '.join(where)}" if where else " (attached to the failures above)"
    if manager.published:
        terminalreporter.write_line(f"{len(manager.published)} engine report(s){shown}")
    for note in manager.notes:
        terminalreporter.write_line(note)
    terminalreporter.write_line(f"engines started: {manager.started}; logs under {manager.root}")
