"""out-of-memory: allocating the KV cache fails (a real MemoryError under RLIMIT_AS)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Result


@pytest.mark.scenario("oom")
def test_allocation_failure_is_diagnosed(result: Result) -> None:
    result.assert_top("out-of-memory")
    line = str(result.finding("logs.oom").data["line"])
    assert "failed to allocate" in line, result.explain()
    assert (
        result.cause("out-of-memory").probability
        > result.cause("model-missing-or-invalid").probability
    ), result.explain()
