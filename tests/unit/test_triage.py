"""Fleet triage over real JSON reports: recurring causes, hosts, newest first, bad files named."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

from exsa_doctor.render.json import render
from exsa_doctor.triage import triage
from tests.unit.sample_diagnosis import healthy, port_in_use, race


def write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def report(kind: str, host: str, started: str) -> dict:
    builder = {"race": race, "port": port_in_use, "healthy": healthy}[kind]
    doc = json.loads(render(builder()))
    doc["tool"]["hostname"] = host
    doc["started_at"] = started
    return doc


def test_recurring_causes_ranked_by_count_then_recency(tmp_path: Path) -> None:
    write(tmp_path / "a/1.json", report("race", "runner-1", "2026-11-20T10:00:00.000Z"))
    write(tmp_path / "a/2.json", report("race", "runner-2", "2026-11-21T10:00:00.000Z"))
    write(tmp_path / "b/3.json", report("race", "runner-1", "2026-11-22T10:00:00.000Z"))
    write(tmp_path / "b/4.json", report("port", "runner-3", "2026-11-25T10:00:00.000Z"))
    write(tmp_path / "b/5.json", report("healthy", "runner-3", "2026-11-25T11:00:00.000Z"))
    (tmp_path / "b/6.json").write_text("{not json")
    (tmp_path / "b/7.json").write_text(json.dumps({"schema_version": 99}))
    result = triage([tmp_path])
    assert result.reports == 5 and result.healthy == 1
    assert sorted(Path(p).name for p in result.unreadable) == ["6.json", "7.json"]
    ranked = result.ranked()
    assert [t.cause for t in ranked] == ["race-condition", "port-in-use"]
    assert ranked[0].count == 3
    assert ranked[0].hosts == {"runner-1": 2, "runner-2": 1}
    assert ranked[0].newest == "2026-11-22T10:00:00.000Z"
    assert ranked[0].newest_report.endswith("3.json")


def test_cli_json_and_text(tmp_path: Path) -> None:
    write(tmp_path / "1.json", report("port", "h1", "2026-11-25T10:00:00.000Z"))
    out = subprocess.run(
        [sys.executable, "-m", "exsa_doctor", "triage", str(tmp_path), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["causes"][0]["id"] == "port-in-use" and doc["causes"][0]["hosts"] == {"h1": 1}
    text = subprocess.run(
        [sys.executable, "-m", "exsa_doctor", "triage", str(tmp_path / "1.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "port-in-use" in text.stdout and "h1" in text.stdout


def test_thousands_of_reports_are_streamed(tmp_path: Path) -> None:
    doc = report("race", "h", "2026-11-25T10:00:00.000Z")
    doc["findings"] = doc["findings"] * 40  # fatter reports, as real ones with many findings
    for i in range(2000):
        doc["tool"]["hostname"] = f"runner-{i % 300}"
        write(tmp_path / f"r{i:04}.json", doc)
    one = (tmp_path / "r0000.json").stat().st_size
    tracemalloc.start()
    result = triage([tmp_path])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.reports == 2000 and result.causes["race-condition"].count == 2000
    assert len(result.causes["race-condition"].hosts) == 50  # distinct names kept are capped
    # memory follows one report at a time, not the 2,000 of them
    assert peak < 40 * one, (peak, one)
