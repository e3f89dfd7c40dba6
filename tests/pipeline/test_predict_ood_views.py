"""A sagittal slice among axial ones (issue 28, item 4): a tiny 2-D model trained on axial
slices of synthetic brain MRI should flag sagittal slices of the same heads as unlike its
training scans.

It does not, measured (2-core machine, 2026-12-05; 30 training patients, 12 new ones, one
slice per visit, 32 x 32, width 8): with 1 epoch, 3 of 31 axial and 4 of 31 sagittal slices
are flagged (ood_score medians 0.66 and 0.82); with 6 epochs, 1 of 31 and 8 of 31 (medians
0.80 and 0.82). Raw, L2-normalised or log embeddings and k = 1 do no better. At this size the
synthetic head is a near-spherical ellipsoid whose mid-axial and mid-sagittal slices look
alike, and an encoder trained for the score keeps little else. The test states what should
hold and is a strict xfail: it fails the suite the day it passes, so the marker is removed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from learner.api import load_model
from learner.cli import app
from learner.data.readers import read_scan

DEMO = Path(__file__).resolve().parents[2] / "learner" / "configs" / "demo.yaml"
SETTINGS = [
    "data.input.kind=image",
    "model.encoder=resnet2d_18",
    "data.input.size=32",
    "model.width=8",
    "data.score_range=[0,30]",
    "train.epochs=1",
    "train.batch_size=8",
    "eval.delta=2.0",
    "eval.n_boot=0",
    "run.seeds=[0]",
    "run.objectives=[mse]",
    "run.baselines=false",
    "data.split.ratios=[0.5,0.25,0.25]",
]
runner = CliRunner()


def _slices(root: Path, seed: int, patients: int) -> pd.DataFrame:
    """A synthetic MRI cohort's middle axial and middle sagittal slice of every volume, as
    2-D ``.npy`` stills; the axial ones are also written as ``axial.csv``."""
    folder = root / f"seed{seed}"
    args = ["synth", "mri", "--out", str(folder), "--patients", str(patients)]
    result = runner.invoke(app, [*args, "--seed", str(seed), "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    rows = []
    for row in pd.read_csv(folder / "manifest.csv").itertuples():
        volume = read_scan(folder / str(row.path)).array  # (D, H, W): inferior->superior first
        depth, _, width = volume.shape
        # Sagittal: superior up, as a viewer shows it.
        views = (("axial", volume[depth // 2]), ("sagittal", volume[::-1, :, width // 2]))
        for view, image in views:
            path = folder / f"{row.patient_id}_v{row.visit}_{view}.npy"
            np.save(path, np.ascontiguousarray(image, dtype=np.float32))
            rows.append(
                {"patient_id": row.patient_id, "visit": row.visit, "path": str(path),
                 "score": row.score, "view": view}
            )  # fmt: skip
    frame = pd.DataFrame(rows)
    frame[frame["view"] == "axial"].drop(columns="view").to_csv(folder / "axial.csv", index=False)
    return frame


@pytest.fixture(scope="module")
def axial_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A `learner run` on axial slices of 30 patients, and 12 new patients' slices."""
    root = tmp_path_factory.mktemp("views")
    _slices(root, 0, 30)
    sets = [f"data.manifest={root / 'seed0' / 'axial.csv'}", *SETTINGS]
    args = ["run", "--config", str(DEMO), *[a for s in sets for a in ("--set", s)]]
    result = runner.invoke(app, [*args, "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    return root / "run", _slices(root, 1, 12)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="measured: a tiny axial model does not separate sagittal slices",
)
def test_sagittal_slices_among_axial_ones_are_flagged(
    axial_model: tuple[Path, pd.DataFrame],
) -> None:
    run, new = axial_model
    result = load_model(run).predict_change(new.drop(columns="view"))
    scans = result.scans.merge(new[["path", "view"]], on="path")
    assert len(scans) == len(new)
    rate = scans.groupby("view")["ood"].mean()
    assert rate["axial"] <= 0.2
    assert rate["sagittal"] >= 0.8
