"""The HTML report: self-contained, escaped, with stable hooks and a timeline chart."""

from __future__ import annotations

import dataclasses
import re
from html.parser import HTMLParser

import pytest
import sample_diagnosis as samples

from exsa_doctor.render.html import render


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Elements:
    p = Elements()
    p.feed(html)
    p.close()
    return p


def by(p: Elements, **want: str) -> list[dict[str, str]]:
    found = []
    for _tag, attrs in p.tags:
        if all(
            (k == "class" and v in attrs.get("class", "").split()) or attrs.get(k) == v
            for k, v in want.items()
        ):
            found.append(attrs)
    return found


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_self_contained_no_script_no_network(name: str) -> None:
    html = render(samples.ALL[name]())
    p = parse(html)
    tags = {t for t, _ in p.tags}
    assert "script" not in tags and "iframe" not in tags and "link" not in tags
    assert "img" not in tags and "object" not in tags
    for _tag, attrs in p.tags:
        for key, value in attrs.items():
            assert not key.startswith("on"), key
            if key in ("src", "href", "xlink:href", "action"):
                raise AssertionError(f"external reference {key}={value[:80]}")
    assert "@import" not in html and not re.search(r"url\((?!#)", html)
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", html)
    assert html.count("<svg") <= 1


def test_race_hooks_and_chart() -> None:
    d = samples.race()
    html = render(d)
    p = parse(html)
    verdict = by(p, id="verdict")
    assert verdict and verdict[0]["data-verdict"] == "unhealthy"
    causes = by(p, **{"class": "cause"})
    assert causes[0]["data-cause-id"] == "race-condition"
    assert float(causes[0]["data-probability"]) == pytest.approx(d.causes[0].probability)
    markers = {m["data-event"] for m in by(p, **{"class": "marker"})}
    assert {"start", "model-validated", "model-loaded", "listening", "failed-request"} <= markers
    assert by(p, id="timeline")
    # the failed request is drawn left of 'listening': the race is visible
    cx = {m["data-event"]: float(m["data-x"]) for m in by(p, **{"class": "marker"})}
    assert cx["failed-request"] < cx["listening"]
    assert cx["start"] < cx["failed-request"]
    text = " ".join(" ".join(p.text).split())
    assert "The client's request failed 9.09 s before the engine listened." in text
    assert "9.09 s too early" in text
    assert "loading model 12.1 s" in text
    assert "exsa-doctor wait --url http://127.0.0.1:3000 --timeout 60" in text
    phases = {a["data-phase"] for a in by(p, **{"class": "phase"})}
    assert phases == {"closed", "listening", "loading"}


def test_port_in_use_marks_the_bind_failure() -> None:
    p = parse(render(samples.port_in_use()))
    markers = {m["data-event"] for m in by(p, **{"class": "marker"})}
    assert "bind-failed" in markers and "failed-request" not in markers
    assert {a["data-phase"] for a in by(p, **{"class": "phase"})} >= {"closed", "exited"}
    assert "kill 4242" in " ".join(p.text)


def test_probe_rows_carry_their_status() -> None:
    p = parse(render(samples.broken_probes()))
    rows = {r["data-probe"]: r["data-status"] for r in by(p, **{"class": "probe"})}
    assert rows["model"] == "crashed" and rows["health"] == "timeout"
    assert rows["stack"] == "skipped" and rows["processes"] == "ok"
    assert by(p, id="verdict")[0]["data-verdict"] == "inconclusive"
    # an unfinished start-up is drawn up to when exsa-doctor ran
    markers = {m["data-event"] for m in by(p, **{"class": "marker"})}
    assert "diagnosis" in markers


def test_hostile_strings_are_text_not_markup() -> None:
    html = render(samples.hostile())
    p = parse(html)
    assert "script" not in {t for t, _ in p.tags} and "b" not in {t for t, _ in p.tags}
    text = "".join(p.text)
    assert "</script><script>alert('x')</script>" in text  # shown, literally
    assert len(html) < 200_000  # 10k-character lines are shortened


def test_without_timeline_says_why() -> None:
    d = dataclasses.replace(samples.healthy(), timeline=(), failed_at=None)
    p = parse(render(d))
    assert "No timeline" in " ".join(p.text)
    assert not by(p, **{"class": "marker"})
