"""The JUnit XML report, for CI systems that show test results (GitHub, GitLab, Jenkins).

One testsuite `exsa-doctor`: one testcase per probe (crashed is an error, timeout a failure,
skipped is skipped, ok passes; a probe's error-level findings go to its system-out) and one
testcase `verdict`, which fails when the engine is unhealthy (message: the top cause) or the
diagnosis is inconclusive. XML 1.0 cannot carry most control characters, so they are stripped.
"""

from __future__ import annotations

import math
import socket
import xml.etree.ElementTree as ET

from exsa_doctor.model import Diagnosis, Level, ProbeResult, ProbeStatus, Verdict
from exsa_doctor.render.common import (
    iso_utc,
    percent,
    printable,
    prominent_causes,
    seconds,
    shorten,
    timeline_view,
    weight,
)

SUITE = "exsa-doctor"
MAX_MESSAGE = 500  # an attribute is shown on one line by most CI viewers
MAX_BODY = 20_000


def _x(value: object, limit: int | None = None, *, multiline: bool = False) -> str:
    s = printable(value, keep_newlines=multiline, replacement="")
    return shorten(s, limit) if limit else s


def _time(seconds_: float) -> str:
    return f"{max(0.0, seconds_):.3f}" if math.isfinite(seconds_) else "0.000"


def _probe_case(suite: ET.Element, p: ProbeResult) -> str | None:
    """Add the probe's testcase; return the kind of its problem (failure/error/skipped)."""
    case = ET.SubElement(
        suite,
        "testcase",
        name=_x(p.name, 200),
        classname=f"{SUITE}.probes",
        time=_time(p.duration_s),
    )
    kind: str | None = None
    if p.status is ProbeStatus.CRASHED:
        kind = "error"
        el = ET.SubElement(case, "error", message=_x(p.detail, MAX_MESSAGE), type="crashed")
        el.text = _x(p.detail, MAX_BODY, multiline=True)
    elif p.status is ProbeStatus.TIMEOUT:
        kind = "failure"
        el = ET.SubElement(case, "failure", message=_x(p.detail, MAX_MESSAGE), type="timeout")
        el.text = f"probe {_x(p.name)} timed out after {seconds(p.duration_s)}: {_x(p.detail)}"
    elif p.status is ProbeStatus.SKIPPED:
        kind = "skipped"
        ET.SubElement(case, "skipped", message=_x(p.detail, MAX_MESSAGE))
    lines = [
        f"[{f.status.value}] {f.id}: {_x(f.summary, 2000)}"
        for f in p.findings
        if f.status is Level.ERROR
    ]
    others = [f for f in p.findings if f.status is not Level.ERROR]
    if others:
        lines.append("other findings: " + ", ".join(f"{f.id} ({f.status.value})" for f in others))
    if p.status is ProbeStatus.OK and p.detail:
        lines.insert(0, _x(p.detail, 2000))
    if lines:
        ET.SubElement(case, "system-out").text = shorten("\n".join(lines), MAX_BODY)
    return kind


def _verdict_case(suite: ET.Element, d: Diagnosis) -> str | None:
    case = ET.SubElement(
        suite, "testcase", name="verdict", classname=SUITE, time=_time(d.duration_s)
    )
    shown = prominent_causes(d)
    body: list[str] = [f"verdict: {d.verdict.value}", f"target: {_x(d.target.url)}"]
    for c in shown:
        body.append(f"\n{percent(c.probability)} {c.id}: {_x(c.title)}")
        body += [
            f"  for {e.finding} {weight(e.weight)}: {_x(e.summary, 500)}" for e in c.evidence_for
        ]
        body += [
            f"  against {e.finding} {weight(e.weight)}: {_x(e.summary, 500)}"
            for e in c.evidence_against
        ]
        for step in c.remediation:
            body.append(f"  fix: {_x(step.text)}")
            body += [f"    {_x(cmd)}" for cmd in step.commands]
    view = timeline_view(d.timeline, d.failed_at)
    relation = view.request_vs_ready()
    if relation:
        body.append(f"\nthe client's request failed {relation}")
    text = shorten("\n".join(body), MAX_BODY)
    if d.verdict is Verdict.UNHEALTHY:
        top = shown[0] if shown else d.top_cause
        message = f"{_x(top.title)} [{top.id}] ({percent(top.probability)})" if top else "unhealthy"
        el = ET.SubElement(case, "failure", message=shorten(message, MAX_MESSAGE), type="unhealthy")
        el.text = text
        return "failure"
    if d.verdict is Verdict.INCONCLUSIVE:
        el = ET.SubElement(case, "failure", message="inconclusive", type="inconclusive")
        el.text = text
        return "failure"
    ET.SubElement(case, "system-out").text = text
    return None


def render(diagnosis: Diagnosis) -> str:
    """The report as a JUnit XML document (UTF-8, with declaration)."""
    d = diagnosis
    suites = ET.Element("testsuites", name=SUITE)
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=SUITE,
        timestamp=(iso_utc(d.started_at) or "")[:19],  # JUnit wants no zone suffix
        hostname=_x(socket.gethostname(), 200),
        time=_time(d.duration_s),
    )
    props = ET.SubElement(suite, "properties")
    t = d.target
    for name, value in (
        ("tool.version", d.tool_version),
        ("target.url", t.url),
        ("target.profile", t.profile),
        ("target.model", t.model or ""),
        ("target.logs", " ".join(t.logs)),
        ("target.pids", " ".join(str(p) for p in t.pids)),
        ("verdict", d.verdict.value),
        ("failed_at", iso_utc(d.failed_at) or ""),
    ):
        ET.SubElement(props, "property", name=name, value=_x(value, 2000))
    counts = {"failure": 0, "error": 0, "skipped": 0}
    for p in d.probes:
        kind = _probe_case(suite, p)
        if kind:
            counts[kind] += 1
    kind = _verdict_case(suite, d)
    if kind:
        counts[kind] += 1
    total = str(len(d.probes) + 1)
    for el in (suites, suite):
        el.set("tests", total)
        el.set("failures", str(counts["failure"]))
        el.set("errors", str(counts["error"]))
        el.set("skipped", str(counts["skipped"]))
    suites.set("time", _time(d.duration_s))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=False).join(
        ('<?xml version="1.0" encoding="UTF-8"?>\n', "\n")
    )
