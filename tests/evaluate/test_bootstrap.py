"""Patient-level bootstrap: whole patients resampled, intervals honest and reproducible."""

from __future__ import annotations

import math

import numpy as np
import pytest

from learner.evaluate.bootstrap import (
    bootstrap_distribution,
    patient_bootstrap,
    percentile_interval,
    resample_patients,
)


def _cohort(n_patients: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """1-4 items per patient; a patient effect makes items of one patient correlated."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=n_patients)
    ids = np.repeat([f"p{i}" for i in range(n_patients)], sizes)
    effect = np.repeat(rng.normal(0.0, 1.0, n_patients), sizes)
    return ids, effect + rng.normal(0.0, 0.3, ids.size)


def test_interval_contains_point_estimate_and_narrows_with_more_patients() -> None:
    widths = []
    for n_patients in (30, 300):
        ids, values = _cohort(n_patients, seed=1)
        lo, hi = patient_bootstrap(ids, lambda idx, v=values: float(v[idx].mean()), 500, seed=0)
        assert lo <= float(values.mean()) <= hi
        widths.append(hi - lo)
    # Width shrinks like 1/sqrt(patients): 10x the patients, ~3.2x narrower.
    assert widths[1] < 0.5 * widths[0]


def test_resamples_keep_whole_patients() -> None:
    ids = np.array(["a", "b", "b", "c", "c", "c", "d"])
    per_patient = {p: int((ids == p).sum()) for p in set(ids)}
    for idx in resample_patients(ids, n_boot=50, seed=3):
        drawn = ids[idx]
        draws = 0
        for patient, size in per_patient.items():
            count = int((drawn == patient).sum())
            # A patient comes with all of its items, once per draw.
            assert count % size == 0
            draws += count // size
            if count:
                positions = np.flatnonzero(ids == patient)
                assert set(idx[drawn == patient]) == set(positions)
        assert draws == len(per_patient)


def test_same_seed_same_interval_other_seed_differs() -> None:
    ids, values = _cohort(40, seed=2)

    def mean(idx: np.ndarray) -> float:
        return float(values[idx].mean())

    first = patient_bootstrap(ids, mean, 200, seed=7)
    assert patient_bootstrap(ids, mean, 200, seed=7) == first
    assert patient_bootstrap(ids, mean, 200, seed=8) != first


def test_vector_statistics_share_resamples() -> None:
    ids, values = _cohort(20, seed=4)
    samples = bootstrap_distribution(
        ids, lambda idx: [values[idx].mean(), 2.0 * values[idx].mean()], 100, seed=0
    )
    assert samples.shape == (100, 2)
    np.testing.assert_allclose(samples[:, 1], 2.0 * samples[:, 0])
    lo, hi = percentile_interval(samples)
    assert lo.shape == (2,) and np.all(lo < hi)


def test_undefined_resamples_are_skipped() -> None:
    samples = np.array([1.0, np.nan, 2.0, 3.0, np.nan])
    lo, hi = percentile_interval(samples, level=0.5)
    assert float(lo) == pytest.approx(1.5) and float(hi) == pytest.approx(2.5)
    lo, hi = percentile_interval(np.full(4, np.nan))
    assert math.isnan(float(lo)) and math.isnan(float(hi))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="n_boot"):
        patient_bootstrap(np.array(["a"]), lambda idx: 0.0, n_boot=0)
    with pytest.raises(ValueError, match="at least one item"):
        patient_bootstrap(np.array([]), lambda idx: 0.0, n_boot=10)
    with pytest.raises(ValueError, match="level"):
        percentile_interval(np.ones(3), level=1.5)
