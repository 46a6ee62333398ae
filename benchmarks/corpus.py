"""The real-failure corpus (fixtures/realworld/*/index.toml) and the features the doctor reads from it.

Each entry is a short verbatim excerpt of a log that someone posted in a public issue thread, with
the thread and the cause the thread settled on. Entries are split by THREAD into a training and a
held-out part with a fixed hash, so no thread is on both sides and the split never changes when
entries are added (`split_of`). Weights are fitted on the training part only
(scripts/fit_weights.py); accuracy is measured on the held-out part (benchmarks/accuracy.py).

`features_of(path)` runs the product's own logs probe on the file, as `exsa-doctor diagnose
--offline --log FILE` does, and returns the finding ids. `NOTHING_RUNNING` are the findings a
machine where nothing runs adds (`diagnose --log FILE` with no engine): used as a second view.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "fixtures" / "realworld"
HELD_OUT_PERCENT = 35
NOTHING_RUNNING = ("processes.none", "health.refused", "port.not_listening", "model.not_given")
# a label outside the cause table: the right answer is "no cause in the table" (unrecognised-error)
OTHER = "other"
FRESH = "fresh"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Entry:
    """One labelled log."""

    id: str
    family: str
    path: Path
    engine: str
    source: str
    thread: str
    cause: str
    detail: str

    @property
    def split(self) -> str:
        # the `fresh` family was gathered after the signatures and weights were frozen: a final
        # test set, never used to fit or to write signatures
        return "fresh" if self.family == FRESH else split_of(self.thread)


def split_of(thread: str) -> str:
    """'heldout' for about HELD_OUT_PERCENT % of threads, else 'train'; fixed by the thread's name."""
    digest = hashlib.sha256(thread.strip().lower().encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT else "train"


def entries(root: Path = CORPUS) -> Iterator[Entry]:
    for index in sorted(root.glob("*/index.toml")):
        raw = tomllib.loads(index.read_text(encoding="utf-8"))
        for row in raw.get("log", []):
            yield Entry(
                id=row["id"],
                family=index.parent.name,
                path=index.parent / row["file"],
                engine=row.get("engine", "other"),
                source=row.get("source", ""),
                thread=row.get("thread", row.get("source", row["id"])),
                cause=row["cause"],
                detail=row.get("detail", ""),
            )


def features_of(path: Path) -> list[str]:
    """The finding ids the doctor's logs probe raises on this log, read offline."""
    from exsa_doctor.api_offline import offline_findings

    return sorted({f.id for f in offline_findings(path)})
