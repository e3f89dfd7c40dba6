"""Do the change probabilities mean what they say? Reliability, ECE and temperature scaling.

The confidence of a prediction is its largest class probability; a calibrated model is
right on a fraction ``c`` of the predictions it makes with confidence ``c``. The expected
calibration error (ECE, Guo et al. 2017) is the weighted mean gap between accuracy and
confidence over equal-width confidence bins:

    ECE = sum_b (n_b / N) * |acc_b - conf_b|

Temperature scaling divides the logits by one scalar ``T > 0`` fitted to minimise the
negative log-likelihood of held-out labels; it never changes which class is predicted.
:func:`choose_calibration` applies it only where it lowers the ECE on the rows it was fitted
on (validation patients), so calibration cannot make the probabilities less reliable there.

Example:
    >>> rng = np.random.default_rng(0)
    >>> codes = rng.integers(0, 3, 600)
    >>> logits = rng.normal(0.0, 1.0, (600, 3))
    >>> logits[np.arange(600), codes] += 1.5
    >>> logits *= 4  # sharpened: overconfident
    >>> t = fit_temperature(logits[:300], codes[:300])  # on validation rows
    >>> round(t, 1)
    2.7
    >>> round(expected_calibration_error(softmax(logits[300:]), codes[300:]), 2)  # test rows
    0.17
    >>> round(expected_calibration_error(softmax(logits[300:] / t), codes[300:]), 2)
    0.04
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

N_BINS = 10
# log T is searched in [-3, 3]: T from 0.05 (sharpen 20x) to 20 (flatten 20x).
_LOG_T_BOUNDS = (-3.0, 3.0)
MAX_TEMPERATURE = math.exp(_LOG_T_BOUNDS[1])
# Temperature scaling is kept only when it lowers the validation ECE by more than this (float
# noise on a tie must not decide).
MIN_ECE_GAIN = 1e-6


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits (max-subtracted; -inf logits give probability 0)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, codes: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    finite = np.where(np.isfinite(z), z, -np.inf)
    top = finite.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(finite - top).sum(axis=1))
    picked = z[np.arange(len(codes)), codes]
    # A true class the probe can never predict (logit -inf) is capped, not infinite.
    picked = np.where(np.isfinite(picked), picked, top[:, 0] - 50.0)
    return float(np.mean(log_norm - picked))


def fit_temperature(logits: np.ndarray, codes: np.ndarray) -> float:
    """The temperature minimising the NLL of ``codes`` (N,) int under ``logits`` (N, K).

    Returns 1.0 (no scaling) for fewer than 2 samples.
    """
    logits = np.asarray(logits, dtype=np.float64)
    codes = np.asarray(codes, dtype=np.int64)
    if len(codes) < 2:
        return 1.0
    result = minimize_scalar(
        lambda log_t: _nll(logits, codes, math.exp(log_t)),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
    )
    return float(math.exp(result.x))


def reliability_bins(probs: np.ndarray, codes: np.ndarray, n_bins: int = N_BINS) -> pd.DataFrame:
    """Per confidence bin: ``lo``, ``hi``, ``count``, ``confidence`` (mean), ``accuracy``.

    Args:
        probs: (N, K) class probabilities.
        codes: (N,) true class index.
        n_bins: equal-width bins over [0, 1]; a bin holds confidences in (lo, hi].
    """
    probs = np.asarray(probs, dtype=np.float64)
    codes = np.asarray(codes, dtype=np.int64)
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == codes) if len(probs) else np.zeros(0, dtype=bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        acc = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins) / count
    return pd.DataFrame(
        {"lo": edges[:-1], "hi": edges[1:], "count": count, "confidence": conf, "accuracy": acc}
    )


def expected_calibration_error(probs: np.ndarray, codes: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE of (N, K) ``probs`` against true ``codes`` (N,); NaN when N is 0."""
    bins = reliability_bins(probs, codes, n_bins)
    total = int(bins["count"].sum())
    if total == 0:
        return math.nan
    used = bins[bins["count"] > 0]
    gaps = (used["accuracy"] - used["confidence"]).abs() * used["count"]
    return float(gaps.sum() / total)


def choose_calibration(
    logits: np.ndarray, codes: np.ndarray, n_bins: int = N_BINS
) -> dict[str, Any]:
    """Temperature scaling, kept only where it lowers the ECE of the rows it was fitted on.

    The temperature is fitted by NLL (:func:`fit_temperature`) on validation rows; NLL and
    ECE are different criteria, so the fitted temperature can make the probabilities less
    reliable (e.g. a few confident mistakes pull it up and flatten well-calibrated rows). It
    is then not applied: the raw probabilities are kept.

    Args:
        logits: (N, K) validation logits.
        codes: (N,) true class indices.
        n_bins: as for :func:`expected_calibration_error`.

    Returns:
        ``method`` (``temperature`` or ``none``), ``temperature`` (the one to apply: 1.0
        when raw probabilities are kept), ``fitted_temperature``, ``ece_validation_raw``,
        ``ece_validation_calibrated`` (with the fitted temperature) and ``kept`` (``raw`` or
        ``calibrated``). A tie (a gain under :data:`MIN_ECE_GAIN`), or an ECE that cannot be
        computed, keeps raw.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> codes = rng.integers(0, 3, 400)
        >>> logits = rng.normal(0.0, 1.0, (400, 3))
        >>> logits[np.arange(400), codes] += 1.5
        >>> choose_calibration(4 * logits, codes)["kept"]  # over-confident: scaling helps
        'calibrated'
    """
    logits = np.asarray(logits, dtype=np.float64)
    codes = np.asarray(codes, dtype=np.int64)
    fitted = fit_temperature(logits, codes)
    raw = expected_calibration_error(softmax(logits), codes, n_bins)
    scaled = expected_calibration_error(softmax(logits / fitted), codes, n_bins)
    better = math.isfinite(raw) and math.isfinite(scaled) and scaled < raw - MIN_ECE_GAIN
    return {
        "method": "temperature" if better else "none",
        "temperature": fitted if better else 1.0,
        "fitted_temperature": fitted,
        "ece_validation_raw": raw,
        "ece_validation_calibrated": scaled,
        "kept": "calibrated" if better else "raw",
    }
