"""A cross-sectional pretraining pool (`split = pretrain`): it trains the encoder and nothing
else; the longitudinal patients are unchanged by it and split from the seed as before."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from learner.data.splits import PRETRAIN, assign_splits, kfold_patients, pool_patients
from learner.data.synthetic.common import cohort_table, with_pool
from learner.errors import DataError


def test_pool_is_single_visit_and_leaves_the_cohort_unchanged() -> None:
    base = cohort_table("mri", patients=10, seed=3, preset="tiny")
    pooled = with_pool("mri", patients=10, pool=6, seed=3, preset="tiny")
    cohort = pooled[pooled["split"] == ""].drop(columns=["split"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(cohort, base)
    pool = pooled[pooled["split"] == PRETRAIN]
    assert pool["patient_id"].nunique() == 6 and pool.groupby("patient_id").size().max() == 1
    assert set(pool["patient_id"]) == {f"Q{i:03d}" for i in range(6)}
    assert not set(pool["patient_index"]) & set(base["patient_index"])
    with pytest.raises(Exception, match="pool"):
        with_pool("mri", patients=10, pool=-1, seed=3, preset="tiny")


def _frame(splits: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": [f"p{i}" for i in range(len(splits))], "split": splits})


def test_assign_splits_keeps_the_pool_and_draws_the_rest() -> None:
    frame = _frame(["pretrain"] * 4 + [""] * 10)
    out = assign_splits(frame, seed=0, ratios=(0.6, 0.2, 0.2))
    assert (out["split"].iloc[:4] == PRETRAIN).all()
    assert set(out["split"].iloc[4:]) == {"train", "val", "test"}
    # The drawn split of the others is the one they would get without a pool.
    alone = assign_splits(frame.iloc[4:].drop(columns=["split"]), seed=0, ratios=(0.6, 0.2, 0.2))
    assert out["split"].iloc[4:].tolist() == alone["split"].tolist()
    assert pool_patients(out) == ["p0", "p1", "p2", "p3"]


def test_partly_empty_splits_other_than_a_pool_are_an_error() -> None:
    with pytest.raises(DataError, match="mark only a pretraining pool"):
        assign_splits(_frame(["train", "", "test"]), seed=0)


def test_kfold_over_the_longitudinal_patients_only(tmp_path: Path) -> None:
    from learner.config import Config
    from learner.data.manifest import Manifest
    from learner.train.prepared import prepare_data

    frame = pd.DataFrame(
        {
            "patient_id": [f"p{i}" for i in range(8)] + ["q0", "q1"],
            "visit": ["0"] * 10,
            "visit_order": [0] * 10,
            "score": [float(i) for i in range(10)],
            "f0": [0.1 * i for i in range(10)],
            "split": [""] * 8 + ["pretrain"] * 2,
            "row": list(range(2, 12)),
        }
    )
    manifest = Manifest(frame=frame, source=tmp_path / "m.csv", feature_columns=["f0"])
    cfg = Config.model_validate(
        {
            "data": {"feature_columns": ["f0"], "input": {"kind": "tabular"}},
            "model": {"encoder": "mlp"},
        }
    )
    fold = kfold_patients([f"p{i}" for i in range(8)], k=4, seed=0)[0]
    data = prepare_data(cfg, manifest, fold)
    assert data.assignment["q0"] == data.assignment["q1"] == PRETRAIN
    # The pool counts as training data for the score range and the encoder.
    assert data.score_range[1] == 9.0


def test_a_pool_is_single_visit_by_design_and_not_warned_about(tmp_path: Path) -> None:
    from learner.data.manifest import load_manifest

    rows = ["patient_id,visit,path,score,split"]
    rows += [f"p{i},{v},p{i}_{v}.npy,{i + v},train" for i in range(3) for v in range(2)]
    rows += ["p9,0,p9_0.npy,1,test"]  # a longitudinal patient seen once: warned
    rows += [f"q{i},0,q{i}.npy,{i},pretrain" for i in range(4)]  # the pool: not warned
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    manifest = load_manifest(tmp_path / "manifest.csv", check_files=False)
    single = [w for w in manifest.warnings if "single visit" in w]
    assert len(single) == 1 and "1 patient(s)" in single[0] and "'p9'" in single[0]


def test_a_fixed_test_set_loads_beside_empty_rows_and_refuses_folds(tmp_path: Path) -> None:
    from learner.config import Config
    from learner.data.manifest import load_manifest
    from learner.errors import ConfigError
    from learner.pipeline.grid import plan_cells

    rows = ["patient_id,visit,score,f0,split"]
    rows += [f"p{i},{v},{i + v},{0.1 * i},test" for i in range(3) for v in range(2)]
    rows += [f"p{i},{v},{i + v},{0.1 * i}," for i in range(3, 9) for v in range(2)]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    manifest = load_manifest(tmp_path / "manifest.csv", feature_columns=["f0"])
    cfg = Config.model_validate(
        {
            "data": {"feature_columns": ["f0"], "input": {"kind": "tabular"}},
            "model": {"encoder": "mlp"},
            "run": {"objectives": ["mse"], "seeds": [0, 1], "features": ["diff"]},
        }
    )
    grid, _ = plan_cells(cfg, manifest, [("mse", {})], tmp_path / "out")
    for seed_cells in grid:
        assignment = seed_cells[0][0].data.assignment
        assert sorted(p for p, s in assignment.items() if s == "test") == ["p0", "p1", "p2"]
    cfg.data.split.folds = 3
    with pytest.raises(ConfigError, match=r"fixes a test set.*data\.split\.folds"):
        plan_cells(cfg, manifest, [("mse", {})], tmp_path / "out")
