"""Ceilings for quality results recorded before `learner run` computed them.

The synthetic benchmarks' result files (``benchmarks/results/quality_<name>.json``) were
written before results carried a ``ceilings`` block, and their embeddings were not kept. The
oracle needs neither the images nor the embeddings: it is the same probe, on the same split
and pairs, on the cohort's true change. This script rebuilds each cohort's table (latent
severity and scores, no images: :func:`learner.data.synthetic.common.cohort_table`, the same
table `learner synth` writes), draws each seed's split exactly as `learner run` does and checks
its hash against the one the result file recorded, then writes
``benchmarks/results/ceilings_<name>.json`` and prints a markdown table:

- ``oracle_truth`` / ``oracle_clean_score`` per seed (patient-bootstrap CI pooled over seeds);
- per row, ``fraction_of_achievable`` per seed from the recorded per-seed balanced accuracy
  (its interval here is the seeds' 2.5-97.5 percentile, not a patient bootstrap: the test pairs'
  predictions were not kept);
- per row, the minimum detectable difference of its recorded paired comparison to mse.

Usage:
    .venv/bin/python benchmarks/ceilings.py synth-lus synth-lus-null synth-mri synth-mri-slices
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from learner.data.splits import assign_splits, split_hash  # noqa: E402
from learner.data.synthetic.common import cohort_table  # noqa: E402
from learner.evaluate.aggregate import CellResult, metric_block  # noqa: E402
from learner.evaluate.ceilings import (  # noqa: E402
    CHANCE_BALANCED,
    ORACLES,
    evaluate_oracle,
    fraction_of_achievable,
)
from learner.io import write_json  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
# Data set -> the cohort its manifest was built from (benchmarks/datasets.py).
COHORTS = {
    "synth-lus": {"modality": "lus", "preset": "demo", "null": False},
    "synth-lus-null": {"modality": "lus", "preset": "demo", "null": True},
    "synth-mri": {"modality": "mri", "preset": "bench", "null": False},
    "synth-mri-slices": {"modality": "mri", "preset": "bench", "null": False},
}


def manifest_frame(name: str) -> pd.DataFrame:
    """The cohort's rows as `load_manifest` gives them (no paths) and the truth columns."""
    spec = COHORTS[name]
    table = cohort_table(spec["modality"], seed=0, preset=spec["preset"], null=spec["null"])
    frame = table.assign(
        patient_id=table["patient_id"].astype(str),
        visit=table["visit"].astype(str),
        score=table["score"].astype(float),
    )
    frame["visit_order"] = (
        frame.groupby("patient_id")["visit"].rank(method="dense").astype(np.int64) - 1
    )
    return frame


def ceilings_for(name: str) -> dict[str, Any]:
    recorded = json.loads((RESULTS / f"quality_{name}.json").read_text())
    cfg = recorded["config"]
    seeds = cfg["run"]["seeds"]
    frame = manifest_frame(name)
    oracle_units: dict[str, list[list[CellResult]]] = {k: [] for k in ORACLES}
    hashes = {s["cell"]: s["split_hash"] for s in recorded["dataset"]["splits"]}
    for seed in seeds:
        split_seed = cfg["data"]["split"]["seed"]
        split_seed = seed if split_seed is None else split_seed
        split = assign_splits(
            frame.drop(columns=["split"], errors="ignore"),
            seed=split_seed,
            ratios=tuple(cfg["data"]["split"]["ratios"]),
        )
        assignment = dict(split.groupby("patient_id")["split"].first())
        if split_hash(assignment) != hashes[f"seed{seed}"]:
            raise SystemExit(f"{name} seed {seed}: split differs from the recorded one")
        for oracle, column in ORACLES.items():
            result = evaluate_oracle(
                split,
                frame,
                column,
                delta=cfg["eval"]["delta"],
                higher_is_better=cfg["data"]["higher_is_better"],
                classifier=cfg["eval"]["classifier"],
                seed=seed,
            )
            if result is None:
                raise SystemExit(f"{name}: truth column {column} is incomplete")
            oracle_units[oracle].append([CellResult.from_change(result)])
    ceilings: dict[str, Any] = {"chance": {"balanced_accuracy": CHANCE_BALANCED}}
    for oracle, units in oracle_units.items():
        block = metric_block(units, head=False, n_boot=1000, seed=seeds[0])
        ceilings[oracle] = {m: block[m] for m in ("accuracy", "balanced_accuracy", "macro_f1")}
    oracle_per_seed = ceilings["oracle_truth"]["balanced_accuracy"]["per_seed"]
    rows: dict[str, Any] = {}
    diffs = recorded["comparisons"]["differences"]
    for row, block in recorded["objectives"].items():
        per_seed = block["balanced_accuracy"]["per_seed"]
        fractions = [
            fraction_of_achievable(b, o) for b, o in zip(per_seed, oracle_per_seed, strict=True)
        ]
        values = np.asarray(fractions, dtype=float)
        diff = diffs.get(row, {}).get("balanced_accuracy")
        mdd = None
        if diff and None not in diff["ci95"]:
            mdd = (diff["ci95"][1] - diff["ci95"][0]) / 2
        rows[row] = {
            "balanced_accuracy": block["balanced_accuracy"]["mean"],
            "fraction_of_achievable": {
                "mean": float(np.nanmean(values)),
                "per_seed": values.tolist(),
                "seed_interval_95": [
                    float(np.nanpercentile(values, 2.5)),
                    float(np.nanpercentile(values, 97.5)),
                ],
            },
            "diff_to_mse": diff["mean"] if diff else None,
            "min_detectable_difference": mdd,
        }
    return {
        "dataset": name,
        "source": f"benchmarks/results/quality_{name}.json",
        "seeds": seeds,
        "splits_checked": "every seed's split hash equals the recorded one",
        "ceilings": ceilings,
        "rows": rows,
        "note": "fraction_of_achievable = (balanced accuracy - 1/3) / (oracle_truth - 1/3) per "
        "seed; its interval is the seeds' spread (the test pairs' predictions were not kept, so "
        "no patient bootstrap); min_detectable_difference = half-width of the recorded paired "
        "95% CI of the row's balanced-accuracy difference to mse",
    }


def markdown(result: dict[str, Any]) -> str:
    c = result["ceilings"]
    lines = [
        f"Ceilings of `{result['source']}` ({len(result['seeds'])} seeds): chance 0.333, "
        f"oracle_truth {_ci(c['oracle_truth']['balanced_accuracy'])}, oracle_clean_score "
        f"{_ci(c['oracle_clean_score']['balanced_accuracy'])} (balanced accuracy).",
        "",
        "| row | bal. acc. | of achievable (seed spread) | bal. acc. - mse | MDD |",
        "|---|---|---|---|---|",
    ]
    for row, r in result["rows"].items():
        f = r["fraction_of_achievable"]
        lo, hi = f["seed_interval_95"]
        diff = "(reference)" if row == "mse" else _num(r["diff_to_mse"], signed=True)
        lines.append(
            f"| {row} | {r['balanced_accuracy']:.3f} | {f['mean']:.0%} [{lo:.0%}, {hi:.0%}] "
            f"| {diff} | {_num(r['min_detectable_difference'])} |"
        )
    return "\n".join(lines)


def _ci(entry: dict[str, Any]) -> str:
    lo, hi = entry["ci95"]
    return f"{entry['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def _num(value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", choices=sorted(COHORTS))
    args = parser.parse_args()
    for name in args.datasets:
        result = ceilings_for(name)
        write_json(RESULTS / f"ceilings_{name}.json", result)
        print(f"## {name}\n\n{markdown(result)}\n")


if __name__ == "__main__":
    main()
