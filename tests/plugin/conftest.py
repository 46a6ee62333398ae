"""The plugin's tests run inner pytest sessions: keep the outer CI's job summary out of them."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_outer_job_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """An inner session run under GitHub Actions must not append to the real job summary."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("EXSA_ENGINE_CMD", raising=False)
