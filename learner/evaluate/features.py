"""Change features from frozen embeddings: scans averaged into visits, and each pair of
visits turned into the probe's input (``d = u_to - u_from`` by default)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from learner.data.manifest import visit_time
from learner.data.pairs import visit_table
from learner.errors import ConfigError, DataError
from learner.evaluate.embeddings_io import embedding_matrix

FEATURES = ("diff", "concat", "hybrid", "rate")
# The frame column a caller may add to judge change against a finer reference than the
# observed score (``eval.target``): one value per scan, oriented so that higher = better.
# Only test patients' values are read, and only after every prediction is made.
TARGET_COLUMN = "target"


def visit_embeddings(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Average scans into visits: embeddings, score and predicted score.

    Args:
        frame: an embeddings frame (one row per scan; see docs/architecture.md).

    Returns:
        ``(visits, matrix)``: ``visits`` has one row per (patient_id, [zone,] visit_order)
        as :func:`learner.data.pairs.visit_table` gives it, with the mean ``score`` (NaN
        ignored) and ``pred_score``; ``matrix`` (V, D) float64 holds row i's mean embedding.
    """
    values = ["score", "embedding"]
    if "pred_score" in frame.columns:
        values.insert(1, "pred_score")
    prepared = frame.copy()
    # visit_table averages array cells element-wise; give it float64 arrays of one length.
    matrix = embedding_matrix(frame).astype(np.float64)
    prepared["embedding"] = list(matrix)
    visits = visit_table(prepared, value_cols=values)
    embedded = embedding_matrix(visits).astype(np.float64)
    return visits.drop(columns=["embedding"]), embedded


def change_features(
    visit_matrix: np.ndarray,
    pairs: pd.DataFrame,
    feature: Literal["diff", "concat", "hybrid", "rate"] | str = "diff",
    head: np.ndarray | None = None,
    times: np.ndarray | None = None,
) -> np.ndarray:
    """Pair features from visit embeddings.

    Args:
        visit_matrix: (V, D) visit embeddings from :func:`visit_embeddings`.
        pairs: from :func:`learner.data.pairs.consecutive_pairs` (``index_from``,
            ``index_to`` are rows of ``visit_matrix``).
        feature: ``"diff"``: ``u_to - u_from`` (P, D); ``"concat"``: ``[u_from, u_to]``
            (P, 2D), the ablation; ``"hybrid"``: ``[head_to - head_from, u_to - u_from]``
            (P, 1 + D), the score head's predicted change beside ``d``, so that a probe can
            start from ``head_delta`` and add what the embedding knows; ``"rate"``:
            ``(u_to - u_from) / (t_to - t_from)``, the change per unit of time between the
            visits (``times``; days where visits are dates).
        head: (V,) the score head's prediction per visit (``pred_score``); ``hybrid`` only.
        times: (V,) each visit's time (:func:`visit_times`); ``rate`` only.

    Returns:
        float64 array (P, D), (P, 2D) or (P, 1 + D).

    Raises:
        ConfigError: an unknown feature.
        DataError: ``hybrid`` without a finite head prediction for every visit of a pair.
    """
    index_from = pairs["index_from"].to_numpy(dtype=np.int64)
    index_to = pairs["index_to"].to_numpy(dtype=np.int64)
    start, end = visit_matrix[index_from], visit_matrix[index_to]
    if feature == "diff":
        return end - start
    if feature == "concat":
        return np.concatenate([start, end], axis=1)
    if feature == "hybrid":
        if head is None:
            raise DataError("feature 'hybrid' needs pred_score (the score head) for every visit")
        predicted = np.asarray(head, dtype=np.float64)
        change = (predicted[index_to] - predicted[index_from])[:, None]
        if not np.isfinite(change).all():
            raise DataError(
                "feature 'hybrid' needs pred_score for every visit of a pair, and some are "
                "missing (an untrained or head-less model): use feature diff"
            )
        return np.concatenate([change, end - start], axis=1)
    if feature == "rate":
        return (end - start) / _intervals(pairs, times)[:, None]
    raise ConfigError(f"feature={feature!r} is not known; use one of {list(FEATURES)}")


def visit_times(visits: pd.DataFrame) -> np.ndarray | None:
    """(V,) each visit's time from its ``visit`` value (a number as written, an ISO date in
    days; :func:`learner.data.manifest.visit_time`), or None when visits carry none."""
    if "visit" not in visits.columns:
        return None
    return np.array([visit_time(v) for v in visits["visit"]], dtype=np.float64)


def _intervals(pairs: pd.DataFrame, times: np.ndarray | None) -> np.ndarray:
    """(P,) time between the two visits of each pair; a clear error where there is none."""
    fix = (
        "feature 'rate' divides d by the time between visits: write the visit column as "
        "numbers (e.g. days since baseline) or ISO dates, or use feature diff"
    )
    if times is None:
        raise DataError(f"the visits carry no visit values; {fix}")
    index_from = pairs["index_from"].to_numpy(dtype=np.int64)
    index_to = pairs["index_to"].to_numpy(dtype=np.int64)
    interval = times[index_to] - times[index_from]
    bad = ~(np.isfinite(interval) & (interval > 0))
    if bad.any():
        first = int(np.argmax(bad))
        patient = pairs["patient_id"].iloc[first] if "patient_id" in pairs.columns else "?"
        raise DataError(
            f"patient {patient!r}: no positive time between visits {times[index_from[first]]:g} "
            f"and {times[index_to[first]]:g} ({int(bad.sum())} pairs); {fix}"
        )
    return interval


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise ``1 - cos(a_i, b_i)`` for (N, D) arrays; a zero vector counts as distance 1."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("nd,nd->n", a, b)
    return 1.0 - dots / np.maximum(norms, np.finfo(np.float64).tiny)


def temporal_pairs(visits: pd.DataFrame, matrix: np.ndarray) -> pd.DataFrame:
    """All visit pairs (not only consecutive) of (patient, [zone]) groups with 3+ visits.

    Returns:
        Columns patient_id, distance, abs_change; one row per pair i < j.
    """
    keys = ["patient_id", "zone"] if "zone" in visits.columns else ["patient_id"]
    labelled = visits[np.isfinite(visits["score"].to_numpy(dtype=np.float64))]
    rows: list[pd.DataFrame] = []
    for _, group in labelled.groupby(keys, sort=True, dropna=False):
        if len(group) < 3:
            continue
        first, second = np.triu_indices(len(group), k=1)
        index = group.index.to_numpy()
        scores = group["score"].to_numpy(dtype=np.float64)
        rows.append(
            pd.DataFrame(
                {
                    "patient_id": group["patient_id"].iloc[0],
                    "distance": cosine_distance(matrix[index[first]], matrix[index[second]]),
                    "abs_change": np.abs(scores[second] - scores[first]),
                }
            )
        )
    if not rows:
        return pd.DataFrame({"patient_id": [], "distance": [], "abs_change": []})
    return pd.concat(rows, ignore_index=True)


def test_target_change(
    frame: pd.DataFrame, test: pd.DataFrame, test_split: str
) -> np.ndarray | None:
    """(P,) the change of the :data:`TARGET_COLUMN` over each test pair (its visits' means,
    per zone where the frame has zones; NaN where a visit has no value), read from the test
    patients' rows alone; None without the column."""
    if TARGET_COLUMN not in frame.columns:
        return None
    rows = frame[frame["split"].astype(str) == test_split]
    rows = rows.assign(**{TARGET_COLUMN: pd.to_numeric(rows[TARGET_COLUMN], errors="coerce")})
    table = visit_table(rows, value_cols=[TARGET_COLUMN])
    keys = [k for k in ("patient_id", "zone") if k in table.columns and k in test.columns]
    index = table.set_index([*keys, "visit_order"])[TARGET_COLUMN]

    def lookup(column: str) -> np.ndarray:
        at = pd.MultiIndex.from_frame(test[[*keys, column]].rename(columns={column: "visit_order"}))
        return index.reindex(at).to_numpy(dtype=np.float64)

    return lookup("visit_to") - lookup("visit_from")
