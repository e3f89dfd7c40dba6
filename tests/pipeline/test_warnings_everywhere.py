"""`run` and `predict` give the data warnings of learner.evaluate.data_warnings (issue 28,
item 6; `validate` and `evaluate` are tested in tests/evaluate/test_data_warnings.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from learner.api import load_model
from learner.cli import app
from learner.evaluate.data_warnings import data_warnings

runner = CliRunner()


def test_run_results_hold_the_shared_warnings(trained: dict[str, Path]) -> None:
    run = trained["run"]
    results = json.loads((run / "results.json").read_text())
    summary = json.loads(
        (run / "cells" / "mse" / "seed0" / "eval-diff" / "metrics.json").read_text()
    )
    expected = data_warnings(delta=results["config"]["eval"]["delta"], pair_counts=[summary])
    assert expected and set(expected) <= set(results["warnings"])


def test_predict_warns_on_scored_pairs_and_scores_beyond_the_model_range(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    second = trained["second"]
    model = load_model(trained["run"])
    result = model.predict_change(second)
    labelled = result.pairs[result.pairs["true_label"].notna()]
    counts = labelled["true_label"].value_counts()
    expected = data_warnings(
        delta=model.band,
        pair_counts=[
            {
                "class_counts_test": {c: int(counts.get(c, 0)) for c in model.classes},
                "n_test_patients": int(labelled["patient_id"].nunique()),
            }
        ],
        judged_on="scored",
    )
    assert set(expected) <= set(result.summary["warnings"])

    shifted = pd.read_csv(second).assign(
        score=lambda f: f["score"] + 1000.0,
        path=lambda f: [str(second.parent / p) for p in f["path"]],
    )
    manifest = tmp_path / "shifted.csv"
    shifted.to_csv(manifest, index=False)
    out = tmp_path / "predictions.csv"
    printed = runner.invoke(
        app,
        ["predict", "--model", str(trained["run"]), "--manifest", str(manifest), "--out", str(out)],
    )
    assert printed.exit_code == 0, printed.output
    assert "outside the model's data.score_range" in printed.stderr
    summary = json.loads(out.with_name("predictions_summary.json").read_text())
    assert any("outside the model's data.score_range" in w for w in summary["warnings"])
