"""Pure scoring: findings + the cause table -> causes ranked by posterior probability.

Each cause is scored on its own (causes are not exclusive: a stale instance can hold the port
*and* the client can be too early). Starting from the prior's log-odds, every finding present
that the cause names adds the log of its likelihood ratio; a finding id repeated by several
probes counts once. The result keeps, for every cause, the evidence for and against it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from exsa_doctor.model import (
    Cause,
    Evidence,
    Finding,
    Level,
    RankedCause,
    Remediation,
    RemediationTemplate,
    Verdict,
)

_PLACEHOLDER = re.compile(r"\{([a-z_]+(?:\.[a-z_]+)*):([a-z_]+)\}")
DIAGNOSIS_THRESHOLD = 0.5


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _first_by_id(findings: Iterable[Finding]) -> dict[str, Finding]:
    first: dict[str, Finding] = {}
    for f in findings:
        first.setdefault(f.id, f)
    return first


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def fill(template: str, by_id: Mapping[str, Finding], target: Mapping[str, str]) -> str | None:
    """Fill `{finding.id:key}` and `{target:key}` placeholders; None if one cannot be filled."""
    missing = False

    def replace(match: re.Match[str]) -> str:
        nonlocal missing
        source, key = match.group(1), match.group(2)
        if source == "target":
            value: Any = target.get(key)
        else:
            finding = by_id.get(source)
            value = finding.data.get(key) if finding is not None else None
        if value is None or value in ("", []):
            missing = True
            return ""
        return _format_value(value)

    # `{{`/`}}` are escapes in the template only: a filled value (a JSON body in a profile's
    # command) keeps its braces as they are
    pieces: list[str] = []
    last = 0
    for match in _PLACEHOLDER.finditer(template):
        pieces.append(template[last : match.start()].replace("{{", "{").replace("}}", "}"))
        pieces.append(replace(match))
        last = match.end()
    pieces.append(template[last:].replace("{{", "{").replace("}}", "}"))
    if missing:
        return None
    return "".join(pieces)


def remediation_for(
    steps: Sequence[RemediationTemplate],
    by_id: Mapping[str, Finding],
    target: Mapping[str, str],
) -> tuple[Remediation, ...]:
    out: list[Remediation] = []
    for step in steps:
        if step.when and step.when not in by_id:
            continue
        text = fill(step.text, by_id, target)
        if text is None:
            continue
        commands = [fill(c, by_id, target) for c in step.commands]
        if any(c is None for c in commands):
            continue  # a command we cannot make exact is not shown half-filled
        out.append(Remediation(text=text, commands=tuple(c for c in commands if c)))
    return tuple(out)


def score(
    causes: Sequence[Cause],
    findings: Sequence[Finding],
    target: Mapping[str, str] | None = None,
) -> tuple[RankedCause, ...]:
    """Rank every cause by its posterior; ties keep the table's order."""
    by_id = _first_by_id(findings)
    tvars = dict(target or {})
    ranked: list[tuple[float, int, RankedCause]] = []
    for order, cause in enumerate(causes):
        logodds = _logit(cause.prior)
        evidence: list[Evidence] = []
        for fid, weight in cause.evidence.items():
            finding = by_id.get(fid)
            if finding is None:
                continue
            logodds += math.log(weight)
            evidence.append(Evidence(finding=fid, weight=weight, summary=finding.summary))
        evidence.sort(key=lambda e: -abs(math.log(e.weight)))
        probability = _sigmoid(logodds)
        ranked.append(
            (
                -probability,
                order,
                RankedCause(
                    id=cause.id,
                    title=cause.title,
                    probability=round(probability, 4),
                    prior=cause.prior,
                    impact=cause.impact,
                    evidence=tuple(evidence),
                    remediation=remediation_for(cause.remediation, by_id, tvars),
                ),
            )
        )
    ranked.sort(key=lambda item: (item[0], item[1]))
    return tuple(item[2] for item in ranked)


def verdict(ranked: Sequence[RankedCause], findings: Sequence[Finding]) -> Verdict:
    """healthy: health and generation good and no cause likely; unhealthy: a cause is likely
    and backed by evidence (a prior alone diagnoses nothing); otherwise inconclusive."""
    ids = {f.id for f in findings}
    top = ranked[0] if ranked else None
    if top is not None and top.probability >= DIAGNOSIS_THRESHOLD and top.evidence_for:
        return Verdict.UNHEALTHY
    errors = [f for f in findings if f.status is Level.ERROR]
    if "health.ok" in ids and not errors and (top is None or top.probability < DIAGNOSIS_THRESHOLD):
        return Verdict.HEALTHY
    return Verdict.INCONCLUSIVE
