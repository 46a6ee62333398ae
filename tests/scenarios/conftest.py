"""Fixtures for scenario tests: build a real failure, diagnose it in-process, always clean up.

A test names its scenario with `@pytest.mark.scenario("port-in-use")` and takes `scenario`
(the handle) and/or `result` (the handle plus its diagnosis). Teardown stops every process the
scenario started, by PID, and fails the test if one of them is still alive afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

from exsa_doctor.demo import diagnose_scenario
from exsa_doctor.demo.scenarios import Scenario, build
from exsa_doctor.model import Diagnosis, Finding, RankedCause

# Generous: eight probes share two cores with other test runs.
DIAGNOSIS_TIMEOUT_S = 15.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario(name): the scenario the test builds")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Iterator[Scenario]:
    marker = request.node.get_closest_marker("scenario")
    if marker is None or not marker.args:
        raise pytest.UsageError("a scenario test needs @pytest.mark.scenario(NAME)")
    sc = build(str(marker.args[0]))
    try:
        yield sc
    finally:
        sc.cleanup()
    leftover = [pid for pid in sc.pids if _alive(pid)]
    assert not leftover, f"scenario {sc.name} left processes running: {leftover}"


@dataclass
class Result:
    """A scenario and its diagnosis, with the lookups the tests need."""

    sc: Scenario
    diag: Diagnosis

    def explain(self) -> str:
        causes = ", ".join(f"{c.id}={c.probability:.3f}" for c in self.diag.causes[:5])
        found = "; ".join(f"{f.id} {dict(f.data)}" for f in self.diag.findings)
        probes = ", ".join(f"{p.name}:{p.status.value}" for p in self.diag.probes)
        return (
            f"\nverdict {self.diag.verdict.value}; causes {causes}\nprobes {probes}"
            f"\nfindings {found}"
        )

    def top(self) -> RankedCause:
        assert self.diag.top_cause is not None, self.explain()
        return self.diag.top_cause

    def cause(self, cause_id: str) -> RankedCause:
        for c in self.diag.causes:
            if c.id == cause_id:
                return c
        raise AssertionError(f"no cause {cause_id}" + self.explain())

    def finding(self, finding_id: str) -> Finding:
        f = self.diag.finding(finding_id)
        assert f is not None, f"no {finding_id} finding" + self.explain()
        return f

    def has(self, finding_id: str) -> bool:
        return self.diag.finding(finding_id) is not None

    def commands(self, cause_id: str) -> list[str]:
        return [cmd for r in self.cause(cause_id).remediation for cmd in r.commands]

    def assert_top(self, cause_id: str) -> RankedCause:
        top = self.top()
        assert top.id == cause_id, f"top cause {top.id}, expected {cause_id}" + self.explain()
        assert self.diag.verdict.value == "unhealthy", self.explain()
        return top


@pytest.fixture
def result(scenario: Scenario) -> Result:
    return Result(scenario, diagnose_scenario(scenario, timeout=DIAGNOSIS_TIMEOUT_S))
