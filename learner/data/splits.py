"""Patient-level train / val / test splits: deterministic from the seed, hashed, leak-checked.

No patient is ever in two splits. Assignments are plain
``{patient_id: split}`` dicts so that they can be saved as ``split.json`` with their hash.

Example:
    >>> assignment = split_patients(["p1", "p2", "p3", "p4"], seed=0)
    >>> sorted(set(assignment.values()))
    ['test', 'train', 'val']
    >>> len(split_hash(assignment))
    64
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from learner.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
# Patients marked `pretrain` (a cross-sectional pool, typically one visit each) only ever
# train the encoder: never validation, never a change pair, never a test patient.
PRETRAIN = "pretrain"
GIVEN_SPLITS = (*SPLITS, PRETRAIN)
# Marks a manifest may give while leaving other patients' split empty (drawn from the seed).
BESIDE_DRAWN = (PRETRAIN, "test")
# Splits whose scans train the encoder.
TRAINING_SPLITS = ("train", PRETRAIN)
DEFAULT_RATIOS = (0.7, 0.15, 0.15)


def split_patients(
    patient_ids: Iterable[str],
    *,
    seed: int,
    ratios: Sequence[float] = DEFAULT_RATIOS,
) -> dict[str, str]:
    """Assign each patient to train / val / test, deterministically from ``seed``.

    The sorted distinct ids are permuted with ``numpy.random.default_rng(seed)``; the first
    share goes to train, the next to val, the rest to test. Split sizes follow ``ratios`` by
    largest remainder, and every split gets at least one patient when there are 3 or more
    (with 2 patients: one train, one test; with 1: train).

    Args:
        patient_ids: ids, repeats allowed (one per scan is fine).
        seed: random seed.
        ratios: (train, val, test) shares, each > 0, summing to 1.

    Returns:
        ``{patient_id: "train" | "val" | "test"}`` sorted by patient id.

    Raises:
        ConfigError: ratios are not three positive numbers summing to 1.
        DataError: there are no patients.
    """
    shares = _check_ratios(ratios)
    ids = _distinct_ids(patient_ids)
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_train, n_val, _ = _split_sizes(len(ids), shares)
    assignment: dict[str, str] = {}
    for position, index in enumerate(perm):
        if position < n_train:
            assignment[ids[index]] = "train"
        elif position < n_train + n_val:
            assignment[ids[index]] = "val"
        else:
            assignment[ids[index]] = "test"
    return dict(sorted(assignment.items()))


def kfold_patients(
    patient_ids: Iterable[str],
    *,
    k: int,
    seed: int,
    val_ratio: float = 0.15,
) -> list[dict[str, str]]:
    """Patient-grouped k-fold assignments: each patient is in test in exactly one fold.

    Folds are consecutive chunks of a seeded permutation of the sorted distinct ids (sizes
    differ by at most one). In each fold the remaining patients are shuffled again from the
    same generator and ``val_ratio`` of them (at least one when two or more remain) go to val,
    the rest to train.

    Args:
        patient_ids: ids, repeats allowed.
        k: number of folds, 2 <= k <= number of patients.
        seed: random seed.
        val_ratio: share of the non-test patients used for validation, in [0, 1).

    Returns:
        ``k`` assignments ``{patient_id: split}``, each sorted by patient id.

    Raises:
        ConfigError: ``k`` or ``val_ratio`` is out of range.
        DataError: there are no patients.
    """
    ids = _distinct_ids(patient_ids)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
        raise ConfigError(f"k={k!r} folds is not valid; use an integer of at least 2")
    if k > len(ids):
        raise ConfigError(
            f"k={k} folds need at least {k} patients but there are {len(ids)}; lower k"
        )
    if not (isinstance(val_ratio, int | float) and 0 <= val_ratio < 1):
        raise ConfigError(f"val_ratio={val_ratio!r} is not valid; use a number in [0, 1)")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ids))
    folds: list[dict[str, str]] = []
    for test_positions in np.array_split(np.arange(len(ids)), int(k)):
        test = perm[test_positions]
        rest = rng.permutation(np.setdiff1d(perm, test))
        n_val = round(len(rest) * val_ratio)
        n_val = max(n_val, 1) if val_ratio > 0 and len(rest) >= 2 else n_val
        n_val = min(n_val, len(rest) - 1)
        assignment = {ids[i]: "test" for i in test}
        assignment.update({ids[i]: "val" for i in rest[:n_val]})
        assignment.update({ids[i]: "train" for i in rest[n_val:]})
        folds.append(dict(sorted(assignment.items())))
    return folds


def assign_splits(
    frame: pd.DataFrame,
    *,
    seed: int,
    ratios: Sequence[float] = DEFAULT_RATIOS,
) -> pd.DataFrame:
    """Return a copy of ``frame`` with a ``split`` column, by patient.

    A ``split`` column already in the frame (e.g. from the manifest) is kept when every row has
    one; otherwise splits are drawn with :func:`split_patients`, except for patients marked
    ``pretrain`` (a pretraining pool) or ``test`` (a fixed test set), who keep that mark.
    Beside a fixed test set the other patients are drawn into train and val only, in the
    proportion of the first two ``ratios``: every seed then tests the same patients, and only
    the training patients (and the models) change between seeds.

    Args:
        frame: one row per scan with ``patient_id`` (and optionally ``split``).
        seed: random seed for drawn splits.
        ratios: (train, val, test) shares for drawn splits.

    Returns:
        A copy with ``split`` filled.

    Raises:
        DataError: a given split column is partly empty (other than beside ``pretrain``
            and ``test`` rows), holds unknown values, or puts a patient in two splits.
        ConfigError: bad ratios.
    """
    out = frame.copy()
    given = out["split"] if "split" in out.columns else None
    if given is None or not (given.notna() & (given.astype(str) != "")).any():
        assignment = split_patients(out["patient_id"].astype(str), seed=seed, ratios=ratios)
        out["split"] = out["patient_id"].astype(str).map(assignment)
        return out
    text = given.fillna("").astype(str)
    unknown = ~text.isin([*GIVEN_SPLITS, ""])
    if unknown.any():
        raise DataError(
            f"the split column holds {sorted(set(text[unknown]))} ({_where(out, unknown)}); "
            f"use only {', '.join(GIVEN_SPLITS)}"
        )
    empty = text == ""
    if empty.any() and not text[~empty].isin(BESIDE_DRAWN).all():
        raise DataError(
            f"the split column is empty in {int(empty.sum())} of {len(out)} rows "
            f"({_where(out, empty)}); fill it with train, val or test everywhere, mark only "
            "a pretraining pool (pretrain) and/or a fixed test set (test) and leave the rest "
            "empty, or delete the column to assign splits from the seed"
        )
    out["split"] = text
    check_no_leakage(out)
    if empty.any():
        # Marked patients keep their mark; every other patient is drawn from the seed.
        ids = out.loc[empty, "patient_id"].astype(str)
        fixed_test = bool((text == "test").any())
        drawn = (
            split_train_val(ids, seed=seed, ratios=ratios)
            if fixed_test
            else split_patients(ids, seed=seed, ratios=ratios)
        )
        out.loc[empty, "split"] = ids.map(drawn)
    return out


def split_train_val(
    patient_ids: Iterable[str], *, seed: int, ratios: Sequence[float] = DEFAULT_RATIOS
) -> dict[str, str]:
    """Assign each patient to train or val (beside a fixed test set), deterministically from
    ``seed``: the permutation of :func:`split_patients`, train and val sized in the
    proportion of ``ratios``' first two shares (largest remainder), each non-empty when
    there are two or more patients.

    Example:
        >>> drawn = split_train_val([f"p{i}" for i in range(8)], seed=0, ratios=(0.6, 0.2, 0.2))
        >>> sorted(drawn.values()).count("train"), sorted(drawn.values()).count("val")
        (6, 2)
    """
    train_share, val_share, _ = _check_ratios(ratios)
    ids = _distinct_ids(patient_ids)
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_train = round(len(ids) * train_share / (train_share + val_share))
    n_train = min(max(n_train, 1), max(len(ids) - 1, 1))
    assignment = {ids[i]: ("train" if pos < n_train else "val") for pos, i in enumerate(perm)}
    return dict(sorted(assignment.items()))


def marked_patients(frame: pd.DataFrame, mark: str) -> list[str]:
    """Sorted ids of the patients a manifest marks ``mark`` in its split column (none
    without one)."""
    if "split" not in frame.columns:
        return []
    marked = frame.loc[frame["split"].astype(str) == mark, "patient_id"]
    return sorted(set(marked.astype(str)))


def pool_patients(frame: pd.DataFrame) -> list[str]:
    """Sorted ids of the patients a manifest marks ``pretrain`` (a pretraining pool)."""
    return marked_patients(frame, PRETRAIN)


def fixed_test_patients(frame: pd.DataFrame) -> list[str]:
    """Sorted ids of the patients a manifest marks ``test`` (a fixed test set)."""
    return marked_patients(frame, "test")


def split_assignment(frame: pd.DataFrame) -> dict[str, str]:
    """The ``{patient_id: split}`` of a frame whose patients each sit in one split.

    Raises:
        DataError: a patient is in two splits (see :func:`check_no_leakage`).
    """
    check_no_leakage(frame)
    pairs = frame[["patient_id", "split"]].drop_duplicates()
    return dict(
        sorted(zip(pairs["patient_id"].astype(str), pairs["split"].astype(str), strict=True))
    )


def split_hash(assignment: dict[str, str]) -> str:
    """SHA-256 hex digest of the assignment as canonical JSON (sorted keys, no spaces).

    Equal assignments give equal hashes whatever the dict's insertion order.
    """
    canonical = json.dumps(
        {str(k): str(v) for k, v in assignment.items()},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def check_no_leakage(frame: pd.DataFrame) -> None:
    """Raise if any patient appears in two splits.

    Args:
        frame: rows with ``patient_id`` and ``split`` (and ``row`` for messages, if present).

    Raises:
        DataError: one problem line per leaking patient, naming the patient and two splits.
    """
    splits = frame.groupby(frame["patient_id"].astype(str), sort=True)["split"]
    counts = splits.nunique(dropna=True)
    problems = []
    for patient in counts.index[counts.to_numpy() > 1]:
        rows = frame[frame["patient_id"].astype(str) == patient]
        firsts = rows.drop_duplicates("split")
        (a, b) = firsts["split"].astype(str).tolist()[:2]
        where = ""
        if "row" in rows.columns:
            where = f" (rows {firsts['row'].iloc[0]} and {firsts['row'].iloc[1]})"
        problems.append(
            f"patient {patient!r} is in two splits: {a!r} and {b!r}{where}; "
            "keep all of a patient's scans in one split"
        )
    if problems:
        raise DataError(problems[0], problems=problems)


def _distinct_ids(patient_ids: Iterable[str]) -> list[str]:
    ids = sorted({str(p) for p in patient_ids})
    if not ids:
        raise DataError("there are no patients to split; check the manifest has rows")
    return ids


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    try:
        shares = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        shares = ()
    if (
        len(shares) != 3
        or not all(math.isfinite(r) and r > 0 for r in shares)
        or not math.isclose(sum(shares), 1.0, abs_tol=1e-6)
    ):
        raise ConfigError(
            f"split ratios {list(ratios) if isinstance(ratios, Sequence) else ratios!r} are "
            "not valid; give three positive numbers (train, val, test) that sum to 1, "
            "e.g. [0.7, 0.15, 0.15]"
        )
    return shares[0], shares[1], shares[2]


def _split_sizes(n: int, shares: tuple[float, float, float]) -> tuple[int, int, int]:
    """(train, val, test) counts summing to ``n`` by largest remainder, none empty if n >= 3."""
    exact = [n * share for share in shares]
    sizes = [math.floor(x) for x in exact]
    # Hand out the leftovers to the largest fractional parts; ties go to train, val, test.
    for i in sorted(range(3), key=lambda j: -(exact[j] - sizes[j]))[: n - sum(sizes)]:
        sizes[i] += 1
    # Guarantee non-empty splits in priority train, test, val, taking from the largest.
    for i in (0, 2, 1)[: min(n, 3)]:
        if sizes[i] == 0:
            donor = max(range(3), key=lambda j: sizes[j])
            sizes[donor] -= 1
            sizes[i] += 1
    return sizes[0], sizes[1], sizes[2]


def _where(frame: pd.DataFrame, mask: pd.Series) -> str:
    """'rows 3, 7, ...' when the frame has spreadsheet rows, else 'positions ...'."""
    label, values = (
        ("rows", frame.loc[mask, "row"])
        if "row" in frame
        else ("positions", pd.Series(np.flatnonzero(mask.to_numpy())))
    )
    shown = ", ".join(str(v) for v in values.head(5).tolist())
    return f"{label} {shown}{', ...' if mask.sum() > 5 else ''}"
