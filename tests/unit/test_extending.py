"""docs/extending.md, followed step by step in a copy of the package.

Every fenced block of the document is a step: `file=PATH` creates a file, `append=PATH` appends
to one, a `diff` is applied with `git apply`, and `sh` blocks are run, with `exsa-doctor` as
`python -m exsa_doctor` on the copy and the profile example's engine URL pointed at a real server
of this test. Each section's result is then checked: what the document says comes out.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import hostile_server as hs

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "extending.md"
_FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
ENGINE_URL = "http://127.0.0.1:9000"  # the profile example's engine, as the document names it


@dataclass
class Step:
    section: str
    lang: str
    info: str
    body: str


def steps() -> list[Step]:
    text = DOC.read_text(encoding="utf-8")
    out: list[Step] = []
    last = 0
    section = ""
    for match in _FENCE.finditer(text):
        # the section is the last heading between the blocks (a block may hold headings too)
        headings = re.findall(r"^## (.+)$", text[last : match.start()], re.MULTILINE)
        section = headings[-1] if headings else section
        out.append(Step(section, match[1], match[2].strip(), match[3]))
        last = match.end()
    return out


@pytest.fixture(scope="module")
def followed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the package and docs/findings.md with every step done; each section's output."""
    work = tmp_path_factory.mktemp("extending")
    shutil.copytree(ROOT / "exsa_doctor", work / "exsa_doctor", ignore=_pycache)
    (work / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "findings.md", work / "docs" / "findings.md")
    outputs: dict[str, Any] = {"copy": work}
    ready = hs.respond(200, b'{"state": "up"}')
    with hs.HostileServer({"/healthz": ready}) as engine:
        for step in steps():
            kind, _, path = step.info.partition("=")
            if kind == "file":
                (work / path).write_text(step.body, encoding="utf-8")
            elif kind == "append":
                with (work / path).open("a", encoding="utf-8") as fh:
                    fh.write(step.body)
            elif step.lang == "diff":
                done = subprocess.run(
                    ["git", "apply", "-"], input=step.body, text=True, cwd=work, capture_output=True
                )
                assert done.returncode == 0, done.stderr
            elif step.lang == "sh":
                outputs.setdefault(step.section, []).extend(run_lines(step.body, work, engine.url))
    return outputs


def _pycache(_folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__"]


def run_lines(script: str, work: Path, engine_url: str) -> list[Any]:
    """Run each command line as the document shows it; JSON output parsed, other text kept."""
    results: list[Any] = []
    env = {**os.environ, "PYTHONPATH": str(work), "NO_COLOR": "1", "TERM": "dumb"}
    for line in script.strip().splitlines():
        stdin = None
        command = line
        if " | " in line:
            feed, command = line.split(" | ", 1)
            stdin = _printf(feed)
        argv = shlex.split(command.replace(ENGINE_URL, engine_url))
        assert argv[0] == "exsa-doctor", line
        done = subprocess.run(
            [sys.executable, "-m", "exsa_doctor", *argv[1:]],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=work,
            env=env,
            timeout=120,
        )
        assert "Traceback" not in done.stderr, done.stderr
        out = done.stdout
        results.append(json.loads(out) if "--format json" in line else out)
    return results


def _printf(feed: str) -> str:
    words = shlex.split(feed)
    assert words[0] == "printf" and len(words) == 2, feed
    return words[1].replace("\\n", "\n")


def finding(report: dict[str, Any], fid: str) -> dict[str, Any]:
    (found,) = [f for f in report["findings"] if f["id"] == fid]
    return found


def test_a_probe_is_listed_and_reports(followed: dict[str, Any]) -> None:
    listing, report = followed["A probe"]
    assert re.search(r"^\s*address\b", listing, re.MULTILINE), listing
    found = finding(report, "address.wildcard_host")
    assert found["data"] == {"host": "0.0.0.0", "port": 3000, "served": found["data"]["served"]}
    assert [p["name"] for p in report["probes"]] == ["address"]


def test_a_cause_is_explained_and_ranked_with_its_fix(followed: dict[str, Any]) -> None:
    explained, report = followed["A cause"]
    assert "wildcard-url" in explained and "The client connects to a wildcard address" in explained
    top = report["causes"][0]
    assert top["id"] == "wildcard-url", [c["id"] for c in report["causes"][:3]]
    commands = [c for step in top["remediation"] for c in step["commands"]]
    assert commands == ["exsa-doctor diagnose --url http://127.0.0.1:3000"]


def test_an_engine_profile_reads_the_engines_own_words(followed: dict[str, Any]) -> None:
    (report,) = followed["An engine profile"]
    assert report["target"]["profile"] == "my-engine"
    assert finding(report, "health.ok")["data"]["status_code"] == 200


def test_a_log_signature_raises_its_finding(followed: dict[str, Any]) -> None:
    (report,) = followed["A log signature"]
    data = finding(report, "logs.model_error")["data"]
    assert data["signature"] == "exsa.model-checksum"
    assert (data["expected"], data["got"]) == ("8f3a2c1d", "00be11ef")
    assert report["causes"][0]["id"] == "model-missing-or-invalid"


def test_the_extended_copy_still_conforms(followed: dict[str, Any]) -> None:
    # what tests/unit/test_conformance.py checks of every probe and cause, run on the copy
    copy = followed["copy"]
    check = (
        "import re, pathlib\n"
        "from exsa_doctor.causes import load_causes\n"
        "from exsa_doctor.probes import ALL_PROBES\n"
        "from exsa_doctor.signatures import load_table\n"
        "emitted = {f for c in ALL_PROBES for f in c.emits}\n"
        "doc = pathlib.Path('docs/findings.md').read_text()\n"
        "documented = set(re.findall(r'^\\| `([a-z_]+\\.[a-z_]+)` \\|', doc, re.M))\n"
        "assert documented == emitted, documented ^ emitted\n"
        "assert all(set(c.evidence) <= emitted for c in load_causes())\n"
        "assert 'exsa.model-checksum' in {s.id for s in load_table().signatures}\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        cwd=copy,
        env={**os.environ, "PYTHONPATH": str(copy)},
        timeout=120,
    )
    assert done.stdout.strip() == "ok", done.stderr
