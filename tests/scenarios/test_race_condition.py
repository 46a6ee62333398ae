"""race-condition: the client asked 0.5 s after starting an engine that loads for ~6 s."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Result


@pytest.mark.scenario("race")
def test_race_is_diagnosed_from_the_failure_time(result: Result) -> None:
    result.assert_top("race-condition")
    failed = result.finding("logs.failed_before_ready")
    assert result.sc.failed_at is not None
    assert abs(float(failed.data["failed_at"]) - result.sc.failed_at) < 0.01, result.explain()
    ready_at = failed.data.get("ready_at")
    # Either it had not listened yet when we looked, or it listened after the failure.
    assert ready_at is None or float(ready_at) > result.sc.failed_at, result.explain()
    # the engine itself is fine: alive and loading (or already serving)
    running = result.finding("processes.running")
    assert result.sc.extra["engine_pid"] in running.data["pids"], result.explain()
