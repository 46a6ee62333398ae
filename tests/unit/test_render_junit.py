"""The JUnit XML report: a testcase per probe and one for the verdict, valid XML always."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
import sample_diagnosis as samples

from exsa_doctor.render.junit import render


def _suite(xml: str) -> ET.Element:
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(xml.encode("utf-8"))
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "exsa-doctor"
    return suite


def _case(suite: ET.Element, name: str) -> ET.Element:
    case = next(c for c in suite.iter("testcase") if c.get("name") == name)
    return case


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_counts_match_the_cases(name: str) -> None:
    d = samples.ALL[name]()
    suite = _suite(render(d))
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [p.name for p in d.probes] + ["verdict"]
    assert suite.get("tests") == str(len(cases))
    for tag, attr in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
        assert suite.get(attr) == str(sum(1 for c in cases if c.find(tag) is not None))
    for c in cases:
        float(c.get("time", "x"))


def test_unhealthy_verdict_fails_with_the_top_cause() -> None:
    suite = _suite(render(samples.race()))
    failure = _case(suite, "verdict").find("failure")
    assert failure is not None
    message = failure.get("message", "")
    assert "The client asked before the engine finished loading" in message
    assert "race-condition" in message
    assert "exsa-doctor wait --url http://127.0.0.1:3000 --timeout 60" in (failure.text or "")
    assert "request failed 9.09 s before the engine listened" in (failure.text or "")
    assert suite.get("failures") == "1" and suite.get("errors") == "0"


def test_probe_statuses_map_to_junit() -> None:
    suite = _suite(render(samples.broken_probes()))
    assert _case(suite, "model").find("error") is not None
    timeout = _case(suite, "health").find("failure")
    assert timeout is not None and timeout.get("type") == "timeout"
    assert _case(suite, "stack").find("skipped") is not None
    ok = _case(suite, "processes")
    assert ok.find("failure") is None and ok.find("error") is None
    verdict = _case(suite, "verdict").find("failure")
    assert verdict is not None and verdict.get("message") == "inconclusive"


def test_healthy_passes() -> None:
    suite = _suite(render(samples.healthy()))
    verdict = _case(suite, "verdict")
    assert verdict.find("failure") is None and verdict.find("error") is None
    assert suite.get("failures") == "0" and suite.get("errors") == "0"


def test_error_findings_are_listed_in_the_probe_output() -> None:
    suite = _suite(render(samples.port_in_use()))
    out = _case(suite, "processes").findtext("system-out") or ""
    assert "[error] processes.target_exited: PID 5120 (given with --pid) has exited" in out
    assert "processes.orphaned (warning)" in out


def test_control_characters_are_stripped() -> None:
    xml = render(samples.hostile())
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]", xml)
    suite = _suite(xml)
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["target.model"] is not None and "</script>" in props["target.model"]
    assert "\x1b" not in props["target.model"] and "[31mred" in props["target.model"]
    crashed = _case(suite, "model").find("error")
    assert crashed is not None and len(crashed.get("message", "")) <= 500
