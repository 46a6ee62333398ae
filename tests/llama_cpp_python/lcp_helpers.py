"""Helpers for the llama-cpp-python server tests: one server process, its log, its readiness.

Kept out of conftest.py so test modules can import them by a name no other directory uses.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from llama_helpers import poll


@dataclass
class LcpServer:
    """One `python -m llama_cpp.server` process a test started, with its log file."""

    proc: subprocess.Popen[bytes]
    port: int
    model: Path
    log: Path
    argv: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def models(self) -> tuple[int, bytes] | None:
        """GET /v1/models: (status, body), or None when nothing answers."""
        try:
            r = httpx.get(self.url + "/v1/models", timeout=2.0)
        except httpx.HTTPError:
            return None
        return r.status_code, r.content

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            answer = self.models()
            return answer is not None and answer[0] == 200

        poll(
            ready, timeout_s, f"llama-cpp-python on port {self.port} to answer /v1/models 200", 0.1
        )

    def wait_exit(self, timeout_s: float = 120.0) -> int:
        poll(lambda: self.proc.poll() is not None, timeout_s, "the server to exit", 0.1)
        return int(self.proc.returncode)
