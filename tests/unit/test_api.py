"""The library core (`exsa_doctor.api`): one diagnosis for every face, wait, and `run` as a
context manager, against real ports and the real stand-in engine.

Every process a test starts is stopped by PID in a `finally`, even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from exsa_doctor import api
from exsa_doctor.demo.standin.ggufmake import write_gguf
from exsa_doctor.model import Finding, Level, ProbeStatus, Verdict
from exsa_doctor.supervise.run import bind_check
from tests.support.net import free_port

STANDIN = [sys.executable, "-m", "exsa_doctor.demo.standin"]


def finding(fid: str, level: Level = Level.INFO) -> Finding:
    return Finding(fid.split(".")[0], fid, level, fid, {})


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    write_gguf(path)
    return path


# ------------------------------------------------------------------ observations, one rule


def test_an_observation_is_added_where_the_probes_said_nothing() -> None:
    found = [finding("health.refused", Level.ERROR)]
    observed = [finding("progress.transitions"), finding("progress.stalled", Level.ERROR)]
    assert [f.id for f in api.observed_findings(found, observed)] == [
        "progress.transitions",
        "progress.stalled",
    ]


def test_a_probe_that_judged_the_engine_state_speaks_for_it() -> None:
    # the progress probe said "loading" just now: the wait's older "stalled" is not added beside
    found = [finding("progress.loading")]
    observed = [finding("progress.transitions"), finding("progress.stalled", Level.ERROR)]
    assert [f.id for f in api.observed_findings(found, observed)] == ["progress.transitions"]


def test_an_id_a_probe_already_emitted_is_kept_as_the_probe_said_it() -> None:
    found = [finding("progress.transitions")]
    assert api.observed_findings(found, [finding("progress.transitions")]) == []


def test_observations_are_scored_with_the_probes_findings_in_one_diagnosis() -> None:
    port = free_port()  # nothing listens: health is refused
    target = api.make_target(url=f"http://127.0.0.1:{port}", profile="exsa-engine", timeout_s=5)
    plain = api.diagnose(target, probes=["health"])
    stalled = finding("progress.stalled", Level.ERROR)
    seen = api.Observations("wait", "observations made while waiting", (stalled,))
    observed = api.diagnose(target, probes=["health"], observations=seen)
    assert [p.name for p in observed.probes] == ["health", "wait"]
    row = observed.probes[-1]
    assert row.status is ProbeStatus.OK and [f.id for f in row.findings] == ["progress.stalled"]
    assert "progress.stalled" in {f.id for f in observed.findings}
    assert "progress.stalled" not in {f.id for f in plain.findings}
    # scored, not merely listed: the hang gains evidence it did not have without the observation
    hung = {c.id: c.probability for c in observed.causes}.get("hung-during-load", 0.0)
    hung_plain = {c.id: c.probability for c in plain.causes}.get("hung-during-load", 0.0)
    assert hung > hung_plain


# ---------------------------------------------------------------------------- bad input


def test_bad_input_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(api.UsageError, match="unknown probe nosuch"):
        api.select_probes(["nosuch"])
    with pytest.raises(api.UsageError, match="is a directory"):
        api.make_target(url="http://127.0.0.1:9", logs=[tmp_path])
    with pytest.raises(api.UsageError, match="must start with /"):
        api.make_target(url="http://127.0.0.1:9", health_path="health")
    with pytest.raises(api.UsageError, match="--timeout"):
        api.wait("http://127.0.0.1:9", timeout_s=0)
    with pytest.raises(api.UsageError, match="engine command"):
        api.run_options([])


def test_watching_longer_than_the_bound_extends_the_bound() -> None:
    target = api.make_target(url="http://127.0.0.1:9", watch_s=20, timeout_s=10, profile="vllm")
    assert target.timeout_s == 22.0


def test_no_import_loop_between_the_demo_and_the_cli() -> None:
    code = (
        "import sys, exsa_doctor.demo, exsa_doctor.api\n"
        "assert 'exsa_doctor.cli' not in sys.modules, 'the demo or the core imports the CLI'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------- wait and run, for real


def test_run_yields_a_ready_engine_and_tears_it_down(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_PATH", str(model))
    monkeypatch.setenv("EXSA_STANDIN_LOAD_S", "0.3")
    said: list[str] = []
    pid = None
    try:
        with api.run(STANDIN, port_auto=True, ready_timeout_s=60, say=said.append) as engine:
            pid = engine.pid
            assert engine.profile == "exsa-engine"
            assert engine.url == f"http://127.0.0.1:{engine.port}"
            with urllib.request.urlopen(engine.url + "/v1/health", timeout=5) as answer:
                assert json.loads(answer.read())["status"] == "healthy"
            # the core, asked about the engine run() started, finds it healthy
            diagnosis = api.diagnose(engine.url)
            assert diagnosis.verdict is Verdict.HEALTHY, [c.id for c in diagnosis.causes]
        assert gone(engine.pid)
        assert bind_check("127.0.0.1", engine.port) is None
        assert any("no process of its group remains" in line for line in said), said
    finally:
        if pid is not None and not gone(pid):
            psutil.Process(pid).kill()


def test_run_refuses_a_taken_port_with_a_diagnosis(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_PATH", str(model))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        with (
            pytest.raises(api.EngineStartError, match=f"port 127.0.0.1:{port} is taken") as err,
            api.run(STANDIN, port=port, ready_timeout_s=30),
        ):
            pytest.fail("the body must not run when preflight refuses")
        assert err.value.diagnosis is not None
        assert err.value.diagnosis.verdict is Verdict.UNHEALTHY
        # preflight refused before anything started: no child of ours was left
        after = {p.pid for p in psutil.Process().children(recursive=True)}
        assert after <= before


def test_wait_on_a_dying_engine_returns_its_diagnosis(model: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "engine.log"
    env = {
        "MODEL_PATH": str(model),
        "PORT": str(port),
        "EXSA_STANDIN_MODE": "oom",
        "EXSA_STANDIN_LOAD_S": "0.3",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(STANDIN, env={**os.environ, **env}, stdout=out)
    try:
        outcome = api.wait(
            api.make_target(url=f"http://127.0.0.1:{port}", pids=[proc.pid], logs=[log]),
            timeout_s=60,
            pids=[proc.pid],
            logs=[log],
        )
        assert not outcome.ready
        assert "exited" in outcome.summary
        assert outcome.diagnosis is not None
        assert outcome.diagnosis.verdict is Verdict.UNHEALTHY
        assert outcome.diagnosis.causes[0].id == "out-of-memory"
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


# ---------------------------------------------------------------- one core: checked statically

PACKAGE = Path(__file__).resolve().parents[2] / "exsa_doctor"


def calls_and_imports(path: Path) -> tuple[set[str], set[str]]:
    """Names a module calls and the exsa_doctor modules it imports (anywhere in it)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    called: set[str] = set()
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("exsa_doctor"):
            imported.add(node.module or "")
            imported.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names if a.name.startswith("exsa_doctor"))
    return called, imported


def test_only_the_core_scores_and_assembles_a_diagnosis() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        called, _ = calls_and_imports(path)
        if path.name in ("api.py", "scoring.py"):
            continue
        if {"score", "run_probes_for", "Diagnosis"} & called:
            offenders.append(
                f"{path.relative_to(PACKAGE)}: {sorted(called & {'score', 'run_probes_for', 'Diagnosis'})}"
            )
    assert offenders == [], offenders


def test_nothing_but_the_entry_point_imports_the_cli() -> None:
    importers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "cli.py" and "exsa_doctor.cli" in calls_and_imports(path)[1]
    )
    assert importers == ["launch.py"], importers
