"""Out-of-distribution scans in `predict` (issue 28, item 4): a scan unlike the model's
training scans is scored but flagged (``ood``), not silently predicted; one of another kind
than the model's is skipped with a reason; a model saved before OOD references still
predicts, with empty OOD columns and a note.

Measured on the shared tiny LUS run (one epoch, width 8; the 2-core machine, 2026-12-05):
cohort-b's 86 clips score ood_score 0.64-1.71 (median 0.89) and 18 of them (21%) are
flagged, since the flag is the largest of only 20 validation scans of 4 patients; the four
MRI-as-clip scans score 1.22-1.45 and are all flagged. Hence the bounds below.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from learner.api import load_model
from learner.cli import app
from learner.data.synthetic.common import resolve_preset
from learner.data.synthetic.mri import render_scan, write_nifti
from learner.data.synthetic.video_io import write_mp4
from learner.errors import DataError
from learner.pipeline.change_model import MODEL_FILE, OOD_FILE
from learner.pipeline.fit_change import CHANGE_MODEL_DIR

runner = CliRunner()
N_MRI = 4


def _mri_scans(folder: Path) -> tuple[list[Path], list[Path]]:
    """Synthetic brain MRI: each volume as a NIfTI file and as the clip the LUS reader accepts
    (8 axial slices as frames, 64 x 64 like the LUS clips)."""
    volumes, clips = [], []
    for i in range(N_MRI):
        volume = render_scan(
            seed=5, patient_index=i, visit=0, severity=0.3, preset=resolve_preset("tiny")
        )
        write_nifti(folder / f"mri{i}.nii.gz", volume, voxel_mm=2.0)
        volumes.append(folder / f"mri{i}.nii.gz")
        grey = np.clip(volume / np.percentile(volume, 99.5) * 255, 0, 255).astype(np.uint8)
        frames = np.kron(grey[8:24:2], np.ones((1, 2, 2), dtype=np.uint8))
        write_mp4(folder / f"mri{i}.mp4", frames)
        clips.append(folder / f"mri{i}.mp4")
    return volumes, clips


def test_mri_among_lus_clips_is_skipped_as_a_volume_and_flagged_as_a_clip(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    second = trained["second"]
    lus = pd.read_csv(second)
    lus["path"] = [str(second.parent / p) for p in lus["path"]]
    volumes, clips = _mri_scans(tmp_path)
    mri = pd.DataFrame(
        {
            "patient_id": [f"MRI{i}" for i in range(N_MRI)] * 2,
            "visit": [0] * N_MRI + [1] * N_MRI,
            "path": [str(p) for p in volumes + clips],
            "score": np.nan,
            "zone": "R1",
        }
    )
    manifest = tmp_path / "mixed.csv"
    pd.concat([lus, mri], ignore_index=True).to_csv(manifest, index=False)
    out = tmp_path / "predictions.csv"
    args = ["predict", "--model", str(trained["run"]), "--manifest", str(manifest)]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output

    # (a) The volumes are of another kind than this clip model's: skipped with the reason.
    summary = json.loads(out.with_name("predictions_summary.json").read_text())
    skipped = {entry["path"]: entry["reason"] for entry in summary["skipped"]}
    assert set(skipped) == {str(p) for p in volumes}
    assert all("read as a volume" in reason for reason in skipped.values())

    # (b) As clips they are scored, and flagged; cohort-b's LUS clips mostly are not.
    scans = pd.read_csv(out.with_name("predictions_scans.csv"))
    assert {"ood_score", "ood_p", "ood"} <= set(scans.columns)
    is_mri = scans["patient_id"].str.startswith("MRI")
    assert set(scans.loc[is_mri, "path"]) == {str(p) for p in clips}
    assert scans["pred_score"].notna().all()
    assert scans.loc[is_mri, "ood"].all()
    assert float(scans.loc[~is_mri, "ood"].mean()) <= 0.3
    assert scans.loc[is_mri, "ood_score"].min() > scans.loc[~is_mri, "ood_score"].median()
    assert (scans.loc[is_mri, "ood_p"] < scans.loc[~is_mri, "ood_p"].median()).all()

    # The summary lists every flagged scan, most unusual first; pair rows carry the flag.
    ood = summary["ood"]
    assert ood["available"] and ood["scans_flagged"] == int(scans["ood"].sum())
    assert {s["path"] for s in ood["flagged"]} >= {str(p) for p in clips}
    assert [s["ood_score"] for s in ood["flagged"]] == sorted(
        (s["ood_score"] for s in ood["flagged"]), reverse=True
    )
    pairs = pd.read_csv(out)
    assert list(pairs.columns[-4:]) == ["ood_score", "ood", "caveat", "model_record"]
    assert ood["pairs_flagged"] == int(pairs["ood"].sum()) > 0
    flagged = pairs[pairs["ood"]]
    assert flagged["caveat"].str.contains(r"scan unlike the training scans \(ood_score").all()
    assert not pairs.loc[~pairs["ood"], "caveat"].fillna("").str.contains("unlike").any()
    # A pair's ood_score is the larger of its visits' scans.
    per_visit = scans.groupby(["patient_id", "visit_order"])["ood_score"].max()
    for row in pairs.itertuples():
        expected = max(
            per_visit[(row.patient_id, row.visit_order_from)],
            per_visit[(row.patient_id, row.visit_order_to)],
        )
        assert row.ood_score == pytest.approx(expected, rel=1e-6)

    # stderr: one line counting and naming the first flagged scans.
    line = next(x for x in result.stderr.splitlines() if "unlike the model's training" in x)
    assert line.startswith(f"warning: {ood['scans_flagged']} of {summary['scans']} scan(s)")
    top = ood["flagged"][0]
    assert f"{top['patient_id']} visit {top['visit']} (ood_score {top['ood_score']:.1f})" in line
    assert "predicted anyway" in line

    # The API gives each item's score, the same as predict's.
    model = load_model(trained["run"])
    found = model.ood([*clips, lus["path"].iloc[0]])
    assert list(found.columns) == ["ood_score", "ood_p", "ood"] and len(found) == N_MRI + 1
    assert found["ood"].iloc[:N_MRI].all()
    by_path = scans.set_index("path")["ood_score"]
    expected = [by_path[str(p)] for p in [*clips, lus["path"].iloc[0]]]
    np.testing.assert_allclose(found["ood_score"], expected, rtol=1e-5)


def test_the_change_model_keeps_its_ood_reference(trained: dict[str, Path]) -> None:
    folder = trained["run"] / CHANGE_MODEL_DIR
    info = json.loads((folder / MODEL_FILE).read_text())
    block = info["ood"]
    assert block["available"] and block["k"] == 5 and block["reference_splits"] == ["train"]
    n_split = pd.Series(info["split"]).value_counts()
    frame = pd.read_csv(trained["first"])
    per_split = frame["patient_id"].map(info["split"]).value_counts()
    assert block["n_reference"] == per_split["train"] and n_split["train"] > 0
    assert block["n_validation"] == per_split["val"]
    assert block["flag_distance"] >= block["score_unit_distance"] > 0
    with np.load(folder / OOD_FILE, allow_pickle=False) as npz:
        assert npz["reference"].shape[0] == block["n_reference"]
        assert npz["validation"].shape == (block["n_validation"],)


def test_model_saved_before_ood_references_still_predicts(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    old = tmp_path / "old-model"
    shutil.copytree(trained["run"] / CHANGE_MODEL_DIR, old)
    (old / OOD_FILE).unlink()
    info = json.loads((old / MODEL_FILE).read_text())
    del info["ood"]
    (old / MODEL_FILE).write_text(json.dumps(info))
    frame = pd.read_csv(trained["second"]).iloc[:12]
    frame["path"] = [str(trained["second"].parent / p) for p in frame["path"]]
    manifest = tmp_path / "m.csv"
    frame.to_csv(manifest, index=False)
    out = tmp_path / "predictions.csv"
    args = ["predict", "--model", str(old), "--manifest", str(manifest), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    note = "no OOD reference in this model (saved by a learner before OOD references existed); "
    note += "fit it again to get one"
    assert f"note: {note}" in result.stderr
    summary = json.loads(out.with_name("predictions_summary.json").read_text())
    assert summary["ood"] == {"available": False, "note": note}
    scans = pd.read_csv(out.with_name("predictions_scans.csv"))
    pairs = pd.read_csv(out)
    assert scans[["ood_score", "ood_p", "ood"]].isna().all().all() and len(scans) == 12
    assert pairs[["ood_score", "ood"]].isna().all().all() and len(pairs) > 0
    with pytest.raises(DataError, match="no OOD reference in this model"):
        load_model(old).ood([frame["path"].iloc[0]])
    # A model.json promising a reference whose file is gone is an incomplete model.
    info["ood"] = {"available": True}
    (old / MODEL_FILE).write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"ood\.npz: missing"):
        load_model(old)
