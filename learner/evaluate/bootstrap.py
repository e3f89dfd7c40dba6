"""Patient-level bootstrap: confidence intervals that respect repeated measures.

Pairs (or scans) of one patient are correlated, so resampling them one by one would make the
intervals too narrow. Here each resample draws *patients* with replacement and keeps all of a
drawn patient's items (every copy, when a patient is drawn twice).

Example:
    >>> ids = np.array(["a", "a", "b", "c"])
    >>> values = np.array([1.0, 0.0, 1.0, 1.0])
    >>> lo, hi = patient_bootstrap(ids, lambda idx: values[idx].mean(), n_boot=200, seed=0)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

# (z_0.975 + z_0.80): a true difference of this many standard errors is detected at the 5%
# level with 80% probability: the minimum detectable difference of a comparison.
MDD_80_SE = 2.80


def resample_patients(patient_ids: npt.ArrayLike, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield item indices of ``n_boot`` patient-level resamples.

    Args:
        patient_ids: (N,) the patient of each item (pair or scan).
        n_boot: number of resamples, >= 1.
        seed: seeds the generator, so equal inputs give equal resamples.

    Yields:
        int64 arrays of item positions in ``patient_ids``: for each of P patients drawn with
        replacement (P = number of distinct patients), all of that patient's items.

    Raises:
        ValueError: ``n_boot`` < 1 or no items.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    ids = np.asarray(patient_ids).ravel()
    if ids.size == 0:
        raise ValueError("patient_bootstrap needs at least one item")
    codes, _ = pd.factorize(ids, sort=True)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_patients = counts.size
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        drawn = rng.integers(0, n_patients, size=n_patients)
        # Items of the drawn patients, concatenated without a Python loop over patients.
        lengths = counts[drawn]
        offsets = np.repeat(starts[drawn] - np.cumsum(lengths) + lengths, lengths)
        yield order[np.arange(lengths.sum()) + offsets]


def bootstrap_distribution(
    patient_ids: npt.ArrayLike,
    stat_fn: Callable[[np.ndarray], float | npt.ArrayLike],
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """Evaluate ``stat_fn`` on every patient-level resample.

    Args:
        patient_ids: (N,) the patient of each item.
        stat_fn: maps item indices (M,) to a statistic: a float or a (K,) vector (several
            statistics on the same resamples).
        n_boot: number of resamples, >= 1.
        seed: resampling seed.

    Returns:
        float64 array (n_boot,) for a scalar statistic, (n_boot, K) for a vector one.
    """
    values = [
        np.asarray(stat_fn(idx), dtype=np.float64)
        for idx in resample_patients(patient_ids, n_boot, seed)
    ]
    return np.stack(values)


def percentile_interval(
    samples: npt.ArrayLike, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap samples along axis 0, ignoring NaN resamples.

    Args:
        samples: (n_boot,) or (n_boot, K).
        level: coverage in (0, 1).

    Returns:
        ``(lo, hi)``, each of shape () or (K,); NaN where every resample is NaN.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = np.asarray(samples, dtype=np.float64)
    tail = 100.0 * (1.0 - level) / 2.0
    lo = np.full(values.shape[1:], np.nan)
    hi = np.full(values.shape[1:], np.nan)
    # A resample can make a statistic undefined (e.g. Spearman of constant values): skip it.
    finite = np.isfinite(values).any(axis=0)
    if np.any(finite):
        kept = values[:, finite] if values.ndim > 1 else values
        lo_k, hi_k = np.nanpercentile(kept, [tail, 100.0 - tail], axis=0)
        lo[finite] = lo_k
        hi[finite] = hi_k
    return lo, hi


def patient_bootstrap(
    patient_ids: npt.ArrayLike,
    stat_fn: Callable[[np.ndarray], float],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile confidence interval of a statistic, resampling patients with replacement.

    Args:
        patient_ids: (N,) the patient of each item (pair or scan).
        stat_fn: maps item indices (M,) into the caller's arrays to a float.
        n_boot: number of resamples, >= 1.
        seed: resampling seed.
        level: coverage, 0.95 for a 95% interval.

    Returns:
        ``(lo, hi)``; NaN when the statistic is undefined on every resample.
    """
    samples = bootstrap_distribution(patient_ids, stat_fn, n_boot, seed)
    lo, hi = percentile_interval(samples, level)
    return float(lo), float(hi)


def hierarchical_resamples(
    per_seed: Sequence[np.ndarray], n_boot: int, seed: int, *, shared_patients: bool = False
) -> np.ndarray:
    """Two-stage resamples of a mean over seeds: each resample draws as many seeds as there
    are, with replacement, then one patient-bootstrap resample of each drawn seed, and
    averages them. Seed-to-seed (split and training) variance and patient variance both
    enter the interval.

    When every seed tests the same patients (a fixed test set) the patients are not nested
    in seeds but crossed with them: a patient's luck is shared by every seed, and resampling
    it independently per seed would shrink its variance by the number of seeds. With
    ``shared_patients`` each resample therefore uses the same patient resample ``b`` for
    every drawn seed (a crossed, "pigeonhole" bootstrap); the caller must have drawn resample
    ``b`` of every seed from the same patients (equal ids, equal resampling seed).

    Args:
        per_seed: one (B, ...) array of patient-bootstrap resamples per seed (the shortest
            B of them is used).
        n_boot: two-stage resamples to draw.
        seed: seeds the draws.
        shared_patients: the seeds' resample ``b`` drew the same patients (crossed design).

    Returns:
        (n_boot, ...) array.
    """
    length = min(np.asarray(b).shape[0] for b in per_seed)
    stacked = np.stack([np.asarray(b, dtype=np.float64)[:length] for b in per_seed])
    n_seeds, n_inner = stacked.shape[:2]
    if n_seeds == 1:  # nothing to resample between seeds: the seed's own patient bootstrap
        return np.asarray(stacked[0][:n_boot])
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    inner = rng.integers(0, n_inner, size=(n_boot, 1 if shared_patients else n_seeds))
    inner = np.broadcast_to(inner, (n_boot, n_seeds))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample undefined in every draw
        return np.asarray(np.nanmean(stacked[seeds, inner], axis=1))


def minimum_detectable_difference(resamples: npt.ArrayLike | None) -> float:
    """The difference a comparison detects with 80% power at the 5% level: :data:`MDD_80_SE`
    times the standard error (the sd of the difference's bootstrap resamples); NaN without
    two finite resamples."""
    if resamples is None:
        return float("nan")
    values = np.asarray(resamples, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(MDD_80_SE * finite.std(ddof=1)) if finite.size > 1 else float("nan")
