"""Record the findings of the staged scenarios as labelled training examples for the weight fit.

Builds each scenario of exsa_doctor/demo/scenarios.py for real (real processes, ports, files,
locks), diagnoses it, and writes one JSON line per run to fixtures/training/scenarios.jsonl: the
scenario, the cause it was built to produce ("none" for the healthy engine) and the finding ids.
These are training data (we built them); accuracy is measured on data we did not build.

Usage: python scripts/record_scenarios.py [--runs N] [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exsa_doctor.demo import diagnose_scenario  # noqa: E402
from exsa_doctor.demo.scenarios import EXPECTED_CAUSE, names, scenario  # noqa: E402
from exsa_doctor.fitted import NONE_CLASS  # noqa: E402

# The seed's own failure seen later: the request failed during the load, and by the time the
# doctor runs the engine serves. Diagnosed once the engine answers healthy.
LATER = {"race": "race-condition"}
READY_WAIT_S = 30.0

OUTPUT = REPO / "fixtures" / "training" / "scenarios.jsonl"


def _later(name: str, runs: int) -> list[dict[str, object]]:
    """The scenario diagnosed again once its engine answers healthy (it recovered by itself)."""
    out: list[dict[str, object]] = []
    for run in range(runs):
        with scenario(name) as sc:
            deadline = time.monotonic() + READY_WAIT_S
            diag = diagnose_scenario(sc, timeout=15.0)
            while diag.finding("health.ok") is None and time.monotonic() < deadline:
                time.sleep(1.0)
                diag = diagnose_scenario(sc, timeout=15.0)
        if diag.finding("health.ok") is None:
            print(f"{name}-later #{run + 1}: never became healthy; not recorded", file=sys.stderr)
            continue
        ids = sorted({f.id for f in diag.findings})
        out.append(
            {"source": f"scenario:{name}-later#{run + 1}", "label": LATER[name], "findings": ids}
        )
        print(f"{name}-later #{run + 1}: {LATER[name]}", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2, help="runs of each scenario (default 2)")
    ap.add_argument("names", nargs="*", default=list(names()))
    args = ap.parse_args()
    rows: list[dict[str, object]] = []
    for name in args.names:
        for run in range(args.runs):
            with scenario(name) as sc:
                diag = diagnose_scenario(sc, timeout=15.0)
            label = EXPECTED_CAUSE[name] or NONE_CLASS
            ids = sorted({f.id for f in diag.findings})
            rows.append({"source": f"scenario:{name}#{run + 1}", "label": label, "findings": ids})
            top = diag.top_cause
            print(f"{name} #{run + 1}: {label}; top now {top.id if top else None}", file=sys.stderr)
        if name in LATER:
            rows.extend(_later(name, args.runs))
    # re-recording some scenarios keeps the others' rows
    redone = {str(r["source"]).split("#")[0] for r in rows}
    kept = []
    if OUTPUT.is_file():
        for line in OUTPUT.read_text(encoding="utf-8").splitlines():
            if line.strip() and json.loads(line)["source"].split("#")[0] not in redone:
                kept.append(json.loads(line))
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(
        "".join(json.dumps(r) + "\n" for r in sorted(kept + rows, key=lambda r: str(r["source"]))),
        encoding="utf-8",
    )
    print(OUTPUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
