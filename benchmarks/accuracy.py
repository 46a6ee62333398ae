"""Accuracy and calibration on real failure logs the weights were not fitted on.

Reads the corpus (fixtures/realworld/, benchmarks/corpus.py), diagnoses every HELD-OUT log the
way support would (offline: the log alone; and as on a machine where nothing runs), and prints:
- top-1 where the thread's cause is in the table, per cause and per engine;
- for logs whose cause is outside the table: the share NOT confidently wrong;
- the confidently-wrong rate over all logs: a wrong cause named at >= 0.8. `unrecognised-error`
  names no cause (it quotes a line no signature knows and says so), so it is never counted as
  confidently wrong; it counts as right only where the thread's cause is outside the table, and
  how often it stands in for a cause the table has is reported as the abstention rate;
- calibration: the top cause's probability against how often it is right, in bins (a reliability
  diagram, written as a PNG with --plot), and the expected calibration error;
- what the logs tell: top-1 apart for logs where a row placed a specific reason and for logs
  with none (generic lines, a client's side, nothing), and the ceiling any model reading only
  these findings could reach on them (an optimistic bound: new rows are what lifts it);
- leave-one-engine-out: for each engine, weights fitted WITHOUT its training logs, measured on
  all of its logs.

Usage: python benchmarks/accuracy.py [--plot docs/accuracy.png] [--no-loo] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.corpus import FRESH, NOTHING_RUNNING, OTHER, Entry, entries, features_of  # noqa: E402
from exsa_doctor.causes import load_causes  # noqa: E402
from exsa_doctor.fitted import FittedModel, load_fitted  # noqa: E402
from exsa_doctor.model import SETTLED_PROBABILITY, Finding, Level  # noqa: E402
from exsa_doctor.scoring import score  # noqa: E402

CONFIDENT = SETTLED_PROBABILITY  # a wrong cause at this or above is "confidently wrong"
BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0001)
UNRECOGNISED = "unrecognised-error"
NONE = "none"  # no cause in the table is likelier than "nothing in the table applies"
ABSTAIN = (UNRECOGNISED, NONE)


@dataclass(frozen=True)
class Outcome:
    """One log's diagnosis against its label."""

    entry: Entry
    view: str
    top: str
    p: float

    @property
    def in_table(self) -> bool:
        return self.entry.cause != OTHER

    @property
    def right(self) -> bool:
        if self.entry.cause == OTHER:
            return self.top in ABSTAIN
        return self.top == self.entry.cause

    @property
    def abstained(self) -> bool:
        return self.top in ABSTAIN and self.in_table

    @property
    def confidently_wrong(self) -> bool:
        return not self.right and self.top not in ABSTAIN and self.p >= CONFIDENT


def diagnose(features: Iterable[str], model: FittedModel) -> tuple[str, float]:
    findings = [Finding(probe="corpus", id=f, status=Level.INFO, summary=f) for f in features]
    ranked = score(load_causes(), findings, {}, model=model)
    p_none = 1.0 - sum(c.probability for c in ranked)
    if p_none > ranked[0].probability:
        return NONE, round(p_none, 4)
    return ranked[0].id, ranked[0].probability


def evaluate(
    chosen: Sequence[Entry], model: FittedModel, cache: dict[str, list[str]]
) -> list[Outcome]:
    out = []
    for e in chosen:
        feats = cache.setdefault(e.id, features_of(e.path))
        for view, extra in (("offline", ()), ("nothing-running", NOTHING_RUNNING)):
            top, p = diagnose([*feats, *extra], model)
            out.append(Outcome(e, view, top, p))
    return out


def summary(outcomes: Sequence[Outcome]) -> dict[str, float | int]:
    inside = [o for o in outcomes if o.in_table]
    outside = [o for o in outcomes if not o.in_table]
    return {
        "logs": len(outcomes),
        "in_table": len(inside),
        "top1_in_table": _rate(o.right for o in inside),
        "abstained_in_table": _rate(o.abstained for o in inside),
        "outside": len(outside),
        "outside_not_confidently_wrong": _rate(not o.confidently_wrong for o in outside),
        "confidently_wrong_all": _rate(o.confidently_wrong for o in outcomes),
        "ece": expected_calibration_error(outcomes),
    }


def _rate(flags: Iterable[bool]) -> float:
    values = list(flags)
    return round(sum(values) / len(values), 3) if values else float("nan")


def reliability(outcomes: Sequence[Outcome]) -> list[tuple[float, float, float, float, int]]:
    """Per bin: (low, high, mean predicted, share right, count)."""
    rows: list[tuple[float, float, float, float, int]] = []
    for lo, hi in itertools.pairwise(BINS):
        inside = [o for o in outcomes if lo <= o.p < hi]
        if inside:
            mean_p = sum(o.p for o in inside) / len(inside)
            rows.append(
                (lo, min(hi, 1.0), round(mean_p, 3), _rate(o.right for o in inside), len(inside))
            )
    return rows


def expected_calibration_error(outcomes: Sequence[Outcome]) -> float:
    n = len(outcomes)
    if not n:
        return float("nan")
    total = 0.0
    for _lo, _hi, mean_p, acc, count in reliability(outcomes):
        total += count / n * abs(mean_p - acc)
    return round(total, 3)


def plot(outcomes_by_label: dict[str, Sequence[Outcome]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=110)
    ax.plot([0, 1], [0, 1], linestyle="--", color="#888", label="perfect calibration")
    for label, outcomes in outcomes_by_label.items():
        rows = reliability(outcomes)
        xs = [r[2] for r in rows]
        ys = [r[3] for r in rows]
        ax.plot(xs, ys, marker="o", label=label)
        for x, y, r in zip(xs, ys, rows, strict=True):
            ax.annotate(str(r[4]), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("probability of the top cause (bin mean)")
    ax.set_ylabel("share of logs where the top cause is right")
    ax.set_title("Reliability on held-out real logs")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def what_the_logs_tell(
    outcomes: Sequence[Outcome], cache: dict[str, list[str]]
) -> dict[str, float | int]:
    """How far the findings themselves can carry top-1, for logs whose cause is in the table.

    - `with_reason`: logs where a row placed a specific line (a reason: `logs.reason_logged`),
      and the share of them ranked right; `without_reason` the same for the rest (only generic
      lines, a client's side, hints, or nothing);
    - `ceiling`: the share that ANY model reading only these findings could rank right: each set
      of findings answered with the label most of its logs carry, counted on the logs measured
      themselves. An optimistic bound: no model fitted elsewhere can do better on these logs
      without new findings (new rows).
    """
    inside = [o for o in outcomes if o.in_table]
    groups: dict[frozenset[str], Counter[str]] = defaultdict(Counter)
    for o in outcomes:
        groups[frozenset(cache[o.entry.id])][o.entry.cause] += 1
    reason = [o for o in inside if "logs.reason_logged" in cache[o.entry.id]]
    bare = [o for o in inside if "logs.reason_logged" not in cache[o.entry.id]]
    best = sum(
        1
        for o in inside
        if groups[frozenset(cache[o.entry.id])].most_common(1)[0][0] == o.entry.cause
    )
    return {
        "with_reason": len(reason),
        "top1_with_reason": _rate(o.right for o in reason),
        "without_reason": len(bare),
        "top1_without_reason": _rate(o.right for o in bare),
        "ceiling": round(best / len(inside), 3) if inside else 0.0,
    }


def print_table(title: str, rows: dict[str, list[Outcome]]) -> None:
    print(f"\n{title}")
    for key in sorted(rows):
        outs = rows[key]
        print(
            f"  {key:30s} {sum(o.right for o in outs):3d}/{len(outs):<3d} right"
            f"  confidently wrong {sum(o.confidently_wrong for o in outs)}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-loo", action="store_true", help="skip leave-one-engine-out")
    # every fresh* folder not yet retired is a split of its own (benchmarks/corpus.py)
    splits = sorted({"heldout", "train"} | {e.split for e in entries()})
    ap.add_argument("--split", default="heldout", choices=splits)
    args = ap.parse_args()
    corpus = list(entries())
    chosen = [e for e in corpus if e.split == args.split]
    cache: dict[str, list[str]] = {}
    model = load_fitted()
    outcomes = evaluate(chosen, model, cache)
    print(
        f"corpus: {len(corpus)} logs from {len({e.thread for e in corpus})} threads; "
        f"{args.split}: {len(chosen)} logs; weights fitted: {model.is_fitted} "
        f"({dict(model.meta).get('corpus_train_logs', 0)} training logs)"
    )
    result: dict[str, object] = {}
    for view in ("offline", "nothing-running"):
        outs = [o for o in outcomes if o.view == view]
        s = summary(outs)
        result[view] = s
        print(f"\n[{view}] " + ", ".join(f"{k} {v}" for k, v in s.items()))
        print("  reliability (bin, mean p, share right, n):")
        for lo, hi, mean_p, acc, count in reliability(outs):
            print(f"    [{lo:.1f}, {hi:.1f})  p={mean_p:.2f}  right={acc:.2f}  n={count}")
    offline = [o for o in outcomes if o.view == "offline"]
    by_cause: dict[str, list[Outcome]] = defaultdict(list)
    by_engine: dict[str, list[Outcome]] = defaultdict(list)
    for o in offline:
        by_cause[o.entry.cause].append(o)
        by_engine[o.entry.engine].append(o)
    told = what_the_logs_tell(offline, cache)
    result["what_the_logs_tell"] = told
    print("\n[what the logs tell] " + ", ".join(f"{k} {v}" for k, v in told.items()))
    print_table("per cause (offline view)", by_cause)
    print_table("per engine (offline view)", by_engine)
    wrong = [o for o in offline if not o.right]
    if wrong:
        print("\nwrong (offline view): id, label -> top (p)")
        for o in wrong:
            print(f"  {o.entry.id:16s} {o.entry.cause:28s} -> {o.top} ({o.p:.2f})")
    if not args.no_loo:
        from scripts.fit_weights import corpus_examples, fit, scenario_examples

        print(
            "\nleave-one-engine-out (fitted without that engine's logs; its training and held-out "
            "logs measured)"
        )
        loo: dict[str, object] = {}
        # a final test set not yet retired is measured only by --split, once
        measured = [e for e in corpus if not e.split.startswith(FRESH)]
        counts = Counter(e.engine for e in measured)
        for engine, n in sorted(counts.items()):
            if n < 5:
                continue
            # the same choices as the shipped fit (weights.toml [meta])
            examples, _ = corpus_examples(
                exclude_engine=engine,
                unseen_weight=float(model.meta.get("unseen_view_weight", 1.0)),
            )
            biases, weights, _loss = fit(
                examples + scenario_examples(), float(model.meta.get("sigma_hint", 1.0))
            )
            held = FittedModel(biases=biases, weights=weights, temperature=model.temperature)
            outs = evaluate([e for e in measured if e.engine == engine], held, cache)
            s = summary([o for o in outs if o.view == "offline"])
            loo[engine] = s
            print(f"  {engine:22s} " + ", ".join(f"{k} {v}" for k, v in s.items()))
        result["leave_one_engine_out"] = loo
    if args.plot:
        plot(
            {
                "offline": offline,
                "nothing running": [o for o in outcomes if o.view == "nothing-running"],
            },
            args.plot,
        )
        print(f"\nreliability diagram: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
