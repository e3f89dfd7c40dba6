"""Change pairs: visit aggregation, consecutive (zone-matched) pairs, band and labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from learner.data.manifest import load_manifest
from learner.data.pairs import (
    LABELS,
    consecutive_pairs,
    label_changes,
    resolve_stable_band,
    visit_table,
)
from learner.errors import ConfigError, DataError


def _scans(rows: list[tuple]) -> pd.DataFrame:
    columns = ["patient_id", "visit_order", "score"] + (["zone"] if len(rows[0]) == 4 else [])
    return pd.DataFrame(rows, columns=columns)


def test_visit_table_means_scans_and_skips_unlabelled() -> None:
    frame = _scans(
        [("a", 1, 4.0), ("a", 0, 1.0), ("a", 0, 3.0), ("a", 1, np.nan), ("b", 0, np.nan)]
    )
    frame["visit"] = ["v2", "v1", "v1", "v2", "w"]
    frame["split"] = ["train"] * 4 + ["test"]
    visits = visit_table(frame)
    assert visits["patient_id"].tolist() == ["a", "a", "b"]
    assert visits["visit_order"].tolist() == [0, 1, 0]
    np.testing.assert_array_equal(visits["score"].to_numpy(), [2.0, 4.0, np.nan])
    assert visits["n_scans"].tolist() == [2, 2, 1]
    assert visits["visit"].tolist() == ["v1", "v2", "w"]
    assert visits["split"].tolist() == ["train", "train", "test"]


def test_visit_table_per_zone_and_array_columns() -> None:
    frame = _scans([("a", 0, 1.0, "L"), ("a", 0, 3.0, "R"), ("a", 0, 5.0, "L")])
    frame["embedding"] = [np.array([1.0, 0.0]), np.array([9.0, 9.0]), np.array([3.0, 2.0])]
    visits = visit_table(frame, value_cols=("score", "embedding"))
    assert visits["zone"].tolist() == ["L", "R"]
    np.testing.assert_array_equal(visits["score"].to_numpy(), [3.0, 3.0])
    np.testing.assert_array_equal(np.stack(visits["embedding"].to_numpy()), [[2, 1], [9, 9]])


def test_consecutive_pairs_follow_visit_order_not_row_order() -> None:
    visits = visit_table(
        _scans(
            [
                ("a", 2, 7.0),
                ("a", 0, 5.0),
                ("a", 1, 1.0),
                ("b", 0, 2.0),
                ("c", 0, 1.0),
                ("c", 1, 4.0),
            ]
        )
    )
    pairs = consecutive_pairs(visits)
    assert list(pairs.columns) == [
        "patient_id",
        "visit_from",
        "visit_to",
        "score_from",
        "score_to",
        "change",
        "index_from",
        "index_to",
    ]
    assert pairs[["patient_id", "visit_from", "visit_to"]].values.tolist() == [
        ["a", 0, 1],
        ["a", 1, 2],
        ["c", 0, 1],
    ]
    assert pairs["change"].tolist() == [-4.0, 6.0, 3.0]
    # index_* are positions in `visits` and point at the right scores.
    assert (visits["score"].to_numpy()[pairs["index_from"]] == pairs["score_from"]).all()
    assert (visits["score"].to_numpy()[pairs["index_to"]] == pairs["score_to"]).all()


def test_unlabelled_visit_drops_both_of_its_pairs_without_jumping() -> None:
    visits = visit_table(_scans([("a", 0, 5.0), ("a", 1, np.nan), ("a", 2, 7.0)]))
    assert consecutive_pairs(visits).empty


def test_zone_matched_pairs_skip_a_missing_zone() -> None:
    frame = _scans(
        [
            ("a", 0, 1.0, "L"),
            ("a", 0, 2.0, "R"),
            ("a", 1, 4.0, "L"),  # R not scanned at visit 1
            ("a", 2, 3.0, "L"),
            ("a", 2, 9.0, "R"),
        ]
    )
    pairs = consecutive_pairs(visit_table(frame))
    assert pairs[["zone", "visit_from", "visit_to", "change"]].values.tolist() == [
        ["L", 0, 1, 3.0],
        ["L", 1, 2, -1.0],
    ]  # no R pair 0 -> 2: visit 1 lies between them


def test_null_zone_column_means_no_zones() -> None:
    frame = _scans([("a", 0, 1.0), ("a", 1, 2.0)]).assign(zone=None)
    pairs = consecutive_pairs(visit_table(frame))
    assert "zone" not in pairs.columns and pairs["change"].tolist() == [1.0]


def test_split_travels_with_pairs() -> None:
    frame = _scans([("a", 0, 1.0), ("a", 1, 2.0)]).assign(split="val")
    assert consecutive_pairs(visit_table(frame))["split"].tolist() == ["val"]


@pytest.mark.parametrize(
    ("higher_is_better", "expected"),
    [
        (True, ["worsen", "stable", "stable", "stable", "stable", "improve"]),
        (False, ["improve", "stable", "stable", "stable", "stable", "worsen"]),
    ],
)
def test_label_changes_both_directions(higher_is_better: bool, expected: list[str]) -> None:
    changes = np.array([-2.5, -2.0, 0.0, 1.0, 2.0, 2.01])  # |change| == band is stable
    labels = label_changes(changes, 2.0, higher_is_better=higher_is_better)
    assert labels.tolist() == expected
    assert set(labels) <= set(LABELS)


def test_label_changes_rejects_nan_and_bad_band() -> None:
    with pytest.raises(ValueError, match="finite"):
        label_changes([1.0, np.nan], 1.0)
    with pytest.raises(ConfigError):
        label_changes([1.0], -1.0)


def test_stable_band_values() -> None:
    assert resolve_stable_band([], 2) == 2.0
    assert resolve_stable_band([], "0.5") == 0.5
    assert resolve_stable_band([], 0) == 0.0
    changes = np.array([-6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6], dtype=float)
    band = resolve_stable_band(changes, "tertiles")
    assert band == pytest.approx(np.quantile(np.abs(changes), 1 / 3))
    assert band == pytest.approx(8 / 3)
    counts = pd.Series(label_changes(changes, band)).value_counts().to_dict()
    assert counts == {"worsen": 4, "stable": 4, "improve": 4}


@pytest.mark.parametrize("delta", [-1, "abc", "nan", float("inf"), True, None, "tertile"])
def test_stable_band_rejects_bad_values(delta: object) -> None:
    with pytest.raises(ConfigError, match="'tertiles'"):
        resolve_stable_band([1.0], delta)  # type: ignore[arg-type]


def test_tertiles_without_pairs_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no"):
        resolve_stable_band(np.array([]), "tertiles")


def test_pairs_from_a_loaded_manifest(write_manifest) -> None:
    text = (
        "patient_id,visit,path,score,zone\n"
        "p,2020-02-01,a.npy,20,L\n"
        "p,2020-01-01,a.npy,24,L\n"
        "p,2020-02-01,b.npy,26,R\n"
        "p,2020-01-01,b.npy,25,R\n"
        "q,1,a.npy,10,L\n"
    )
    frame = load_manifest(write_manifest(text, files=("a.npy", "b.npy"))).frame
    pairs = consecutive_pairs(visit_table(frame))
    labels = label_changes(
        pairs["change"], resolve_stable_band(pairs["change"], 2), higher_is_better=True
    )
    assert pairs["zone"].tolist() == ["L", "R"]
    assert labels.tolist() == ["worsen", "stable"]
