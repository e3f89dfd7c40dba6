"""Intra-patient change pairs: scans -> visits -> consecutive visits -> worsen/stable/improve.

A visit's value is the mean over its scans (per zone when the frame has a ``zone`` column, so
that pairs compare the same lung zone or view). Consecutive visits of a patient form a pair;
the score change is labelled with a stable band ``delta`` in raw score units, unless the
manifest gives the clinician's own label of the change (``change_label`` on the later visit),
which then takes precedence (:func:`pair_labels`).

Example:
    >>> frame = pd.DataFrame({"patient_id": ["a", "a", "a"], "visit_order": [0, 1, 2],
    ...                       "score": [10.0, 14.0, 13.0]})
    >>> pairs = consecutive_pairs(visit_table(frame))
    >>> pairs["change"].tolist()
    [4.0, -1.0]
    >>> label_changes(pairs["change"], 2.0).tolist()
    ['improve', 'stable']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from learner.errors import ConfigError, DataError

LABELS = ("worsen", "stable", "improve")
# The manifest column holding a clinician's judgement of the change from the previous visit
# to this one (a visit's value, one of LABELS, or missing), and the two sources of a label.
CHANGE_LABEL = "change_label"
CLINICIAN, SCORE = "clinician", "score"
LABEL_SOURCES = (CLINICIAN, SCORE)
TERTILES: Final = "tertiles"
# The one default stable band of `validate`, `evaluate` and `run` (eval.delta): a third of the
# training pairs' |change|, so the three classes are about equally frequent.
DEFAULT_DELTA: Literal["tertiles"] = "tertiles"


def resolve_delta(
    given: float | str | None,
    *,
    config: tuple[str, float | str] | None = None,
    run: float | str | None = None,
) -> tuple[float | str, str]:
    """The stable band a command uses, and where it came from, in order of precedence: the
    command line's ``given``, a config file's ``eval.delta`` (``config`` = (file, value)),
    the band of the run that wrote the embeddings, else :data:`DEFAULT_DELTA`.

    Example:
        >>> resolve_delta(None, config=("mri.yaml", 2.0))
        (2.0, 'mri.yaml eval.delta')
        >>> resolve_delta(None, run=0.5)
        (0.5, 'the run that wrote the embeddings')
    """
    if given is not None:
        return given, "--delta"
    if config is not None:
        return config[1], f"{config[0]} eval.delta"
    if run is not None:
        return run, "the run that wrote the embeddings"
    return DEFAULT_DELTA, "the default"


def _has_zone(frame: pd.DataFrame) -> bool:
    # An embeddings file writes zone as null everywhere when the manifest had none.
    return "zone" in frame.columns and bool(frame["zone"].notna().any())


def visit_table(frame: pd.DataFrame, value_cols: Sequence[str] = ("score",)) -> pd.DataFrame:
    """Aggregate scans to visits: one row per (patient_id, [zone,] visit_order).

    Numeric columns are averaged ignoring NaN (a visit with some unlabelled scans gets the
    mean of its labelled ones; NaN when none is labelled). Columns whose cells are arrays or
    lists (e.g. ``embedding``, each (D,)) are averaged element-wise into one (D,) array.

    Args:
        frame: one row per scan with ``patient_id``, ``visit_order`` (int), the
            ``value_cols``, and optionally ``zone``, ``visit`` and ``split``.
        value_cols: columns to average.

    Returns:
        Sorted by patient_id, [zone,] visit_order, with columns patient_id, [zone,] visit_order,
        ``visit`` and ``split`` (first value, when present), ``n_scans`` and the value_cols.
    """
    cols = list(value_cols)
    keys = ["patient_id", *(["zone"] if _has_zone(frame) else []), "visit_order"]
    missing = [c for c in keys + cols if c not in frame.columns]
    if missing:
        raise ValueError(f"visit_table needs columns {missing}; got {list(frame.columns)}")
    groups = frame.groupby(keys, sort=True, dropna=False)
    out = groups.size().rename("n_scans").reset_index()
    carried = ("visit", "split", CHANGE_LABEL)
    extras = [c for c in carried if c in frame.columns and c not in keys + cols]
    if extras:
        # first() skips missing cells: a visit's clinician label is the same on all its rows.
        out[extras] = groups[extras].first().to_numpy()
    for column in cols:
        if _is_array_column(frame[column]):
            # Stacking per group keeps one vectorised mean per visit: (n_scans, D) -> (D,).
            means = groups[column].agg(lambda s: np.stack(list(s)).mean(axis=0))
            out[column] = list(means.to_numpy())
        else:
            out[column] = groups[column].mean().to_numpy()
    return out


def _is_array_column(column: pd.Series) -> bool:
    return (
        column.dtype == object
        and len(column) > 0
        and isinstance(column.iloc[0], np.ndarray | list | tuple)
    )


def consecutive_pairs(visits: pd.DataFrame) -> pd.DataFrame:
    """Pairs of consecutive visits of each patient (zone-matched when ``zone`` exists).

    A patient's visit sequence is the sorted ``visit_order`` values it has in ``visits``;
    each visit pairs with the next one. With zones, a (patient, zone) row pairs with the same
    zone at the patient's next visit; a zone missing at either visit skips that pair (never
    jumps a visit). Pairs with a NaN score at either end (unlabelled) are dropped, unless
    the clinician labelled the pair: the probe needs embeddings, not scores.

    Args:
        visits: from :func:`visit_table`: patient_id, [zone,] visit_order, score, ...
            and optionally :data:`CHANGE_LABEL` (the later visit's clinician label).

    Returns:
        Columns patient_id, [zone,] visit_from, visit_to (visit_order values), score_from,
        score_to, change (= score_to - score_from; NaN for a clinician-labelled pair without
        scores), index_from, index_to (0-based positions in ``visits``), split (of the
        patient) when ``visits`` has one, and :data:`CHANGE_LABEL` when ``visits`` has it
        (the ``visit_to`` visit's label, None where absent or where the pair skips a visit
        the manifest has); sorted by patient_id, [zone,] visit_from.
    """
    zone = ["zone"] if _has_zone(visits) else []
    needed = ["patient_id", "visit_order", "score"]
    missing = [c for c in needed if c not in visits.columns]
    if missing:
        raise ValueError(f"consecutive_pairs needs columns {missing}; got {list(visits.columns)}")
    carry = [c for c in ("split", CHANGE_LABEL) if c in visits.columns]
    table = visits[["patient_id", *zone, "visit_order", "score", *carry]].reset_index(drop=True)
    table["index"] = np.arange(len(table), dtype=np.int64)

    sequence = table[["patient_id", "visit_order"]].drop_duplicates()
    sequence = sequence.sort_values(["patient_id", "visit_order"], kind="stable")
    sequence["visit_next"] = sequence.groupby("patient_id")["visit_order"].shift(-1)
    left = table.merge(sequence.dropna(subset=["visit_next"]), on=["patient_id", "visit_order"])
    left["visit_next"] = left["visit_next"].astype(np.int64)
    labelled = [CHANGE_LABEL] if CHANGE_LABEL in carry else []
    right = table[["patient_id", *zone, "visit_order", "score", "index", *labelled]].rename(
        columns={"visit_order": "visit_next"}
    )
    pairs = left.merge(right, on=["patient_id", *zone, "visit_next"], suffixes=("_from", "_to"))
    pairs = pairs.rename(columns={"visit_order": "visit_from", "visit_next": "visit_to"})
    keep = pairs["score_from"].notna() & pairs["score_to"].notna()
    if CHANGE_LABEL in carry:
        pairs = pairs.drop(columns=[f"{CHANGE_LABEL}_from"]).rename(
            columns={f"{CHANGE_LABEL}_to": CHANGE_LABEL}
        )
        # visit_order ranks every visit of the manifest: a gap means a visit whose scans were
        # all skipped, and the label of the later visit judges the change from that one.
        adjacent = pairs["visit_to"] == pairs["visit_from"] + 1
        given = pairs[CHANGE_LABEL].isin(LABELS) & adjacent
        pairs[CHANGE_LABEL] = pairs[CHANGE_LABEL].where(given, None)
        keep |= given
    pairs = pairs[keep]
    pairs = pairs.assign(change=pairs["score_to"] - pairs["score_from"])
    columns = [
        "patient_id",
        *zone,
        "visit_from",
        "visit_to",
        "score_from",
        "score_to",
        "change",
        "index_from",
        "index_to",
        *carry,
    ]
    pairs = pairs[columns].sort_values(["patient_id", *zone, "visit_from"], kind="stable")
    return pairs.reset_index(drop=True)


def resolve_stable_band(changes: npt.ArrayLike, delta: float | str) -> float:
    """The stable band in raw score units.

    Args:
        changes: (n_pairs,) score changes; used only for ``"tertiles"`` (pass training pairs).
        delta: a number >= 0 (also as text, e.g. from the command line), or ``"tertiles"``:
            the 1/3 quantile of |change|, so that about a third of the pairs are stable.

    Returns:
        The band, a finite float >= 0.

    Raises:
        ConfigError: ``delta`` is neither a finite number >= 0 nor ``"tertiles"``.
        DataError: ``"tertiles"`` with no finite change to take the quantile of.
    """
    if isinstance(delta, str) and delta.strip().lower() == TERTILES:
        values = np.abs(np.asarray(changes, dtype=np.float64).ravel())
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise DataError(
                "delta 'tertiles' needs change pairs but there are none; give a number "
                "for delta or add patients with two or more labelled visits"
            )
        return float(np.quantile(values, 1.0 / 3.0))
    number = _as_band(delta)
    if number is None:
        raise ConfigError(
            f"delta={delta!r} is not valid; use a number >= 0 in score units (e.g. 2) or 'tertiles'"
        )
    return number


def _as_band(delta: Any) -> float | None:
    if isinstance(delta, bool):
        return None
    try:
        number = float(delta.strip() if isinstance(delta, str) else delta)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def label_changes(
    changes: npt.ArrayLike, band: float, *, higher_is_better: bool = True
) -> np.ndarray:
    """Label score changes worsen / stable / improve.

    Args:
        changes: (n_pairs,) ``score_to - score_from``, finite.
        band: stable band >= 0; ``|change| <= band`` is stable.
        higher_is_better: whether a higher score means better health (S/F, MMSE); when
            False a rising score is ``worsen``.

    Returns:
        (n_pairs,) array of strings from :data:`LABELS`.

    Raises:
        ConfigError: ``band`` is not a finite number >= 0.
        ValueError: a change is not finite (drop unlabelled pairs first).
    """
    checked = _as_band(band)
    if checked is None or isinstance(band, str):
        raise ConfigError(f"stable band {band!r} is not valid; use a number >= 0")
    values = np.asarray(changes, dtype=np.float64).ravel()
    if not np.isfinite(values).all():
        raise ValueError("changes must be finite; drop pairs with unlabelled visits first")
    signed = values if higher_is_better else -values
    # Codes index LABELS: 0 worsen, 1 stable, 2 improve.
    codes = np.ones(values.shape, dtype=np.int64)
    codes[signed > checked] = 2
    codes[signed < -checked] = 0
    return np.asarray(LABELS)[codes]


def pair_labels(
    pairs: pd.DataFrame, band: float, *, higher_is_better: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's label and where it came from: the clinician's :data:`CHANGE_LABEL` where
    the pair has one, else the score change in the stable band (:func:`label_changes`).

    Args:
        pairs: from :func:`consecutive_pairs` (``change``, optionally :data:`CHANGE_LABEL`).
        band, higher_is_better: as :func:`label_changes`, for the pairs without a clinician
            label (their ``change`` must be finite).

    Returns:
        ``(labels, sources)``: (n_pairs,) strings from :data:`LABELS` and (n_pairs,) strings
        :data:`CLINICIAN` or :data:`SCORE`.
    """
    given = clinician_given(pairs)
    labels = np.empty(len(pairs), dtype=object)
    if given.any():
        labels[given] = pairs[CHANGE_LABEL].to_numpy(dtype=object)[given]
    scored = ~given
    if scored.any():
        changes = pairs["change"].to_numpy(dtype=np.float64)[scored]
        labels[scored] = label_changes(changes, band, higher_is_better=higher_is_better)
    sources = np.where(given, CLINICIAN, SCORE)
    return labels.astype(str), sources


def clinician_given(pairs: pd.DataFrame) -> np.ndarray:
    """(n_pairs,) bool: whether each pair carries a clinician's change label."""
    if CHANGE_LABEL not in pairs.columns:
        return np.zeros(len(pairs), dtype=bool)
    return pairs[CHANGE_LABEL].isin(LABELS).to_numpy(dtype=bool)


def source_counts(sources: npt.ArrayLike) -> dict[str, int]:
    """``{"clinician": n, "score": m}``: how many labels came from each source."""
    values = np.asarray(sources, dtype=object)
    return {source: int(np.sum(values == source)) for source in LABEL_SOURCES}


def labels_source(counts: dict[str, int]) -> str:
    """``clinician``, ``score`` or ``mixed``: the source of a set of labels, from
    :func:`source_counts`."""
    if counts.get(CLINICIAN, 0) and counts.get(SCORE, 0):
        return "mixed"
    return CLINICIAN if counts.get(CLINICIAN, 0) else SCORE


def with_change_labels(frame: pd.DataFrame, source: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (one row per scan) with the :data:`CHANGE_LABEL` of ``source``'s visits (a
    manifest frame), matched on (patient_id, visit_order); without the column when
    ``source`` has none. `run` reads the labels from the manifest at evaluation, so that an
    edited label re-evaluates a cell whose cached embeddings hold the old one."""
    out = frame.drop(columns=[CHANGE_LABEL], errors="ignore")
    if CHANGE_LABEL not in source.columns:
        return out
    given = source[source[CHANGE_LABEL].isin(LABELS)]
    per_visit = dict(
        zip(
            zip(given["patient_id"].astype(str), given["visit_order"].astype(int), strict=True),
            given[CHANGE_LABEL],
            strict=True,
        )
    )
    keys = zip(out["patient_id"].astype(str), out["visit_order"].astype(int), strict=True)
    labels = [per_visit.get(key) for key in keys]
    out[CHANGE_LABEL] = pd.Series(labels, index=out.index, dtype=object)
    return out


def split_label_counts(frame: pd.DataFrame, splits: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per split, how many of its consecutive visit pairs carry a clinician label and how
    many take the score's (:func:`source_counts`), from a frame of scans with ``split``."""
    pairs = consecutive_pairs(visit_table(frame))
    given = clinician_given(pairs)
    split = pairs["split"].astype(str).to_numpy() if "split" in pairs.columns else None
    out = {}
    for name in splits:
        chosen = split == name if split is not None else np.zeros(len(pairs), dtype=bool)
        out[name] = source_counts(np.where(given[chosen], CLINICIAN, SCORE))
    return out
