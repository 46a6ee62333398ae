"""Fleet triage: which causes recur across many JSON reports (a CI fleet's artifacts).

Reports are read one at a time and folded into per-cause counters, so memory grows with the
number of distinct causes, hosts and targets (each capped), not with the number of reports.
A file that is not a report is counted and named, never fatal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_REPORT_BYTES = 32 * 1024 * 1024
MAX_NAMES_KEPT = 50  # distinct hosts / targets kept per cause
DIAGNOSED = 0.5


@dataclass
class CauseTally:
    """How often one cause was the diagnosis, where, and when last."""

    cause: str
    title: str
    count: int = 0
    hosts: dict[str, int] = field(default_factory=dict)
    targets: dict[str, int] = field(default_factory=dict)
    newest: str = ""
    newest_report: str = ""
    probability_sum: float = 0.0

    def add(self, host: str, target: str, started: str, report: str, probability: float) -> None:
        self.count += 1
        self.probability_sum += probability
        for bucket, key in ((self.hosts, host), (self.targets, target)):
            if key in bucket or len(bucket) < MAX_NAMES_KEPT:
                bucket[key] = bucket.get(key, 0) + 1
        if started >= self.newest:
            self.newest, self.newest_report = started, report


@dataclass
class Triage:
    """The fold of many reports."""

    reports: int = 0
    healthy: int = 0
    inconclusive: int = 0
    unreadable: list[str] = field(default_factory=list)
    causes: dict[str, CauseTally] = field(default_factory=dict)

    def ranked(self) -> list[CauseTally]:
        """Most frequent first; among equals, the most recent first."""
        by_recency = sorted(self.causes.values(), key=lambda t: t.newest, reverse=True)
        return sorted(by_recency, key=lambda t: t.count, reverse=True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "reports": self.reports,
            "healthy": self.healthy,
            "inconclusive": self.inconclusive,
            "unreadable": self.unreadable,
            "causes": [
                {
                    "id": t.cause,
                    "title": t.title,
                    "count": t.count,
                    "mean_probability": round(t.probability_sum / t.count, 4) if t.count else 0,
                    "newest": t.newest,
                    "newest_report": t.newest_report,
                    "hosts": dict(sorted(t.hosts.items(), key=lambda kv: -kv[1])),
                    "targets": dict(sorted(t.targets.items(), key=lambda kv: -kv[1])),
                }
                for t in self.ranked()
            ],
        }


def iter_report_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named directly, and *.json below directories named."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*.json") if p.is_file())
        else:
            yield path


def _load(path: Path) -> dict[str, Any] | None:
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            return None
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or value.get("schema_version") != 1:
        return None
    return value


def triage(paths: Iterable[Path]) -> Triage:
    """Fold every report under `paths` into a `Triage`."""
    result = Triage()
    for path in iter_report_files(paths):
        report = _load(path)
        if report is None:
            result.unreadable.append(str(path))
            continue
        result.reports += 1
        verdict = report.get("verdict")
        if verdict == "healthy":
            result.healthy += 1
            continue
        causes = report.get("causes") or []
        top = causes[0] if causes and isinstance(causes[0], dict) else None
        if verdict != "unhealthy" or top is None:
            result.inconclusive += 1
            continue
        tool = report.get("tool") if isinstance(report.get("tool"), dict) else {}
        target = report.get("target") if isinstance(report.get("target"), dict) else {}
        host = str((tool or {}).get("hostname") or path.parent.name or "?")
        where = str((target or {}).get("url") or "?")
        cid = str(top.get("id", "?"))
        try:
            probability = float(top.get("probability", 0.0))
        except (TypeError, ValueError):
            probability = 0.0
        tally = result.causes.setdefault(cid, CauseTally(cid, str(top.get("title", cid))))
        tally.add(host, where, str(report.get("started_at", "")), str(path), probability)
    return result


def render_text(result: Triage) -> str:
    """A plain table a person reads in a terminal or a CI log."""
    lines = [
        f"{result.reports} reports: {result.reports - result.healthy - result.inconclusive} "
        f"unhealthy, {result.healthy} healthy, {result.inconclusive} inconclusive"
        + (f", {len(result.unreadable)} unreadable" if result.unreadable else ""),
        "",
    ]
    if not result.causes:
        lines.append("No recurring cause.")
    for t in result.ranked():
        hosts = ", ".join(
            f"{h} ({n})" for h, n in sorted(t.hosts.items(), key=lambda kv: -kv[1])[:5]
        )
        lines.append(f"{t.count:>5}x  {t.cause:<26} {t.title}")
        lines.append(f"        newest {t.newest or '?'}  ({t.newest_report})")
        lines.append(f"        hosts: {hosts}")
        targets = ", ".join(sorted(t.targets)[:5])
        lines.append(f"        targets: {targets}")
    for path in result.unreadable[:20]:
        lines.append(f"unreadable: {path}")
    return "\n".join(lines) + "\n"
