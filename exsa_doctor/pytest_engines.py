"""The engines behind the pytest plugin: one per scope, watched, and diagnosed when a test fails.

`EngineManager` (one per pytest session) starts engines in-process through `api.run` (the
preflight, readiness wait and teardown of `exsa-doctor run`), keyed by command and scope:
`session` (the default: the model is loaded once), `module` or `function`. A daemon thread per
engine waits on its exit (a pidfd), so a death is timed and pinned to the test that was running.

Before a test gets its engine, the engine is checked: alive, and its health route answers (one
bounded request to its own address). When a test fails, or finds its engine gone, the report
attached to it tells the whole story: how the engine ended (exit code, signal, the kernel's
OOM-killer record), the doctor's diagnosis with the engine's own log, its PID and the moment the
test failed (`api.diagnose_engine`), and the tail of the log. It goes where CI shows it: the
failure text (the terminal, JUnit `<failure>`: GitLab and Jenkins show it), JUnit properties,
the GitHub Actions job summary (`$GITHUB_STEP_SUMMARY`), and a file per failed test under
`--exsa-report-dir`.

An engine found dead fails the test that found it with the story of its death and is started
afresh for the test after that: one crash does not fail the rest of the session.

Imported by the plugin's fixtures only when a test asks for an engine.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from exsa_doctor import api
from exsa_doctor.render import render_as
from exsa_doctor.render.common import iso_utc
from exsa_doctor.render.markdown import code, fenced, text
from exsa_doctor.supervise.postmortem import EngineExit, log_tail
from exsa_doctor.supervise.signals import exit_fd, fd_ready

if TYPE_CHECKING:
    from exsa_doctor.model import Diagnosis

SCOPES = ("session", "module", "function")
HEALTH_TIMEOUT_S = 5.0
DIAGNOSIS_TIMEOUT_S = 8.0
# GitHub refuses a job summary over 1 MiB per step; stay below it, however many tests fail
SUMMARY_BUDGET_BYTES = 900 * 1024
_WATCH_WAKE_S = 1.0


class Engine(str):
    """A running engine's base URL (use it as a string: `exsa_engine + "/health"`) and more.

    `url`, `pid`, `host`, `port`, `log` (the engine's log file), `command`, `profile`, and
    `running` (the `api.RunningEngine`: `liveness()`, `exit_status()`).
    """

    running: api.RunningEngine
    command: str

    def __new__(cls, running: api.RunningEngine, command: str) -> Engine:
        self = super().__new__(cls, running.url)
        self.running = running
        self.command = command
        return self

    @property
    def url(self) -> str:
        return str.__str__(self)

    @property
    def pid(self) -> int:
        return self.running.pid

    @property
    def host(self) -> str:
        return self.running.host

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def log(self) -> Path | None:
        return self.running.engine_log

    @property
    def profile(self) -> str:
        return self.running.profile


class StartFailed(Exception):
    """The engine did not come up; the message is the story, for the test's failure."""


@dataclass
class Death:
    """How and when a managed engine ended, and which tests heard about it."""

    ended: EngineExit | None
    seen_at: float | None  # wall clock, when its exit was seen
    during: str | None  # the test that was running then
    after: str | None  # else the last test that had finished
    found_by: str | None = None  # the first test that found it dead before it began


@dataclass
class FailureReport:
    """What a failed test (or a failed start) gets attached: the engine's whole story."""

    nodeid: str
    headline: str  # the engine's state when the test failed, in one sentence
    facts: list[tuple[str, str]] = field(default_factory=list)
    diagnosis: Diagnosis | None = None
    problem: str = ""  # what stood in the way of a diagnosis, or a refused start's reasons
    tail: list[str] = field(default_factory=list)
    log: Path | None = None

    def as_text(self) -> str:
        lines = [f"exsa-doctor: {self.headline}"]
        lines += [f"  {name}: {value}" for name, value in self.facts]
        if self.problem:
            lines += ["", self.problem]
        if self.diagnosis is not None:
            lines += ["", render_as(self.diagnosis, "text", color=False).rstrip()]
        return "\n".join(lines)

    def tail_text(self) -> str:
        where = f" ({self.log})" if self.log else ""
        head = f"last {len(self.tail)} lines of the engine log{where}:"
        return "\n".join([head, *(f"  | {line}" for line in self.tail)])

    def as_markdown(self) -> str:
        lines = [f"### ❌ {code(self.nodeid)}: {text(self.headline, 1000)}", ""]
        for name, value in self.facts:
            shown = code(value, 1000) if name in _CODE_FACTS else text(value, 1000)
            lines.append(f"- **{text(name)}**: {shown}")
        lines.append("")
        if self.problem:
            lines += [fenced(self.problem.splitlines(), "text"), ""]
        if self.diagnosis is not None:
            lines += [render_as(self.diagnosis, "markdown").rstrip(), ""]
        if self.tail:
            where = f" ({code(self.log)})" if self.log else ""
            lines += [
                f"<details><summary>Engine log, last {len(self.tail)} lines{where}</summary>",
                "",
                fenced(self.tail, "text"),
                "",
                "</details>",
                "",
            ]
        return "\n".join(lines) + "\n"

    def properties(self) -> list[tuple[str, str]]:
        """JUnit `<property>` pairs: the whole Markdown report, and the facts one by one."""
        props = [("exsa-doctor", self.as_markdown()), ("exsa-doctor.engine", self.headline)]
        if self.diagnosis is not None:
            props.append(("exsa-doctor.verdict", self.diagnosis.verdict.value))
            if self.diagnosis.causes and self.diagnosis.verdict.value == "unhealthy":
                props.append(("exsa-doctor.cause", self.diagnosis.causes[0].id))
        props += [(f"exsa-doctor.{_slug(name.lower())}", value) for name, value in self.facts]
        return props


_CODE_FACTS = frozenset({"command", "engine log", "folder", "health route"})


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-")[:120] or "x"


class ManagedEngine:
    """One engine the session started: its `api.run` block, its watcher, its death if any."""

    def __init__(self, manager: EngineManager, argv: Sequence[str], folder: Path) -> None:
        self.manager = manager
        self.argv = list(argv)
        self.command = shlex.join(self.argv)
        self.folder = folder
        self.running: api.RunningEngine | None = None
        self.engine: Engine | None = None
        self.start_failure: FailureReport | None = None
        self.death: Death | None = None
        self.closed = False
        self._stack = contextlib.ExitStack()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._seen_exit: tuple[float, str | None, str | None] | None = None

    # ----------------------------------------------------------------------------- start
    def start(self, nodeid: str) -> None:
        """Start the engine and wait until it is ready; `StartFailed` with the story if not."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.running = self._stack.enter_context(
                api.run(
                    self.argv,
                    port_auto=True,
                    ready_timeout_s=self.manager.ready_timeout_s,
                    report_dir=self.folder,
                    say=self._note,
                )
            )
        except api.EngineStartError as exc:
            self._fail_start(nodeid, str(exc), exc.diagnosis)
        except api.UsageError as exc:
            self._fail_start(nodeid, f"cannot start {self.command}: {exc}", None)
        assert self.running is not None
        self.engine = Engine(self.running, self.command)
        self._watch(self.running)

    def _fail_start(self, nodeid: str, why: str, diagnosis: Diagnosis | None) -> None:
        self.closed = True
        log = self.folder / "engine.log"
        report = FailureReport(
            nodeid=nodeid,
            headline="the engine did not come up",
            facts=[("command", self.command), ("folder", str(self.folder))],
            diagnosis=diagnosis,
            problem=why,
            tail=log_tail(log),
            log=log if log.exists() else None,
        )
        self.start_failure = report
        self.manager.publish(report)
        raise StartFailed(report.as_text() + ("\n\n" + report.tail_text() if report.tail else ""))

    def _note(self, message: str) -> None:
        with contextlib.suppress(OSError), (self.folder / "supervisor.log").open("a") as fh:
            fh.write(message + "\n")

    def _watch(self, running: api.RunningEngine) -> None:
        fd = exit_fd(running.pid)

        def watch() -> None:
            try:
                while not self._stop.is_set():
                    fd_ready(
                        [fd] if fd is not None else [], _WATCH_WAKE_S if fd is not None else 0.2
                    )
                    if self._stop.is_set():
                        return
                    if running.exit_status() is not None:
                        mgr = self.manager
                        self._seen_exit = (time.time(), mgr.current, mgr.last_finished)
                        return
            finally:
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)

        self._watcher = threading.Thread(
            target=watch, name=f"exsa-engine-watch-{running.pid}", daemon=True
        )
        self._watcher.start()

    # ---------------------------------------------------------------------------- checks
    def check(self, nodeid: str) -> str | None:
        """None when the engine serves; else why `nodeid` cannot have it (one sentence)."""
        assert self.running is not None
        if self.death is None:
            live = self.running.liveness(HEALTH_TIMEOUT_S)
            if live.alive:
                if live.answered:
                    return None
                return (
                    f"the engine (PID {self.running.pid}) is running but its health route gave "
                    f"no answer: {live.detail}"
                )
            self.record_death()
        assert self.death is not None
        if self.death.found_by is None:
            self.death.found_by = nodeid
        return self.death_sentence(nodeid)

    def record_death(self) -> Death:
        """Note how and when it ended (once), and reap it: its log stays in its folder."""
        if self.death is not None:
            return self.death
        assert self.running is not None
        if self._watcher is not None:
            self._watcher.join(2 * _WATCH_WAKE_S)  # it has seen the exit, or sees it now
        ended = self.running.ended()
        if self._seen_exit is not None:
            seen_at, during, after = self._seen_exit
        else:
            seen_at, during, after = time.time(), self.manager.current, self.manager.last_finished
        self.death = Death(ended=ended, seen_at=seen_at, during=during, after=after)
        self.close()
        return self.death

    def death_sentence(self, nodeid: str) -> str:
        assert self.death is not None and self.running is not None
        d = self.death
        how = d.ended.describe() if d.ended is not None else "exited"
        if d.during == nodeid:
            where = "during this test"
        elif d.during:
            where = f"earlier, during {d.during}"
        elif d.after:
            where = f"after {d.after} ended"
        else:
            where = "before any test used it"
        when = f" (seen at {iso_utc(d.seen_at)})" if d.seen_at else ""
        return f"the engine (PID {self.running.pid}) {how} {where}{when}"

    def failure_report(self, nodeid: str, failed_at: float) -> FailureReport:
        """The story for a test that failed at `failed_at` while using this engine."""
        assert self.running is not None
        state_fact: tuple[str, str] | None = None
        live = self.running.liveness(HEALTH_TIMEOUT_S) if self.death is None else None
        if live is not None and not live.alive:
            self.record_death()
        if live is None or self.death is not None:
            headline = self.death_sentence(nodeid)
        else:
            answer = "answered its health route" if live.answered else "gave no health answer"
            headline = (
                f"the engine (PID {self.running.pid}) was running and {answer} when the test failed"
            )
            state_fact = ("health route", live.detail)
        facts = [
            ("command", self.command),
            ("PID", str(self.running.pid)),
            ("test failed at", iso_utc(failed_at) or str(failed_at)),
        ]
        if state_fact is not None:
            facts.append(state_fact)
        if self.death is not None:
            facts += self._death_facts(nodeid)
        log = self.running.engine_log
        facts.append(("engine log", str(log)))
        report = FailureReport(
            nodeid=nodeid, headline=headline, facts=facts, tail=log_tail(log), log=log
        )
        try:
            report.diagnosis = api.diagnose_engine(
                self.running, failed_at=failed_at, timeout_s=DIAGNOSIS_TIMEOUT_S
            )
        except Exception as exc:  # a report that cannot be made must not hide the failure
            report.problem = (
                f"exsa-doctor could not diagnose the engine: {type(exc).__name__}: {exc}"
            )
        return report

    def _death_facts(self, nodeid: str) -> list[tuple[str, str]]:
        assert self.death is not None
        d = self.death
        facts: list[tuple[str, str]] = []
        if d.ended is not None:
            facts.append(("exit status", str(d.ended.status)))
            if d.ended.signal_name:
                facts.append(("signal", d.ended.signal_name))
            note = d.ended.kernel_note()
            if note:
                facts.append(("OOM killer", note))
        if d.seen_at is not None:
            facts.append(("died at", iso_utc(d.seen_at) or str(d.seen_at)))
        facts.append(("died during", d.during or f"no test (after {d.after or 'start-up'})"))
        if d.found_by == nodeid:
            facts.append(("next", "it is started afresh for the next test that asks for it"))
        return facts

    # --------------------------------------------------------------------------- teardown
    def close(self) -> None:
        """Stop it (idempotent): the watcher first, so our own SIGTERM is no death."""
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        self._stack.close()
        if self._watcher is not None:
            self._watcher.join(2 * _WATCH_WAKE_S)


class EngineManager:
    """The session's engines, keyed by (command, scope key); the reports they produced."""

    def __init__(
        self, root: Path, ready_timeout_s: float, report_dir: Path | None, prefix: str = ""
    ) -> None:
        self.root = root
        self.prefix = prefix  # a pytest-xdist worker's id: workers share --exsa-report-dir
        self.ready_timeout_s = ready_timeout_s
        self.report_dir = report_dir
        self.engines: dict[tuple[tuple[str, ...], str], ManagedEngine] = {}
        self.current: str | None = None  # the test whose body or teardown runs now
        self.last_finished: str | None = None
        self.started = 0
        self.published: list[str] = []  # nodeids whose report went out
        self.summary_bytes = 0
        self.summary_full = False
        self.notes: list[str] = []  # for the terminal summary

    # ---------------------------------------------------------------------------- engines
    def engine_for(self, argv: Sequence[str], scope_key: str, nodeid: str) -> ManagedEngine:
        """The engine for this command and scope: running, or started (again) now.

        Raises `StartFailed` when it does not come up, or did not earlier in this scope.
        """
        key = (tuple(argv), scope_key)
        managed = self.engines.get(key)
        if managed is not None and managed.start_failure is not None:
            first = managed.start_failure.nodeid
            raise StartFailed(
                f"exsa-doctor: the engine did not come up ({managed.command}); it was tried for "
                f"{first}, whose report says why, and is not tried again in this scope"
            )
        death = managed.death if managed is not None else None
        if death is not None and death.found_by is not None and death.found_by != nodeid:
            managed = None  # its death was reported: a fresh engine for the tests after
        if managed is None:
            self.started += 1
            name = _slug(Path(argv[0]).name) if argv else "engine"
            folder = _unused(self.root, f"{self.prefix}engine-{{n:02d}}-{name}", self.started)
            managed = ManagedEngine(self, argv, folder)
            self.engines[key] = managed
            managed.start(nodeid)
        return managed

    def end_scopes(self, nodeid: str, next_nodeid: str | None) -> None:
        """Stop the engines whose scope ends with this test."""
        module = nodeid.split("::", 1)[0]
        next_module = next_nodeid.split("::", 1)[0] if next_nodeid else None
        ending = {f"function:{nodeid}"}
        if next_module != module:
            ending.add(f"module:{module}")
        for key in [k for k in self.engines if k[1] in ending]:
            self.engines.pop(key).close()

    def close_all(self) -> None:
        while self.engines:
            _key, managed = self.engines.popitem()
            managed.close()

    # ---------------------------------------------------------------------------- reports
    def publish(self, report: FailureReport) -> None:
        """Write the report where CI shows it: the job summary, and a file under --report-dir."""
        markdown = report.as_markdown()
        self.published.append(report.nodeid)
        if self.report_dir is not None:
            folder = self.report_dir / "failures"
            pattern = f"{self.prefix}{{n:03d}}-{_slug(report.nodeid)}.md"
            path = _unused(folder, pattern, len(self.published))
            try:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_text(markdown, encoding="utf-8")
            except OSError as exc:
                self.notes.append(f"cannot write {path}: {exc.strerror or exc}")
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            self._append_summary(Path(summary), markdown, report.nodeid)

    def _append_summary(self, path: Path, markdown: str, nodeid: str) -> None:
        if self.summary_full:
            return
        data = markdown.encode("utf-8")
        if self.summary_bytes + len(data) > SUMMARY_BUDGET_BYTES:
            self.summary_full = True
            data = (
                f"\n*exsa-doctor: the reports from {nodeid} on are left out: the job summary "
                "holds 1 MiB at most.*\n"
            ).encode()
        try:
            # one write() on an O_APPEND descriptor: parallel workers do not interleave
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            self.notes.append(
                f"cannot append to $GITHUB_STEP_SUMMARY {path}: {exc.strerror or exc}"
            )
            return
        self.summary_bytes += len(data)


def _unused(folder: Path, pattern: str, n: int) -> Path:
    """`folder / pattern.format(n=...)` for the first n from `n` that names nothing yet.

    A report folder kept from an earlier run is not written into: each run's logs stay apart.
    """
    while (folder / pattern.format(n=n)).exists():
        n += 1
    return folder / pattern.format(n=n)


def scope_key(scope: str, nodeid: str) -> str:
    """What identifies one scope's engine: the session, the test's module, or the test."""
    if scope == "session":
        return "session"
    if scope == "module":
        return "module:" + nodeid.split("::", 1)[0]
    return "function:" + nodeid
