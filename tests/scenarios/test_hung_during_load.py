"""hung-during-load: the engine stops making progress while loading and never binds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Result


@pytest.mark.scenario("hung")
def test_hang_is_told_from_a_slow_load(result: Result) -> None:
    result.assert_top("hung-during-load")
    result.finding("progress.stalled")
    assert not result.has("progress.loading"), result.explain()
    running = result.finding("processes.running")
    assert result.sc.extra["engine_pid"] in running.data["pids"], result.explain()
    assert not result.has("logs.listening"), result.explain()
