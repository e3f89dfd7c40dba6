"""Intra-patient change pairs: scans -> visits -> consecutive visits -> worsen/stable/improve.

A visit's value is the mean over its scans (per zone when the frame has a ``zone`` column, so
that pairs compare the same lung zone or view). Consecutive visits of a patient form a pair;
the score change is labelled with a stable band ``delta`` in raw score units.

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
    extras = [c for c in ("visit", "split") if c in frame.columns and c not in keys + cols]
    if extras:
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
    jumps a visit). Pairs with a NaN score at either end (unlabelled) are dropped.

    Args:
        visits: from :func:`visit_table`: patient_id, [zone,] visit_order, score, ...

    Returns:
        Columns patient_id, [zone,] visit_from, visit_to (visit_order values), score_from,
        score_to, change (= score_to - score_from), index_from, index_to (0-based positions
        in ``visits``), and split (of the patient) when ``visits`` has one; sorted by
        patient_id, [zone,] visit_from.
    """
    zone = ["zone"] if _has_zone(visits) else []
    needed = ["patient_id", "visit_order", "score"]
    missing = [c for c in needed if c not in visits.columns]
    if missing:
        raise ValueError(f"consecutive_pairs needs columns {missing}; got {list(visits.columns)}")
    carry = ["split"] if "split" in visits.columns else []
    table = visits[["patient_id", *zone, "visit_order", "score", *carry]].reset_index(drop=True)
    table["index"] = np.arange(len(table), dtype=np.int64)

    sequence = table[["patient_id", "visit_order"]].drop_duplicates()
    sequence = sequence.sort_values(["patient_id", "visit_order"], kind="stable")
    sequence["visit_next"] = sequence.groupby("patient_id")["visit_order"].shift(-1)
    left = table.merge(sequence.dropna(subset=["visit_next"]), on=["patient_id", "visit_order"])
    left["visit_next"] = left["visit_next"].astype(np.int64)
    right = table[["patient_id", *zone, "visit_order", "score", "index"]].rename(
        columns={"visit_order": "visit_next"}
    )
    pairs = left.merge(right, on=["patient_id", *zone, "visit_next"], suffixes=("_from", "_to"))
    pairs = pairs.rename(columns={"visit_order": "visit_from", "visit_next": "visit_to"})
    pairs = pairs[pairs["score_from"].notna() & pairs["score_to"].notna()]
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
