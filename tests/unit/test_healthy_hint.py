"""A healthy verdict says how to catch the failure next time (issue 9, item 6)."""

from __future__ import annotations

import shlex
from dataclasses import replace

import sample_diagnosis as samples

from exsa_doctor.render import render_as
from exsa_doctor.render.common import healthy_hints


def test_healthy_text_says_how_to_catch_the_failure_next_time() -> None:
    d = samples.healthy()
    assert d.verdict.value == "healthy"
    out = render_as(d, "text", color=False)
    flat = " ".join(out.split())
    assert "To catch a failure the doctor did not see" in flat
    assert f"exsa-doctor diagnose --url {d.target.url}" in flat
    assert "--failed-at" in flat
    assert "exsa-doctor run --port auto" in flat
    assert "pytest --exsa-engine" in flat


def test_hints_parse_as_shell_and_name_the_log() -> None:
    d = samples.healthy()
    hints = healthy_hints(d)
    assert len(hints) == 3
    for _what, command in hints:
        shlex.split(command)
    if d.target.logs:
        assert f"--log {shlex.quote(d.target.logs[0])}" in hints[0][1]


def test_with_failed_at_given_the_hint_is_to_catch_it_live() -> None:
    d = replace(samples.healthy(), failed_at=1763941316.0)
    hints = healthy_hints(d)
    assert not any("--failed-at" in command for _what, command in hints)
    assert any("exsa-doctor run" in command for _what, command in hints)


def test_markdown_and_html_carry_the_hint_only_when_healthy() -> None:
    md = render_as(samples.healthy(), "markdown")
    assert "To catch a failure the doctor did not see" in md
    html = render_as(samples.healthy(), "html")
    assert 'id="healthy-hints"' in html
    for unhealthy in (samples.race(), samples.port_in_use()):
        assert "To catch a failure" not in render_as(unhealthy, "markdown")
        assert 'id="healthy-hints"' not in render_as(unhealthy, "html")
