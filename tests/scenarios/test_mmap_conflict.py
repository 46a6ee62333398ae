"""mmap-conflict: the engine's mmap of the model fails (a real ENOMEM under its RLIMIT_AS),
while another process still maps the same file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Result


@pytest.mark.scenario("mmap")
def test_mmap_failure_is_diagnosed(result: Result) -> None:
    result.assert_top("mmap-conflict")
    line = result.finding("logs.mmap_failed").data["line"]
    assert "mmap failed" in str(line), result.explain()
    mapped = result.finding("model.mapped_by_other")
    assert result.sc.extra["mapper_pid"] in mapped.data["pids"], result.explain()
