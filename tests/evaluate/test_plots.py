"""Figures: each writes a real, non-empty PNG atomically; bad inputs raise clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from learner.errors import DataError
from learner.evaluate.change import evaluate_change
from learner.evaluate.plots import (
    _pick_patients,
    plot_confusions,
    plot_figure1,
    plot_training_curves,
    plot_trajectories,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 2000
    # Atomic write: only the final file is left in the folder.
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def _frame(n_patients: int = 12, seed: int = 0, zones: bool = True) -> pd.DataFrame:
    """A small embeddings frame: 2-5 visits per patient, two zones per visit."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_patients):
        pid = f"p{i}"
        split = "test" if i % 3 == 0 else "train"
        score = float(rng.uniform(100.0, 400.0))
        for visit in range(int(rng.integers(2, 6))):
            score += float(rng.normal(0.0, 40.0))
            for zone in ("L1", "R1") if zones else (None,):
                rows.append(
                    {
                        "patient_id": pid,
                        "visit_order": visit,
                        "zone": zone,
                        "score": score,
                        "split": split,
                        "pred_score": score + float(rng.normal(0.0, 20.0)),
                        "embedding": rng.normal(0.0, 1.0, 6).astype(np.float32) + score / 100,
                    }
                )
    return pd.DataFrame(rows)


def test_figure1_from_tuples_and_results(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    fig1 = pd.DataFrame(
        {"distance": rng.uniform(0, 1, 30), "abs_change": rng.uniform(0, 50, 30), "patient_id": "a"}
    )
    result = evaluate_change(_frame(30), delta=20.0, n_boot=0)
    path = plot_figure1(
        {"mse": (fig1, 0.31), "weighted": result, "nan": (fig1, float("nan"))},
        tmp_path / "figures" / "figure1.png",
    )
    _assert_png(path)
    with pytest.raises(ValueError):
        plot_figure1({}, tmp_path / "empty.png")


def test_confusions(tmp_path: Path) -> None:
    matrices = {
        "mse": np.array([[5, 2, 1], [1, 6, 2], [0, 3, 4]]),
        "head_delta": np.zeros((3, 3), dtype=int),
    }
    _assert_png(plot_confusions(matrices, tmp_path / "confusion.png"))
    with pytest.raises(ValueError, match="shape"):
        plot_confusions({"bad": np.zeros((2, 2))}, tmp_path / "bad.png")


def _csv_log(path: Path, with_spearman: bool) -> Path:
    """A Lightning CSVLogger-like file: step rows and epoch rows, NaN where not logged."""
    rows = []
    for epoch in range(4):
        for step in range(3):
            rows.append(
                {
                    "epoch": epoch,
                    "step": epoch * 3 + step,
                    "train/loss_step": 1.0 / (step + epoch + 1),
                }
            )
        row = {"epoch": epoch, "step": epoch * 3 + 2, "train/loss_epoch": 1.0 / (epoch + 1)}
        row |= {"val/loss": 1.2 / (epoch + 1), "val/score_mae": 30.0 - epoch}
        if with_spearman:
            row["val/spearman"] = 0.1 * epoch
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_training_curves(tmp_path: Path) -> None:
    logs = {
        "mse": _csv_log(tmp_path / "mse" / "metrics.csv", with_spearman=False),
        "weighted": _csv_log(tmp_path / "weighted" / "metrics.csv", with_spearman=True),
    }
    _assert_png(plot_training_curves(logs, tmp_path / "out" / "curves.png"))


def test_training_curves_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent\.csv"):
        plot_training_curves({"x": tmp_path / "absent.csv"}, tmp_path / "c.png")
    other = tmp_path / "other.csv"
    other.write_text("epoch,lr\n0,0.1\n")
    with pytest.raises(DataError, match="train/loss"):
        plot_training_curves({"x": other}, tmp_path / "c.png")


def test_trajectories_with_and_without_zones(tmp_path: Path) -> None:
    _assert_png(plot_trajectories(_frame(), tmp_path / "zones" / "traj.png", n_patients=4))
    # More panels asked than test patients: draws what exists.
    frame = _frame(zones=False)
    _assert_png(plot_trajectories(frame, tmp_path / "plain" / "traj.png", n_patients=50))
    with pytest.raises(DataError, match="empty"):
        plot_trajectories(frame.iloc[:0], tmp_path / "none.png")


def test_trajectory_patients_are_those_with_most_visits() -> None:
    visits = pd.DataFrame(
        {
            "patient_id": ["a"] * 2 + ["b"] * 5 + ["c"] * 3 + ["d"] * 5,
            "visit_order": [0, 1, 0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4],
        }
    )
    assert sorted(_pick_patients(visits, 2, seed=0)) == ["b", "d"]
    assert _pick_patients(visits, 3, seed=0)[2] == "c"
