"""What a reader should take from a run: warnings that travel with the result, and a verdict
in plain words generated from the numbers (never written by hand).

Warnings are one line each and name the fix. A *degenerate* class table (a class missing from
the test or training pairs, or fewer than :data:`MIN_CLASS_PAIRS` test pairs of a class over
all seeds) yields no verdict: only the warning, since any metric would rest on a handful of
pairs.

Example (``results``: results.json as a dict; here only the part this verdict reads):
    >>> results = {"comparisons": {"reference": "mse", "differences": {
    ...     "weighted": {"balanced_accuracy": {"mean": 0.08, "ci95": [0.02, 0.14]}}}}}
    >>> for line in verdict(results):  # doctest: +NORMALIZE_WHITESPACE
    ...     print(line)
    Beat `mse` (balanced accuracy, paired 95% CI above zero): `weighted` +0.080 [+0.020,
    +0.140].
    No ground truth beside the manifest (truth.csv): what is achievable is unknown; chance is
    1/3 balanced accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from learner.data.pairs import LABELS

# The data warnings live in learner.evaluate.data_warnings (one function for every command);
# their names stay importable from here.
from learner.evaluate.data_warnings import (
    MIN_CLASS_PAIRS,
    class_table_warnings,
    score_range_warnings,
)

__all__ = [
    "class_table_warnings",
    "concat_warning",
    "degenerate_classes",
    "pair_batch_counts",
    "pair_term_warning",
    "regressor_warning",
    "score_range_warnings",
    "verdict",
]


def degenerate_classes(summaries: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the class table is degenerate (a class absent from training or test pairs, or
    under MIN_CLASS_PAIRS test pairs over all seeds), or None when it is not."""
    for label in LABELS:
        if any(int(s["class_counts_train"].get(label, 0)) == 0 for s in summaries):
            return f"no '{label}' pairs among training patients in some seed"
        total = sum(int(s["class_counts_test"].get(label, 0)) for s in summaries)
        if total < MIN_CLASS_PAIRS:
            return f"'{label}' has {total} test pairs over all seeds"
    return None


def pair_batch_counts(run_dir: Path) -> tuple[float, float, float] | None:
    """(batches with a pair term, without a positive, without a negative) over all epochs of
    a pretraining run, from its CSV log; None when the log lacks them."""
    log = run_dir / "logs" / "csv" / "metrics.csv"
    if not log.is_file():
        return None
    table = pd.read_csv(log)
    needed = ("train/pair_batches", "train/batches_without_pos", "train/batches_without_neg")
    if any(c not in table.columns for c in needed):
        return None
    sums = [float(np.nansum(table[c].to_numpy(dtype=np.float64))) for c in needed]
    return sums[0], sums[1], sums[2]


def pair_term_warning(label: str, counts: tuple[float, float, float], tau: float) -> str | None:
    """A pair objective with no positive or no negative pair in more than half its batches."""
    batches, no_pos, no_neg = counts
    if batches <= 0:
        return None
    if no_neg / batches > 0.5:
        return (
            f"{label}: no negative pair in {no_neg:.0f} of {batches:.0f} batches, so its pair "
            f"term barely acts; lower objective.tau (now {tau}) or narrow data.score_range to "
            "the scores' range"
        )
    if no_pos / batches > 0.5:
        return (
            f"{label}: no positive pair in {no_pos:.0f} of {batches:.0f} batches; raise "
            f"objective.tau (now {tau}) or widen data.score_range"
        )
    return None


def regressor_warning(val_mae: float, mean_mae: float) -> str | None:
    """The score regressor no better on validation patients than the training mean."""
    if not (math.isfinite(val_mae) and math.isfinite(mean_mae)) or val_mae < mean_mae:
        return None
    return (
        f"the mse model's score regressor is no better on validation patients than predicting "
        f"the training mean (MAE {val_mae:.3g} vs {mean_mae:.3g}): the encoder has not learned "
        "the score; train longer, add patients, or check data.score_range and the inputs"
    )


def concat_warning(features: Sequence[str]) -> str | None:
    """``concat`` rows read more than the change: ``[u_t, u_t+1]`` also shows each patient's
    level, and wherever the level predicts the direction of change (in the synthetic cohorts
    and, through floor and ceiling effects, in most clinical scores) a probe uses it. On the
    ``--null`` cohort, whose images carry no change, ``concat`` is above chance while ``diff``
    is not (tests/evaluate/test_concat_leak.py)."""
    if "concat" not in features:
        return None
    return (
        "+concat rows are not a change measurement: [u_t, u_t+1] also carries each "
        "patient's level, which predicts the direction of change in many cohorts (on the "
        "--null control, whose images carry no change, concat is above chance); read change "
        "from diff"
    )


def _ci_text(entry: Mapping[str, Any]) -> str:
    lo, hi = entry.get("ci95", [math.nan, math.nan])
    lo = math.nan if lo is None else lo
    hi = math.nan if hi is None else hi
    return f"{entry['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _sign(entry: Mapping[str, Any] | None) -> int:
    """+1 (CI above zero), -1 (below), 0 (spans zero or undefined)."""
    if not entry:
        return 0
    lo, hi = entry.get("ci95", [None, None])
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return 0
    return 1 if lo > 0 else -1 if hi < 0 else 0


def verdict(results: Mapping[str, Any]) -> list[str]:
    """The plain-words verdict: one sentence per finding, from results.json's numbers."""
    warnings = list(results.get("warnings", []))
    reason = results.get("degenerate")
    if reason:
        return [
            f"No verdict: the class table is degenerate ({reason}; at least {MIN_CLASS_PAIRS} "
            "per class are needed), so every metric rests on a handful of pairs. See the "
            "warnings for the fix."
        ]
    # One-visit data have no change classes: the comparison is Figure 1's rho across patients.
    metric = "spearman_distance" if results.get("task") == "interpatient" else "balanced_accuracy"
    comps = results.get("comparisons", {})
    to_mse = comps.get("differences", {})
    to_untrained = comps.get("differences_to_untrained", {})
    lines: list[str] = []
    better: list[str] = []
    worse: list[str] = []
    level: list[str] = []
    for name, block in to_mse.items():
        entry = block.get(metric)
        if not entry or entry.get("mean") is None:
            continue
        text = f"`{name}` {_ci_text(entry)}"
        {1: better, -1: worse}.get(_sign(entry), level).append(text)
    ref = comps.get("reference", "mse")
    if better:
        lines.append(
            f"Beat `{ref}` (balanced accuracy, paired 95% CI above zero): "
            + "; ".join(better)
            + "."
        )
    if worse:
        lines.append(f"Worse than `{ref}` (CI below zero): " + "; ".join(worse) + ".")
    if level:
        mdd = [
            block[metric].get("min_detectable_difference")
            for block in to_mse.values()
            if block.get(metric)
        ]
        finite = [m for m in mdd if m is not None and math.isfinite(m)]
        missed = f" (effects under about {max(finite):.3f} could be missed)" if finite else ""
        lines.append(f"No detectable difference to `{ref}`{missed}: " + "; ".join(level) + ".")
    above_untrained = [n for n, b in to_untrained.items() if _sign(b.get("balanced_accuracy")) > 0]
    if to_untrained:
        lines.append(
            "Above the untrained encoder with a CI above zero: "
            + (", ".join(f"`{n}`" for n in above_untrained) if above_untrained else "none")
            + "."
        )
    ceilings = results.get("ceilings", {})
    oracle_name = next((k for k in ("oracle_truth", "oracle_clean_score") if k in ceilings), None)
    if oracle_name:
        oracle = ceilings[oracle_name]["balanced_accuracy"]["mean"]
        fractions = {
            name: block["fraction_of_achievable"]
            for name, block in results.get("objectives", {}).items()
            if "fraction_of_achievable" in block
            and block["fraction_of_achievable"].get("mean") is not None
            and math.isfinite(block["fraction_of_achievable"]["mean"])
        }
        if fractions:
            best = max(fractions, key=lambda k: fractions[k]["mean"])
            f = fractions[best]
            lo, hi = f.get("ci95", [math.nan, math.nan])
            lines.append(
                f"The true change ({oracle_name}) reaches balanced accuracy {oracle:.3f}; the "
                f"best row, `{best}`, captures {f['mean']:.0%} of what is achievable above "
                f"chance [{_pct(lo)}, {_pct(hi)}]."
            )
    elif metric == "balanced_accuracy":
        lines.append(
            "No ground truth beside the manifest (truth.csv): what is achievable is unknown; "
            "chance is 1/3 balanced accuracy."
        )
    else:
        lines.append(
            "One visit per patient: no change is classified; the rows say whether held-out "
            "patients are ordered by their score."
        )
    if warnings:
        lines.append(f"{len(warnings)} warning(s) below qualify these numbers.")
    return lines


def _pct(value: Any) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.0%}"
