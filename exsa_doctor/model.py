"""The neutral data model every part of exsa-doctor speaks.

Probes produce `ProbeResult`s made of `Finding`s; scoring turns findings and the cause table
into `RankedCause`s; the runner wraps everything into one `Diagnosis`, which every renderer reads.
All types are frozen dataclasses so a result can be shared between threads without copying.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


class ProbeStatus(str, enum.Enum):
    """How a probe ended (not what it found)."""

    OK = "ok"
    SKIPPED = "skipped"
    TIMEOUT = "timeout"
    CRASHED = "crashed"


class Level(str, enum.Enum):
    """How a finding reads to a person: good news, a neutral fact, a suspicion or a fault."""

    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Verdict(str, enum.Enum):
    """The one-word answer of a diagnosis."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Finding:
    """One observed fact with a stable dotted id (`port.owned_by_other`) and structured data.

    Scoring reads `id` and `data`, never `summary`, which is for people.
    """

    probe: str
    id: str
    status: Level
    summary: str
    data: Mapping[str, Any] = field(default_factory=dict)


class EventKind(str, enum.Enum):
    """The milestone a timeline event marks, set by whoever makes the event.

    Renderers sort, colour and label events by their kind; `event` is words for people.
    """

    START = "start"
    MODEL_VALIDATED = "model-validated"
    MODEL_LOADING = "model-loading"
    MODEL_LOADED = "model-loaded"
    HTTP_STARTING = "http-starting"
    LISTENING = "listening"
    BIND_FAILED = "bind-failed"
    MODEL_ERROR = "model-error"
    ERROR = "error"
    SHUTDOWN = "shutdown"
    FAILED_REQUEST = "failed-request"
    PORT_HOLDER = "port-holder"  # the process holding the target port started
    OBSERVATION = "observation"  # what a probe saw while exsa-doctor ran
    OTHER = "other"


@dataclass(frozen=True)
class TimelineEvent:
    """A point on the engine's start-up timeline; `t` is seconds since the epoch."""

    t: float
    source: str
    event: str
    kind: EventKind


@dataclass(frozen=True)
class ProbeResult:
    """What one probe run produced, and how it ended."""

    name: str
    status: ProbeStatus
    duration_s: float
    detail: str = ""
    findings: tuple[Finding, ...] = ()
    timeline: tuple[TimelineEvent, ...] = ()


@dataclass(frozen=True)
class Remediation:
    """A fix: words and exact commands, built from the findings (real PIDs, ports, paths)."""

    text: str
    commands: tuple[str, ...] = ()


@dataclass(frozen=True)
class Evidence:
    """One finding's weight in a cause's score: a likelihood ratio, > 1 for, < 1 against."""

    finding: str
    weight: float
    summary: str

    @property
    def supports(self) -> bool:
        return self.weight > 1.0


@dataclass(frozen=True)
class RemediationTemplate:
    """A fix as the cause table writes it; `{finding.id:key}` placeholders are filled later."""

    text: str
    commands: tuple[str, ...] = ()
    when: str | None = None  # finding id that must be present for this step to apply


@dataclass(frozen=True)
class Cause:
    """One row of the root-cause table (`causes.toml`)."""

    id: str
    title: str
    prior: float
    impact: str
    description: str
    evidence: Mapping[str, float]
    remediation: tuple[RemediationTemplate, ...]
    confirm: str = ""


# a cause at this probability or above is settled: a report needs no list of candidates to tell
# it from, and a wrong one is what the accuracy benchmark counts as confidently wrong
SETTLED_PROBABILITY = 0.8


@dataclass(frozen=True)
class RankedCause:
    """A cause after scoring: its posterior probability and the evidence that moved it."""

    id: str
    title: str
    probability: float
    prior: float
    impact: str
    evidence: tuple[Evidence, ...]
    remediation: tuple[Remediation, ...]
    confirm: str = ""  # the table's check that tells this cause from the others, filled in

    @property
    def evidence_for(self) -> tuple[Evidence, ...]:
        return tuple(e for e in self.evidence if e.weight > 1.0)

    @property
    def evidence_against(self) -> tuple[Evidence, ...]:
        return tuple(e for e in self.evidence if e.weight < 1.0)


# why a target has the default profile: no --profile and no engine found that names another
DEFAULT_PROFILE_REASON = "default (no engine found to detect another)"


@dataclass(frozen=True)
class TargetInfo:
    """What was diagnosed, as the report states it."""

    url: str
    host: str
    port: int
    model: str | None
    logs: tuple[str, ...]
    pids: tuple[int, ...]
    profile: str
    profile_reason: str = ""
    offline: bool = False  # a log read on its own: the URL is only the profile's default
    log_files: tuple[str, ...] = ()  # the logs a command can name (not read from standard input)

    @property
    def profile_assumed(self) -> bool:
        """Neither given nor detected: the default profile, whose address and commands are a
        guess a reader should know about."""
        return self.profile_reason == DEFAULT_PROFILE_REASON

    @property
    def where(self) -> str:
        """What a report's title names: the URL, or that a log was read on its own."""
        return "offline (the log alone)" if self.offline else self.url


@dataclass(frozen=True)
class Diagnosis:
    """The whole result of one `diagnose` run, rendered many ways."""

    tool_version: str
    target: TargetInfo
    started_at: float
    duration_s: float
    verdict: Verdict
    causes: tuple[RankedCause, ...]
    findings: tuple[Finding, ...]
    probes: tuple[ProbeResult, ...]
    timeline: tuple[TimelineEvent, ...]
    failed_at: float | None = None
    hostname: str = ""  # the machine the diagnosis ran on (fleet triage groups by it)

    @property
    def top_cause(self) -> RankedCause | None:
        return self.causes[0] if self.causes else None

    def finding(self, finding_id: str) -> Finding | None:
        """The first finding with this id, if any probe emitted it."""
        for f in self.findings:
            if f.id == finding_id:
                return f
        return None
