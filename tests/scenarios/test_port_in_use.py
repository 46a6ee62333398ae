"""port-in-use: a foreign program listens on the port, so the engine cannot bind."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Result


@pytest.mark.scenario("port-in-use")
def test_foreign_squatter_is_named_with_its_pid(result: Result) -> None:
    result.assert_top("port-in-use")
    squatter = result.sc.extra["squatter_pid"]
    owner = result.finding("port.owned_by_other")
    assert owner.data["pid"] == squatter, result.explain()
    bind = result.finding("logs.bind_failed")
    assert int(bind.data["port"]) == result.sc.port, result.explain()
    assert any(str(squatter) in cmd.split() for cmd in result.commands("port-in-use")), (
        result.commands("port-in-use"),
        result.explain(),
    )
    # the squatter is not mistaken for an engine instance
    assert not result.has("port.listening_engine"), result.explain()
