"""Every report format produced from a real diagnosis of a real failure (the race)."""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import jsonschema
import pytest

from exsa_doctor.render import render_as

if TYPE_CHECKING:
    from conftest import Result


@pytest.mark.scenario("race")
def test_all_formats_from_a_real_race(result: Result, tmp_path: Path) -> None:
    d = result.diag
    doc = json.loads(render_as(d, "json"))
    schema = json.loads(
        resources.files("exsa_doctor").joinpath("schema/report.schema.json").read_text()
    )
    jsonschema.validate(doc, schema)
    assert doc["causes"][0]["id"] == "race-condition"
    assert any(e["source"] == "client" for e in doc["timeline"])

    md = render_as(d, "markdown")
    assert "race-condition" in md and "exsa-doctor wait" in md

    suite = ET.fromstring(render_as(d, "junit"))
    verdict = next(tc for tc in suite.iter("testcase") if tc.get("name") == "verdict")
    failure = verdict.find("failure")
    assert failure is not None and "race-condition" in (failure.get("message") or "")

    html = render_as(d, "html")
    low = html.lower()
    # self-contained: no scripts, nothing fetched from anywhere
    assert "<script" not in low and "src=" not in low and "@import" not in low
    assert 'href="http' not in low and "url(http" not in low
    assert 'data-event="failed-request"' in html and 'data-event="start"' in html

    chromium = shutil.which("chromium")
    if chromium is None:
        return  # the browser test (tests/browser) covers rendering; CI installs chromium
    page = tmp_path / "report.html"
    page.write_text(html)
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 'id="timeline"' in dom.stdout
    assert 'data-verdict="unhealthy"' in dom.stdout
    assert 'data-event="failed-request"' in dom.stdout
