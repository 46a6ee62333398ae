"""Loads the root-cause table (`causes.toml`) into `Cause` records and checks it."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from exsa_doctor.model import Cause, RemediationTemplate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IMPACTS = ("high", "medium", "low")


class CauseTableError(ValueError):
    """The cause table is malformed (a developer's error, caught by the conformance test)."""


def parse_causes(raw: Mapping[str, Any]) -> tuple[Cause, ...]:
    causes: list[Cause] = []
    seen: set[str] = set()
    for row in raw.get("cause", []):
        cid = row.get("id")
        if not isinstance(cid, str) or not cid:
            raise CauseTableError("a cause has no id")
        if cid in seen:
            raise CauseTableError(f"cause {cid} appears twice")
        seen.add(cid)
        prior = row.get("prior")
        if not isinstance(prior, float) or not 0.0 < prior < 1.0:
            raise CauseTableError(f"cause {cid}: prior must be a number strictly between 0 and 1")
        if row.get("impact") not in IMPACTS:
            raise CauseTableError(f"cause {cid}: impact must be one of {IMPACTS}")
        evidence = dict(row.get("evidence", {}))
        for fid, weight in evidence.items():
            if not isinstance(weight, (int, float)) or weight <= 0:
                raise CauseTableError(f"cause {cid}: weight of {fid} must be > 0")
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


@cache
def load_causes() -> tuple[Cause, ...]:
    """The shipped cause table."""
    text = resources.files("exsa_doctor").joinpath("causes.toml").read_text(encoding="utf-8")
    return parse_causes(tomllib.loads(text))


def cause_by_id(cause_id: str) -> Cause | None:
    return next((c for c in load_causes() if c.id == cause_id), None)
