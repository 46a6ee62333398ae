"""stale-instance: an orphaned earlier engine still holds the port; the new one cannot bind."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Result


@pytest.mark.scenario("stale-instance")
def test_orphaned_instance_is_named_and_the_fix_kills_it(result: Result) -> None:
    result.assert_top("port-in-use")
    stale = result.sc.extra["stale_pid"]
    held = result.finding("port.held_by_stale_instance")
    assert held.data["pid"] == stale, result.explain()
    assert f"kill {stale}" in result.commands("port-in-use"), result.explain()
    assert result.has("logs.bind_failed"), result.explain()
    # a foreign program it is not
    assert not result.has("port.owned_by_other"), result.explain()
