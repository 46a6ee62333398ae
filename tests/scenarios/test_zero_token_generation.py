"""zero-token-generation: the engine is healthy, but its stream ends without a token."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Result


@pytest.mark.scenario("zero-tokens")
def test_zero_tokens_is_diagnosed(result: Result) -> None:
    result.assert_top("zero-token-generation")
    zero = result.finding("generation.zero_tokens")
    assert zero.data["events"] == 1, result.explain()  # only the final done event
    assert result.has("health.ok"), result.explain()
