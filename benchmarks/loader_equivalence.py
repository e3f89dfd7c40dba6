"""The batched loader against the per-item one, by plan loader-equivalence.md (issue 29).

Compares the per-seed balanced accuracy of two `benchmarks/quality.py` results files on the
seeds they share (the runs' splits are the same per seed): per row the paired differences,
their mean, a two-sided paired t-test with Holm's correction across the primary rows, and the
minimum detectable difference at 80% power of two independent n-seed means, taken from the
committed file's spread over all its seeds (MDD80 = 2.80 x SD x sqrt(2 / n)). "No change
beyond seed noise" holds when no Holm-adjusted p is below 0.05 and every |mean difference|
is below its MDD80.

Usage:
    .venv/bin/python benchmarks/loader_equivalence.py \\
        benchmarks/results/quality_synth-lus-pool300-aug2.json \\
        benchmarks/results/quality_synth-lus-pool300-aug2-loader.json \\
        --out benchmarks/results/loader_equivalence.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

PRIMARY = ("mse", "contrastive", "weighted", "head_delta")
CHECKS = ("untrained",)  # must not move: they do not train
METRIC = "balanced_accuracy"
Z = 2.80  # z_0.975 + z_0.80


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (step-down, monotone)."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    adjusted: dict[str, float] = {}
    running = 0.0
    for i, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * pvalues[name]))
        adjusted[name] = running
    return adjusted


def compare(committed: dict[str, Any], new: dict[str, Any], seeds: int) -> dict[str, Any]:
    """Row by row, the first ``seeds`` seeds of ``new`` against those of ``committed``."""
    rows: dict[str, Any] = {}
    for name in PRIMARY + CHECKS:
        every = np.asarray(committed["objectives"][name][METRIC]["per_seed"], dtype=float)
        old = every[:seeds]
        now = np.asarray(new["objectives"][name][METRIC]["per_seed"][:seeds], dtype=float)
        diff = now - old
        sd = float(np.std(every, ddof=1))
        p = float(stats.ttest_rel(now, old).pvalue) if np.any(diff != 0) else 1.0
        rows[name] = {
            "committed": old.tolist(),
            "new": now.tolist(),
            "difference": diff.tolist(),
            "mean_difference": float(diff.mean()),
            "committed_sd_all_seeds": sd,
            "mdd80": Z * sd * math.sqrt(2.0 / seeds),
            "p": p,
        }
    for name, adjusted in holm({n: rows[n]["p"] for n in PRIMARY}).items():
        rows[name]["holm_p"] = adjusted
    holds = all(
        rows[n]["holm_p"] >= 0.05 and abs(rows[n]["mean_difference"]) < rows[n]["mdd80"]
        for n in PRIMARY
    )
    checks = {n: rows[n]["committed"] == rows[n]["new"] for n in CHECKS}
    return {
        "metric": METRIC,
        "seeds": seeds,
        "rows": rows,
        "checks_identical": checks,
        "verdict": "no change beyond seed noise" if holds else "changed beyond seed noise",
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| row | committed | new | difference | MDD80 | p | Holm p |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        holm_p = f"{r['holm_p']:.2f}" if "holm_p" in r else "-"
        lines.append(
            f"| {name} | {np.mean(r['committed']):.3f} | {np.mean(r['new']):.3f} "
            f"| {r['mean_difference']:+.3f} | {r['mdd80']:.3f} | {r['p']:.2f} | {holm_p} |"
        )
    return "\n".join(lines) + f"\n\nVerdict: {result['verdict']}.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("committed", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON (and .md beside it)")
    args = parser.parse_args(argv)
    result = compare(
        json.loads(args.committed.read_text()), json.loads(args.new.read_text()), args.seeds
    )
    result["files"] = {"committed": str(args.committed), "new": str(args.new)}
    print(table(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
