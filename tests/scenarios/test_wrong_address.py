"""wrong-address: the engine serves on another port than the one the client uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Result


@pytest.mark.scenario("wrong-port")
def test_engine_on_other_port_is_pointed_out(result: Result) -> None:
    result.assert_top("wrong-address")
    other = result.finding("port.engine_on_other_port")
    assert other.data["port"] == result.sc.extra["engine_port"], result.explain()
    assert other.data["pid"] == result.sc.extra["engine_pid"], result.explain()
    url = f"http://127.0.0.1:{result.sc.extra['engine_port']}"
    assert any(url in cmd for cmd in result.commands("wrong-address")), result.explain()
