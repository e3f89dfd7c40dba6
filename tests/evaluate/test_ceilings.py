"""Ceilings and floors: the oracle on the true change, the mean-predictor floor, warnings and
the plain-words verdict."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from learner.data.splits import assign_splits
from learner.data.synthetic.common import cohort_table
from learner.evaluate.ceilings import (
    evaluate_oracle,
    fraction_of_achievable,
    load_truth,
    regressor_against_mean,
    render_regressor_mae,
    score_noise_mae,
)
from learner.evaluate.verdict import (
    class_table_warnings,
    degenerate_classes,
    pair_term_warning,
    regressor_warning,
    score_range_warnings,
    verdict,
)


def _cohort(null: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A demo-sized LUS cohort's table (no images): manifest-like frame and its truth."""
    truth = cohort_table("lus", patients=80, seed=3, preset="demo", null=null)
    truth = truth.assign(
        patient_id=truth["patient_id"].astype(str), visit=truth["visit"].astype(str)
    )
    frame = truth[["patient_id", "visit", "zone", "score"]].copy()
    frame["visit_order"] = truth["visit"].astype(int)
    frame["score"] = frame["score"].astype(float)
    return assign_splits(frame, seed=0, ratios=(0.6, 0.2, 0.2)), truth


def test_oracle_on_true_change_is_well_above_chance_and_shuffled_truth_is_not() -> None:
    frame, truth = _cohort()
    oracle = evaluate_oracle(frame, truth, "severity", delta="tertiles")
    assert oracle is not None
    assert oracle.metrics["balanced_accuracy"] > 0.5  # the positive control works
    clean = evaluate_oracle(frame, truth, "score_clean", delta="tertiles")
    assert clean is not None and clean.metrics["balanced_accuracy"] > 0.5

    rng = np.random.default_rng(0)
    shuffled = truth.assign(severity=rng.permutation(truth["severity"].to_numpy()))
    noise = evaluate_oracle(frame, shuffled, "severity", delta="tertiles")
    assert noise is not None
    assert noise.metrics["balanced_accuracy"] < oracle.metrics["balanced_accuracy"] - 0.15
    # Same pairs and labels as any objective evaluated on this frame.
    assert oracle.class_counts_test == noise.class_counts_test


def test_oracle_missing_truth_gives_none() -> None:
    frame, truth = _cohort()
    assert evaluate_oracle(frame, truth.iloc[:-5], "severity", delta=2.0) is None
    assert evaluate_oracle(frame, truth.drop(columns=["severity"]), "severity", delta=2.0) is None


def test_load_truth_resolves_paths(tmp_path: Path) -> None:
    assert load_truth(tmp_path / "manifest.csv") is None
    pd.DataFrame(
        {"patient_id": ["a"], "visit": [0], "path": ["s/a.mp4"], "severity": [0.2]}
    ).to_csv(tmp_path / "truth.csv", index=False)
    truth = load_truth(tmp_path / "manifest.csv")
    assert truth is not None and truth["path"].iloc[0] == str((tmp_path / "s" / "a.mp4").resolve())


def test_fraction_of_achievable() -> None:
    assert fraction_of_achievable(0.5, 2 / 3) == pytest.approx(0.5)
    assert fraction_of_achievable(1 / 3, 0.9) == pytest.approx(0.0)
    assert math.isnan(fraction_of_achievable(0.5, 1 / 3))


def test_regressor_floor() -> None:
    frame = pd.DataFrame(
        {
            "split": ["train"] * 4 + ["val"] * 2,
            "score": [0.0, 10.0, 0.0, 10.0, 0.0, 10.0],
            "pred_score": [0.0, 10.0, 0.0, 10.0, 1.0, 9.0],
        }
    )
    assert regressor_against_mean(frame) == (pytest.approx(1.0), pytest.approx(5.0))
    assert regressor_warning(1.0, 5.0) is None
    line = regressor_warning(6.0, 5.0)
    assert line is not None and "no better on validation patients" in line


def test_score_noise_floor_is_the_label_noise() -> None:
    """On the synthetic LUS mapping the per-visit offset (sd 20) and noise (sd 12) set the
    floor: the mean |N(0, sqrt(20^2 + 12^2))| is about 18.6 S/F units."""
    frame, truth = _cohort()
    floor = score_noise_mae(frame, truth, "val")
    assert 12.0 < floor < 26.0
    assert math.isnan(score_noise_mae(frame, truth.drop(columns=["score_clean"]), "val"))
    assert math.isnan(score_noise_mae(frame, truth, "nowhere"))
    # A truth whose clean score equals the recorded one has no floor.
    exact = truth.assign(score_clean=truth["score"])
    assert score_noise_mae(frame, exact, "val") == pytest.approx(0.0)


def test_a_perfect_image_reader_sits_between_the_noise_floor_and_the_mean() -> None:
    """Zone offsets (sd 0.08 severity, 28 S/F units) are in the clip but not in the score,
    so even the rendered severity predicts the score worse than the label noise allows."""
    frame, truth = _cohort()
    floor = score_noise_mae(frame, truth, "val")
    reader = render_regressor_mae(frame, truth, "val")
    train_mean = frame.loc[frame["split"] == "train", "score"].mean()
    mean_mae = float((frame.loc[frame["split"] == "val", "score"] - train_mean).abs().mean())
    assert floor < reader < mean_mae
    # On the patient's visit severity (no zone offset) the line reaches the noise floor.
    visit = truth.assign(render_severity=truth["severity"])
    assert render_regressor_mae(frame, visit, "val") == pytest.approx(floor, rel=0.25)
    assert math.isnan(render_regressor_mae(frame, truth.drop(columns=["render_severity"])))


def _summary(test: dict[str, int], train: dict[str, int] | None = None, patients: int = 8) -> dict:
    return {
        "class_counts_test": test,
        "class_counts_train": train or {"worsen": 20, "stable": 20, "improve": 20},
        "n_test_patients": patients,
        "seed": 0,
    }


def test_degenerate_class_table_warns_and_yields_no_verdict() -> None:
    parkinsons = [_summary({"worsen": 0, "stable": 180, "improve": 1}, patients=4)]
    lines = class_table_warnings(parkinsons, 2.0)
    assert any("class 'worsen' has 0 test pairs" in w for w in lines)
    assert any("'stable' is 99% of test pairs" in w for w in lines)
    assert any("only 4 test patients" in w for w in lines)
    reason = degenerate_classes(parkinsons)
    assert reason is not None and "worsen" in reason
    text = " ".join(verdict({"degenerate": reason, "warnings": lines}))
    assert text.startswith("No verdict") and "Beat" not in text

    healthy = [_summary({"worsen": 25, "stable": 30, "improve": 25})]
    assert class_table_warnings(healthy, 2.0) == []
    assert degenerate_classes(healthy) is None


def test_score_range_and_pair_term_warnings() -> None:
    severity = np.array([0.0, 1.0, 2.0, 3.0])
    (line,) = score_range_warnings(severity, (0, 500))
    assert "data.score_range=[0,3]" in line and "negative pairs" in line
    (line,) = score_range_warnings(np.array([-5.0, 40.0]), (0, 30))
    assert "outside data.score_range" in line
    assert score_range_warnings(np.array([100.0, 450.0]), (0, 500)) == []
    warn = pair_term_warning("weighted", (10.0, 0.0, 10.0), 0.1)
    assert warn is not None and "no negative pair in 10 of 10" in warn and "tau" in warn
    assert pair_term_warning("weighted", (10.0, 1.0, 2.0), 0.1) is None


def _entry(mean: float, lo: float, hi: float) -> dict:
    return {"mean": mean, "ci95": [lo, hi], "min_detectable_difference": (hi - lo) / 2}


def test_verdict_is_generated_from_the_numbers() -> None:
    results = {
        "degenerate": None,
        "warnings": [],
        "objectives": {
            "weighted": {"fraction_of_achievable": _entry(0.6, 0.4, 0.8)},
            "mse": {"fraction_of_achievable": _entry(0.3, 0.1, 0.5)},
        },
        "ceilings": {"oracle_truth": {"balanced_accuracy": {"mean": 0.65}}},
        "comparisons": {
            "reference": "mse",
            "differences": {
                "weighted": {"balanced_accuracy": _entry(0.08, 0.03, 0.13)},
                "contrastive": {"balanced_accuracy": _entry(0.01, -0.05, 0.07)},
            },
            "differences_to_untrained": {
                "weighted": {"balanced_accuracy": _entry(0.1, 0.02, 0.2)},
                "mse": {"balanced_accuracy": _entry(0.02, -0.04, 0.08)},
            },
        },
    }
    text = " ".join(verdict(results))
    assert "Beat `mse`" in text and "`weighted` +0.080 [+0.030, +0.130]" in text
    assert "No detectable difference to `mse` (effects under about 0.060" in text
    assert "`contrastive`" in text
    assert "Above the untrained encoder with a CI above zero: `weighted`." in text
    assert "`weighted`, captures 60%" in text and "[40%, 80%]" in text
