"""The real-failure corpus is well formed: every entry's file exists, no thread is in two parts,
every label is a cause of the table (or "other"), and a fresh test set is a split of its own
until a later round retires it into training (tests/unit/test_weights_fit.py checks the fit)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.corpus import CORPUS, OTHER, entries, split_of  # noqa: E402
from exsa_doctor.causes import load_causes  # noqa: E402

ENGINES = {
    "llama-server",
    "llama-cli",
    "llamafile",
    "lm-studio",
    "localai",
    "ollama",
    "vllm",
    "llama-cpp-python",
    "text-generation-webui",
    "exsa-engine",
    "other",
}


def test_every_entry_points_at_a_non_empty_log() -> None:
    rows = list(entries(CORPUS))
    assert len(rows) >= 150
    for e in rows:
        assert e.path.is_file(), e.id
        assert e.path.read_text(encoding="utf-8").strip(), e.id
        assert e.source.startswith("https://"), e.id


def test_ids_and_threads_are_unique_across_all_parts() -> None:
    rows = list(entries(CORPUS))
    ids = Counter(e.id for e in rows)
    threads = Counter(e.thread.strip().lower() for e in rows)
    assert [i for i, n in ids.items() if n > 1] == []
    assert [t for t, n in threads.items() if n > 1] == []


def test_labels_are_causes_of_the_table_and_engines_are_known() -> None:
    causes = {c.id for c in load_causes()} | {OTHER}
    for e in entries(CORPUS):
        assert e.cause in causes, (e.id, e.cause)
        assert e.engine in ENGINES, (e.id, e.engine)


def test_the_fresh_sets_are_their_own_split_and_the_rest_split_by_thread() -> None:
    for e in entries(CORPUS):
        if e.family.startswith("fresh"):
            # a final test set is its own split until a later round retires it into training
            assert e.split == ("train" if e.retired else e.family)
        else:
            assert e.split == split_of(e.thread) in ("train", "heldout")
