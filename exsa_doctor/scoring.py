"""Pure scoring: findings + the cause table -> causes ranked by calibrated probability.

One failure has one root cause, so the causes compete: a multinomial logistic model over the
causes and "none" (nothing in the table explains it, e.g. a healthy engine). A cause's score is
its bias plus, for every finding present that the cause names, that finding's weight (the log of
a likelihood ratio); a finding id repeated by several probes counts once. The probabilities are
the softmax of the scores, with "none" at a fitted score of its own.

Which finding bears on which cause is knowledge, kept in `causes.toml` with a hand-set ratio.
How much it weighs is fitted from labelled data by `scripts/fit_weights.py` (real failure logs'
training part, the staged scenarios), with the hand values as the prior, and written to
`weights.toml`; where that file has no value (a row added since the last fit), the hand value
is used. The result keeps, for every cause, the evidence for and against it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from exsa_doctor.fitted import FittedModel, load_fitted
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


def when_holds(when: str, by_id: Mapping[str, Finding]) -> bool:
    """`finding.id` is present, or `finding.id:key=value` is present with that value; a leading
    `!` turns either into its opposite (a step that does not fit a case another step covers);
    conditions joined by `,` must all hold."""
    if "," in when:
        return all(when_holds(part.strip(), by_id) for part in when.split(","))
    if when.startswith("!"):
        return not when_holds(when[1:], by_id)
    fid, _, condition = when.partition(":")
    finding = by_id.get(fid)
    if finding is None:
        return False
    if not condition:
        return True
    key, _, value = condition.partition("=")
    return str(finding.data.get(key, "")) == value


def remediation_for(
    steps: Sequence[RemediationTemplate],
    by_id: Mapping[str, Finding],
    target: Mapping[str, str],
) -> tuple[Remediation, ...]:
    out: list[Remediation] = []
    for step in steps:
        if step.when and not when_holds(step.when, by_id):
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
    model: FittedModel | None = None,
) -> tuple[RankedCause, ...]:
    """Rank every cause by its probability; ties keep the table's order."""
    fitted = model if model is not None else load_fitted()
    by_id = _first_by_id(findings)
    tvars: Mapping[str, str] = target if target is not None else {}
    scores: list[float] = []
    evidences: list[list[Evidence]] = []
    for cause in causes:
        logodds = fitted.bias(cause)
        evidence: list[Evidence] = []
        for fid in cause.evidence:
            finding = by_id.get(fid)
            if finding is None:
                continue
            weight = fitted.weight(cause, fid)
            logodds += weight
            ratio = float(f"{math.exp(weight):.2g}")  # two figures: what a person can read
            evidence.append(Evidence(finding=fid, weight=ratio, summary=finding.summary))
        evidence.sort(key=lambda e: -abs(math.log(e.weight)))
        scores.append(logodds / fitted.temperature)
        evidences.append(evidence)
    none_score = fitted.none_bias / fitted.temperature
    top = max([none_score, *scores])
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps) + math.exp(none_score - top)
    ranked: list[tuple[float, int, RankedCause]] = []
    for order, (cause, evidence, e) in enumerate(zip(causes, evidences, exps, strict=True)):
        probability = e / total
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
                    confirm=fill(cause.confirm, by_id, tvars) or "",
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
