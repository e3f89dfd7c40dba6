"""One-visit cohorts through the CLI: `run` and `evaluate` measure across patients instead of
failing with 'no training pairs'."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from learner.cli import app


def _one_visit_table(folder: Path) -> Path:
    """30 patients, one visit each, 4 features that follow the score."""
    rng = np.random.default_rng(1)
    rows = []
    for p in range(30):
        score = rng.uniform(0, 30)
        feats = score / 10 + rng.normal(0, 0.2, size=4)
        rows.append({"patient_id": f"S{p:02d}", "visit": 0, "score": round(score, 1)})
        rows[-1].update({f"f{i}": float(x) for i, x in enumerate(feats)})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


SETTINGS = [
    "data.feature_columns=[f0,f1,f2,f3]",
    "data.input.kind=tabular",
    "model.encoder=mlp",
    "model.mlp_hidden=[16]",
    "model.mlp_embed_dim=8",
    "train.epochs=3",
    "train.batch_size=16",
    "eval.n_boot=30",
    "run.objectives=[mse,weighted]",
    "data.split.ratios=[0.5,0.2,0.3]",
]


def test_run_and_evaluate_on_one_visit_data(tmp_path: Path) -> None:
    manifest = _one_visit_table(tmp_path / "data")
    out = tmp_path / "run"
    args = ["run", "--config", str(Path(__file__).parents[2] / "learner/configs/tabular.yaml")]
    args += ["--out", str(out), "--set", f"data.manifest={manifest}"]
    for item in SETTINGS:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "interpatient" and results["dataset"]["unit"] == "patient"
    assert set(results["objectives"]) == {"mse", "weighted", "untrained"}
    rho = results["objectives"]["mse"]["spearman_distance"]
    assert math.isfinite(rho["mean"]) and rho["ci95"][0] <= rho["ci95"][1]
    assert "accuracy" not in results["objectives"]["mse"]  # nothing invented
    diff = results["comparisons"]["differences"]["weighted"]["spearman_distance"]
    assert diff["min_detectable_difference"] >= 0
    assert results["verdict"] and "One visit per patient" in " ".join(results["verdict"])
    assert (out / "report.html").exists() and "`" not in (out / "report.html").read_text()

    emb = out / "cells" / "mse" / "seed0" / "embeddings.parquet"
    evaluated = CliRunner().invoke(
        app, ["evaluate", "--embeddings", str(emb), "--out", str(tmp_path / "eval")]
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "inter-patient evaluation" in evaluated.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["held_out_patients"] >= 2 and math.isfinite(metrics["metrics"]["score_mae"])
