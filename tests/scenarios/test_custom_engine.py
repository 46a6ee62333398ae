"""A user's own engine, without code changes: --process-name, --health-path, --profile-file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER = r"""
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body = json.dumps({"state": "serving"}).encode()
            self.send_response(200)
        else:
            body = b"{}"
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

PROFILE = """
name = "my-llm"
description = "our in-house server"
default_port = 9000
[process]
executables = ["my-llm"]
[health]
path = "/healthz"
ready_status = [200]
status_key = "state"
ready_values = ["serving"]
[generation]
path = "/gen"
kind = "openai-completion"
body = '{"prompt": "hi", "max_tokens": 4}'
[logs]
timestamp = "none"
[logs.markers]
listening = "serving on (?P<address>\\\\S+)"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def my_llm(tmp_path: Path) -> Iterator[tuple[int, int]]:
    exe = tmp_path / "bin" / "my-llm"
    exe.parent.mkdir()
    exe.symlink_to(sys.executable)  # a process whose executable is named my-llm
    port = _free_port()
    proc = subprocess.Popen([str(exe), "-c", SERVER, str(port)])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield proc.pid, port
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _diagnose(*args: str) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "exsa_doctor",
            "diagnose",
            "--format",
            "json",
            "--no-generate",
            "--timeout",
            "8",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in out.stderr, out.stderr
    return json.loads(out.stdout)


def test_profile_file_makes_the_doctor_read_a_foreign_engine(
    my_llm: tuple[int, int], tmp_path: Path
) -> None:
    pid, port = my_llm
    profile = tmp_path / "my-llm.toml"
    profile.write_text(PROFILE)
    doc = _diagnose("--url", f"http://127.0.0.1:{port}", "--profile-file", str(profile))
    assert doc["target"]["profile"] == "my-llm"
    ids = {f["id"]: f for f in doc["findings"]}
    assert "health.ok" in ids, sorted(ids)
    assert ids["port.listening_engine"]["data"]["pid"] == pid
    assert doc["verdict"] == "healthy"


def test_options_alone_point_the_doctor_at_the_engine(my_llm: tuple[int, int]) -> None:
    pid, port = my_llm
    # without the options the health route is wrong for this engine (404) and it is no engine
    plain = _diagnose("--url", f"http://127.0.0.1:{port}", "--profile", "exsa-engine")
    assert "health.ok" not in {f["id"] for f in plain["findings"]}
    doc = _diagnose(
        "--url",
        f"http://127.0.0.1:{port}",
        "--profile",
        "exsa-engine",
        "--process-name",
        "my-llm",
        "--health-path",
        "/healthz",
    )
    ids = {f["id"]: f for f in doc["findings"]}
    assert ids["port.listening_engine"]["data"]["pid"] == pid
    # /healthz answered (no 404 any more), but its body says "state": "serving", not
    # exsa-engine's "status": "healthy": the doctor reports the body, not a missing route
    assert "health.http_error" not in ids, ids.get("health.http_error")
    assert "health.bad_body" in ids, sorted(ids)
    assert "status" in ids["health.bad_body"]["summary"]
