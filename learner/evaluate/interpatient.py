"""Inter-patient evaluation, for data with one visit per patient (no change pairs).

When every patient has a single visit there is nothing to classify between visits; what can
be measured on held-out patients is whether the embedding orders *patients* by their score:

- ``score_mae``: the regression head's error on labelled held-out scans (raw score units);
- ``spearman_distance``: Spearman rho between the cosine distance of two held-out units and
  their |score difference|, over every pair of units from *different* patients (the paper's
  Figure 1 across patients instead of across visits). A unit is a scan (``unit="scan"``, for
  per-scan scores such as a clip's severity) or a patient's mean embedding and mean score
  (``unit="patient"``, for per-patient scores).

Every statistic comes with a 95% interval from a bootstrap over held-out *patients*. Several
models evaluated on the same held-out scans (the objectives of one seed) share the resamples,
so :func:`evaluate_interpatient` also gives paired differences to a reference model.

Example (one scan each of 30 held-out patients; one model's embedding turns with the score,
the other's is noise):

    >>> rng = np.random.default_rng(0)
    >>> score = rng.uniform(0.0, 10.0, 30)
    >>> held_out = pd.DataFrame({"patient_id": [f"P{i:02d}" for i in range(30)],
    ...                          "score": score, "split": "test"})
    >>> angle = np.c_[np.cos(score / 10), np.sin(score / 10)]
    >>> frames = {"turning": held_out.assign(embedding=list(angle)),
    ...           "noise": held_out.assign(embedding=list(rng.normal(size=(30, 2))))}
    >>> result = evaluate_interpatient(frames, reference="noise", n_boot=200)
    >>> result.n_pairs  # pairs of scans of different patients
    435
    >>> {name: round(m["spearman_distance"], 2) for name, m in result.metrics.items()}
    {'turning': 1.0, 'noise': -0.04}
    >>> [round(bound, 2) for bound in result.differences["turning"]["spearman_distance"]["ci95"]]
    [0.93, 1.15]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from learner.errors import ConfigError, DataError
from learner.evaluate.bootstrap import (
    bootstrap_distribution,
    hierarchical_resamples,
    minimum_detectable_difference,
    percentile_interval,
)
from learner.evaluate.embeddings_io import embedding_matrix
from learner.evaluate.features import cosine_distance
from learner.evaluate.metrics import spearman

INTERPATIENT_METRICS = ("spearman_distance", "score_mae", "score_spearman")
Unit = Literal["scan", "patient"]


@dataclass
class InterpatientResult:
    """Metrics of several models on the same held-out scans.

    Attributes:
        metrics: model -> metric -> value (:data:`INTERPATIENT_METRICS`; NaN where undefined).
        ci95: model -> metric -> (lo, hi) 95% patient-bootstrap interval.
        differences: model -> metric -> {"mean", "ci95"}: model minus ``reference`` on the
            same resamples (absent for the reference itself).
        bootstrap: model -> (n_boot, 3) resampled metrics, for pooling seeds.
        reference: the reference model name.
        unit: ``"scan"`` or ``"patient"``.
        n_units, n_patients, n_pairs: held-out units, patients and inter-patient unit pairs.
    """

    metrics: dict[str, dict[str, float]]
    ci95: dict[str, dict[str, tuple[float, float]]]
    differences: dict[str, dict[str, dict[str, Any]]]
    bootstrap: dict[str, np.ndarray] = field(default_factory=dict)
    reference: str | None = None
    unit: str = "scan"
    n_units: int = 0
    n_patients: int = 0
    n_pairs: int = 0


def unit_table(frame: pd.DataFrame, unit: Unit) -> tuple[pd.DataFrame, np.ndarray]:
    """Units (scans or patient means) of an embeddings frame.

    Args:
        frame: embeddings frame rows to use (one row per scan).
        unit: ``"scan"`` keeps rows; ``"patient"`` averages each patient's embeddings,
            ``score`` and ``pred_score`` (NaN ignored).

    Returns:
        ``(table, matrix)``: ``table`` has patient_id, score, pred_score (one row per unit);
        ``matrix`` (U, D) float64 embeddings in the same order.
    """
    matrix = embedding_matrix(frame).astype(np.float64)
    pred = (
        frame["pred_score"].to_numpy(dtype=np.float64)
        if "pred_score" in frame.columns
        else np.full(len(frame), np.nan)
    )
    table = pd.DataFrame(
        {
            "patient_id": frame["patient_id"].astype(str).to_numpy(),
            "score": frame["score"].to_numpy(dtype=np.float64),
            "pred_score": pred,
        }
    )
    if unit == "scan":
        return table, matrix
    if unit != "patient":
        raise ConfigError(f"unit={unit!r} is not known; use 'scan' or 'patient'")
    codes, ids = pd.factorize(table["patient_id"], sort=True)
    counts = np.bincount(codes).astype(np.float64)[:, None]
    sums = np.zeros((ids.size, matrix.shape[1]))
    np.add.at(sums, codes, matrix)
    grouped = table.groupby("patient_id", sort=True)[["score", "pred_score"]].mean()
    out = grouped.reset_index()
    return out, sums / counts


def _stats(
    idx: np.ndarray,
    patient_codes: np.ndarray,
    distances: np.ndarray,
    gaps: np.ndarray,
    errors: np.ndarray,
    scores: np.ndarray,
    preds: np.ndarray,
) -> np.ndarray:
    """(3,) metrics on the units ``idx`` (a resample may repeat units).

    Copies of one patient drawn twice are the same patient: their pairs are intra-patient and
    left out, like pairs of two scans of one patient.
    """
    sub_codes = patient_codes[idx]
    upper = np.triu(np.ones((idx.size, idx.size), dtype=bool), k=1)
    keep = upper & (sub_codes[:, None] != sub_codes[None, :])
    d = distances[np.ix_(idx, idx)][keep]
    g = gaps[np.ix_(idx, idx)][keep]
    e = errors[idx]
    e = e[np.isfinite(e)]
    return np.array(
        [
            spearman(d, g),
            float(e.mean()) if e.size else math.nan,
            spearman(preds[idx], scores[idx]),
        ]
    )


def evaluate_interpatient(
    frames: Mapping[str, pd.DataFrame],
    *,
    reference: str | None = None,
    test_split: str = "test",
    unit: Unit = "scan",
    n_boot: int = 1000,
    seed: int = 0,
) -> InterpatientResult:
    """Score MAE and the inter-patient distance-vs-score-gap rho on held-out patients.

    Args:
        frames: model name -> embeddings frame (docs/architecture.md 'Embeddings file'); the
            models must cover the same held-out scans (e.g. the objectives of one seed).
        reference: a model name of ``frames``; every other model gets a paired difference to
            it on the same bootstrap resamples. ``None``: no differences.
        test_split: the split whose labelled scans are evaluated (``"external"`` for a set
            embedded with a model that never saw it).
        unit: ``"scan"`` or ``"patient"`` (see the module docstring).
        n_boot: patient-bootstrap resamples; 0 skips the intervals (NaN).
        seed: bootstrap seed.

    Returns:
        An :class:`InterpatientResult`.

    Raises:
        DataError: a frame lacks a column, has no labelled held-out scans or fewer than two
            held-out patients, or the models' held-out scans differ.
        ConfigError: ``reference`` is not a model of ``frames``, or an unknown ``unit``.
    """
    if not frames:
        raise ConfigError("evaluate_interpatient needs at least one embeddings frame")
    if reference is not None and reference not in frames:
        raise ConfigError(f"reference {reference!r} is not among the models {list(frames)}")
    tables: dict[str, tuple[pd.DataFrame, np.ndarray]] = {}
    for name, frame in frames.items():
        for column in ("patient_id", "score", "split", "embedding"):
            if column not in frame.columns:
                raise DataError(
                    f"embeddings of {name!r} lack column {column!r}; use `learner embed`"
                )
        held = frame[(frame["split"].astype(str) == test_split) & frame["score"].notna()]
        held = held.sort_values(
            ["patient_id", *(["path"] if "path" in held.columns else [])], kind="stable"
        )
        tables[name] = unit_table(held.reset_index(drop=True), unit)
    first_name, (first, _) = next(iter(tables.items()))
    for name, (table, _) in tables.items():
        if table["patient_id"].tolist() != first["patient_id"].tolist():
            raise DataError(
                f"models {first_name!r} and {name!r} cover different held-out scans; "
                "evaluate models of the same split together"
            )
    codes, ids = pd.factorize(first["patient_id"], sort=True)
    if ids.size < 2:
        raise DataError(
            f"{ids.size} labelled patient(s) in split {test_split!r}; inter-patient pairs "
            "need at least two"
        )
    scores = first["score"].to_numpy(dtype=np.float64)
    gaps = np.abs(scores[:, None] - scores[None, :])
    names = list(tables)
    inputs = []
    for name in names:
        table, matrix = tables[name]
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        unit_vectors = matrix / np.maximum(norms, np.finfo(np.float64).tiny)
        distances = 1.0 - unit_vectors @ unit_vectors.T
        preds = table["pred_score"].to_numpy(dtype=np.float64)
        inputs.append((distances, np.abs(preds - scores), preds))

    def all_stats(idx: np.ndarray) -> np.ndarray:
        return np.concatenate([_stats(idx, codes, d, gaps, e, scores, p) for d, e, p in inputs])

    point = all_stats(np.arange(len(first)))
    k = len(INTERPATIENT_METRICS)
    samples = (
        bootstrap_distribution(first["patient_id"].to_numpy(), all_stats, n_boot, seed)
        if n_boot > 0
        else None
    )
    metrics: dict[str, dict[str, float]] = {}
    ci95: dict[str, dict[str, tuple[float, float]]] = {}
    boot: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        block = slice(i * k, (i + 1) * k)
        metrics[name] = dict(zip(INTERPATIENT_METRICS, point[block].tolist(), strict=True))
        if samples is not None:
            boot[name] = samples[:, block]
            lo, hi = percentile_interval(samples[:, block])
            ci95[name] = {
                m: (float(lo[j]), float(hi[j])) for j, m in enumerate(INTERPATIENT_METRICS)
            }
        else:
            ci95[name] = {m: (math.nan, math.nan) for m in INTERPATIENT_METRICS}
    differences: dict[str, dict[str, dict[str, Any]]] = {}
    if reference is not None:
        for name in names:
            if name == reference:
                continue
            differences[name] = {}
            for j, m in enumerate(INTERPATIENT_METRICS):
                value = metrics[name][m] - metrics[reference][m]
                interval = (math.nan, math.nan)
                if samples is not None:
                    diff = boot[name][:, j] - boot[reference][:, j]
                    lo_d, hi_d = percentile_interval(diff)
                    interval = (float(lo_d), float(hi_d))
                differences[name][m] = {"mean": value, "ci95": interval}
    pairs = int(np.sum(np.triu(codes[:, None] != codes[None, :], k=1)))
    return InterpatientResult(
        metrics=metrics,
        ci95=ci95,
        differences=differences,
        bootstrap=boot,
        reference=reference,
        unit=unit,
        n_units=len(first),
        n_patients=int(ids.size),
        n_pairs=pairs,
    )


def pool_interpatient(per_seed: list[InterpatientResult]) -> dict[str, Any]:
    """Average the seeds' InterpatientResults: mean, std, per_seed, and a ci95 from the
    seed-averaged bootstrap resamples (as learner run pools seeds)."""
    names = list(per_seed[0].metrics)
    reference = per_seed[0].reference
    objectives: dict[str, Any] = {}
    differences: dict[str, Any] = {}
    for name in names:
        objectives[name] = {}
        for j, m in enumerate(INTERPATIENT_METRICS):
            vals = np.array([r.metrics[name][m] for r in per_seed], dtype=float)
            pooled = hierarchical_resamples(
                [r.bootstrap[name][:, j] for r in per_seed],
                n_boot=min(len(r.bootstrap[name]) for r in per_seed),
                seed=0,
            )
            lo, hi = percentile_interval(pooled)
            objectives[name][m] = {
                "mean": float(np.nanmean(vals)),
                "std": float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else 0.0,
                "per_seed": vals.tolist(),
                "ci95": [float(lo), float(hi)],
            }
        if reference is None or name == reference:
            continue
        differences[name] = {}
        for j, m in enumerate(INTERPATIENT_METRICS):
            vals = np.array(
                [r.metrics[name][m] - r.metrics[reference][m] for r in per_seed], dtype=float
            )
            pooled = hierarchical_resamples(
                [r.bootstrap[name][:, j] - r.bootstrap[reference][:, j] for r in per_seed],
                n_boot=min(len(r.bootstrap[name]) for r in per_seed),
                seed=0,
            )
            lo, hi = percentile_interval(pooled)
            differences[name][m] = {
                "mean": float(np.nanmean(vals)),
                "per_seed": vals.tolist(),
                "ci95": [float(lo), float(hi)],
                "min_detectable_difference": minimum_detectable_difference(pooled),
            }
    first = per_seed[0]
    return {
        "objectives": objectives,
        "comparisons": {"reference": reference, "differences": differences},
        "unit": first.unit,
        "held_out_units_per_seed": [r.n_units for r in per_seed],
        "held_out_patients_per_seed": [r.n_patients for r in per_seed],
        "inter_patient_pairs_per_seed": [r.n_pairs for r in per_seed],
    }


def cosine_trajectory(frame: pd.DataFrame, patient_id: str) -> pd.DataFrame:
    """One patient's visits: mean embedding distance to the first visit and to the previous.

    Args:
        frame: embeddings frame holding the patient's scans (several visits).
        patient_id: the patient.

    Returns:
        One row per visit in order: visit, visit_order, score (mean), pred_score (mean),
        distance_to_first, distance_to_previous (cosine distances of the visits' mean
        embeddings; NaN for the first visit's previous).
    """
    rows = frame[frame["patient_id"].astype(str) == str(patient_id)]
    if rows.empty:
        raise DataError(f"patient {patient_id!r} is not in the embeddings")
    matrix = embedding_matrix(rows).astype(np.float64)
    orders = rows["visit_order"].to_numpy()
    visits = sorted(set(orders.tolist()))
    means = np.stack([matrix[orders == v].mean(axis=0) for v in visits])
    first = np.repeat(means[:1], len(visits), axis=0)
    previous = np.concatenate([means[:1], means[:-1]])
    to_previous = cosine_distance(means, previous)
    to_previous[0] = math.nan
    grouped = rows.groupby("visit_order", sort=True)
    return pd.DataFrame(
        {
            "visit": grouped["visit"].first().astype(str).to_numpy(),
            "visit_order": visits,
            "score": grouped["score"].mean().to_numpy(dtype=np.float64),
            "pred_score": (
                grouped["pred_score"].mean().to_numpy(dtype=np.float64)
                if "pred_score" in rows.columns
                else np.full(len(visits), np.nan)
            ),
            "distance_to_first": cosine_distance(means, first),
            "distance_to_previous": to_previous,
        }
    )
