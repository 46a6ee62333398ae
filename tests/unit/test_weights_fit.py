"""The shipped weights.toml was fitted on the training data as it is now, and on nothing else.

The fit (scripts/fit_weights.py) records a digest of its training examples; a corpus entry, a
signature row or a finding that changes what the training logs raise changes the digest, and the
weights must be fitted again. No held-out log and no final test set not yet retired reaches it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.corpus import entries  # noqa: E402
from scripts.fit_weights import (  # noqa: E402
    OUTPUT,
    corpus_examples,
    digest,
    scenario_examples,
    with_unseen_weight,
)


@pytest.fixture(scope="module")
def meta() -> dict[str, object]:
    return dict(tomllib.loads(OUTPUT.read_text(encoding="utf-8"))["meta"])


def test_the_shipped_weights_were_fitted_on_todays_training_data(meta: dict[str, object]) -> None:
    corpus, _ = corpus_examples()
    examples = with_unseen_weight(corpus, float(str(meta["unseen_view_weight"])))
    examples += scenario_examples()
    assert digest(examples) == meta["training_digest"], (
        "weights.toml is stale: run `python scripts/fit_weights.py`"
    )
    assert meta["corpus_train_logs"] == len({e.log for e in corpus})


def test_only_the_training_split_reaches_the_fit() -> None:
    corpus, _ = corpus_examples()
    split = {e.id: e.split for e in entries()}
    assert corpus, "no training logs"
    assert {split[e.log] for e in corpus} == {"train"}
    # a retired final test set trains; one not yet retired does not
    retired = [e for e in entries() if e.retired]
    assert retired and {e.split for e in retired} == {"train"}
    unretired = {e.id for e in entries() if e.family.startswith("fresh") and not e.retired}
    assert not unretired & {e.log for e in corpus}
