"""Scoring: log-odds arithmetic, ranking, remediation filling, verdicts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exsa_doctor.causes import CauseTableError, load_causes, parse_causes
from exsa_doctor.model import Cause, Finding, Level, RemediationTemplate, Verdict
from exsa_doctor.scoring import fill, remediation_for, score, verdict, when_holds


def f(fid: str, level: Level = Level.ERROR, **data: object) -> Finding:
    return Finding(probe=fid.split(".")[0], id=fid, status=level, summary=fid, data=data)


def cause(cid: str, prior: float, **evidence: float) -> Cause:
    return Cause(
        id=cid,
        title=cid,
        prior=prior,
        impact="high",
        description="",
        evidence={k.replace("__", "."): v for k, v in evidence.items()},
        remediation=(RemediationTemplate(text="fix", commands=("kill {a.b:pid}",)),),
    )


def test_no_evidence_keeps_the_prior() -> None:
    ranked = score([cause("x", 0.3)], [])
    assert ranked[0].probability == pytest.approx(0.3)
    assert ranked[0].evidence == ()


def test_likelihood_ratios_multiply_the_odds() -> None:
    ranked = score([cause("x", 0.5, a__b=4.0, c__d=0.5)], [f("a.b"), f("c.d")])
    odds = 1.0 * 4.0 * 0.5
    assert ranked[0].probability == pytest.approx(odds / (1 + odds), abs=1e-4)
    assert [e.finding for e in ranked[0].evidence_for] == ["a.b"]
    assert [e.finding for e in ranked[0].evidence_against] == ["c.d"]


def test_a_finding_repeated_counts_once() -> None:
    once = score([cause("x", 0.5, a__b=4.0)], [f("a.b")])
    twice = score([cause("x", 0.5, a__b=4.0)], [f("a.b"), f("a.b")])
    assert once[0].probability == twice[0].probability


def test_ranking_highest_first_and_stable() -> None:
    ranked = score(
        [cause("low", 0.2), cause("high", 0.2, a__b=10.0), cause("also-low", 0.2)], [f("a.b")]
    )
    assert [c.id for c in ranked] == ["high", "low", "also-low"]


def test_fill_uses_finding_data_and_target() -> None:
    by_id = {"port.owned_by_other": f("port.owned_by_other", pid=17939, pids=[1, 2])}
    assert fill("kill {port.owned_by_other:pid}", by_id, {}) == "kill 17939"
    assert fill("kill {port.owned_by_other:pids}", by_id, {}) == "kill 1 2"
    assert fill("curl {target:url}", by_id, {"url": "http://x:1"}) == "curl http://x:1"
    assert fill("kill {processes.orphaned:pid}", by_id, {}) is None
    assert fill("json '{{\"a\":1}}'", by_id, {}) == "json '{\"a\":1}'"


def test_remediation_steps_without_data_are_left_out() -> None:
    ranked = score([cause("x", 0.5)], [])
    assert ranked[0].remediation == ()
    ranked = score([cause("x", 0.5)], [f("a.b", pid=42)])
    assert ranked[0].remediation[0].commands == ("kill 42",)


def test_a_step_condition_can_be_negated() -> None:
    by_id = {"logs.model_error": f("logs.model_error", problem="lfs-pointer")}
    assert when_holds("logs.model_error", by_id)
    assert when_holds("logs.model_error:problem=lfs-pointer", by_id)
    assert not when_holds("logs.model_error:problem=truncated", by_id)
    assert not when_holds("!logs.model_error", by_id)
    assert when_holds("!logs.model_error:problem=truncated", by_id)
    assert when_holds("!logs.oom", by_id)
    assert when_holds("logs.model_error, !logs.oom", by_id)
    assert not when_holds("logs.model_error,logs.oom", by_id)
    assert not when_holds("!logs.oom,!logs.model_error", by_id)
    steps = (
        RemediationTemplate(text="only without it", commands=(), when="!logs.model_error"),
        RemediationTemplate(text="only with it", commands=(), when="logs.model_error"),
    )
    assert [r.text for r in remediation_for(steps, by_id, {})] == ["only with it"]
    assert [r.text for r in remediation_for(steps, {}, {})] == ["only without it"]


def test_verdict_needs_supporting_evidence_not_only_a_prior() -> None:
    table = [cause("race", 0.9, a__b=3.0)]
    assert verdict(score(table, []), []) is Verdict.INCONCLUSIVE
    findings = [f("a.b")]
    assert verdict(score(table, findings), findings) is Verdict.UNHEALTHY


def test_healthy_engine_drives_every_shipped_cause_below_half() -> None:
    findings = [
        f("health.ok", Level.OK),
        f("generation.ok", Level.OK),
        f("model.ok", Level.OK),
        f("processes.running", Level.INFO),
        f("port.listening_engine", Level.OK),
        f("logs.listening", Level.OK),
        f("logs.model_loaded", Level.OK),
    ]
    ranked = score(load_causes(), findings)
    assert all(c.probability < 0.5 for c in ranked), [(c.id, c.probability) for c in ranked]
    assert verdict(ranked, findings) is Verdict.HEALTHY


def test_shipped_priors_match_the_seed_table() -> None:
    priors = {c.id: c.prior for c in load_causes()}
    assert priors["race-condition"] == 0.90
    assert priors["port-in-use"] == 0.60
    assert priors["model-file-lock"] == 0.30
    assert priors["mmap-conflict"] == 0.20


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"cause": [{"id": "a", "prior": 1.0, "impact": "high"}]}, "prior"),
        ({"cause": [{"id": "a", "prior": 0.5, "impact": "huge"}]}, "impact"),
        ({"cause": [{"prior": 0.5, "impact": "high"}]}, "no id"),
        ({"cause": [{"id": "a", "prior": 0.5, "impact": "high", "evidence": {"x": -1}}]}, "> 0"),
    ],
)
def test_bad_cause_tables_are_refused(raw: dict, message: str) -> None:
    with pytest.raises(CauseTableError, match=message):
        parse_causes(raw)


@given(
    st.floats(min_value=0.001, max_value=0.999),
    st.lists(st.floats(min_value=1e-3, max_value=1e3), max_size=20),
)
def test_probability_is_always_a_probability(prior: float, weights: list[float]) -> None:
    evidence = {f"e.f{i}": w for i, w in enumerate(weights)}
    table = [Cause("x", "x", prior, "high", "", evidence, ())]
    ranked = score(table, [f(k) for k in evidence])
    p = ranked[0].probability
    assert 0.0 <= p <= 1.0
    expected = 1 / (1 + math.exp(-(math.log(prior / (1 - prior)) + sum(map(math.log, weights)))))
    assert p == pytest.approx(expected, abs=1e-4)
