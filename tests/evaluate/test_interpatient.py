"""Inter-patient evaluation: distance-vs-score-gap rho, score MAE, paired differences."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from learner.errors import ConfigError, DataError
from learner.evaluate.interpatient import cosine_trajectory, evaluate_interpatient, unit_table


def _frame(
    embeddings: np.ndarray,
    scores: np.ndarray,
    patients: list[str],
    split: str = "test",
    pred: np.ndarray | None = None,
) -> pd.DataFrame:
    n = len(scores)
    return pd.DataFrame(
        {
            "patient_id": patients,
            "visit": ["0"] * n,
            "visit_order": [0] * n,
            "path": [f"clip{i}.mp4" for i in range(n)],
            "score": scores.astype(float),
            "split": [split] * n,
            "pred_score": scores + 1.0 if pred is None else pred,
            "embedding": list(embeddings.astype(np.float32)),
        }
    )


def _cohort(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    scores = np.repeat(rng.uniform(0, 3, size=10), 2)  # 10 patients x 2 clips
    patients = [f"P{i // 2:02d}" for i in range(20)]
    return scores, patients


def _angle_embedding(scores: np.ndarray) -> np.ndarray:
    # Cosine distance grows monotonically with the angle gap, so with the score gap.
    theta = scores / 3.0 * (np.pi / 2)
    return np.stack([np.cos(theta), np.sin(theta)], axis=1)


def test_ordered_embedding_gives_rho_one_and_exact_mae() -> None:
    scores, patients = _cohort()
    ordered = _frame(_angle_embedding(scores), scores, patients)
    rng = np.random.default_rng(1)
    noise = _frame(rng.normal(size=(20, 8)), scores, patients, pred=scores - 0.5)
    res = evaluate_interpatient(
        {"mse": noise, "weighted": ordered}, reference="mse", n_boot=200, seed=0
    )
    assert res.metrics["weighted"]["spearman_distance"] == pytest.approx(1.0)
    assert abs(res.metrics["mse"]["spearman_distance"]) < 0.5
    assert res.metrics["weighted"]["score_mae"] == pytest.approx(1.0)
    assert res.metrics["mse"]["score_mae"] == pytest.approx(0.5)
    diff = res.differences["weighted"]["spearman_distance"]
    assert diff["mean"] > 0.5 and diff["ci95"][0] > 0  # paired on the same resamples
    assert res.differences["weighted"]["score_mae"]["mean"] == pytest.approx(0.5)
    lo, hi = res.ci95["mse"]["spearman_distance"]
    assert lo <= res.metrics["mse"]["spearman_distance"] <= hi
    # 20 clips of 10 patients: C(20, 2) = 190 pairs minus the 10 same-patient pairs.
    assert (res.n_units, res.n_patients, res.n_pairs) == (20, 10, 180)


def test_same_patient_pairs_are_left_out() -> None:
    # Two clips of one patient are identical but their scores differ: if that pair counted,
    # distance 0 with a large gap would break the perfect ordering of the other pairs.
    scores = np.array([0.0, 3.0, 1.0, 2.0])
    emb = _angle_embedding(np.array([1.5, 1.5, 1.0, 2.0]))
    frame = _frame(emb, scores, ["A", "A", "B", "C"])
    res = evaluate_interpatient({"m": frame}, n_boot=0)
    assert res.n_pairs == 5
    assert math.isnan(res.ci95["m"]["spearman_distance"][0])


def test_patient_unit_averages_scans() -> None:
    scores, patients = _cohort()
    frame = _frame(_angle_embedding(scores), scores, patients)
    table, matrix = unit_table(frame, "patient")
    assert len(table) == 10 and matrix.shape == (10, 2)
    res = evaluate_interpatient({"m": frame}, unit="patient", n_boot=50)
    assert res.n_pairs == 45
    assert res.metrics["m"]["spearman_distance"] == pytest.approx(1.0)


def test_only_the_requested_split_is_scored() -> None:
    scores, patients = _cohort()
    frame = _frame(_angle_embedding(scores), scores, patients)
    frame.loc[frame.index[:6], "split"] = "train"
    res = evaluate_interpatient({"m": frame}, n_boot=0)
    assert res.n_units == 14 and res.n_patients == 7


def test_errors() -> None:
    scores, patients = _cohort()
    a = _frame(_angle_embedding(scores), scores, patients)
    b = a.iloc[2:].reset_index(drop=True)
    with pytest.raises(DataError, match="different held-out scans"):
        evaluate_interpatient({"a": a, "b": b}, n_boot=0)
    with pytest.raises(ConfigError, match="reference"):
        evaluate_interpatient({"a": a}, reference="mse", n_boot=0)
    with pytest.raises(DataError, match="labelled patient"):
        evaluate_interpatient({"a": a}, test_split="external", n_boot=0)


def test_cosine_trajectory() -> None:
    emb = _angle_embedding(np.array([0.0, 0.0, 1.5, 3.0]))
    frame = _frame(emb, np.array([0.0, 0.0, 1.0, 3.0]), ["X"] * 4)
    frame["visit_order"] = [0, 0, 1, 2]
    frame["visit"] = ["1", "1", "2", "3"]
    table = cosine_trajectory(frame, "X")
    assert table["visit"].tolist() == ["1", "2", "3"]
    assert table["distance_to_first"].iloc[0] == pytest.approx(0.0)
    assert table["distance_to_first"].iloc[2] == pytest.approx(1.0)  # orthogonal
    assert math.isnan(table["distance_to_previous"].iloc[0])
    assert table["distance_to_previous"].iloc[1] == pytest.approx(1 - np.cos(np.pi / 4))
    with pytest.raises(DataError, match="not in the embeddings"):
        cosine_trajectory(frame, "Y")
