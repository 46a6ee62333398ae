"""The fitted evidence weights (`weights.toml`), written by `scripts/fit_weights.py`, never by hand.

`causes.toml` says which finding bears on which cause and gives a hand-set likelihood ratio: the
prior of the fit. `weights.toml` holds what the fit made of them on labelled data: a bias per
cause, one for "none" (no cause in the table), a weight (log likelihood ratio) per cause and
finding, and a temperature. A weight the file lacks (a row added to `causes.toml` since the last
fit) falls back to the hand value, and a bias to the log-odds of the cause's prior.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from exsa_doctor.model import Cause

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NONE_CLASS = "none"


class FittedWeightsError(ValueError):
    """weights.toml is malformed (a developer's error, caught by a test)."""


@dataclass(frozen=True)
class FittedModel:
    """Biases, weights and temperature; hand values where the fit has none."""

    biases: Mapping[str, float] = field(default_factory=dict)
    weights: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    none_bias: float = 0.0
    temperature: float = 1.0
    meta: Mapping[str, Any] = field(default_factory=dict)

    def bias(self, cause: Cause) -> float:
        fitted = self.biases.get(cause.id)
        if fitted is not None:
            return fitted
        return math.log(cause.prior / (1.0 - cause.prior))

    def weight(self, cause: Cause, finding_id: str) -> float:
        fitted = self.weights.get(cause.id, {}).get(finding_id)
        if fitted is not None:
            return fitted
        return math.log(cause.evidence[finding_id])

    @property
    def is_fitted(self) -> bool:
        return bool(self.biases)


HAND = FittedModel()


def parse_fitted(raw: Mapping[str, Any]) -> FittedModel:
    """A FittedModel from the TOML mapping; raises FittedWeightsError when malformed."""
    biases: dict[str, float] = {}
    weights: dict[str, dict[str, float]] = {}
    for cid, row in dict(raw.get("cause", {})).items():
        if not isinstance(row, Mapping) or not isinstance(row.get("bias"), (int, float)):
            raise FittedWeightsError(f"weights.toml: cause {cid} has no numeric bias")
        biases[cid] = float(row["bias"])
        ws = row.get("weights", {})
        if not isinstance(ws, Mapping) or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in ws.values()
        ):
            raise FittedWeightsError(f"weights.toml: cause {cid} has a non-numeric weight")
        weights[cid] = {k: float(v) for k, v in ws.items()}
    none = raw.get("none", {})
    temperature = float(raw.get("temperature", 1.0))
    if not temperature > 0:
        raise FittedWeightsError("weights.toml: temperature must be > 0")
    return FittedModel(
        biases=biases,
        weights=weights,
        none_bias=float(none.get("bias", 0.0)) if isinstance(none, Mapping) else 0.0,
        temperature=temperature,
        meta=dict(raw.get("meta", {})),
    )


def check_against(model: FittedModel, causes: tuple[Cause, ...]) -> list[str]:
    """What in the fitted file the cause table does not know (stale after an edit)."""
    known = {c.id: c for c in causes}
    problems: list[str] = []
    for cid, ws in model.weights.items():
        cause = known.get(cid)
        if cause is None:
            problems.append(f"weights.toml names cause {cid}, which causes.toml does not have")
            continue
        problems.extend(
            f"weights.toml: {cid} weighs {fid}, which causes.toml does not relate to it"
            for fid in ws
            if fid not in cause.evidence
        )
    return problems


@cache
def load_fitted() -> FittedModel:
    """The shipped fitted weights, or the hand values when there is no fit yet."""
    ref = resources.files("exsa_doctor").joinpath("weights.toml")
    if not ref.is_file():
        return HAND
    return parse_fitted(tomllib.loads(ref.read_text(encoding="utf-8")))
