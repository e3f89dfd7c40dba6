"""Per-cell results and their statistics over seeds (and folds): metric blocks with
patient-bootstrap intervals, and paired comparisons of two rows on the same test pairs.

A *unit* is one seed's list of :class:`CellResult` (one per fold). This is the public home of
the statistics that ``learner run`` and the benchmark scripts share.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from learner.evaluate.bootstrap import (
    bootstrap_distribution,
    hierarchical_resamples,
    minimum_detectable_difference,
    percentile_interval,
)
from learner.evaluate.change import METRICS, ChangeResult
from learner.evaluate.metrics import CLASS_METRICS, class_metrics, confusion_counts, label_codes
from learner.io import atomic_path, write_json


@dataclass
class CellResult:
    """What the aggregation needs from one evaluated cell; saved to and loaded from disk."""

    summary: dict[str, Any]
    metrics: dict[str, float]
    head_delta: dict[str, float]
    bootstrap: dict[str, np.ndarray] = field(default_factory=dict)
    test_pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    figure1: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def from_change(cls, result: ChangeResult) -> CellResult:
        return cls(
            summary=result.to_json(),
            metrics=dict(result.metrics),
            head_delta=dict(result.head_delta),
            bootstrap=dict(result.bootstrap),
            test_pairs=result.test_pairs.copy(),
            figure1=result.figure1.copy(),
        )

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "test_pairs.parquet") as tmp:
            self.test_pairs.to_parquet(tmp, index=False)
        with atomic_path(folder / "bootstrap.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **self.bootstrap)  # type: ignore[arg-type]
        # metrics.json last: its presence marks the cell finished.
        write_json(folder / "metrics.json", self.summary)

    @classmethod
    def load(cls, folder: Path) -> CellResult:
        summary = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        with np.load(folder / "bootstrap.npz", allow_pickle=False) as npz:
            boot = {k: npz[k] for k in npz.files}
        fig1 = pd.DataFrame(summary.get("figure1", {}))

        def floats(d: dict[str, Any]) -> dict[str, float]:
            return {k: math.nan if v is None else float(v) for k, v in d.items()}

        return cls(
            summary=summary,
            metrics=floats(summary["metrics"]),
            head_delta=floats(summary["head_delta"]),
            bootstrap=boot,
            test_pairs=pd.read_parquet(folder / "test_pairs.parquet"),
            figure1=fig1,
        )


def pooled_pairs(cells: Sequence[CellResult]) -> pd.DataFrame:
    return pd.concat([c.test_pairs for c in cells], ignore_index=True)


def _class_stat(table: pd.DataFrame, column: str, metric: str) -> Callable[[np.ndarray], float]:
    true = label_codes(table["label"])
    pred = label_codes(table[column])
    k = CLASS_METRICS.index(metric)

    def stat(idx: np.ndarray) -> float:
        return class_metrics(confusion_counts(true[idx], pred[idx]))[k]

    return stat


def metric_block(
    units: Sequence[Sequence[CellResult]], *, head: bool, n_boot: int, seed: int
) -> dict[str, Any]:
    """``{METRIC: {mean, std, per_seed, ci95}}`` over seeds; each unit is one seed's folds.

    Class metrics are computed on the seed's pooled test pairs (every fold's held-out
    patients), with a patient bootstrap; the other metrics average the folds. The ci95 of a
    class metric pools the seeds' bootstrap resamples (resample b averaged over seeds).
    """
    column = "head_predicted" if head else "predicted"
    names = list(CLASS_METRICS) + ([] if head else [m for m in METRICS if m not in CLASS_METRICS])
    if head:
        names.append("score_mae")
    out: dict[str, Any] = {}
    for name in names:
        per_seed: list[float] = []
        boots: list[np.ndarray] = []
        for cells in units:
            if name in CLASS_METRICS:
                table = pooled_pairs(cells)
                if head and table[column].isna().all():
                    per_seed.append(math.nan)
                    continue
                stat = _class_stat(table, column, name)
                per_seed.append(stat(np.arange(len(table))))
                if n_boot > 0:
                    boots.append(
                        bootstrap_distribution(table["patient_id"].to_numpy(), stat, n_boot, seed)
                    )
            else:
                vals = [c.metrics.get(name, math.nan) for c in cells]
                per_seed.append(float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan)
                key_boots = [c.bootstrap.get(name) for c in cells]
                if all(b is not None for b in key_boots):
                    boots.append(_fold_mean_resamples(key_boots))
        out[name] = stat_entry(per_seed, boots, seed)
    return out


def _fold_mean_resamples(boots: Sequence[Any]) -> np.ndarray:
    """Resamples of a seed's fold-averaged metric: resample b averaged over the folds. The
    folds' patients are disjoint and each fold was resampled on its own, so this is a
    bootstrap stratified by fold (one fold: its resamples unchanged)."""
    n = min(np.asarray(b).shape[0] for b in boots)
    stacked = np.stack([np.asarray(b[:n], dtype=float) for b in boots])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample undefined in every fold
        return np.asarray(np.nanmean(stacked, axis=0))


def pooled_resamples(boots: Sequence[np.ndarray], n_seeds: int, seed: int = 0) -> np.ndarray | None:
    """Resamples of a mean over seeds from each seed's patient resamples: two-stage (seeds,
    then patients within each; :func:`~learner.evaluate.bootstrap.hierarchical_resamples`),
    so the interval carries seed-to-seed (split and training) variance as well as patient
    variance. None unless every seed has resamples."""
    if not boots or len(boots) != n_seeds:
        return None
    n = min(np.asarray(b).shape[0] for b in boots)
    return hierarchical_resamples(boots, n, seed)


def summary_entry(per_seed: Sequence[float], resamples: np.ndarray | None) -> dict[str, Any]:
    """``{mean, std, per_seed, ci95}``: the mean over seeds, their spread and the 95%
    percentile interval of ``resamples`` (NaN without them; a resample undefined in every
    seed stays NaN and :func:`~learner.evaluate.bootstrap.percentile_interval` skips it)."""
    values = np.asarray(per_seed, dtype=float)
    finite = values[np.isfinite(values)]
    mean = float(finite.mean()) if finite.size else math.nan
    std = float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size else math.nan)
    ci = [math.nan, math.nan]
    if resamples is not None:
        lo, hi = percentile_interval(resamples, 0.95)
        ci = [float(lo), float(hi)]
    return {"mean": mean, "std": std, "per_seed": values.tolist(), "ci95": ci}


def stat_entry(
    per_seed: Sequence[float], boots: Sequence[np.ndarray], seed: int = 0
) -> dict[str, Any]:
    """:func:`summary_entry` over :func:`pooled_resamples` of each seed's patient resamples
    (the value itself as its interval for one seed without resamples)."""
    resamples = pooled_resamples(boots, len(per_seed), seed)
    entry = summary_entry(per_seed, resamples)
    if resamples is None and np.isfinite(entry["per_seed"]).sum() == 1:
        entry["ci95"] = [entry["mean"], entry["mean"]]
    return entry


def _paired_metric(
    units_a: Sequence[Sequence[CellResult]],
    units_b: Sequence[Sequence[CellResult]],
    metric: str,
    *,
    column_a: str,
    column_b: str,
    n_boot: int,
    seed: int,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per seed, ``(metric(a), metric(b))`` on the test pairs both evaluated (same seeds and
    splits): an (S, 2) array and, with ``n_boot``, each seed's (B, 2) patient resamples (both
    rows on the same resamples, so their differences and ratios are paired)."""
    values: list[np.ndarray] = []
    boots: list[np.ndarray] = []
    keys = ["patient_id", "visit_from", "visit_to"]
    for cells_a, cells_b in zip(units_a, units_b, strict=True):
        ta, tb = pooled_pairs(cells_a), pooled_pairs(cells_b)
        extra = [k for k in ("zone",) if k in ta.columns and k in tb.columns]
        merged = ta[[*keys, *extra, "label", column_a]].merge(
            tb[[*keys, *extra, column_b]], on=keys + extra, suffixes=("_a", "_b")
        )
        col_a = column_a + "_a" if column_a == column_b else column_a
        col_b = column_b + "_b" if column_a == column_b else column_b
        sa = _class_stat(merged, col_a, metric)
        sb = _class_stat(merged, col_b, metric)

        def stat(idx: np.ndarray, sa: Any = sa, sb: Any = sb) -> np.ndarray:
            return np.array([sa(idx), sb(idx)])

        values.append(stat(np.arange(len(merged))))
        if n_boot > 0:
            boots.append(
                bootstrap_distribution(merged["patient_id"].to_numpy(), stat, n_boot, seed)
            )
    return np.asarray(values, dtype=float).reshape(-1, 2), boots


def paired_difference(
    units_a: Sequence[Sequence[CellResult]],
    units_b: Sequence[Sequence[CellResult]],
    metric: str,
    *,
    column_a: str = "predicted",
    column_b: str = "predicted",
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Metric(a) - metric(b) on the same test pairs (same seeds and splits), with a paired
    two-stage bootstrap of the difference and the ``min_detectable_difference``: the
    difference this comparison detects with 80% power at the 5% level (2.8 standard errors;
    :func:`~learner.evaluate.bootstrap.minimum_detectable_difference`), the size of an
    effect it could have missed."""
    values, boots = _paired_metric(
        units_a, units_b, metric, column_a=column_a, column_b=column_b, n_boot=n_boot, seed=seed
    )
    diffs = [b[:, 0] - b[:, 1] for b in boots]
    entry = stat_entry(list(values[:, 0] - values[:, 1]), diffs, seed)
    entry["min_detectable_difference"] = minimum_detectable_difference(
        pooled_resamples(diffs, len(values), seed)
    )
    return entry


def ratio_of_means(
    units_a: Sequence[Sequence[CellResult]],
    units_b: Sequence[Sequence[CellResult]],
    metric: str,
    combine: Callable[[float, float], float],
    *,
    column_a: str = "predicted",
    column_b: str = "predicted",
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """``combine(mean metric(a), mean metric(b))``, the means over seeds taken first (for
    ``fraction_of_achievable``: a ratio of means, not a mean of per-seed ratios, which a
    seed with an oracle barely above chance would blow up), with a paired two-stage
    bootstrap; ``per_seed`` lists each seed's own ratio for reference."""
    values, boots = _paired_metric(
        units_a, units_b, metric, column_a=column_a, column_b=column_b, n_boot=n_boot, seed=seed
    )
    per_seed = [float(combine(a, b)) for a, b in values]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a metric undefined in every seed
        mean_a, mean_b = np.nanmean(values, axis=0)
    resamples = pooled_resamples(boots, len(values), seed)
    ratios = (
        None if resamples is None else np.array([combine(a, b) for a, b in resamples], dtype=float)
    )
    entry = summary_entry(per_seed, ratios)
    entry["mean"] = float(combine(float(mean_a), float(mean_b)))
    if not math.isfinite(entry["std"]):  # no seed with a defined ratio: no spread either
        entry["std"] = 0.0
    return entry


def majority_rate(units: list[list[CellResult]]) -> float:
    """Accuracy of always predicting the majority class of the test pairs, mean over seeds."""
    rates = []
    for cells in units:
        labels = pooled_pairs(cells)["label"].astype(str)
        rates.append(float(labels.value_counts(normalize=True).max()) if len(labels) else math.nan)
    return float(np.nanmean(rates)) if rates else math.nan
