"""The change task's metrics from integer label codes (0 worsen, 1 stable, 2 improve), rank
correlation, and patient-bootstrap intervals of any of them."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

from learner.data.pairs import LABELS
from learner.evaluate.bootstrap import bootstrap_distribution, percentile_interval

CLASS_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def label_codes(labels: npt.ArrayLike) -> np.ndarray:
    """Label strings -> 0 worsen, 1 stable, 2 improve."""
    lookup = {label: i for i, label in enumerate(LABELS)}
    return np.array([lookup[str(v)] for v in np.asarray(labels).ravel()], dtype=np.int64)


def confusion_counts(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(3, 3) counts, rows true, columns predicted, from integer codes 0..2."""
    flat = np.bincount(true * 3 + pred, minlength=9)
    return flat.reshape(3, 3)


def class_metrics(confusion: np.ndarray) -> tuple[float, float, float]:
    """Accuracy, balanced accuracy and macro-F1 from a (3, 3) confusion matrix.

    Balanced accuracy averages recall over the classes present in the truth (as
    scikit-learn does); macro-F1 averages over all three labels, an undefined F1 counting
    as 0 (``zero_division=0``). NaN for an empty matrix.
    """
    total = confusion.sum()
    if total == 0:
        return math.nan, math.nan, math.nan
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    accuracy = tp.sum() / total
    present = support > 0
    balanced = float(np.mean(tp[present] / support[present]))
    denom = support + predicted
    f1 = np.divide(2.0 * tp, denom, out=np.zeros(3), where=denom > 0)
    return float(accuracy), balanced, float(f1.mean())


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if < 3 points or constant."""
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return math.nan
    rx = rankdata(x[keep])
    ry = rankdata(y[keep])
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a - b))) if a.size else math.nan


def interval95(samples: np.ndarray | None) -> tuple[float, float]:
    if samples is None:
        return math.nan, math.nan
    lo, hi = percentile_interval(samples)
    return float(lo), float(hi)


def resamples_or_none(
    patient_ids: np.ndarray, stat: Callable[[np.ndarray], Any], n_boot: int, seed: int
) -> np.ndarray | None:
    """Patient bootstrap samples, or None when disabled or there is nothing to resample."""
    if n_boot < 1 or patient_ids.size == 0:
        return None
    return bootstrap_distribution(patient_ids, stat, n_boot, seed)
