"""The probe interface: a name, a title, its own timeout, `applies` and `run`.

A probe reads the operating system or the engine and returns findings. It never prints, never
exits and never imports Rich; it bounds its own I/O with `ctx.io_timeout(...)` because Python
threads cannot be killed from outside.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from exsa_doctor.context import Context
from exsa_doctor.model import EventKind, Finding, Level, TimelineEvent


class Probe:
    """Base class for probes. Subclasses set the class attributes and implement `run`."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    timeout_s: ClassVar[float] = 5.0
    # finding ids this probe can emit (checked by the conformance test against causes.toml)
    emits: ClassVar[tuple[str, ...]] = ()

    def applies(self, ctx: Context) -> str | None:
        """None when the probe should run; otherwise the reason it is skipped."""
        return None

    def run(self, ctx: Context) -> ProbeOutput:
        raise NotImplementedError

    def finding(
        self, fid: str, level: Level, summary: str, data: Mapping[str, Any] | None = None
    ) -> Finding:
        if fid not in self.emits:
            raise ValueError(f"probe {self.name} does not declare finding {fid}")
        return Finding(
            probe=self.name, id=fid, status=level, summary=summary, data=dict(data or {})
        )


class ProbeOutput:
    """What `run` returns: findings, timeline events and a one-line detail."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.timeline: list[TimelineEvent] = []
        self.detail: str = ""

    def add(self, finding: Finding) -> Finding:
        self.findings.append(finding)
        return finding

    def event(self, t: float, source: str, event: str, kind: EventKind) -> None:
        """A timeline event: when, who saw it, words for people, and the milestone it marks."""
        self.timeline.append(TimelineEvent(t=t, source=source, event=event, kind=kind))
