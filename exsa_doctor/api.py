"""The library core: one way to get a diagnosis, for every face of exsa-doctor.

The CLI, the demo, `wait`, `run`, the support bundle and the pytest plugin all come here; none
of them runs probes or scores findings on its own. Python users call the same functions::

    from exsa_doctor import api

    diagnosis = api.diagnose("http://127.0.0.1:8080")     # a URL, a Target, or None ($EXSA_URL)
    print(diagnosis.verdict.value, [c.id for c in diagnosis.causes[:1]])

    outcome = api.wait(api.make_target(url="http://127.0.0.1:8080"), timeout_s=60)
    if outcome.diagnosis is not None:                        # it died or never got ready
        ...

    with api.run(["llama-server", "-m", "model.gguf"], port_auto=True) as engine:
        urllib.request.urlopen(engine.url + "/health")       # torn down when the block ends

Bad input raises `UsageError` (a `ValueError`) with a message meant for a person. See
`docs/api.md`. This module imports nothing heavy at load time: the probes, the supervisor and the
renderers are imported by the function that needs them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from exsa_doctor.target import UsageError

if TYPE_CHECKING:
    from exsa_doctor.context import Context
    from exsa_doctor.model import Diagnosis, Finding
    from exsa_doctor.probes.base import Probe
    from exsa_doctor.profiles import Profile
    from exsa_doctor.supervise.postmortem import EngineExit, Liveness
    from exsa_doctor.supervise.report import Reporter
    from exsa_doctor.supervise.run import Runner, RunOptions
    from exsa_doctor.supervise.wait import WaitResult
    from exsa_doctor.target import Target

__all__ = [
    "EngineStartError",
    "Observations",
    "RunningEngine",
    "UsageError",
    "WaitOutcome",
    "diagnose",
    "diagnose_engine",
    "make_target",
    "run",
    "run_command",
    "wait",
]

# Findings that each describe the one state the engine is in: at most one may stand. A probe
# looked at the engine just now, so when it reported one of them, an observation from the same
# set made earlier by a caller (the wait's, over its whole window) is not added beside it.
ONE_STATE_FINDINGS: tuple[frozenset[str], ...] = (
    frozenset({"progress.loading", "progress.stalled", "progress.became_ready"}),
)


@dataclass(frozen=True)
class Observations:
    """Findings a caller made itself (the wait's), scored together with the probes' findings.

    `source` names the row they appear under in the report; `detail` is that row's one line.
    """

    source: str
    detail: str
    findings: tuple[Finding, ...]


def make_target(
    *,
    url: str | None = None,
    port: int | None = None,
    host: str | None = None,
    model: Path | None = None,
    logs: Sequence[Path] = (),
    pids: Sequence[int] = (),
    watch_s: float = 0.0,
    failed_at: str | None = None,
    generate: bool | None = None,
    timeout_s: float = 10.0,
    profile: str = "auto",
    profile_file: Path | None = None,
    health_path: str | None = None,
    ready_marker: str | None = None,
    process_names: Sequence[str] = (),
) -> Target:
    """What to diagnose, from options and the environment ($EXSA_URL, $PORT, $MODEL_PATH).

    With `profile="auto"` the engine serving (or meant to serve) the port is detected, and its
    model is taken when none is given. `watch_s` longer than the run's bound extends the bound.
    Raises `UsageError` for input that cannot be used.
    """
    from exsa_doctor.detect import refine_target
    from exsa_doctor.target import resolve_target

    for path in logs:
        if path.is_dir():
            raise UsageError(f"--log {path} is a directory; give the log file")
    if watch_s and watch_s + 2 > timeout_s:
        timeout_s = watch_s + 2.0  # watching must not be cut short by the default bound
    target = resolve_target(
        url=url,
        port=port,
        host=host,
        model=model,
        logs=tuple(logs),
        pids=tuple(pids),
        failed_at=failed_at,
        watch_s=watch_s,
        generate=generate,
        timeout_s=timeout_s,
        profile=profile,
        profile_file=profile_file,
    )
    auto = profile_file is None and profile in ("", "auto")
    refined = refine_target(target, auto_profile=auto)
    if health_path is None and ready_marker is None and not process_names:
        return refined
    return replace(
        refined, profile=_customized(refined.profile, health_path, ready_marker, process_names)
    )


def _customized(
    base: Profile, health_path: str | None, ready_marker: str | None, process_names: Sequence[str]
) -> Profile:
    """The profile with the command line's overrides (`UsageError` if they do not fit it)."""
    from exsa_doctor.profiles import ProfileError, customized

    try:
        return customized(
            base,
            health_path=health_path,
            ready_marker=ready_marker,
            process_names=tuple(process_names),
        )
    except ProfileError as exc:
        raise UsageError(str(exc)) from None


def select_probes(names: Sequence[str] = ()) -> list[Probe]:
    """Instances of the named probes, all when `names` is empty (`UsageError` if unknown)."""
    from exsa_doctor import probes as registry

    try:
        return registry.select(tuple(names))
    except KeyError as exc:
        known = ", ".join(registry.probe_names())
        raise UsageError(f"unknown probe {exc.args[0]} (known: {known})") from None


def diagnose(
    target: Target | str | None = None,
    *,
    probes: Sequence[str | Probe] = (),
    observations: Observations | None = None,
    keep: list[Context] | None = None,
) -> Diagnosis:
    """Run the probes side by side against `target`, score their findings, return the diagnosis.

    `target` is a `Target` (see `make_target`), a base URL, or None for the environment's.
    `probes` limits the run to some probes (names or instances; all when empty).
    `observations` adds what a caller saw itself (see `Observations`): scored with the probes'
    findings, except where a probe reported the same id or another state of the same set
    (`ONE_STATE_FINDINGS`): the probe's word stands. `keep`, when given, receives the run's
    context, so a caller can reuse what the probes read (the support bundle's processes).
    """
    from exsa_doctor import __version__
    from exsa_doctor.causes import load_causes
    from exsa_doctor.model import Diagnosis, EventKind, ProbeResult, ProbeStatus, TimelineEvent
    from exsa_doctor.runner import run_probes_for, target_vars
    from exsa_doctor.scoring import score, verdict

    if target is None or isinstance(target, str):
        target = make_target(url=target)
    names = [p for p in probes if isinstance(p, str)]
    chosen = [p for p in probes if not isinstance(p, str)] + (
        select_probes(names) if names or not probes else []
    )
    run = run_probes_for(target, chosen, keep)
    results = list(run.results)
    findings = [f for r in results for f in r.findings]
    timeline = [e for r in results for e in r.timeline]
    if target.failed_at is not None:
        timeline.append(
            TimelineEvent(target.failed_at, "client", "request failed", EventKind.FAILED_REQUEST)
        )
    timeline.sort(key=lambda e: e.t)
    added = observed_findings(findings, observations.findings) if observations else []
    if observations is not None and added:
        findings += added
        results.append(
            ProbeResult(
                name=observations.source,
                status=ProbeStatus.OK,
                duration_s=0.0,
                detail=observations.detail,
                findings=tuple(added),
            )
        )
    ranked = score(load_causes(), findings, target_vars(run.target))
    return Diagnosis(
        tool_version=__version__,
        target=run.target.info(),
        started_at=run.started_wall,
        duration_s=round(time.monotonic() - run.started, 4),
        verdict=verdict(ranked, findings),
        causes=ranked,
        findings=tuple(findings),
        probes=tuple(results),
        timeline=tuple(timeline),
        failed_at=target.failed_at,
        hostname=socket.gethostname(),
    )


def retarget(diagnosis: Diagnosis, target: Target) -> Diagnosis:
    """The same findings and verdict, with the fixes' commands filled in for another target.

    For a log read on its own, where the address the commands should name is learnt from the
    log (the client's) only after it was read."""
    from exsa_doctor.causes import load_causes
    from exsa_doctor.runner import target_vars
    from exsa_doctor.scoring import score

    ranked = score(load_causes(), diagnosis.findings, target_vars(target))
    return replace(diagnosis, target=target.info(), causes=ranked)


def observed_findings(found: Sequence[Finding], observed: Sequence[Finding]) -> list[Finding]:
    """The observations that add to what the probes `found` (the rule `diagnose` documents)."""
    have = {f.id for f in found}
    taken = [group for group in ONE_STATE_FINDINGS if group & have]
    return [f for f in observed if f.id not in have and not any(f.id in group for group in taken)]


# ----------------------------------------------------------------------------------- wait


@dataclass(frozen=True)
class WaitOutcome:
    """How a wait ended: `ready`, a sentence for a person, and a diagnosis when not ready."""

    ready: bool
    summary: str
    result: WaitResult
    diagnosis: Diagnosis | None


def wait(
    target: Target | str | None = None,
    *,
    timeout_s: float = 60.0,
    pids: Sequence[int] = (),
    logs: Sequence[Path] = (),
    reporter: Reporter | None = None,
) -> WaitOutcome:
    """Return the moment the engine is ready by its profile's meaning of ready.

    When the engine exits or `timeout_s` passes first, the outcome carries a diagnosis of what
    the wait watched, with the wait's own observations (stalled, still loading) scored in.
    `reporter` hears phase changes (`supervise.report.reporter_for(sys.stderr)` prints them).
    """
    from exsa_doctor.supervise import wait as waiting
    from exsa_doctor.supervise.explain import summary

    if not 0 < timeout_s <= 86400:
        raise UsageError("--timeout must be between 0 and 86400 seconds")
    if target is None or isinstance(target, str):
        target = make_target(url=target, pids=pids, logs=logs)
    result = waiting.wait_ready(
        waiting.WaitRequest(target=target, timeout_s=timeout_s, pids=tuple(pids), logs=tuple(logs)),
        reporter,
    )
    ready = result.outcome is waiting.Outcome.READY
    diagnosis = None if ready else diagnose_start(target, result)
    return WaitOutcome(ready, summary(result), result, diagnosis)


def wait_observations(result: WaitResult) -> Observations:
    """What a wait saw (phases, stalled or still loading), to be scored by `diagnose`."""
    from exsa_doctor.supervise.explain import wait_findings

    return Observations(
        source="wait",
        detail="observations made while waiting for readiness",
        findings=tuple(wait_findings(result)),
    )


def diagnose_start(target: Target, result: WaitResult | None) -> Diagnosis:
    """Why an engine did not get ready: the diagnosis of what the wait watched (its PIDs, logs
    and model), with the wait's own observations scored in; without a wait (a refused start),
    the diagnosis of the target as it stands. `wait` and `run` both diagnose this way."""
    from exsa_doctor.supervise.explain import failure_target

    if result is None:
        return diagnose(target)
    return diagnose(failure_target(target, result), observations=wait_observations(result))


# ------------------------------------------------------------------------------------ run


class EngineStartError(RuntimeError):
    """`run` could not get the engine ready; `diagnosis` says why (None for a refused start)."""

    def __init__(self, message: str, diagnosis: Diagnosis | None) -> None:
        super().__init__(message)
        self.diagnosis = diagnosis


@dataclass(frozen=True)
class RunningEngine:
    """An engine `run` started and found ready.

    While the block runs, `exit_status()`, `liveness()` and `ended()` say whether it still
    serves and how it ended; `diagnose_engine` diagnoses it at the moment something failed.
    `engine_log` is where its log is (the temporary one too, until the block ends).
    """

    url: str
    host: str
    port: int
    pid: int
    profile: str
    log: Path | None
    engine_log: Path | None = None
    _runner: Runner | None = field(default=None, repr=False, compare=False)

    def exit_status(self) -> int | None:
        """None while it runs; its exit code once it exited (negative: killed by that signal)."""
        child = self._runner.state.engine if self._runner is not None else None
        return child.exit_status() if child is not None else None

    def liveness(self, timeout_s: float = 5.0) -> Liveness:
        """Alive, and does its health route answer? (one request to it, bounded by `timeout_s`)"""
        from exsa_doctor.supervise.postmortem import Liveness, check_liveness
        from exsa_doctor.supervise.signals import exit_fd

        if self._runner is None or self._runner.target is None:
            return Liveness(None, False, "not started by api.run")
        fd = exit_fd(self.pid) if self.exit_status() is None else None
        try:
            return check_liveness(
                self._runner.target, self.exit_status, timeout_s=timeout_s, exit_fd=fd
            )
        finally:
            if fd is not None:
                os.close(fd)

    def ended(self) -> EngineExit | None:
        """How it ended (status, signal, the kernel's OOM-killer record); None while it runs."""
        from exsa_doctor.supervise.postmortem import engine_exit

        status = self.exit_status()
        return None if status is None else engine_exit(self.pid, status)


def run_options(
    argv: Sequence[str],
    *,
    port: int | None = None,
    port_auto: bool = False,
    host: str | None = None,
    then: str | None = None,
    ready_timeout_s: float = 60.0,
    report_dir: Path | None = None,
    log: Path | None = None,
    profile: str = "auto",
    profile_file: Path | None = None,
    health_path: str | None = None,
    ready_marker: str | None = None,
    process_names: Sequence[str] = (),
) -> RunOptions:
    """Checked options for `run`: the profile chosen and customised (`UsageError` if unusable)."""
    from exsa_doctor.supervise.run import RunOptions, RunUsageError, check_options
    from exsa_doctor.target import choose_profile

    if not argv:
        raise UsageError("give the engine command after --, e.g.: exsa-doctor run -- exsa-engine")
    chosen: Profile | None = None
    if profile_file is not None or profile not in ("", "auto"):
        chosen, _reason = choose_profile(profile, profile_file)
    if health_path is not None or ready_marker is not None or process_names:
        from exsa_doctor.supervise.run import profile_for_argv

        base = chosen if chosen is not None else profile_for_argv(list(argv))[0]
        chosen = _customized(base, health_path, ready_marker, process_names)
    options = RunOptions(
        argv=list(argv),
        port=port,
        port_auto=port_auto,
        host=host,
        then=then,
        ready_timeout_s=ready_timeout_s,
        report_dir=report_dir,
        log=log,
        profile=chosen,
    )
    try:
        check_options(options)
    except RunUsageError as exc:
        raise UsageError(str(exc)) from None
    return options


def run_command(options: RunOptions) -> int:
    """The `run` command: preflight, start, wait, `--then`, teardown; returns the exit code."""
    from exsa_doctor.supervise.run import Runner, RunUsageError

    try:
        return Runner(options, diagnose=diagnose_start).execute()
    except RunUsageError as exc:
        raise UsageError(str(exc)) from None


@contextlib.contextmanager
def run(
    argv: Sequence[str],
    *,
    port: int | None = None,
    port_auto: bool = False,
    host: str | None = None,
    ready_timeout_s: float = 60.0,
    report_dir: Path | None = None,
    log: Path | None = None,
    profile: str = "auto",
    profile_file: Path | None = None,
    health_path: str | None = None,
    ready_marker: str | None = None,
    process_names: Sequence[str] = (),
    say: Callable[[str], None] | None = None,
) -> Iterator[RunningEngine]:
    """Start an engine the safe way, yield it once ready, always tear it down.

    The options are `run_options`' (there is no `then`: the body of the `with` block is the
    command). Preflight refusals and failed starts raise `EngineStartError` carrying the
    diagnosis; the engine's process group is stopped and its port checked free whatever happens.
    `say` receives the supervisor's messages (default: kept only for the error message).
    """
    from exsa_doctor.supervise.run import Runner, RunUsageError

    opts = run_options(
        argv,
        port=port,
        port_auto=port_auto,
        host=host,
        ready_timeout_s=ready_timeout_s,
        report_dir=report_dir,
        log=log,
        profile=profile,
        profile_file=profile_file,
        health_path=health_path,
        ready_marker=ready_marker,
        process_names=process_names,
    )
    lines: list[str] = []

    def note(text: str) -> None:
        lines.append(text)
        if say is not None:
            say(text)

    runner = Runner(opts, note, diagnose=diagnose_start)
    try:
        try:
            started = runner.start()
        except RunUsageError as exc:
            raise UsageError(str(exc)) from None
        if isinstance(started, int):
            raise EngineStartError("; ".join(lines) or "the engine did not start", runner.diagnosis)
        assert runner.target is not None
        yield RunningEngine(
            url=runner.target.base_url,
            host=runner.target.host,
            port=runner.target.port,
            pid=started.pid,
            profile=runner.profile.name,
            log=runner.state.log_path if runner.state.temp_dir is None else None,
            engine_log=runner.state.log_path,
            _runner=runner,
        )
    finally:
        runner.stop()


def diagnose_engine(
    engine: RunningEngine, *, failed_at: float | str | None = None, timeout_s: float = 10.0
) -> Diagnosis:
    """Diagnose an engine `run` started, at the moment a client of it failed.

    The diagnosis reads the engine's own log, knows its PID, and places `failed_at` (when the
    request or test failed: epoch seconds, or ISO 8601 text) on the engine's timeline. When the
    engine has exited it is reaped first (so it shows as exited, not as a zombie of ours) and,
    if SIGKILL ended it, the kernel's OOM-killer record of its PID is read as one more log.
    """
    from exsa_doctor.supervise.postmortem import failure_target
    from exsa_doctor.target import check_seconds, parse_time

    runner = engine._runner
    if runner is None or runner.target is None:
        raise UsageError("diagnose_engine needs an engine that api.run started")
    check_seconds("timeout_s", timeout_s, 3600)
    when = parse_time(failed_at) if isinstance(failed_at, str) else failed_at
    ended = engine.ended()
    if ended is not None:
        runner.reap_engine()
    target = failure_target(
        replace(runner.target, timeout_s=timeout_s),
        log=engine.engine_log,
        pid=engine.pid,
        failed_at=when,
        ended=ended,
    )
    return diagnose(target)
