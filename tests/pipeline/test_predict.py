"""From a run to answers for new patients: `synth` two cohorts, `run` on the first, `predict`
on the second (with and without scores) and on the first cohort's test patients."""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from learner.api import load_model
from learner.cli import app
from learner.errors import DataError
from learner.pipeline.change_model import CLASSES, load_change_model

runner = CliRunner()


def _invoke(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_run_saves_a_change_model_per_cell_and_reports_the_chosen_one(
    trained: dict[str, Path],
) -> None:
    run = trained["run"]
    results = json.loads((run / "results.json").read_text())
    chosen = results["change_model"]
    assert set(chosen["candidates"]) == {"mse/seed0", "weighted/seed0"}
    assert chosen["cell"] in chosen["candidates"] and chosen["on"] == "validation patients"
    for cell in chosen["candidates"]:
        assert (run / "cells" / cell / "change-model" / "model.json").is_file()
    info = json.loads((run / "change-model" / "model.json").read_text())
    assert info["selection"]["cell"] == chosen["cell"] and info["classes"] == list(CLASSES)
    assert info["calibration"]["temperature"] > 0
    # Calibration that cannot make things worse: the temperature applied is the fitted one
    # only where it lowered the validation ECE, and the model, results and report say which.
    calibration = info["calibration"]
    kept = calibration["kept"]
    applied = calibration["fitted_temperature"] if kept == "calibrated" else 1.0
    assert calibration["temperature"] == applied == load_model(run).probe.temperature
    assert chosen["calibration_kept"] == kept
    assert {"ece_test_raw", "ece_test_calibrated", "ece_validation_raw"} <= set(chosen)
    report = (run / "report.md").read_text()
    assert chosen["cell"] in report and "ECE" in report
    assert ("keeps its raw probabilities" if kept == "raw" else "so the model applies it") in report
    assert (run / "figures" / "reliability.png").stat().st_size > 2000


def test_predict_new_patients_without_and_with_scores(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    second = trained["second"]
    unscored = tmp_path / "unscored.csv"
    pd.read_csv(second).drop(columns=["score"]).assign(
        path=lambda f: [str(second.parent / p) for p in f["path"]]
    ).to_csv(unscored, index=False)
    out = tmp_path / "blind" / "predictions.csv"
    model = ["--model", str(trained["run"])]
    output = _invoke(["predict", *model, "--manifest", str(unscored), "--out", str(out)])
    assert "chosen on validation patients" in output
    pairs = pd.read_csv(out)
    scans = pd.read_csv(out.with_name("predictions_scans.csv"))
    assert len(scans) == len(pd.read_csv(second)) and scans["pred_score"].notna().all()
    p = pairs[["p_worsen", "p_stable", "p_improve"]].to_numpy()
    assert np.allclose(p.sum(axis=1), 1.0) and (p >= 0).all()
    assert (pairs["label"] == np.asarray(CLASSES)[p.argmax(axis=1)]).all()
    assert pairs["true_label"].isna().all()
    # One row per consecutive visit pair of each patient.
    visits = pd.read_csv(second).groupby("patient_id")["visit"].nunique()
    assert len(pairs) == int((visits - 1).sum())
    summary = json.loads(out.with_name("predictions_summary.json").read_text())
    assert "metrics" not in summary and summary["pairs"] == len(pairs)

    scored = tmp_path / "scored" / "predictions.parquet"
    model = ["--model", str(trained["run"] / "change-model")]
    _invoke(["predict", *model, "--manifest", str(second), "--out", str(scored)])
    with_scores = pd.read_parquet(scored)
    assert with_scores["true_label"].isin(CLASSES).all()
    # Scores change nothing the model predicts.
    assert with_scores["label"].tolist() == pairs["label"].tolist()
    summary = json.loads(scored.with_name("predictions_summary.json").read_text())
    assert 0.0 <= summary["metrics"]["balanced_accuracy"] <= 1.0


def test_predict_reproduces_run_labels_on_its_test_patients(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    run = trained["run"]
    cell = json.loads((run / "results.json").read_text())["change_model"]["cell"]
    reported = pd.read_parquet(run / "cells" / cell / "eval-diff" / "test_pairs.parquet")
    frame = pd.read_csv(trained["first"])
    test_only = frame[frame["patient_id"].isin(set(reported["patient_id"]))].assign(
        path=lambda f: [str(trained["first"].parent / p) for p in f["path"]]
    )
    manifest = tmp_path / "test_patients.csv"
    test_only.to_csv(manifest, index=False)
    out = tmp_path / "predictions.csv"
    _invoke(["predict", "--model", str(run), "--manifest", str(manifest), "--out", str(out)])
    zones = pd.read_csv(out.with_name("predictions_zones.csv"))
    keys = ["patient_id", "zone", "visit_from", "visit_to"]
    ours = zones.rename(columns={"visit_from": "id_from", "visit_to": "id_to"}).rename(
        columns={"visit_order_from": "visit_from", "visit_order_to": "visit_to"}
    )
    merged = reported.merge(ours, on=keys, suffixes=("_run", "_predict"))
    assert len(merged) == len(reported) > 0
    assert (merged["predicted"] == merged["label_predict"]).all()
    assert (merged["label_run"] == merged["true_label"]).all()


def test_single_visit_patient_gets_scan_predictions_and_a_note(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    second = trained["second"]
    frame = pd.read_csv(second)
    first_visit = frame.groupby("patient_id")["visit"].transform("min") == frame["visit"]
    one = frame[first_visit & (frame["patient_id"] == frame["patient_id"].iloc[0])]
    manifest = tmp_path / "one.csv"
    one.assign(path=[str(second.parent / p) for p in one["path"]]).to_csv(manifest, index=False)
    model = load_model(trained["run"] / "change-model")
    result = model.predict_change(manifest)
    assert len(result.scans) == len(one) and result.pairs.empty
    assert any("1 patient(s) with one visit get per-scan" in n for n in result.summary["notes"])
    # The manifest's own single-visit warning (about pretraining) is not repeated here.
    assert not any("pretraining" in n for n in result.summary["notes"])


def test_predicting_from_a_frame_leaves_nothing_in_the_temp_directory(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A frame is read through a temporary manifest file; the scans' decode cache once
    # re-created that temporary folder after it was removed, and every call left one behind.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    second = trained["second"]
    frame = pd.read_csv(second)
    frame["path"] = [str(second.parent / p) for p in frame["path"]]
    result = load_model(trained["run"]).predict_change(frame)
    assert len(result.scans) == len(frame) and not result.pairs.empty
    assert list(scratch.iterdir()) == []


def test_a_frame_with_blank_cells_among_numbers_predicts(trained: dict[str, Path]) -> None:
    """A clinic's sheet read into pandas gives "" beside numbers in one column (object
    dtype); the frame is read as the same manifest from CSV would be, not a pyarrow
    traceback."""
    second = trained["second"]
    frame = pd.read_csv(second)
    frame["path"] = [str(second.parent / p) for p in frame["path"]]
    frame["score"] = frame["score"].astype(object)
    frame.loc[frame.index[0], "score"] = ""
    result = load_model(trained["run"]).predict_change(frame)
    assert len(result.scans) == len(frame)
    assert np.isnan(result.scans["score"].iloc[0]) and result.scans["score"].iloc[1:].notna().all()


def test_a_planted_pickle_is_refused(trained: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(trained["run"] / "change-model", folder)
    load_change_model(folder)  # loads as saved
    (folder / "probe.pkl").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(DataError, match="refusing to load"):
        load_change_model(folder)
    (folder / "probe.pkl").unlink()
    # The weights file itself replaced by a pickle: np.load(allow_pickle=False) refuses it.
    (folder / "encoder.npz").write_bytes(pickle.dumps(np.zeros(3)))
    with pytest.raises(DataError, match="refusing to load"):
        load_change_model(folder)


def test_evaluate_saves_a_change_model_from_embed_output(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    checkpoint = trained["run"] / "cells" / "mse" / "seed0" / "run" / "checkpoints" / "best.ckpt"
    embeddings = tmp_path / "embeddings.parquet"
    source = ["--manifest", str(trained["first"])]
    _invoke(["embed", "--checkpoint", str(checkpoint), *source, "--out", str(embeddings)])
    config = tmp_path / "eval.yaml"
    config.write_text("eval:\n  n_boot: 0\n")
    evaluate = ["evaluate", "--embeddings", str(embeddings), "--config", str(config)]
    output = _invoke([*evaluate, "--out", str(tmp_path / "eval")])
    assert f"change model: {tmp_path / 'eval' / 'change-model'}" in output
    model = load_model(tmp_path / "eval" / "change-model")
    assert model.info["objective"] == "mse" and model.info["checkpoint"] == str(checkpoint)
    paths = [trained["first"].parent / p for p in pd.read_csv(trained["first"])["path"][:3]]
    scores = model.predict_scores(paths)
    assert scores.shape == (3,) and np.isfinite(scores).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CPU-only machine")
def test_predict_on_a_device_this_machine_lacks_is_one_line(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "predictions.csv"
    args = ["predict", "--model", str(trained["run"]), "--manifest", str(trained["second"])]
    for device, message in (("cuda", "no CUDA GPU here"), ("gpu0", "not a device")):
        result = runner.invoke(app, [*args, "--out", str(out), "--device", device])
        assert result.exit_code == 2, result.output
        assert f"--device {device}: {message}" in result.output
        assert "Traceback" not in result.output and not out.exists()
