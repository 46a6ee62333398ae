"""The pytest plugin, used the way a user's suite uses it: pytester runs a real inner session."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from exsa_doctor.demo.standin.ggufmake import write_gguf

pytest_plugins = ["pytester"]

INNER = """
import httpx

def test_health(exsa_engine):
    r = httpx.get(exsa_engine + "/v1/health", timeout=5)
    assert r.json()["status"] == "healthy"

def test_generation_fails_on_purpose(exsa_engine):
    r = httpx.get(exsa_engine + "/v1/health", timeout=5)
    assert r.status_code == 418, "this test fails so that the doctor's report is attached"
"""


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    write_gguf(path)
    return path


def test_fixture_starts_serves_and_attaches_a_report(
    pytester: pytest.Pytester, model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODEL_PATH", str(model))
    pytester.makepyfile(test_inner=INNER)
    junit = tmp_path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "-rA",
        f"--exsa-engine={sys.executable} -m exsa_doctor.demo.standin",
        f"--junitxml={junit}",
        timeout=240,
    )
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "exsa-doctor report" in out
    assert "healthy" in out  # the doctor's verdict on the engine the failing test used
    props = [
        p.get("value", "")
        for p in ET.parse(junit).iter("property")
        if p.get("name") == "exsa-doctor"
    ]
    assert len(props) == 1 and "exsa-doctor" in props[0]
    # the fixture tore its engines down: nothing of ours still runs the stand-in from that session
    import psutil

    left = [
        p
        for p in psutil.process_iter(["cmdline", "environ"])
        if "exsa_doctor.demo.standin" in " ".join(p.info["cmdline"] or [])
        and (p.info["environ"] or {}).get("MODEL_PATH") == str(model)
    ]
    assert not left, [p.pid for p in left]


def test_engine_that_cannot_start_fails_with_the_diagnosis(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "missing.gguf"))
    pytester.makepyfile(test_inner="def test_x(exsa_engine):\n    pass\n")
    result = pytester.runpytest_subprocess(
        f"--exsa-engine={sys.executable} -m exsa_doctor.demo.standin",
        "--exsa-ready-timeout=20",
        timeout=240,
    )
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "the engine did not come up" in out
    assert "model-missing-or-invalid" in out or "Model validation failed" in out


def test_without_an_engine_command_the_fixture_skips(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXSA_ENGINE_CMD", raising=False)
    pytester.makepyfile(test_inner="def test_x(exsa_engine):\n    pass\n")
    result = pytester.runpytest_subprocess(timeout=60)
    result.assert_outcomes(skipped=1)
