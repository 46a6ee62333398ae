"""healthy: an engine that loaded and serves gets a healthy verdict and no likely cause."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Result


@pytest.mark.scenario("healthy")
def test_healthy_engine(result: Result) -> None:
    assert result.diag.verdict.value == "healthy", result.explain()
    assert all(c.probability < 0.5 for c in result.diag.causes), result.explain()
    result.finding("health.ok")
    result.finding("port.listening_engine")
    tokens = result.finding("generation.ok").data["tokens"]
    assert tokens > 0, result.explain()
