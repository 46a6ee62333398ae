"""Helpers every renderer shares: safe text, UTC times, and reading the start-up timeline.

Every timeline event carries the milestone it marks (`model.EventKind`), set by the probe that
made it; every format marks the same milestones by reading that kind, never the event's words.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from exsa_doctor.model import (
    SETTLED_PROBABILITY,
    Diagnosis,
    EventKind,
    RankedCause,
    TimelineEvent,
)

# C0 controls except tab/newline, DEL, C1 controls, and code points that are not characters.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffe\uffff\ud800-\udfff]")
_CONTROL_ALL = re.compile(r"[\x00-\x1f\x7f-\x9f\ufffe\uffff\ud800-\udfff]")

# A cause at or above this probability, backed by evidence, is a diagnosis (as in scoring).
LIKELY = 0.5


def printable(text: object, *, keep_newlines: bool = False, replacement: str = "\ufffd") -> str:
    """`text` without control characters, safe for a terminal, XML or a Markdown table.

    Terminal escapes in a log line must not recolour or clear the reader's screen, and XML 1.0
    cannot carry most C0 characters at all. Newlines become spaces unless `keep_newlines`.
    """
    s = str(text).replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    if keep_newlines:
        return _CONTROL.sub(replacement, s)
    return _CONTROL_ALL.sub(replacement, s.replace("\n", " "))


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with an ellipsis (for labels and table cells)."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def iso_utc(t: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds (`2025-11-23T23:41:53.120Z`); None if not representable."""
    if t is None or not math.isfinite(t):
        return None
    try:
        stamp = dt.datetime.fromtimestamp(t, tz=dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def seconds(value: float) -> str:
    """A duration for people: `4 ms`, `0.16 s`, `12.1 s`, `3 min 20 s`."""
    if not math.isfinite(value):
        return "?"
    v = abs(value)
    sign = "-" if value < 0 else ""
    if v < 0.001:
        return f"{sign}0 ms" if v == 0 else f"{sign}<1 ms"
    if v < 1:
        return f"{sign}{v * 1000:.0f} ms"
    if v < 10:
        return f"{sign}{v:.2f} s"
    if v < 120:
        return f"{sign}{v:.1f} s"
    if v < 7200:
        return f"{sign}{int(v // 60)} min {int(v % 60)} s"
    return f"{sign}{v / 3600:.1f} h"


def percent(p: float) -> str:
    if not math.isfinite(p):
        return "?"
    if 0 < p < 0.01:
        return "<1%"
    if 0.99 < p < 1:
        return ">99%"
    return f"{p * 100:.0f}%"


TIMES = "\u00d7"  # the multiplication sign, written escaped so no linter mistakes it for x


def weight(w: float) -> str:
    """A likelihood ratio as times-60 or times-0.05 (multiplication sign, then the ratio)."""
    if not math.isfinite(w):
        return TIMES + "?"
    return f"{TIMES}{w:g}" if w >= 1 else f"{TIMES}{w:.2g}"


def prominent_causes(diagnosis: Diagnosis) -> tuple[RankedCause, ...]:
    """Causes shown in full: likely (>= 0.5) and backed by evidence, or else the best lead
    when the verdict is not healthy (so an inconclusive run still says where to look)."""
    likely = tuple(c for c in diagnosis.causes if c.probability >= LIKELY and c.evidence_for)
    if likely:
        return likely
    if diagnosis.verdict.value == "healthy":
        return ()
    lead = next((c for c in diagnosis.causes if c.evidence_for), None)
    return (lead,) if lead is not None else ()


# an inconclusive diagnosis names at most this many candidates to tell apart, each at least this
# likely (the same floor as the "other causes" a report lists)
MAX_CANDIDATES = 3
MIN_CANDIDATE_PROBABILITY = 0.05
# what every report says before the run that probes the machine (a log read on its own)
RERUN_INTRO = (
    "The log does not say which. Where the engine runs, a diagnosis that probes the port, the "
    "processes and the health endpoint can:"
)


def tell_apart(diagnosis: Diagnosis) -> tuple[list[tuple[RankedCause, str]], str | None]:
    """For an unsettled diagnosis: the likeliest candidates with the check that confirms each
    (the cause table's `confirm`), and for a log read on its own the run that probes the machine.

    A log that does not say why leaves several causes open; what settles it is a look at the
    machine, so that is what the report ends with. Unsettled is an inconclusive verdict, or an
    unhealthy one whose likeliest cause is below SETTLED_PROBABILITY (a client's bare "connection
    refused" is a wrong address about half the time and a stopped engine in most of the rest).
    Nothing for a healthy verdict or a settled cause.
    """
    verdict = diagnosis.verdict.value
    top = diagnosis.causes[0].probability if diagnosis.causes else 0.0
    if verdict == "healthy" or (verdict == "unhealthy" and top >= SETTLED_PROBABILITY):
        return [], None
    candidates = [
        (c, c.confirm)
        for c in diagnosis.causes
        if c.probability >= MIN_CANDIDATE_PROBABILITY and c.confirm
    ][:MAX_CANDIDATES]
    if len(candidates) < 2:
        return [], None
    t = diagnosis.target
    rerun = None
    if t.offline:
        # a log read from standard input has no path: the engine's log is named instead
        logs = " ".join(f"--log {shlex.quote(p)}" for p in t.log_files or ("ENGINE.log",))
        rerun = f"exsa-doctor diagnose --url {t.url} {logs}"
    return candidates, rerun


def healthy_hints(diagnosis: Diagnosis) -> list[tuple[str, str]]:
    """After a failure the doctor did not see: how to catch it next time, as (what, command).

    Only for a healthy verdict; the commands name the target's own URL and log.
    """
    if diagnosis.verdict.value != "healthy":
        return []
    t = diagnosis.target
    log = f" --log {shlex.quote(t.logs[0])}" if t.logs else ""
    hints = [
        (
            "If a request failed before now, give its time: the engine's own timeline is checked "
            "against it",
            f"exsa-doctor diagnose --url {t.url}{log} --failed-at 2025-11-23T23:41:56Z",
        ),
        (
            "Start the engine under exsa-doctor, which waits for readiness and diagnoses a "
            "failure as it happens",
            "exsa-doctor run --port auto --report-dir reports --then 'pytest' -- ENGINE ...",
        ),
        (
            "Or in pytest: the exsa_engine fixture attaches a diagnosis to a failed test",
            "pytest --exsa-engine 'ENGINE ...'",
        ),
    ]
    if diagnosis.failed_at is not None:
        hints = hints[1:]  # the time was given: what is left is to catch it live next time
    return hints


def inconclusive_reason(diagnosis: Diagnosis) -> str:
    """Why an inconclusive diagnosis is inconclusive, in one sentence."""
    if prominent_causes(diagnosis):
        return "No cause is both likely and backed by evidence; the best lead is below."
    broken = [p.name for p in diagnosis.probes if p.status.value in ("crashed", "timeout")]
    if broken:
        return f"Nothing points to a cause, and some probes did not finish: {', '.join(broken)}."
    return "Nothing points to a cause: no probe found evidence either way."


# kind -> label; the kinds are stable (HTML data-event attributes, tests).
KIND_LABELS = {
    EventKind.START.value: "engine start",
    EventKind.MODEL_VALIDATED.value: "model validated",
    EventKind.MODEL_LOADING.value: "loading model",
    EventKind.MODEL_LOADED.value: "model loaded",
    EventKind.HTTP_STARTING.value: "binding port",
    EventKind.LISTENING.value: "listening",
    EventKind.BIND_FAILED.value: "bind failed",
    EventKind.MODEL_ERROR.value: "model error",
    EventKind.ERROR.value: "fatal error",
    EventKind.SHUTDOWN.value: "shutdown",
    EventKind.FAILED_REQUEST.value: "request failed",
    EventKind.PORT_HOLDER.value: "port holder started",
    EventKind.OBSERVATION.value: "probe saw",
    EventKind.OTHER.value: "event",
}
FATAL_KINDS = frozenset({"bind-failed", "model-error", "error"})


def event_kind(event: TimelineEvent) -> str:
    """The milestone an event marks (a key of `KIND_LABELS`), as its maker said."""
    return event.kind.value


@dataclass(frozen=True)
class TimelineView:
    """The part of the timeline worth drawing: the last start-up run around the failure."""

    events: tuple[TimelineEvent, ...]
    t0: float
    t1: float
    earlier: int  # events before the window (earlier restarts), listed but not drawn
    failed_at: float | None
    listening_at: float | None
    loaded_at: float | None
    load_began: float | None
    fatal_at: float | None

    @property
    def span(self) -> float:
        return max(self.t1 - self.t0, 1e-3)

    def request_vs_ready(self) -> str:
        """How the failed request relates to readiness, in words ('' if there was none)."""
        if self.failed_at is None:
            return ""
        if self.listening_at is None:
            if self.fatal_at is not None and self.fatal_at <= self.failed_at:
                return "after the engine had failed"
            starts = [e.t for e in self.events if event_kind(e) == "start"]
            if starts and min(starts) > self.failed_at:
                return f"{seconds(min(starts) - self.failed_at)} before the engine even started"
            return "while the engine was not listening (it never did)"
        gap = self.listening_at - self.failed_at
        if gap > 0:
            return f"{seconds(gap)} before the engine listened"
        return f"{seconds(-gap)} after the engine listened"


def timeline_view(timeline: Sequence[TimelineEvent], failed_at: float | None) -> TimelineView:
    """Pick the start-up run to draw: the last engine start at or before the failed request
    (or the last start at all), through the last event; earlier restarts stay out of the
    chart so they do not squash it. The process holding the port is always shown."""
    events = sorted((e for e in timeline if math.isfinite(e.t)), key=lambda e: e.t)
    if failed_at is not None and math.isfinite(failed_at):
        if not any(event_kind(e) == "failed-request" for e in events):
            events.append(
                TimelineEvent(failed_at, "client", "request failed", EventKind.FAILED_REQUEST)
            )
            events.sort(key=lambda e: e.t)
    else:
        failed_at = None
    if not events:
        return TimelineView((), 0.0, 0.0, 0, None, None, None, None, None)
    starts = [i for i, e in enumerate(events) if event_kind(e) == "start"]
    anchor = failed_at if failed_at is not None else events[-1].t
    before = [i for i in starts if events[i].t <= anchor]
    first = before[-1] if before else (starts[-1] if starts and failed_at is None else 0)
    if failed_at is not None and failed_at < events[first].t:
        first = 0
    # the same start is often seen twice (process creation time, then the log's first line)
    while first > 0 and events[first - 1].t >= events[first].t - 2.0:
        first -= 1
    # whoever holds the target port stays in view however early it started: it is often the
    # reason the run in the window failed (the port probe's events are about that holder)
    holders = tuple(e for e in events[:first] if event_kind(e) == "port-holder")
    shown = holders + tuple(events[first:])

    def first_of(kinds: set[str]) -> float | None:
        return next((e.t for e in shown if event_kind(e) in kinds), None)

    loaded = first_of({"model-loaded"})
    began = first_of({"model-loading"}) or first_of({"model-validated"}) or first_of({"start"})
    return TimelineView(
        events=shown,
        t0=shown[0].t,
        t1=shown[-1].t,
        earlier=first - len(holders),
        failed_at=failed_at,
        listening_at=first_of({"listening"}),
        loaded_at=loaded,
        load_began=began if began is not None and (loaded is None or began <= loaded) else None,
        fatal_at=first_of(set(FATAL_KINDS)),
    )
