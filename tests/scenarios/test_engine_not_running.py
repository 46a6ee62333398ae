"""engine-not-running: the engine the user started is gone; its log says it shut down."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Result


@pytest.mark.scenario("engine-not-running")
def test_exited_engine_is_diagnosed(result: Result) -> None:
    result.assert_top("engine-not-running")
    pid = result.sc.extra["engine_pid"]
    exited = result.finding("processes.target_exited")
    assert exited.data["pid"] == pid, result.explain()
    assert result.has("logs.shutdown"), result.explain()
    assert result.has("health.refused") or result.has("port.not_listening"), result.explain()
