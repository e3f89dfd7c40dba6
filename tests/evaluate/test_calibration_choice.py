"""Calibration that cannot make things worse (issue 28, item 3): temperature scaling is kept
only where it lowers the validation ECE; otherwise the raw probabilities are kept."""

from __future__ import annotations

import math

import numpy as np
import pytest

from learner.evaluate.calibration import (
    choose_calibration,
    expected_calibration_error,
    fit_temperature,
    softmax,
)


def calibrated_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true class distribution the labels are drawn from."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, (n, 3))
    probs = softmax(logits)
    codes = np.array([rng.choice(3, p=p) for p in probs])
    return logits, codes


def confident_at_0_9(
    correct: int, wrong: int, confident_mistakes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows predicting class 0 with probability exactly 0.9 (``correct`` right, ``wrong``
    wrong), plus ``confident_mistakes`` rows predicting class 0 at ~1.0 that are wrong."""
    a = math.log(18.0)  # softmax([a, 0, 0])[0] = 18 / 20 = 0.9
    logits = np.zeros((correct + wrong + confident_mistakes, 3))
    logits[: correct + wrong, 0] = a
    logits[correct + wrong :, 0] = 12.0
    codes = np.zeros(len(logits), dtype=np.int64)
    codes[correct:] = 1
    return logits, codes


def test_over_confident_logits_are_scaled() -> None:
    logits, codes = calibrated_logits(600, seed=0)
    chosen = choose_calibration(3.0 * logits, codes)
    assert chosen["kept"] == "calibrated" and chosen["method"] == "temperature"
    assert chosen["temperature"] == chosen["fitted_temperature"] == pytest.approx(3.0, rel=0.2)
    assert chosen["ece_validation_calibrated"] < chosen["ece_validation_raw"] - 0.05


def test_scaling_that_would_hurt_keeps_raw() -> None:
    """900 rows calibrated at confidence 0.9 and 20 confident mistakes: the NLL-fitted
    temperature flattens everything to soften the mistakes, which makes the 900 rows
    under-confident; the ECE rises, so the raw probabilities are kept."""
    logits, codes = confident_at_0_9(correct=810, wrong=90, confident_mistakes=20)
    fitted = fit_temperature(logits, codes)
    assert fitted > 1.2  # NLL does want to flatten ...
    raw = expected_calibration_error(softmax(logits), codes)
    scaled = expected_calibration_error(softmax(logits / fitted), codes)
    assert scaled > raw + 0.05  # ... and that would hurt the ECE
    chosen = choose_calibration(logits, codes)
    assert chosen["kept"] == "raw" and chosen["method"] == "none"
    assert chosen["temperature"] == 1.0
    assert chosen["fitted_temperature"] == pytest.approx(fitted)
    assert chosen["ece_validation_raw"] == pytest.approx(raw)
    assert chosen["ece_validation_calibrated"] == pytest.approx(scaled)


def test_already_calibrated_rows_keep_raw() -> None:
    """Exactly calibrated (accuracy 0.9 at confidence 0.9): the fitted temperature is 1 up to
    the optimiser's tolerance, and a gain in the float noise does not count."""
    logits, codes = confident_at_0_9(correct=90, wrong=10, confident_mistakes=0)
    chosen = choose_calibration(logits, codes)
    assert chosen["fitted_temperature"] == pytest.approx(1.0, abs=1e-3)
    assert chosen["ece_validation_raw"] == pytest.approx(0.0, abs=1e-9)
    assert chosen["kept"] == "raw" and chosen["temperature"] == 1.0


def test_too_few_rows_keep_raw() -> None:
    chosen = choose_calibration(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    assert chosen["kept"] == "raw" and chosen["temperature"] == 1.0
    assert math.isnan(chosen["ece_validation_raw"])
