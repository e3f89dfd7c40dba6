"""A table given as one (F,) .npy vector file per visit trains with the mlp encoder, as a
table given as columns does, and the saved change model predicts from such files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from learner.api import load_model
from learner.cli import app
from learner.train.checkpoint import load_checkpoint


def _vector_cohort(folder: Path, patients: int = 20, features: int = 5) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(patients):
        level = rng.uniform(0, 30)
        for visit in range(3):
            score = level + rng.normal(0, 3)
            vector = np.concatenate([[score / 30.0], rng.normal(0, 1, features - 1)])
            name = f"p{p:02d}_v{visit}.npy"
            np.save(folder / name, vector.astype(np.float32))
            rows.append({"patient_id": f"p{p:02d}", "visit": visit, "path": name, "score": score})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def test_vector_files_train_run_and_predict(tmp_path: Path) -> None:
    manifest = _vector_cohort(tmp_path)
    settings = [
        f"data.manifest={manifest}",
        "train.epochs=2",
        "train.batch_size=16",
        "run.seeds=[0]",
        "run.objectives=[mse,weighted]",
        "eval.n_boot=0",
        "eval.delta=tertiles",
    ]
    sets = [arg for s in settings for arg in ("--set", s)]
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--config", "tabular", *sets, "--out", str(out)])
    assert result.exit_code == 0, result.output
    model, meta = load_checkpoint(
        out / "cells" / "weighted" / "seed0" / "run" / "checkpoints" / "best.ckpt"
    )
    assert model.cfg.data.input.features == 5 and len(meta["feature_stats"][0]) == 5
    change = load_model(out / "change-model")
    predictions = change.predict_change(manifest)
    assert len(predictions.scans) == 60 and len(predictions.pairs) == 40
    vector = np.load(tmp_path / "p00_v0.npy")
    np.testing.assert_allclose(
        change.predict_scores([vector]), predictions.scans["pred_score"].iloc[:1], rtol=1e-5
    )
    # Bad rows are skipped: a vector of another length, an image where vectors are read.
    np.save(tmp_path / "short.npy", np.zeros(3, np.float32))
    np.save(tmp_path / "image.npy", np.zeros((8, 8), np.uint8))
    frame = pd.read_csv(manifest)
    frame.loc[1, "path"], frame.loc[4, "path"] = "short.npy", "image.npy"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    skipping = change.predict_change(tmp_path / "bad.csv")
    reasons = {s["row"]: s["reason"] for s in skipping.summary["skipped"]}
    assert sorted(reasons) == [3, 6] and len(skipping.scans) == 58
    assert "holds 3 features but this model reads 5" in reasons[3]
    assert "is an image, not the (F,) vector this model reads" in reasons[6]
