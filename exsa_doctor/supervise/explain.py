"""What a failed wait means: a sentence for a person, and the wait's own observations as findings.

The core (`api.diagnose`) scores these findings together with the probes' when it diagnoses what
the wait watched (`failure_target`); nothing here scores or diagnoses.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from exsa_doctor.model import Finding, Level
from exsa_doctor.parsers.health import HealthState
from exsa_doctor.supervise.wait import Outcome, WaitResult
from exsa_doctor.target import Target


def summary(result: WaitResult) -> str:
    """One or two sentences on how the wait ended, for a person."""
    url = result.url
    if result.outcome is Outcome.READY:
        return f"ready: {url} answered healthy after {result.elapsed_s:.2f} s"
    if result.outcome is Outcome.EXITED:
        gone = result.exited[-1] if result.exited else None
        if gone is None:
            return f"the engine exited after {result.elapsed_s:.2f} s, before {url} was ready"
        code = f" with exit code {gone.exit_code}" if gone.exit_code is not None else ""
        if gone.exit_code is not None and gone.exit_code < 0:
            code = f", killed by signal {-gone.exit_code}"
        return (
            f"the engine (PID {gone.pid}) exited{code} {gone.exited_at or 0.0:.2f} s into the "
            f"wait, before {url} was ready"
        )
    head = f"timed out after {result.elapsed_s:.1f} s: {url} never became ready"
    last = f" (last: {result.last_error})" if result.last_error else ""
    stalled = result.stalled_for()
    answer = result.last_answer
    if answer is not None and answer.status_code == 200 and answer.state is HealthState.BAD_BODY:
        profile = result.target.profile.name if result.target is not None else "the profile"
        return (
            f"{head}{last}. It answers HTTP 200, but not in {profile}'s words: is another "
            "engine serving there? Name it with --profile."
        )
    if result.looks_hung() and stalled is not None:
        return (
            f"{head}{last}. The engine looks hung: no CPU time, no reads, no log output for the "
            f"last {stalled:.1f} s, and its port is "
            f"{'open' if result.port_opened_at is not None else 'closed'}."
        )
    if stalled is not None and result.watched:
        return (
            f"{head}{last}. The engine was still making progress (last {stalled:.1f} s ago): "
            f"a slow load, not a hang; give it a longer --timeout."
        )
    if not result.watched:
        return f"{head}{last}. No engine process for this port was found."
    return head + last


def wait_findings(result: WaitResult) -> list[Finding]:
    """The wait's own observations in the probes' vocabulary (docs/findings.md: progress)."""
    out: list[Finding] = []
    p = result.progress
    if len(result.phases) > 1:
        out.append(
            Finding(
                "progress",
                "progress.transitions",
                Level.INFO,
                "phases seen while waiting: " + " -> ".join(t for _, t in result.phases),
                {"transitions": [{"t": t, "phase": text} for t, text in result.phases]},
            )
        )
    stalled = result.stalled_for()
    if result.outcome is not Outcome.TIMEOUT or stalled is None:
        return out
    window = round(result.elapsed_s - (p.first_t or 0.0), 2)
    if result.looks_hung():
        out.append(
            Finding(
                "progress",
                "progress.stalled",
                Level.ERROR,
                f"no CPU, reads, memory growth or log output for the last {stalled:.1f} s "
                f"of a {result.elapsed_s:.1f} s wait; port never became ready",
                {"window_s": round(stalled, 2)},
            )
        )
    elif p.last_progress_t is not None:
        out.append(
            Finding(
                "progress",
                "progress.loading",
                Level.INFO,
                f"still loading when the wait ended: +{p.cpu_s:.2f} s CPU, "
                f"+{p.read_bytes} bytes read, +{p.log_bytes} log bytes",
                {
                    "cpu_s": round(p.cpu_s, 3),
                    "read_bytes": p.read_bytes,
                    "log_bytes": p.log_bytes,
                    "pages": p.rss_bytes // (os.sysconf("SC_PAGE_SIZE") or 4096),
                    "window_s": window,
                },
            )
        )
    return out


def failure_target(target: Target, result: WaitResult) -> Target:
    """The target to diagnose after a failed wait: with the PIDs, logs and model it saw."""
    target = result.target or target
    pids = tuple(dict.fromkeys([*target.pids, *(w.pid for w in result.watched)]))
    logs = target.logs or tuple(Path(p) for p in result.logs)
    # what detection saw before the wait is not what the diagnosis must see after it
    new = replace(target, pids=pids, logs=logs, sighting=None)
    seen = next((w for w in result.watched if w.model), None)
    borrowed = new.model_source.startswith("engine PID") and not any(
        new.model_source == f"engine PID {w.pid}" for w in result.watched
    )
    if seen is not None and seen.model and (new.model is None or borrowed):
        new = new.with_model(Path(seen.model), f"engine PID {seen.pid}")
    elif borrowed and result.watched:
        # detection took the model of some other engine; the one we watched may use another
        new = replace(new, model=None, model_source="")
    return new
