"""model-missing-or-invalid: MODEL_PATH names no file, or the GGUF file is cut short."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Result


@pytest.mark.scenario("missing-model")
def test_missing_model(result: Result) -> None:
    result.assert_top("model-missing-or-invalid")
    missing = result.finding("model.missing")
    assert str(missing.data["path"]) == str(result.sc.model), result.explain()
    assert result.has("logs.model_error"), result.explain()


@pytest.mark.scenario("corrupt-model")
def test_truncated_model(result: Result) -> None:
    result.assert_top("model-missing-or-invalid")
    truncated = result.finding("model.truncated")
    assert result.sc.model is not None
    size = result.sc.model.stat().st_size
    assert truncated.data["size"] == size, result.explain()
    assert truncated.data["expected"] > size, result.explain()
    reason = str(result.finding("logs.model_error").data.get("reason", ""))
    assert "not within the file bounds" in reason, result.explain()
