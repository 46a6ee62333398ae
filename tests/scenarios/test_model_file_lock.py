"""model-file-lock: another process holds LOCK_EX on the model; the engine blocks in flock."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Result


@pytest.mark.scenario("model-lock")
def test_lock_holder_is_found(result: Result) -> None:
    result.assert_top("model-file-lock")
    holder = result.sc.extra["holder_pid"]
    locked = result.diag.finding("model.locked_by_other")
    blocked = result.diag.finding("stack.blocked_in_flock")
    assert locked is not None or blocked is not None, result.explain()
    if locked is not None:
        assert locked.data["holder_pid"] == holder, result.explain()
    if blocked is not None:
        assert blocked.data["holder_pid"] == holder, result.explain()
        assert blocked.data["pid"] == result.sc.extra["engine_pid"], result.explain()
    # it is blocked, not slow: no progress while we watched
    assert not result.has("progress.became_ready"), result.explain()
