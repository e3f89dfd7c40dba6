"""Patient-level splits: deterministic, never leaking a patient, hashed stably."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from learner.data.splits import (
    assign_splits,
    check_no_leakage,
    fixed_test_patients,
    kfold_patients,
    split_assignment,
    split_hash,
    split_patients,
)
from learner.errors import ConfigError, DataError

IDS = [f"p{i:02d}" for i in range(20)]


def _scans(ids: list[str], per_patient: int = 3) -> pd.DataFrame:
    """One row per scan, ``per_patient`` scans per patient, with spreadsheet rows."""
    patients = [p for p in ids for _ in range(per_patient)]
    return pd.DataFrame(
        {"patient_id": patients, "score": np.arange(len(patients), dtype=float)}
    ).assign(row=lambda f: np.arange(len(f)) + 2)


def test_split_sizes_follow_ratios_and_cover_every_patient() -> None:
    assignment = split_patients(IDS * 3, seed=0)  # repeats: one id per scan
    assert sorted(assignment) == IDS
    counts = pd.Series(assignment).value_counts().to_dict()
    assert counts == {"train": 14, "val": 3, "test": 3}
    custom = pd.Series(split_patients(IDS, seed=0, ratios=(0.5, 0.25, 0.25))).value_counts()
    assert custom.to_dict() == {"train": 10, "val": 5, "test": 5}


def test_same_seed_same_assignment_and_hash_different_seed_differs() -> None:
    a = split_patients(IDS, seed=3)
    b = split_patients(list(reversed(IDS)), seed=3)  # input order must not matter
    assert a == b
    assert split_hash(a) == split_hash(b)
    c = split_patients(IDS, seed=4)
    assert c != a
    assert split_hash(c) != split_hash(a)


def test_split_hash_is_canonical_sha256() -> None:
    a = {"b": "test", "a": "train"}
    assert split_hash(a) == split_hash({"a": "train", "b": "test"})
    assert split_hash(a) == hashlib.sha256(b'{"a":"train","b":"test"}').hexdigest()
    assert split_hash({"a": "train", "b": "val"}) != split_hash(a)


@pytest.mark.parametrize(("n", "expected"), [(1, [1, 0, 0]), (2, [1, 0, 1]), (3, [1, 1, 1])])
def test_small_cohorts(n: int, expected: list[int]) -> None:
    counts = pd.Series(split_patients(IDS[:n], seed=0)).value_counts()
    assert [int(counts.get(s, 0)) for s in ("train", "val", "test")] == expected


@pytest.mark.parametrize("n", range(3, 30))
def test_every_split_non_empty_from_three_patients(n: int) -> None:
    for ratios in ((0.7, 0.15, 0.15), (0.9, 0.05, 0.05), (0.2, 0.2, 0.6)):
        assignment = split_patients([f"x{i}" for i in range(n)], seed=n, ratios=ratios)
        assert set(assignment.values()) == {"train", "val", "test"}


@pytest.mark.parametrize(
    "ratios", [(0.7, 0.3, 0.0), (0.5, 0.5, 0.5), (0.7, 0.3), (1.2, -0.1, -0.1), ("a", 1, 1)]
)
def test_bad_ratios_raise_config_error(ratios) -> None:
    with pytest.raises(ConfigError, match="sum to 1"):
        split_patients(IDS, seed=0, ratios=ratios)


def test_no_patients_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no patients"):
        split_patients([], seed=0)


def test_kfold_tests_each_patient_exactly_once() -> None:
    folds = kfold_patients(IDS, k=4, seed=1)
    assert len(folds) == 4
    tested = [p for fold in folds for p, s in fold.items() if s == "test"]
    assert sorted(tested) == IDS
    for fold in folds:
        assert sorted(fold) == IDS
        counts = pd.Series(fold).value_counts()
        assert counts["test"] == 5
        assert counts["val"] == 2  # round(15 * 0.15)
        assert counts["train"] == 13
    assert kfold_patients(IDS, k=4, seed=1) == folds
    assert kfold_patients(IDS, k=4, seed=2) != folds


def test_kfold_uneven_and_bad_k() -> None:
    folds = kfold_patients(IDS[:7], k=3, seed=0)
    sizes = sorted(sum(s == "test" for s in fold.values()) for fold in folds)
    assert sizes == [2, 2, 3]
    with pytest.raises(ConfigError, match="lower k"):
        kfold_patients(IDS[:3], k=4, seed=0)
    with pytest.raises(ConfigError, match="at least 2"):
        kfold_patients(IDS, k=1, seed=0)


def test_assign_splits_draws_by_patient_without_leakage() -> None:
    frame = _scans(IDS)
    out = assign_splits(frame, seed=5)
    assert "split" not in frame.columns  # input untouched
    assert (out.groupby("patient_id")["split"].nunique() == 1).all()
    assert split_assignment(out) == split_patients(IDS, seed=5)
    check_no_leakage(out)


def test_assign_splits_keeps_a_given_split_column() -> None:
    frame = _scans(IDS[:3]).assign(split=["val"] * 3 + ["test"] * 3 + ["train"] * 3)
    out = assign_splits(frame, seed=0)
    assert out["split"].tolist() == frame["split"].tolist()


def test_assign_splits_rejects_partial_or_leaking_split_column() -> None:
    frame = _scans(IDS[:2], per_patient=2).assign(split=["train", "", "test", "test"])
    with pytest.raises(DataError, match="empty in 1 of 4 rows \\(rows 3\\)"):
        assign_splits(frame, seed=0)
    leaking = frame.assign(split=["train", "val", "test", "test"])
    with pytest.raises(DataError, match="patient 'p00' is in two splits: 'train' and 'val'"):
        assign_splits(leaking, seed=0)


def test_a_fixed_test_set_is_tested_by_every_seed_and_the_rest_drawn_into_train_val() -> None:
    ids = IDS[:12]
    marks = ["test"] * 3 * 4 + [""] * 3 * 8  # p00-p03 fixed test, p04-p11 drawn
    frame = _scans(ids).assign(split=marks)
    assert fixed_test_patients(frame) == ids[:4]
    drawn = []
    for seed in range(4):
        assignment = split_assignment(assign_splits(frame, seed=seed, ratios=(0.6, 0.2, 0.2)))
        assert [p for p, s in assignment.items() if s == "test"] == ids[:4]
        rest = {p: s for p, s in assignment.items() if p not in ids[:4]}
        assert sorted(rest.values()) == ["train"] * 6 + ["val"] * 2  # 0.6 : 0.2 of 8
        drawn.append(rest)
    assert len({tuple(sorted(d.items())) for d in drawn}) > 1  # seeds draw other trainers
    # Beside a fixed test set and a pool both, the pool keeps its mark.
    pooled = _scans([*ids, "q0"]).assign(split=[*marks, *["pretrain"] * 3])
    assert split_assignment(assign_splits(pooled, seed=0))["q0"] == "pretrain"


def test_check_no_leakage_names_patient_splits_and_rows() -> None:
    frame = _scans(["a", "b"], per_patient=2).assign(split=["train", "test", "val", "val"])
    with pytest.raises(DataError) as info:
        check_no_leakage(frame)
    assert info.value.problems == [
        "patient 'a' is in two splits: 'train' and 'test' (rows 2 and 3); keep all of a "
        "patient's scans in one split"
    ]
