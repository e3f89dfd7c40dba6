"""OASIS-2 slices (issue #13): the builder on a subset of the shared folder, then one tiny run.

Skips with a reason when ``../shared/data/oasis2-slices`` is absent (a fresh clone).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from learner.config import load_config
from learner.data.manifest import load_manifest
from learner.data.readers import read_scan
from learner.evaluate.aggregate import CellResult
from learner.pipeline.run import run_ablation

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / ".." / "shared" / "data" / "oasis2-slices"
# Twelve subjects: 0013 has a visit without an axial slice, 0181 two visits without MMSE;
# most of the others change by more than 2 MMSE points at least once, so that every fold's
# training subjects have worsen / improve pairs.
SUBJECTS = (
    "0001", "0002", "0004", "0013", "0014", "0017", "0032", "0035", "0044", "0058", "0064", "0181"
)  # fmt: skip


@pytest.fixture
def subset(tmp_path: Path) -> Path:
    """A data root laid out like ../shared/data holding the table and twelve subjects' slices."""
    if not SOURCE.is_dir():
        pytest.skip(f"{SOURCE} is absent: the OASIS-2 benchmark needs ../shared/data")
    root = tmp_path / "data"
    folder = root / "oasis2-slices"
    for view in ("axl", "cor", "sag"):
        (folder / view).mkdir(parents=True)
        for path in sorted((SOURCE / view).iterdir()):
            if path.name.split("_")[1] in SUBJECTS:
                (folder / view / path.name).symlink_to(path.resolve())
    table = "oasis_longitudinal_demographic.csv"
    (folder / table).symlink_to((SOURCE / table).resolve())
    return root


@pytest.fixture
def ds(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("datasets.py")


def test_builder_takes_the_subjects_present_in_time_order(
    subset: Path, tmp_path: Path, ds: ModuleType
) -> None:
    out = tmp_path / "built"
    path = ds.build_oasis2_slices(out, root=subset)
    zones = load_manifest(path).frame
    assert sorted(zones["patient_id"].unique()) == [f"OAS2_{s}" for s in SUBJECTS]
    # Visits sort by MR Delay (days): OAS2_0001 at day 0 then day 457.
    first = zones[zones["patient_id"] == "OAS2_0001"].sort_values("visit_order")
    assert first["visit"].astype(int).drop_duplicates().tolist() == [0, 457]
    assert set(zones["zone"]) == {"axl", "cor", "sag"}
    # The visit without an axial slice keeps its two other views; no file is invented.
    missing = zones[(zones["patient_id"] == "OAS2_0013") & (zones["visit_order"] == 1)]
    assert sorted(missing["zone"]) == ["cor", "sag"]
    # MMSE missing in the table -> unlabelled rows, kept for embedding.
    assert zones.loc[zones["patient_id"] == "OAS2_0181", "score"].isna().sum() == 2 * 3

    visits = pd.read_csv(out / "visits.csv", dtype={"patient_id": str})
    assert len(visits) == zones.groupby("patient_id")["visit_order"].nunique().sum()
    assert set(visits["cdr"]) <= {0.0, 0.5, 1.0, 2.0}

    # The channels and frames layouts hold the same visits; a missing view is all zero.
    frames = load_manifest(out / "manifest-frames.csv").frame
    channels = load_manifest(out / "manifest-channels.csv").frame
    assert len(frames) == len(channels) == len(visits)
    row = frames[(frames["patient_id"] == "OAS2_0013") & (frames["visit_order"] == 1)].iloc[0]
    clip = read_scan(row["path"])
    assert clip.kind == "video" and clip.array.shape == (3, 256, 256)
    assert not clip.array[0].any() and clip.array[1].any() and clip.array[2].any()
    image = read_scan(channels.loc[row.name, "path"])
    assert image.kind == "image" and image.array.shape == (256, 256, 3)
    assert np.array_equal(image.array.transpose(2, 0, 1), clip.array)
    # The stacked views are the slices themselves, centred on the 256 x 256 canvas.
    cor = read_scan(missing.loc[missing["zone"] == "cor", "path"].iloc[0]).array
    top, left = (256 - cor.shape[0]) // 2, (256 - cor.shape[1]) // 2
    assert np.array_equal(clip.array[1, top : top + cor.shape[0], left : left + cor.shape[1]], cor)


@pytest.mark.usefixtures("one_thread")
def test_config_runs_as_is_on_the_built_manifest(
    subset: Path, tmp_path: Path, ds: ModuleType, load_benchmark: Callable[[str], ModuleType]
) -> None:
    path = ds.build_oasis2_slices(tmp_path / "built", root=subset)
    cfg = load_config(
        REPO / "benchmarks" / "configs" / "oasis2_slices.yaml",
        [
            f"data.manifest={path}",
            # Tiny: one seed, two folds, one epoch, width 8.
            "data.split.folds=2",
            "model.width=8",
            "train.epochs=1",
            "train.batch_size=8",
            "run.seeds=[0]",
            "run.objectives=[mse]",
            "eval.n_boot=20",
        ],
    )
    result = run_ablation(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    objectives = result.results["objectives"]
    assert {"mse", "untrained", "head_delta"} <= set(objectives)
    # Every subject with a labelled pair (not 0181: MMSE missing after its first visit) is
    # tested once over the two folds; pairs of consecutive visits are classified per view.
    pairs = pd.concat([c.test_pairs for c in result.cells["mse"][0]])
    assert sorted(pairs["patient_id"].unique()) == [f"OAS2_{s}" for s in SUBJECTS[:-1]]
    assert set(pairs["zone"]) == {"axl", "cor", "sag"}
    assert all(math.isfinite(v) for v in objectives["mse"]["balanced_accuracy"]["per_seed"])

    # The benchmark's extras on the same cells: CDR change, labelled from visits.csv ...
    quality = load_benchmark("quality.py")
    cdr = quality.run_cdr_change(cfg, load_manifest(path), tmp_path / "run")
    assert {"mse", "untrained", "head_delta"} <= set(cdr["objectives"])
    visits = pd.read_csv(tmp_path / "built" / "visits.csv", dtype={"patient_id": str})
    visits = visits.sort_values(["patient_id", "visit"])
    visits["order"] = visits.groupby("patient_id").cumcount()  # test pairs name visit ranks
    cdr_of = {(p, o): c for p, o, c in visits[["patient_id", "order", "cdr"]].values}
    folders = sorted((tmp_path / "run" / "cells" / "mse").rglob("eval-cdr"))
    assert len(folders) == 2  # one per fold
    tested = pd.concat([CellResult.load(f).test_pairs for f in folders])
    change = [
        cdr_of[(p, b)] - cdr_of[(p, a)]
        for p, a, b in tested[["patient_id", "visit_from", "visit_to"]].values
    ]
    expected = np.where(np.asarray(change) > 0, "worsen", "stable").astype(object)
    expected[np.asarray(change) < 0] = "improve"  # a lower CDR is better
    assert tested["label"].tolist() == expected.tolist()
    assert {"worsen", "improve"} <= set(expected)
    # ... the inter-subject check, and each paired CI's minimum detectable difference.
    ranks = quality.run_inter_subject(cfg, tmp_path / "run")
    for name in ("mse", "untrained"):
        rho = ranks["objectives"][name]["score_spearman"]["mean"]
        assert -1.0 <= rho <= 1.0
    diff = result.results["comparisons"]["differences"]["untrained"]["balanced_accuracy"]
    lo, hi = diff["ci95"]
    assert diff["min_detectable_difference"] > 0 or lo == hi


def test_synthetic_mri_views_have_oasis2s_layout(
    load_benchmark: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    """The transfer source (issue 15): each synthetic volume becomes three 2-D views with
    OASIS-2's zone names, the same scores and the pool kept pretraining-only."""
    from learner.data.synthetic import write_cohort

    datasets = load_benchmark("datasets.py")
    cohort = write_cohort("mri", tmp_path / "cohort", patients=3, pool=2, seed=0, preset="tiny")
    views = datasets.build_synth_mri_views(tmp_path / "views", cohort.manifest)
    source = pd.read_csv(cohort.manifest, dtype={"patient_id": str})
    table = pd.read_csv(views, dtype={"patient_id": str})
    assert len(table) == len(load_manifest(views).frame) == 3 * len(source)
    views_of_a_scan = table.groupby(["patient_id", "visit"])["zone"].apply(lambda z: sorted(z))
    assert all(v == ["axl", "cor", "sag"] for v in views_of_a_scan)
    merged = table.merge(source, on=["patient_id", "visit"], suffixes=("", "_volume"))
    assert np.allclose(merged["score"], merged["score_volume"])
    assert set(table.loc[table["split"] == "pretrain", "patient_id"]) == set(
        source.loc[source["split"] == "pretrain", "patient_id"]
    )
    volume = read_scan(cohort.manifest.parent / source["path"].iloc[0]).array
    still = read_scan(table["path"].iloc[0]).array
    assert still.ndim == 2 and still.shape == volume.shape[1:]
