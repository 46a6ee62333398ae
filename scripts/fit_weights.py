"""Fit the evidence weights of the cause table from labelled data; write exsa_doctor/weights.toml.

The model (exsa_doctor/scoring.py): one failure has one root cause, so the causes compete in a
multinomial logistic model over the causes and "none". A cause's score is its bias plus the
weights of the findings present that causes.toml relates to it. Which finding bears on which
cause is the table's knowledge; how much it weighs is fitted here by maximum a posteriori: the
log-likelihood of the training examples plus a Gaussian prior centred on the table's hand values
(log likelihood ratios; biases on the log-odds of the cause's prior). With little data a weight
stays near what the table says; with data it moves to what the data says.

Training data, never the held-out part:
- the training split of the real-failure corpus (benchmarks/corpus.py splits by thread), each log
  twice: read offline (logs alone) and as on a machine where nothing runs;
- the staged scenarios' recorded findings (fixtures/training/scenarios.jsonl, made by
  scripts/record_scenarios.py), each labelled with the cause it was built to produce.
A corpus label outside the table ("other") trains "unrecognised-error": the table has no cause
for it, and that cause says so. Labels the table does not have yet are left out and counted.

Usage: python scripts/fit_weights.py [--exclude-engine NAME] [--output PATH] [--check]
  --check      fit, compare with the shipped weights.toml, exit 1 if they differ (CI can run it)
Prints the training-set size and the training log-loss; benchmarks/accuracy.py measures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.corpus import (  # noqa: E402
    NOTHING_RUNNING,
    OTHER,
    entries,
    features_of,
    read_with_rows,
)
from exsa_doctor.causes import load_causes  # noqa: E402
from exsa_doctor.fitted import NONE_CLASS  # noqa: E402

SCENARIOS = REPO / "fixtures" / "training" / "scenarios.jsonl"
OUTPUT = REPO / "exsa_doctor" / "weights.toml"
UNPLACED = frozenset(
    {"logs.unrecognised_error", "logs.load_failed", "logs.context_failed", "logs.not_started"}
)
SIGMA_WEIGHT = 1.0  # prior's standard deviation around a hand weight (log units)
# hints (signatures/hints.toml) carry no hand knowledge of their strength: the width of their
# prior is chosen by cross-validation (choose_hint_sigma) from this grid
SIGMA_HINT_GRID = (1.0, 2.0, 3.0)
HINT_PREFIX = "logs.hint_"
SIGMA_BIAS = 0.5  # base rates are the table's (live use); the corpus's own are not ours
STEPS = 4000
LEARNING_RATE = 0.03


@dataclass(frozen=True)
class Example:
    """One labelled feature set."""

    source: str
    label: str
    features: frozenset[str]
    engine: str = ""
    weight: float = 1.0
    thread: str = ""
    unseen: bool = False  # the coverage-aware view: rows only this log matches left out
    log: str = ""  # the corpus entry's id; "" for a staged scenario


def corpus_examples(
    exclude_engine: str | None = None, unseen_weight: float = 1.0
) -> tuple[list[Example], dict[str, int]]:
    """The training split's logs, each offline and as on a machine where nothing runs.

    A log that is the only training log to match some signature row is also seen without those
    rows (weight `unseen_weight`): the rows were likely written from it, and a new log of the same
    kind in the wild would meet a table that lacks its wording. Without this view the fit learns
    from the training logs that an unplaced failure line always means a cause outside the table,
    which is true only of logs the table was written from.
    """
    out: list[Example] = []
    skipped: dict[str, int] = {}
    classes = {c.id for c in load_causes()}
    chosen = [e for e in entries() if e.split == "train" and e.engine != exclude_engine]
    read = {e.id: read_with_rows(e.path) for e in chosen}
    hits = {i: rows for i, (_, rows) in read.items()}
    count = Counter(i for ids in hits.values() for i in ids)
    for entry in chosen:
        feats = frozenset(read[entry.id][0])
        label = outside_label(feats) if entry.cause == OTHER else entry.cause
        if label not in classes and label != NONE_CLASS:
            skipped[entry.cause] = skipped.get(entry.cause, 0) + 1
            continue
        views = [(f"corpus:{entry.id}", feats, 1.0, False)]
        own = frozenset(i for i in hits[entry.id] if count[i] == 1)
        if own:
            views.append(
                (f"corpus:{entry.id}~unseen", frozenset(features_of(entry.path, own)), 1.0, True)
            )
        for source, fs, _, unseen in views:
            lab = outside_label(fs) if entry.cause == OTHER else entry.cause
            w = unseen_weight if unseen else 1.0
            if w <= 0:
                continue
            for suffix, extra in (("", frozenset()), ("+machine", frozenset(NOTHING_RUNNING))):
                out.append(
                    Example(
                        source + suffix,
                        lab,
                        fs | extra,
                        entry.engine,
                        w,
                        entry.thread,
                        unseen,
                        entry.id,
                    )
                )
    return out, skipped


def outside_label(features: frozenset[str]) -> str:
    """The right answer for a failure outside the table: `unrecognised-error` where the log holds
    a failure line the doctor cannot place, else "none" (nothing in the table applies)."""
    return "unrecognised-error" if features & UNPLACED else NONE_CLASS


def scenario_examples() -> list[Example]:
    if not SCENARIOS.is_file():
        return []
    out = []
    for line in SCENARIOS.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(Example(row["source"], row["label"], frozenset(row["findings"])))
    return out


def fit(
    examples: Sequence[Example], sigma_hint: float = SIGMA_WEIGHT
) -> tuple[dict[str, float], dict[str, dict[str, float]], float]:
    """MAP fit; returns biases, weights (by cause, finding) and the training log-loss.

    `sigma_hint`: the prior's width for hint findings (signatures/hints.toml)."""
    causes = load_causes()
    classes = [c.id for c in causes]
    features = sorted({f for c in causes for f in c.evidence})
    col = {f: i for i, f in enumerate(features)}
    k, m, n = len(classes), len(features), len(examples)
    mask = np.zeros((k, m))
    w0 = np.zeros((k, m))
    sigma = np.array([sigma_hint if f.startswith(HINT_PREFIX) else SIGMA_WEIGHT for f in features])
    for i, cause in enumerate(causes):
        for fid, lr in cause.evidence.items():
            mask[i, col[fid]] = 1.0
            w0[i, col[fid]] = math.log(lr)
    b0 = np.array([math.log(c.prior / (1 - c.prior)) for c in causes])
    x = np.zeros((n, m))
    y = np.zeros((n, k + 1))
    sw = np.array([[ex.weight] for ex in examples]) if n else np.zeros((0, 1))
    index = {c: i for i, c in enumerate(classes)} | {NONE_CLASS: k}
    for r, ex in enumerate(examples):
        for f in ex.features:
            if f in col:
                x[r, col[f]] = 1.0
        y[r, index[ex.label]] = 1.0
    w = w0.copy()
    b = b0.copy()
    # Adam on the negative log posterior
    mw = np.zeros_like(w)
    vw = np.zeros_like(w)
    mb = np.zeros_like(b)
    vb = np.zeros_like(b)
    loss = 0.0
    for step in range(1, STEPS + 1):
        z = x @ (w * mask).T + b  # n x k
        z = np.concatenate([z, np.zeros((n, 1))], axis=1)  # "none" scores 0
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-(sw * y * np.log(p + 1e-12)).sum() / max(float(sw.sum()), 1.0))
        g = (sw * (p - y))[:, :k]  # n x k
        gw = (g.T @ x) * mask + (w - w0) * mask / sigma**2
        gb = g.sum(axis=0) + (b - b0) / SIGMA_BIAS**2
        _adam(w, gw, mw, vw, step)
        _adam(b, gb, mb, vb, step)
    biases = {c: round(float(b[i]), 4) for i, c in enumerate(classes)}
    weights = {
        c: {features[j]: round(float(w[i, j]), 4) for j in range(m) if mask[i, j]}
        for i, c in enumerate(classes)
    }
    return biases, weights, loss


UNSEEN_GRID = (0.0, 0.25, 0.5, 1.0, 2.0)
FOLDS = 5


def fold_of(thread: str) -> int:
    digest = hashlib.sha256(("fold:" + thread.strip().lower()).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % FOLDS


def mean_log_loss(
    biases: dict[str, float],
    weights: dict[str, dict[str, float]],
    examples: Sequence[Example],
    temperature: float = 1.0,
) -> float:
    """Mean negative log-probability of the right label under a fitted table."""
    total = 0.0
    for ex in examples:
        scores = {
            c: (b + sum(w for f, w in weights[c].items() if f in ex.features)) / temperature
            for c, b in biases.items()
        }
        scores[NONE_CLASS] = 0.0
        top = max(scores.values())
        norm = sum(math.exp(v - top) for v in scores.values())
        total -= scores[ex.label] - top - math.log(norm)
    return total / max(len(examples), 1)


def cv_log_loss(
    corpus: Sequence[Example], scenarios: Sequence[Example], unseen_weight: float, sigma_hint: float
) -> float:
    """Cross-validated log-loss by thread on the training split only.

    Each fold's logs are judged as a new log meets the table (without the rows only they match,
    where they have such rows), the model fitted on the other folds.
    """
    total, count = 0.0, 0
    for biases, weights, wild in cv_folds(corpus, scenarios, unseen_weight, sigma_hint):
        total += mean_log_loss(biases, weights, wild) * len(wild)
        count += len(wild)
    return total / max(count, 1)


def cv_folds(
    corpus: Sequence[Example], scenarios: Sequence[Example], unseen_weight: float, sigma_hint: float
) -> Iterator[tuple[dict[str, float], dict[str, dict[str, float]], list[Example]]]:
    """Per fold by thread: the table fitted on the other folds, and this fold's logs as a new log
    meets the table (its unseen view where it has one)."""
    for k in range(FOLDS):
        train = with_unseen_weight([e for e in corpus if fold_of(e.thread) != k], unseen_weight)
        held = [e for e in corpus if fold_of(e.thread) == k]
        has_unseen = {e.log for e in held if e.unseen}
        wild = [e for e in held if e.unseen or e.log not in has_unseen]
        biases, weights, _ = fit([*train, *scenarios], sigma_hint)
        yield biases, weights, wild


def with_unseen_weight(corpus: Sequence[Example], unseen_weight: float) -> list[Example]:
    """The corpus examples with the coverage-aware views weighted (left out at weight 0)."""
    return [
        replace(e, weight=unseen_weight) if e.unseen else e
        for e in corpus
        if unseen_weight > 0 or not e.unseen
    ]


def _best(grid: Sequence[float], loss_of: Callable[[float], float], name: str) -> float:
    """The grid value with the lowest cross-validated log-loss (the first on a tie)."""
    losses = {}
    for candidate in grid:
        losses[candidate] = loss_of(candidate)
        print(
            f"  {name} {candidate}: cross-validated log-loss {losses[candidate]:.3f}",
            file=sys.stderr,
        )
    return min(grid, key=lambda c: losses[c])


def choose_unseen_weight(corpus: Sequence[Example], scenarios: Sequence[Example]) -> float:
    """The weight of the coverage-aware views that predicts unseen threads best."""
    return _best(
        UNSEEN_GRID,
        lambda w: cv_log_loss(corpus, scenarios, w, SIGMA_WEIGHT),
        "unseen-view weight",
    )


def choose_hint_sigma(
    corpus: Sequence[Example], scenarios: Sequence[Example], unseen_weight: float
) -> float:
    """The width of the hints' prior that predicts unseen threads best."""
    return _best(
        SIGMA_HINT_GRID,
        lambda sigma: cv_log_loss(corpus, scenarios, unseen_weight, sigma),
        "hint prior width",
    )


TEMPERATURE_GRID = (0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.5)


def choose_temperature(
    corpus: Sequence[Example],
    scenarios: Sequence[Example],
    unseen_weight: float,
    sigma_hint: float,
) -> float:
    """The temperature that makes the cross-validated probabilities fit unseen threads best.

    Post-hoc calibration: each fold's scores, from a table fitted without that fold, divided by
    a temperature; the one with the lowest cross-validated log-loss wins. Above 1 would mean the
    fit is over-confident on threads it has not seen, below 1 under-confident."""
    folds = list(cv_folds(corpus, scenarios, unseen_weight, sigma_hint))
    count = max(sum(len(wild) for _, _, wild in folds), 1)
    return _best(
        TEMPERATURE_GRID,
        lambda t: sum(mean_log_loss(b, w, wild, t) * len(wild) for b, w, wild in folds) / count,
        "temperature",
    )


def _adam(param: np.ndarray, grad: np.ndarray, mom: np.ndarray, vel: np.ndarray, step: int) -> None:
    """One Adam step, in place."""
    mom[...] = 0.9 * mom + 0.1 * grad
    vel[...] = 0.999 * vel + 0.001 * grad**2
    mhat = mom / (1 - 0.9**step)
    vhat = vel / (1 - 0.999**step)
    param[...] = param - LEARNING_RATE * mhat / (np.sqrt(vhat) + 1e-8)


def digest(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for ex in sorted(examples, key=lambda e: e.source):
        h.update(
            f"{ex.source}\t{ex.label}\t{ex.weight}\t{','.join(sorted(ex.features))}\n".encode()
        )
    return h.hexdigest()[:16]


def render(
    biases: dict[str, float],
    weights: dict[str, dict[str, float]],
    examples: Sequence[Example],
    skipped: dict[str, int],
    unseen_weight: float,
    sigma_hint: float,
    temperature: float = 1.0,
) -> str:
    corpus = len({e.log for e in examples if e.log})
    scen = sum(1 for e in examples if not e.source.startswith("corpus:"))
    lines = [
        "# Fitted by scripts/fit_weights.py from labelled data. Do not edit by hand: change",
        "# causes.toml (knowledge) or the data, then fit again. See docs/accuracy.md.",
        "",
        "[meta]",
        f"corpus_train_logs = {corpus}",
        f"scenario_examples = {scen}",
        f'training_digest = "{digest(examples)}"',
        f"sigma_weight = {SIGMA_WEIGHT}",
        f"sigma_bias = {SIGMA_BIAS}",
        f"sigma_hint = {sigma_hint}",
        f"unseen_view_weight = {unseen_weight}",
        "skipped_labels = { "
        + ", ".join(f'"{k}" = {v}' for k, v in sorted(skipped.items()))
        + " }",
        "",
        f"temperature = {temperature}",
        "",
        "[none]",
        "bias = 0.0",
    ]
    for cid, bias in biases.items():
        lines += ["", f'[cause."{cid}"]', f"bias = {bias}", f'[cause."{cid}".weights]']
        lines += [f'"{fid}" = {value}' for fid, value in weights[cid].items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exclude-engine", default=None)
    ap.add_argument("--output", type=Path, default=OUTPUT)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    corpus, skipped = corpus_examples(args.exclude_engine)
    scenarios = scenario_examples()
    unseen_weight = choose_unseen_weight(corpus, scenarios)
    sigma_hint = choose_hint_sigma(corpus, scenarios, unseen_weight)
    temperature = choose_temperature(corpus, scenarios, unseen_weight, sigma_hint)
    corpus = with_unseen_weight(corpus, unseen_weight)
    examples = corpus + scenarios
    biases, weights, loss = fit(examples, sigma_hint)
    text = render(biases, weights, examples, skipped, unseen_weight, sigma_hint, temperature)
    logs = len({e.log for e in corpus})
    print(
        f"fitted on {logs} training logs (x2 views, unseen-view weight {unseen_weight}) + "
        f"{len(scenarios)} scenario examples, hint prior width {sigma_hint}, "
        f"temperature {temperature}; "
        f"training log-loss {loss:.3f}"
        + (f"; labels not in the table, left out: {skipped}" if skipped else ""),
        file=sys.stderr,
    )
    if args.check:
        same = args.output.is_file() and args.output.read_text(encoding="utf-8") == text
        print("weights.toml is up to date" if same else "weights.toml is stale: fit again")
        return 0 if same else 1
    args.output.write_text(text, encoding="utf-8")
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
