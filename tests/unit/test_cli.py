"""The command line as a user meets it: exit codes, messages, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exsa_doctor.cli import exit_code_for


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "NO_COLOR": "1", **(env or {})}
    full_env.pop("EXSA_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "exsa_doctor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        cwd=cwd,
    )


def test_version() -> None:
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("exsa-doctor ")


def test_list_probes_names_every_probe() -> None:
    out = run("--list-probes")
    assert out.returncode == 0
    for name in ["port", "processes", "model", "health", "logs", "generation", "progress", "stack"]:
        assert name in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["diagnose", "--url", "ftp://x"], "only http"),
        (["diagnose", "--url", "http://127.0.0.1:99999"], "port"),
        (["diagnose", "--probe", "nosuch"], "unknown probe"),
        (["diagnose", "--failed-at", "yesterday"], "--failed-at"),
        (["diagnose", "--timeout", "-1"], "--timeout"),
        (["diagnose", "--profile", "nosuch"], "unknown profile"),
        (["explain", "no-such-cause"], "unknown cause"),
        (["triage", "/no/such/dir"], "no such file"),
    ],
)
def test_bad_input_is_a_usage_error_without_traceback(args: list[str], message: str) -> None:
    out = run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_causes_and_explain() -> None:
    out = run("causes")
    assert out.returncode == 0
    for cid in ["race-condition", "port-in-use", "model-file-lock", "mmap-conflict", "overloaded"]:
        assert cid in out.stdout
    out = run("explain", "race-condition")
    assert out.returncode == 0 and "0.9" in out.stdout


def test_diagnose_with_nothing_running_names_it_and_writes_only_the_output(tmp_path: Path) -> None:
    port = _free_port()
    report = tmp_path / "out" / "report.json"
    report.parent.mkdir()
    before = set(tmp_path.rglob("*"))
    out = run(
        "diagnose",
        "--url",
        f"http://127.0.0.1:{port}",
        "--format",
        "json",
        "--output",
        str(report),
        "--timeout",
        "5",
        cwd=tmp_path,
    )
    assert out.returncode in (1, 3), out.stderr
    assert "Traceback" not in out.stderr
    doc = json.loads(report.read_text())
    assert doc["schema_version"] == 1
    assert doc["target"]["port"] == port
    assert any(f["id"] == "health.refused" for f in doc["findings"])
    assert set(tmp_path.rglob("*")) - before == {report}


def test_missing_log_is_a_usage_error_not_a_crash(tmp_path: Path) -> None:
    # issue 13: a missing, unreadable or empty --log is a clear error (exit 2), never "logs ok"
    port = _free_port()
    out = run(
        "diagnose",
        "--url",
        f"http://127.0.0.1:{port}",
        "--log",
        str(tmp_path / "nope.log"),
        "--format",
        "json",
        "--timeout",
        "5",
    )
    assert out.returncode == 2, out.stderr
    assert "nope.log: no such file" in out.stderr
    assert "Traceback" not in out.stderr
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    out = run("diagnose", "--url", f"http://127.0.0.1:{port}", "--log", str(empty))
    assert out.returncode == 2 and "is empty" in out.stderr, out.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_offline_takes_url_for_the_commands_and_refuses_a_bad_one(tmp_path: Path) -> None:
    log = tmp_path / "client.txt"
    log.write_text("curl: (7) Failed to connect to localhost port 8080: Connection refused\n")
    given = run("diagnose", "--offline", "--url", "http://10.1.2.3:7777", "--log", str(log))
    # one refused line sits near the 50 % line between inconclusive and unhealthy, where the fitted
    # weights put it: the exit code must be the printed verdict's, and never a usage error
    as_json = run(
        "diagnose",
        "--offline",
        "--url",
        "http://10.1.2.3:7777",
        "--log",
        str(log),
        "--format",
        "json",
    )
    verdict = json.loads(as_json.stdout)["verdict"]
    assert verdict in ("unhealthy", "inconclusive"), verdict
    assert given.returncode == as_json.returncode == exit_code_for(verdict), given.stderr
    assert "--url http://10.1.2.3:7777" in given.stdout
    assert "--url http://localhost:8080" not in given.stdout
    # without --url, the address the client was refused on
    taken = run("diagnose", "--offline", "--log", str(log))
    assert "--url http://localhost:8080" in taken.stdout, taken.stdout
    bad = run("diagnose", "--offline", "--url", "http://x:99999", "--log", str(log))
    assert bad.returncode == 2 and "port" in bad.stderr and "Traceback" not in bad.stderr
