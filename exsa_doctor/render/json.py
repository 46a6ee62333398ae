"""The JSON report: exactly one JSON document per diagnosis, a public contract.

The shape is described by `exsa_doctor/schema/report.schema.json` (JSON Schema 2020-12) and
`docs/report-schema.md`; key names never change within one `schema_version`. Finding data comes
from probes and may hold tuples, paths, bytes or non-finite floats, so every value goes through
`json_safe` first: the output is strict JSON (no NaN/Infinity) that any parser accepts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from exsa_doctor.model import SCHEMA_VERSION, Diagnosis, Finding, ProbeResult, RankedCause
from exsa_doctor.render.common import iso_utc

TOOL_NAME = "exsa-doctor"
# Nesting beyond this is cut to a string: data is meant to be shallow, and a cycle must not hang.
_MAX_DEPTH = 16


def _safe_str(s: str) -> str:
    # Lone surrogates (from undecodable file names) cannot be encoded as UTF-8 on stdout.
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace").decode("utf-8")
    return s


def json_safe(value: Any, _depth: int = 0) -> Any:
    """`value` as plain JSON types: tuples/sets become lists, paths and enums strings,
    bytes are decoded, non-finite floats become null, mapping keys become strings."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return json_safe(value.value, _depth + 1)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _safe_str(value)
    if _depth >= _MAX_DEPTH:
        return _safe_str(repr(value)[:200])
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, PurePath):
        return _safe_str(str(value))
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {_key(k): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        items = [json_safe(v, _depth + 1) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))  # stable output
    if isinstance(value, (list, tuple)):
        return [json_safe(v, _depth + 1) for v in value]
    try:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return json_safe(dataclasses.asdict(value), _depth + 1)
        return _safe_str(str(value))
    except Exception:  # a broken __str__ in probe data must not lose the whole report
        return f"<unprintable {type(value).__name__}>"


def _key(k: object) -> str:
    if isinstance(k, (bytes, bytearray)):
        return bytes(k).decode("utf-8", "replace")
    if isinstance(k, enum.Enum):
        return str(k.value)
    return _safe_str(str(k))


def _cause(c: RankedCause) -> dict[str, Any]:
    return {
        "id": c.id,
        "title": c.title,
        "probability": c.probability,
        "prior": c.prior,
        "impact": c.impact,
        "evidence": [
            {"finding": e.finding, "weight": e.weight, "summary": e.summary} for e in c.evidence
        ],
        "remediation": [{"text": r.text, "commands": list(r.commands)} for r in c.remediation],
    }


def _finding(f: Finding) -> dict[str, Any]:
    return {
        "probe": f.probe,
        "id": f.id,
        "status": f.status.value,
        "summary": f.summary,
        "data": dict(f.data),
    }


def _probe(p: ProbeResult) -> dict[str, Any]:
    return {
        "name": p.name,
        "status": p.status.value,
        "duration_s": p.duration_s,
        "detail": p.detail,
    }


def report(diagnosis: Diagnosis) -> dict[str, Any]:
    """The report as plain JSON-safe Python data (what `render` serialises)."""
    t = diagnosis.target
    causes = sorted(diagnosis.causes, key=lambda c: -c.probability)  # stable: ties keep order
    doc = {
        "schema_version": SCHEMA_VERSION,
        "tool": {
            "name": TOOL_NAME,
            "version": diagnosis.tool_version,
            "hostname": diagnosis.hostname,
        },
        "target": {
            "url": t.url,
            "host": t.host,
            "port": t.port,
            "model": t.model,
            "logs": list(t.logs),
            "pids": list(t.pids),
            "profile": t.profile,
            "profile_reason": t.profile_reason,
            "offline": t.offline,
        },
        "started_at": iso_utc(diagnosis.started_at),
        "duration_s": diagnosis.duration_s,
        "verdict": diagnosis.verdict.value,
        "failed_at": iso_utc(diagnosis.failed_at),
        "causes": [_cause(c) for c in causes],
        "findings": [_finding(f) for f in diagnosis.findings],
        "probes": [_probe(p) for p in diagnosis.probes],
        "timeline": [
            {
                "t": iso_utc(e.t),
                "t_epoch": e.t,
                "source": e.source,
                "event": e.event,
                "kind": e.kind.value,
            }
            for e in diagnosis.timeline
        ],
    }
    safe: dict[str, Any] = json_safe(doc)
    return safe


def render(diagnosis: Diagnosis) -> str:
    """One JSON document, pretty-printed, ending in a newline."""
    return json.dumps(report(diagnosis), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
