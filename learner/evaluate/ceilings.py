"""Yardsticks for change classification: chance below, oracles above.

A balanced accuracy means little alone: 0.45 is good where the data allow 0.50 and poor
where they allow 0.90. Where the cohort's ground truth is known (``truth.csv`` beside the
manifest, as ``learner synth`` writes it), the *oracle* runs the same protocol (same pairs,
same patient split, same stable band on the observed scores, same probe) on a feature that no
encoder can beat: the true change.

- ``oracle_truth``: the change of the latent severity (truth column ``severity``);
- ``oracle_clean_score``: the change of the noise-free score (truth column ``score_clean``).

``chance`` is 1/3 for balanced accuracy (three classes) and the majority-class rate for
accuracy. An objective's ``fraction_of_achievable`` is ``(bal_acc - 1/3) / (oracle - 1/3)``.

Example, on ``truth`` (a synthetic cohort's ``truth.csv``, as :func:`load_truth` reads it) and
``embeddings`` (an embeddings frame of its scans, as in :mod:`learner.evaluate.change`); the
doctests' ``conftest.py`` builds both:

    >>> load_truth(Path("manifest.csv")) is None  # no truth.csv beside this manifest
    True
    >>> oracle = evaluate_oracle(embeddings, truth, "severity", delta="tertiles")
    >>> ceiling = oracle.metrics["balanced_accuracy"]
    >>> achieved = evaluate_change(embeddings, delta="tertiles", n_boot=0).metrics
    >>> round(ceiling, 2), round(achieved["balanced_accuracy"], 2)  # chance: 1/3
    (0.52, 0.47)
    >>> round(fraction_of_achievable(achieved["balanced_accuracy"], ceiling), 2)
    0.74
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from learner.errors import DataError
from learner.evaluate.change import ChangeResult, evaluate_change

TRUTH_FILE = "truth.csv"
# Ceiling name -> truth.csv column holding the per-scan quantity whose change it classifies.
ORACLES = {"oracle_truth": "severity", "oracle_clean_score": "score_clean"}
CHANCE_BALANCED = 1.0 / 3.0
# The truth.csv column whose change ``eval.target: truth`` judges (negated: higher = better).
TRUTH_TARGET = "severity"


def load_truth(manifest_source: Path) -> pd.DataFrame | None:
    """``truth.csv`` beside the manifest, with ``path`` resolved like the manifest's; or None.

    Raises:
        DataError: the file exists but cannot be read or lacks patient_id / visit.
    """
    path = Path(manifest_source).resolve().parent / TRUTH_FILE
    if not path.is_file():
        return None
    try:
        truth = pd.read_csv(path, dtype={"patient_id": str, "visit": str, "zone": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc}); fix or remove it") from None
    missing = [c for c in ("patient_id", "visit") if c not in truth.columns]
    if missing:
        raise DataError(f"{path}: lacks column {missing[0]!r}; it must list patient_id and visit")
    if "path" in truth.columns:
        base = path.parent
        truth["path"] = [os.path.abspath(base / str(p)) for p in truth["path"]]
    return truth


def _truth_values(frame: pd.DataFrame, truth: pd.DataFrame, column: str) -> np.ndarray | None:
    """Per row of ``frame``, the truth ``column`` value; None when a scan has none."""
    if column not in truth.columns:
        return None
    keys = ["path"] if "path" in frame.columns and "path" in truth.columns else ["patient_id"]
    if keys == ["patient_id"]:
        keys += ["visit"] + (["zone"] if "zone" in frame.columns and "zone" in truth else [])
    left = frame[keys].astype(str).reset_index(drop=True)
    right = truth[[*keys, column]].astype({k: str for k in keys}).drop_duplicates(subset=keys)
    merged = left.merge(right, on=keys, how="left")
    values = pd.to_numeric(merged[column], errors="coerce").to_numpy(dtype=np.float64)
    return values if np.isfinite(values).all() else None


def truth_target(frame: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """``eval.target: truth``: per row of ``frame``, the scan's latent severity from
    ``truth``, negated: severity grows with disease (0 healthy), and every change the target
    block compares is oriented so that higher = better.

    Raises:
        DataError: some scan of ``frame`` has no finite severity in truth.csv.
    """
    values = _truth_values(frame, truth, TRUTH_TARGET)
    if values is None:
        raise DataError(
            f"{TRUTH_FILE}: some scans have no {TRUTH_TARGET!r} value; eval.target truth needs "
            "one per scan (a cohort written by `learner synth`), or set eval.target: observed"
        )
    return -values


def evaluate_oracle(
    frame: pd.DataFrame,
    truth: pd.DataFrame,
    column: str,
    *,
    delta: float | str,
    higher_is_better: bool = True,
    classifier: str = "logreg",
    seed: int = 0,
    train_splits: Sequence[str] = ("train", "val"),
    test_split: str = "test",
) -> ChangeResult | None:
    """The change protocol of :func:`evaluate_change` on the true change of ``column``.

    Args:
        frame: the manifest frame of a run cell (one row per scan, with ``split``).
        truth: from :func:`load_truth`.
        column: truth column (``severity`` or ``score_clean``).
        delta, higher_is_better, classifier, seed, train_splits, test_split: as the
            objectives' evaluation.

    Returns:
        The oracle's result (pairs and labels identical to the objectives'), or None when
        some scan has no finite truth value.
    """
    values = _truth_values(frame, truth, column)
    if values is None:
        return None
    oracle = frame.reset_index(drop=True).assign(
        embedding=list(values[:, None].astype(np.float32)),
        # The oracle has no regression head; its head_delta is not computed.
        pred_score=np.nan,
    )
    return evaluate_change(
        oracle,
        delta=delta,
        higher_is_better=higher_is_better,
        feature="diff",
        classifier=classifier,
        train_splits=train_splits,
        test_split=test_split,
        n_boot=0,
        seed=seed,
    )


def fraction_of_achievable(balanced_accuracy: float, oracle: float) -> float:
    """``(bal_acc - 1/3) / (oracle - 1/3)``; NaN when the oracle is not above chance."""
    headroom = oracle - CHANCE_BALANCED
    if not np.isfinite(headroom) or headroom <= 0:
        return float("nan")
    return float((balanced_accuracy - CHANCE_BALANCED) / headroom)


def score_noise_mae(frame: pd.DataFrame, truth: pd.DataFrame, split: str = "val") -> float:
    """The score regressor's floor set by the labels themselves: the MAE of the recorded
    score against truth's noise-free ``score_clean`` over the labelled scans of ``split``
    (NaN when truth has no ``score_clean`` or the split has no labelled scan). A regressor
    cannot be expected to beat it: the rest of the score is per-visit noise.

    Args:
        frame: an embeddings or manifest frame (``split``, ``score``; ``path`` or patient and
            visit to match truth's rows).
        truth: from :func:`load_truth`.
    """
    clean = _truth_values(frame, truth, "score_clean")
    if clean is None:
        return float("nan")
    score = frame["score"].to_numpy(dtype=np.float64)
    rows = (frame["split"].astype(str).to_numpy() == split) & np.isfinite(score)
    if not rows.any():
        return float("nan")
    return float(np.abs(score[rows] - clean[rows]).mean())


def render_regressor_mae(frame: pd.DataFrame, truth: pd.DataFrame, split: str = "val") -> float:
    """The MAE on ``split``'s labelled scans of a straight line from the severity each image
    was rendered with (truth column ``render_severity``) to the score, fitted on the training
    scans: what a regressor that read every image perfectly would achieve. It sits above
    :func:`score_noise_mae` wherever the image and the score disagree beyond the label noise
    (synthetic LUS: each zone's own offset from the patient's severity is in the clip but not
    in the visit's score). NaN when truth lacks the column or a split has no labelled scan.
    """
    render = _truth_values(frame, truth, "render_severity")
    if render is None:
        return float("nan")
    score = frame["score"].to_numpy(dtype=np.float64)
    split_of = frame["split"].astype(str).to_numpy()
    train = (split_of == "train") & np.isfinite(score)
    rows = (split_of == split) & np.isfinite(score)
    if train.sum() < 2 or not rows.any():
        return float("nan")
    slope, intercept = np.polyfit(render[train], score[train], 1)
    return float(np.abs(intercept + slope * render[rows] - score[rows]).mean())


def regressor_against_mean(frame: pd.DataFrame) -> tuple[float, float]:
    """The floor of the score regressor: its MAE on labelled validation scans, and the MAE
    there of predicting the training scans' mean score (NaN when either split is empty).

    Args:
        frame: an embeddings frame (``split``, ``score``, ``pred_score``).
    """
    score = frame["score"].to_numpy(dtype=np.float64)
    pred = frame["pred_score"].to_numpy(dtype=np.float64)
    split = frame["split"].astype(str).to_numpy()
    train = (split == "train") & np.isfinite(score)
    val = (split == "val") & np.isfinite(score) & np.isfinite(pred)
    if not train.any() or not val.any():
        return float("nan"), float("nan")
    mean = float(score[train].mean())
    return float(np.abs(pred[val] - score[val]).mean()), float(np.abs(mean - score[val]).mean())
