"""The terminal report: verdict, causes with bars, evidence, unwrapped fixes, timeline, probes."""

from __future__ import annotations

import dataclasses
import re

import pytest
import sample_diagnosis as samples

from exsa_doctor.causes import load_causes
from exsa_doctor.model import DEFAULT_PROFILE_REASON
from exsa_doctor.render import render_as
from exsa_doctor.render.common import percent
from exsa_doctor.render.text import (
    MAX_OTHER_CAUSES,
    MIN_OTHER_PROBABILITY,
    render,
    render_cause,
    render_cause_table,
)
from exsa_doctor.scoring import DIAGNOSIS_THRESHOLD

ANSI = re.compile(r"\x1b\[")
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_race_reads_at_a_glance() -> None:
    d = samples.race()
    out = render(d, color=False)
    first = out.splitlines()[0]
    assert "UNHEALTHY" in first and "http://127.0.0.1:3000" in first
    # the sample is scored by the live cause table: show its probability, whatever the weights
    shown = percent(d.causes[0].probability)
    assert d.causes[0].probability > DIAGNOSIS_THRESHOLD  # a diagnosis, whatever the fit says
    assert "race-condition" in out and shown in out
    lines = _lines(out)
    # evidence for and against, with finding ids and weights
    assert any(line.startswith("for") and "✓ logs.failed_before_ready" in line for line in lines)
    assert any(line.startswith("against") and "✗ health.ok" in line for line in lines)
    # the failed request is marked in the timeline, relative to the first event
    assert any(line.startswith("+0.000 s") and "engine process started" in line for line in lines)
    assert any(line.startswith("+0.004 s") and "engine started" in line for line in lines)
    assert any(line.startswith("+38.424 s") and "health: ready" in line for line in lines)
    failed = next(line for line in lines if "✗ request failed" in line)
    assert failed.startswith("+3.011 s") and "9.09 s before the engine listened" in failed
    # probes line
    assert "Probes: port ok 21 ms" in out and "stack SKIPPED" in out
    # the less likely causes are compact lines with bars, the rest one "below" line
    others = [c for c in d.causes[1:] if c.probability >= MIN_OTHER_PROBABILITY]
    for c in others[:MAX_OTHER_CAUSES]:
        assert any(line.startswith("█") and c.id in line for line in lines), c.id
    below = len(d.causes) - 1 - len(others[:MAX_OTHER_CAUSES])
    assert any(line.startswith(f"… {below} more below") for line in lines)


@pytest.mark.parametrize("width", [50, 100, 200])
def test_fix_commands_are_never_wrapped(width: int) -> None:
    d = samples.race()
    out = render(d, color=False, width=width)
    lines = _lines(out)
    for step in d.causes[0].remediation:
        for cmd in step.commands:
            assert cmd in lines, f"{cmd!r} is not on one line of its own"
    assert "until curl -sf http://127.0.0.1:3000/v1/health | grep -q healthy" in out


def test_plain_output_has_no_colour_and_fits_100_columns() -> None:
    out = render(samples.port_in_use(), color=False)
    assert not ANSI.search(out)
    commands = {c for r in samples.port_in_use().causes[0].remediation for c in r.commands}
    for line in out.splitlines():
        assert len(line) <= 100 or line.strip() in commands
    coloured = render(samples.port_in_use(), color=True)
    assert ANSI.search(coloured)


def test_colour_follows_the_terminal_and_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    # under pytest stdout is captured, not a TTY: plain text
    assert not ANSI.search(render(samples.race()))
    assert not ANSI.search(render_as(samples.race(), "text"))

    class FakeTTY:
        def isatty(self) -> bool:
            return True

        def write(self, s: str) -> int:
            return len(s)

    monkeypatch.setattr("sys.stdout", FakeTTY())
    assert ANSI.search(render(samples.race()))
    monkeypatch.setenv("NO_COLOR", "1")
    assert not ANSI.search(render(samples.race()))


def test_port_in_use_names_the_stale_pid_and_the_kill_command() -> None:
    out = render(samples.port_in_use(), color=False)
    assert "port-in-use" in out and ">99%" in out
    assert "kill 4242" in _lines(out)
    assert "bind failed" in out


def test_healthy_has_no_fix_section() -> None:
    out = render(samples.healthy(), color=False)
    assert out.startswith("✓ HEALTHY")
    assert "fix" not in _lines(out)
    # a healthy engine leaves every cause below the line: none is listed as a lead
    d = samples.healthy()
    if all(c.probability < MIN_OTHER_PROBABILITY for c in d.causes):
        assert f"… {len(d.causes)} more below" in out
    else:
        assert "Causes (none likely)" in out


def test_crashed_and_timed_out_probes_are_shown_with_details() -> None:
    out = render(samples.broken_probes(), color=False)
    assert out.startswith("? INCONCLUSIVE")
    assert "model CRASHED" in out and "health TIMEOUT 5.00 s" in out
    assert "KeyError: 'tensor_count' at gguf_reader.py:88" in out
    assert "Best lead (not conclusive)" in out
    # a prior without evidence is flagged, not presented as a diagnosis
    assert "race-condition  (its prior; no evidence either way)" in out


def test_hostile_strings_cannot_drive_the_terminal_or_inject_markup() -> None:
    d = samples.hostile()
    top = d.causes[0]
    d = dataclasses.replace(
        d,
        causes=(
            dataclasses.replace(top, title="[bold red]x[/bold red] [link=http://e]"),
            *d.causes[1:],
        ),
    )
    for color in (False, True):
        out = render(d, color=color)
        assert "\x1b[2J" not in out and "\x07" not in out and "\x00" not in out
        assert "[bold red]x[/bold red]" in out  # literal, not markup
        if not color:
            assert not CONTROL.search(out)
    assert len(render(d, color=False)) < 60_000  # 10k-character lines are shortened


def test_cause_table_lists_every_cause() -> None:
    out = render_cause_table(color=False)
    header = _lines(out)[0].split()
    assert header == ["id", "prior", "impact", "title"]
    for c in load_causes():
        row = next(line for line in _lines(out) if line.startswith(c.id + " "))
        assert f"{c.prior:.2f}" in row and c.impact in row


def test_explain_shows_description_weights_fixes_and_confirm() -> None:
    for cause in load_causes():
        out = render_cause(cause, color=False)
        assert out.startswith(cause.id)
        assert " ".join(cause.description.split()[:6]) in " ".join(out.split())
        for fid, w in cause.evidence.items():
            pattern = re.compile(rf" {re.escape(fid)} ")
            row = next(line for line in _lines(out) if pattern.search(line + " "))
            assert ("✓" if w > 1 else "✗") in row
        for step in cause.remediation:
            for cmd in step.commands:
                assert cmd in _lines(out)
        if cause.confirm:
            assert cause.confirm in _lines(out)
    port = render_cause(next(c for c in load_causes() if c.id == "port-in-use"), color=False)
    assert "kill {port.held_by_stale_instance:pid}" in port
    assert "(when port.held_by_stale_instance is found)" in " ".join(port.split())


def test_an_assumed_profile_says_so_in_the_header() -> None:
    from exsa_doctor.render.markdown import render as render_markdown

    d = samples.race()
    detected = dataclasses.replace(
        d, target=dataclasses.replace(d.target, profile_reason="the log's banner")
    )
    assumed = dataclasses.replace(
        d,
        target=dataclasses.replace(d.target, profile_reason=DEFAULT_PROFILE_REASON),
    )
    assert "assumed" not in render(detected, color=False).splitlines()[0]
    header = render(assumed, color=False).splitlines()[0]
    assert f"({d.target.profile}, assumed: nothing names the engine)" in header
    assert "(assumed: nothing names the engine)" in render_markdown(assumed)
    assert "(assumed: nothing names the engine)" not in render_markdown(detected)
