"""The Markdown report: verdict, cause table, fenced fixes, timeline and probes; data escaped."""

from __future__ import annotations

import re

import pytest
import sample_diagnosis as samples

from exsa_doctor.render.common import percent
from exsa_doctor.render.markdown import code, render, text

UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def _outside_fences(md: str) -> list[str]:
    out, fence = [], ""
    for line in md.splitlines():
        m = re.match(r"\s*(`{3,})", line)
        if m and (not fence or m.group(1).startswith(fence)):
            fence = "" if fence else m.group(1)
            continue
        if not fence:
            out.append(line)
    return out


def _fenced_lines(md: str) -> list[str]:
    outside = set(_outside_fences(md))
    return [line.strip() for line in md.splitlines() if line not in outside]


def _tables(md: str) -> list[list[str]]:
    tables: list[list[str]] = []
    current: list[str] = []
    for line in _outside_fences(md):
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def test_race_summary() -> None:
    d = samples.race()
    md = render(d)
    assert md.startswith("## exsa-doctor: ❌ **unhealthy** — `http://127.0.0.1:3000`")
    assert "> **Most likely:** The client asked before the engine finished loading" in md
    assert (
        "| 1 | The client asked before the engine finished loading (`race-condition`) "
        f"| **{percent(d.causes[0].probability)}** | high | 1 for, 1 against |" in md
    )
    fenced = _fenced_lines(md)
    for step in d.causes[0].remediation:
        for cmd in step.commands:
            assert cmd in fenced
    assert "| **+3.011 s** | **client** | ❌ **request failed** |" in md
    assert "the request failed 9.09 s before the engine listened" in md
    assert "| generation | ⏭️ skipped |" in md


def test_crashed_and_timeout_probes_stand_out() -> None:
    md = render(samples.broken_probes())
    assert "⚠️ **inconclusive**" in md
    assert "| model | 💥 **crashed** |" in md and "| health | ⏱️ **timeout** | 5.00 s |" in md


def test_healthy_has_no_fix() -> None:
    md = render(samples.healthy())
    assert "✅ **healthy**" in md and "**Fix**" not in md


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_tables_keep_their_shape(name: str) -> None:
    md = render(samples.ALL[name]())
    tables = _tables(md)
    assert tables or name == "empty"
    for table in tables:
        columns = len(UNESCAPED_PIPE.findall(table[0]))
        for row in table:
            assert len(UNESCAPED_PIPE.findall(row)) == columns, row[:200]


def test_hostile_data_stays_literal() -> None:
    md = render(samples.hostile())
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", md)
    for line in _outside_fences(md):
        prose = re.sub(r"(`+)(.+?)\1", "", line)  # code spans show HTML literally
        if line.startswith(("<details", "</details")):
            continue
        assert not re.search(r"(?<!\\)<(?!/?(details|summary)\b)[a-z/]", prose), line[:200]
        assert len(line) < 3000  # 10k-character lines are shortened
    # the hostile path survives intact in its fenced command
    assert any("</script>" in line for line in _fenced_lines(md))


def test_code_spans_and_escaping() -> None:
    assert code("a`b") == "``a`b``"
    assert code("`x`") == "`` `x` ``"
    assert code("a|b", in_table=True) == "`a\\|b`"
    assert text("a|b*c_<d>") == "a\\|b\\*c\\_\\<d\\>"
    assert text("x" * 500, limit=10) == "x" * 9 + "…"
