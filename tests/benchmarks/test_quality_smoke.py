"""The quality benchmark's manifest builders on the real shared data (skip when absent)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from learner.data.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / ".." / "shared" / "data"


def _datasets() -> ModuleType:
    # benchmarks/ is not an installed package: load the module from its file.
    spec = importlib.util.spec_from_file_location(
        "quality_datasets", REPO / "benchmarks/datasets.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _need(folder: str) -> None:
    if not (DATA / folder).is_dir():
        pytest.skip(f"{DATA / folder} is absent: the real-data builders need ../shared/data")


def test_parkinsons_manifest_is_weekly_means(tmp_path: Path) -> None:
    _need("parkinsons-telemonitoring")
    ds = _datasets()
    path = ds.build_parkinsons(tmp_path / "pk", root=DATA)
    features = ds.parkinsons_features(DATA)
    assert len(features) == 16 and "jitter_pct" in features and "ppe" in features
    manifest = load_manifest(path, feature_columns=features)
    frame = manifest.frame
    assert frame["patient_id"].nunique() == 42
    # One row per subject-week: no (subject, week) twice, and far fewer rows than recordings.
    assert not frame.duplicated(["patient_id", "visit"]).any()
    assert 800 < len(frame) < 1200
    # Week 0 of subject 1 is the mean of its recordings in days [0, 7).
    raw = pd.read_csv(DATA / "parkinsons-telemonitoring/parkinsons_updrs.data")
    first = raw[(raw["subject#"] == 1) & (raw["test_time"].clip(lower=0) < 7)]
    row = frame[(frame["patient_id"] == "S01") & (frame["visit_order"] == 0)].iloc[0]
    assert row["score"] == pytest.approx(first["total_UPDRS"].mean(), abs=1e-3)
    assert row["jitter_pct"] == pytest.approx(first["Jitter(%)"].mean())


def test_pocus_manifest_has_the_four_day_patient(tmp_path: Path) -> None:
    _need("pocus")
    ds = _datasets()
    manifest = load_manifest(ds.build_pocus(tmp_path / "pocus", root=DATA))
    frame = manifest.frame
    assert len(frame) == 69
    traj = frame[frame["patient_id"] == ds.POCUS_TRAJECTORY].sort_values("visit_order")
    assert traj["visit_order"].tolist() == [0, 1, 2, 3]
    assert traj["score"].tolist() == [0.0, 1.0, 1.0, 3.0]  # severity 0 -> 1 -> 1 -> 3
    # Every other patient has one visit; unlabelled clips stay in as NaN.
    visits = frame.groupby("patient_id")["visit_order"].nunique()
    assert (visits.drop(ds.POCUS_TRAJECTORY) == 1).all()
    assert frame["score"].isna().sum() == 3


def test_covid_blues_manifests(tmp_path: Path) -> None:
    _need("covid-blues")
    ds = _datasets()
    severity = load_manifest(ds.build_covid_severity(tmp_path / "sev", root=DATA)).frame
    assert len(severity) == 362 and severity["patient_id"].nunique() == 63
    assert set(severity["score"].unique()) <= {0.0, 1.0, 2.0, 3.0}
    assert (severity["visit_order"] == 0).all()
    sf = load_manifest(ds.build_covid_sf(tmp_path / "sf", root=DATA)).frame
    scores = ds.covid_sf_scores(DATA)
    assert sf["patient_id"].nunique() == len(scores) == 56  # -99 (missing) patients dropped
    assert np.allclose(sf["score"], sf["patient_id"].map(scores))
    assert sf["score"].between(300, 500).all()  # SpO2 / 0.21 for SpO2 in [63, 105]
