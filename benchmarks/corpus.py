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
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
# EXSA_DOCTOR_CORPUS points at another copy of the corpus (e.g. a frozen one while it grows)
CORPUS = Path(os.environ.get("EXSA_DOCTOR_CORPUS", REPO / "fixtures" / "realworld"))
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

    retired: bool = False  # a final test set already measured and reported, now training data

    @property
    def split(self) -> str:
        # a `fresh*` family was gathered after the round's signatures and weights were frozen: a
        # final test set, never used to fit or to write signatures, measured once. Once its
        # figure is reported, the next round may retire it (`retired = "..."` in its
        # index.toml): it then trains. The held-out part stays the hash's, round after round.
        if self.family.startswith(FRESH):
            return "train" if self.retired else self.family
        return split_of(self.thread)


def split_of(thread: str) -> str:
    """'heldout' for about HELD_OUT_PERCENT % of threads, else 'train'; fixed by the thread's name."""
    digest = hashlib.sha256(thread.strip().lower().encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT else "train"


def entries(root: Path = CORPUS) -> Iterator[Entry]:
    for index in sorted(root.glob("*/index.toml")):
        raw = tomllib.loads(index.read_text(encoding="utf-8"))
        retired = bool(raw.get("retired"))
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
                retired=retired,
            )


def features_of(path: Path, without: frozenset[str] = frozenset()) -> list[str]:
    """The finding ids the doctor's logs probe raises on this log, read offline.

    `without`: signature ids to leave out of the table, to see the log as the doctor would have
    read it had nobody written those rows (the coverage-aware view in scripts/fit_weights.py).
    """
    from exsa_doctor.api_offline import offline_findings

    if not without:
        return sorted({f.id for f in offline_findings(path)})
    with _table_without(without):
        return sorted({f.id for f in offline_findings(path)})


def read_with_rows(path: Path) -> tuple[list[str], frozenset[str]]:
    """`features_of(path)` and the ids of the signature rows that matched, from one reading."""
    from exsa_doctor.api_offline import offline_findings

    seen: set[str] = set()
    with _table_without(frozenset(), record=seen):
        found = offline_findings(path)
    return sorted({f.id for f in found}), frozenset(seen)


@contextmanager
def _table_without(without: frozenset[str], record: set[str] | None = None) -> Iterator[None]:
    """The logs parser reads a table without the given rows (and records the rows that hit)."""
    from exsa_doctor.parsers import logs as parser
    from exsa_doctor.signatures import Hit, Table, load_table

    full = load_table()

    class _Recording(Table):
        def scan(self, lines: Sequence[str], start: int = 0, end: int | None = None) -> list[Hit]:
            hits = Table.scan(self, lines, start, end)
            if record is not None:
                record.update(h.signature.id for h in hits)
            return hits

    table = _Recording(
        signatures=tuple(s for s in full.signatures if s.id not in without),
        prefilter=full.prefilter,
        hints=full.hints,
    )
    original = parser.load_table
    parser.load_table = lambda: table  # type: ignore[assignment]
    try:
        yield
    finally:
        parser.load_table = original
