"""What a health answer means, by the engine's profile: ready, loading, overloaded, shutting down.

Pure: takes the HTTP status and the (bounded) body bytes, never does I/O. Shared by the health
probe and by `wait`/`run`, so "ready" means one thing everywhere.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any

from exsa_doctor.profiles import HealthSpec

MAX_BODY_BYTES = 64 * 1024


class HealthState(str, enum.Enum):
    """The meaning of one health answer."""

    READY = "ready"
    LOADING = "loading"
    OVERLOADED = "overloaded"
    SHUTTING_DOWN = "shutting_down"
    MODEL_NOT_LOADED = "model_not_loaded"
    HTTP_ERROR = "http_error"
    BAD_BODY = "bad_body"


@dataclass(frozen=True)
class HealthAnswer:
    """A classified health answer and what was read from its body."""

    state: HealthState
    status_code: int
    reason: str
    body_status: str | None = None
    model_loaded: bool | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def _json_object(body: bytes) -> dict[str, Any] | None:
    if not body or len(body) > MAX_BODY_BYTES:
        return None
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _error_message(obj: dict[str, Any]) -> str:
    err = obj.get("error")
    if isinstance(err, dict):
        msg = err.get("message")
        return msg if isinstance(msg, str) else ""
    return err if isinstance(err, str) else ""


def classify_health(spec: HealthSpec, status: int, body: bytes) -> HealthAnswer:
    """Classify one answer of the health endpoint according to the profile's `HealthSpec`."""
    body = body[:MAX_BODY_BYTES]
    text = body.decode("utf-8", errors="replace")
    obj = _json_object(body)
    scalar = {k: v for k, v in (obj or {}).items() if isinstance(v, (str, int, float, bool))}
    body_status = None
    if obj is not None and spec.status_key:
        raw = obj.get(spec.status_key)
        body_status = raw if isinstance(raw, str) else None
    model_loaded = None
    if obj is not None and spec.model_loaded_key:
        raw_loaded = obj.get(spec.model_loaded_key)
        model_loaded = raw_loaded if isinstance(raw_loaded, bool) else None

    def answer(state: HealthState, reason: str) -> HealthAnswer:
        return HealthAnswer(state, status, reason, body_status, model_loaded, scalar)

    loading_rx = spec.loading_body_regex
    if status in spec.loading_status and (not loading_rx or re.search(loading_rx, text)):
        return answer(HealthState.LOADING, _error_message(obj or {}) or f"HTTP {status}: loading")
    if body_status is not None and body_status in spec.overloaded_values:
        return answer(HealthState.OVERLOADED, f"status {body_status!r}")
    if body_status is not None and body_status in spec.shutdown_values:
        return answer(HealthState.SHUTTING_DOWN, f"status {body_status!r}")
    if status == 503 and obj is not None and "capacity" in _error_message(obj).lower():
        return answer(HealthState.OVERLOADED, _error_message(obj))
    if status not in spec.ready_status:
        msg = _error_message(obj) if obj else ""
        return answer(HealthState.HTTP_ERROR, f"HTTP {status}" + (f": {msg}" if msg else ""))
    if spec.ready_body_regex:
        if re.search(spec.ready_body_regex, text):
            return answer(HealthState.READY, f"HTTP {status}, body matches")
        return answer(HealthState.BAD_BODY, f"HTTP {status}, body does not say it is ready")
    if spec.status_key:
        if obj is None:
            return answer(HealthState.BAD_BODY, f"HTTP {status}, body is not a JSON object")
        if model_loaded is False:
            return answer(HealthState.MODEL_NOT_LOADED, "model_loaded is false")
        if body_status is None:
            return answer(HealthState.BAD_BODY, f"HTTP {status}, no '{spec.status_key}' field")
        if spec.ready_values and body_status not in spec.ready_values:
            return answer(HealthState.BAD_BODY, f"status {body_status!r} is not ready")
    return answer(HealthState.READY, f"HTTP {status}")
