"""Loads the root-cause table (`causes.toml`) into `Cause` records and checks it while loading.

Unknown keys, values of the wrong kind, missing entries and finding ids no probe emits (in
`evidence`, a step's `when`, or a `{finding.id:key}` placeholder) are `CauseTableError`s naming
the file and the cause. The finding catalogue is the probes' own `emits` declarations.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Collection, Mapping
from functools import cache
from importlib import resources
from typing import Any, NoReturn

from exsa_doctor.model import Cause, RemediationTemplate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IMPACTS = ("high", "medium", "low")

# The keys a [[cause]] and one of its [[cause.remediation]] steps may hold, and their kinds.
# Adding a key is one line here (and reading it below).
CAUSE_KEYS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "title": str,
    "prior": float,
    "seed_prior": float,
    "impact": str,
    "description": str,
    "confirm": str,
    "evidence": dict,
    "remediation": list,
}
STEP_KEYS: dict[str, type | tuple[type, ...]] = {"text": str, "commands": list, "when": str}
CAUSE_REQUIRED = ("id", "title", "prior", "impact", "description", "confirm", "remediation")
STEP_REQUIRED = ("text",)
# {finding.id:key} in a step (the same pattern scoring fills); {target:...} is no finding
_PLACEHOLDER = re.compile(r"\{([a-z_]+(?:\.[a-z_]+)*):([a-z_]+)\}")


class CauseTableError(ValueError):
    """The cause table is malformed (a developer's error, caught by the conformance test)."""


def _check_keys(
    table: Mapping[str, Any],
    allowed: Mapping[str, type | tuple[type, ...]],
    fail: Callable[[str], NoReturn],
    what: str,
) -> None:
    for key, value in table.items():
        kind = allowed.get(key)
        if kind is None:
            near = _close(key, list(allowed), n=1)
            fail(f"{what}unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        if not isinstance(value, kind) or isinstance(value, bool):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            fail(f"{what}{key!r} must be of type {name}")


def parse_causes(
    raw: Mapping[str, Any],
    *,
    source: str = "causes.toml",
    findings: Collection[str] | None = None,
) -> tuple[Cause, ...]:
    """`Cause` records from a parsed cause table, checked; `findings`, when given, is the
    catalogue every finding id the table names must be in."""
    causes: list[Cause] = []
    seen: set[str] = set()
    rows = raw.get("cause", [])
    extra = sorted(set(raw) - {"cause"})
    if extra:
        raise CauseTableError(f"{source}: unknown top-level key(s) {extra}; only [[cause]] tables")
    for number, row in enumerate(rows, start=1):
        cid = row.get("id")
        name = cid if isinstance(cid, str) and cid else f"#{number}"

        def fail(problem: str, name: str = name) -> NoReturn:
            raise CauseTableError(f"{source}: cause {name}: {problem}")

        _check_keys(row, CAUSE_KEYS, fail, "")
        if not isinstance(cid, str) or not cid:
            raise CauseTableError(f"{source}: cause #{number} has no id")
        if cid in seen:
            fail("appears twice")
        seen.add(cid)
        prior = row.get("prior")
        if not isinstance(prior, float) or not 0.0 < prior < 1.0:
            fail("prior must be a number strictly between 0 and 1")
        seed = row.get("seed_prior")
        if seed is not None and not 0.0 < seed < 1.0:
            fail("seed_prior must be a number strictly between 0 and 1")
        if row.get("impact") not in IMPACTS:
            fail(f"impact must be one of {IMPACTS}")
        evidence = dict(row.get("evidence", {}))
        for fid, weight in evidence.items():
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
                fail(f"weight of {fid} must be > 0")
        for number_step, step in enumerate(row.get("remediation", []), start=1):
            where = f"remediation step {number_step}: "
            if not isinstance(step, dict):
                fail(f"{where}must be a table")
            _check_keys(step, STEP_KEYS, fail, where)
            if not all(isinstance(c, str) for c in step.get("commands", [])):
                fail(f"{where}commands must be strings")
        missing = [key for key in CAUSE_REQUIRED if key not in row]
        missing += [
            f"remediation step {i}: {key}"
            for i, step in enumerate(row.get("remediation", []), start=1)
            for key in STEP_REQUIRED
            if key not in step
        ]
        if missing:
            fail(f"missing {', '.join(missing)}")
        if findings is not None:
            _check_finding_ids(row, evidence, findings, fail)
        steps = tuple(
            RemediationTemplate(
                text=str(step.get("text", "")),
                commands=tuple(str(c) for c in step.get("commands", [])),
                when=step.get("when"),
            )
            for step in row.get("remediation", [])
        )
        causes.append(
            Cause(
                id=cid,
                title=str(row.get("title", cid)),
                prior=prior,
                impact=row["impact"],
                description=" ".join(str(row.get("description", "")).split()),
                evidence={k: float(v) for k, v in evidence.items()},
                remediation=steps,
                confirm=str(row.get("confirm", "")),
            )
        )
    return tuple(causes)


def when_finding_ids(when: str) -> list[str]:
    """The finding ids a step's `when` names: `finding.id` or `finding.id:key=value` (a condition
    on the finding's data), either negated by a leading `!`, several joined by `,` (all hold)."""
    return [part.strip().removeprefix("!").partition(":")[0] for part in when.split(",")]


def _check_finding_ids(
    row: Mapping[str, Any],
    evidence: Mapping[str, Any],
    findings: Collection[str],
    fail: Callable[[str], NoReturn],
) -> None:
    """Every finding id the cause names, in evidence, `when` and placeholders, is catalogued."""
    named = [("evidence", fid) for fid in evidence]
    for i, step in enumerate(row.get("remediation", []), start=1):
        if step.get("when") is not None:
            named += [(f"remediation step {i}: when", f) for f in when_finding_ids(step["when"])]
        for text in (step.get("text", ""), *step.get("commands", [])):
            named += [
                (f"remediation step {i}: placeholder", source)
                for source, _key in _PLACEHOLDER.findall(text)
                if source != "target"
            ]
    for where, fid in named:
        if fid not in findings:
            near = _close(fid, list(findings), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            fail(f"{where}: unknown finding id {fid!r}{hint}")


def finding_catalogue() -> frozenset[str]:
    """Every finding id some probe can emit (the probes' `emits`): what causes may name."""
    from exsa_doctor.probes import all_probes

    return frozenset(fid for cls in all_probes() for fid in cls.emits)


def shipped_table() -> dict[str, Any]:
    """The shipped cause table as parsed TOML."""
    text = resources.files("exsa_doctor").joinpath("causes.toml").read_text(encoding="utf-8")
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CauseTableError(f"causes.toml is not valid TOML: {exc}") from exc
    return raw


@cache
def load_causes() -> tuple[Cause, ...]:
    """The shipped cause table, checked.

    Its finding ids are checked against the probes' catalogue in the tests
    (`test_the_shipped_causes_name_only_catalogued_findings`), not here: the catalogue imports
    every probe, which an offline diagnosis (the logs probe alone) does not need.
    """
    return parse_causes(shipped_table(), source="causes.toml")


def cause_by_id(cause_id: str) -> Cause | None:
    return next((c for c in load_causes() if c.id == cause_id), None)


def _close(word: str, choices: list[str], n: int = 1) -> list[str]:
    """Close matches for a did-you-mean (difflib imported only when a load fails)."""
    import difflib

    return difflib.get_close_matches(word, choices, n=n)
