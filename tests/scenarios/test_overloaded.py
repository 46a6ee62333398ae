"""overloaded: the engine is up, but reports itself overloaded and refuses work with 503."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Result


@pytest.mark.scenario("overloaded")
def test_capacity_is_diagnosed(result: Result) -> None:
    result.assert_top("overloaded")
    overloaded = result.finding("health.overloaded")
    assert overloaded.data["status"] == "overloaded", result.explain()
    capacity = result.diag.finding("generation.capacity")
    if capacity is not None:
        assert capacity.data["status_code"] == 503, result.explain()
