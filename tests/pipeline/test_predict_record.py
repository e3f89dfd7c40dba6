"""Every prediction carries its model's held-out record (issue 28, item 1).

The bar: a `learner run` on a ``--null`` synthetic cohort (its images carry no change:
nothing is learnable), then `learner predict` on new patients: every row carries the caveat
and the summary the chance-level record, read from what the run measured on its test
patients. Beside it, a model whose record beats chance and the untrained encoder (the record
written by hand: a learnable training that reliably beats chance is not tiny) predicts with
no caveat, and a model saved without a record says so.
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
from learner.data.synthetic import write_cohort
from learner.pipeline.predict import read_parquet_record
from learner.pipeline.record import CHANCE, NO_RECORD
from tests.pipeline.conftest import DEMO, RUN_SETTINGS

runner = CliRunner()
OOD_REASON = r"(; )?scan unlike the training scans \(ood_score [^)]*\)$"
PROBABILITIES = ["p_worsen", "p_stable", "p_improve"]


def _run_args(manifest: Path, out: Path) -> list[str]:
    """`learner run` of mse and the untrained baseline, one epoch, 200 bootstrap resamples;
    30% test patients, so that the test pairs hold every class."""
    settings = [
        *(s for s in RUN_SETTINGS if not s.startswith(("run.", "eval.n_boot", "data.split"))),
        f"data.manifest={manifest}",
        "data.split.ratios=[0.5,0.2,0.3]",
        "eval.n_boot=200",
        "run.seeds=[0]",
        "run.objectives=[mse]",
        "run.baselines=true",
    ]
    sets = [arg for s in settings for arg in ("--set", s)]
    return ["run", "--config", str(DEMO), *sets, "--out", str(out)]


@pytest.fixture(scope="module")
def null_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run (:func:`_run_args`) on a null cohort of 24 patients; 6 new null-cohort patients
    to predict on."""
    root = tmp_path_factory.mktemp("null")
    train = write_cohort("lus", root / "null-a", patients=24, seed=0, preset="tiny", null=True)
    new = write_cohort("lus", root / "null-b", patients=6, seed=5, preset="tiny", null=True)
    out = root / "run"
    result = runner.invoke(app, _run_args(train.manifest, out))
    assert result.exit_code == 0, result.output
    return {"root": root, "run": out, "train": train.manifest, "new": new.manifest}


def _predict(model: Path, manifest: Path, out: Path) -> tuple[str, str]:
    result = runner.invoke(
        app, ["predict", "--model", str(model), "--manifest", str(manifest), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def test_null_cohort_predictions_all_carry_the_chance_level_record(
    null_run: dict[str, Path], tmp_path: Path
) -> None:
    run = null_run["run"]
    out = tmp_path / "predictions.csv"
    stdout, stderr = _predict(run, null_run["new"], out)

    # The record is what the run measured on its own test patients, not a new number.
    measured = json.loads(
        (run / "cells" / "mse" / "seed0" / "eval-diff" / "metrics.json").read_text()
    )
    untrained = json.loads(
        (run / "cells" / "untrained" / "seed0" / "eval-diff" / "metrics.json").read_text()
    )
    summary = json.loads(out.with_name("predictions_summary.json").read_text())
    record = summary["record"]
    assert record["balanced_accuracy"] == measured["metrics"]["balanced_accuracy"]
    assert record["ci95"] == measured["ci95"]["balanced_accuracy"]
    lo, hi = record["ci95"]
    assert lo <= CHANCE <= hi and record["chance"] == pytest.approx(1 / 3)
    assert record["untrained"]["balanced_accuracy"] == untrained["metrics"]["balanced_accuracy"]
    assert record["head_delta"]["balanced_accuracy"] == measured["head_delta"]["balanced_accuracy"]
    assert record["band"] == measured["band"] and record["n_boot"] == 200
    data = record["trained_on"]
    assert data["manifest"] == str(null_run["train"])
    assert sum(data["patients"].values()) == 24 and data["patients"]["test"] >= 1
    assert all(record["class_counts_test"].values())  # every class among the test pairs
    key = json.loads((run / "cells" / "mse" / "seed0" / "key.json").read_text())["parts"]
    assert data["manifest_fingerprint"] == key["manifest.content"]

    # Summary (printed and saved), a warning, and the caveat on every row.
    caveat = summary["caveat"]
    assert f"held-out test CI {lo:.2f}-{hi:.2f} includes chance (0.33)" in caveat
    assert f"record: held-out test balanced accuracy {record['balanced_accuracy']:.2f}" in stdout
    assert f"warning: do not trust these predictions: {caveat}" in stderr
    pairs = pd.read_csv(out, keep_default_na=False)
    assert len(pairs) > 0 and (record_caveats(pairs) == caveat).all()
    assert (pairs["model_record"] == pairs["model_record"].iloc[0]).all()
    assert "chance 0.33" in pairs["model_record"].iloc[0]
    zones = pd.read_csv(out.with_name("predictions_zones.csv"), keep_default_na=False)
    assert (record_caveats(zones) == caveat).all()

    # CSV: probabilities at 3 decimals, each row still summing to 1.
    raw = pd.read_csv(out, dtype=str)
    for column in PROBABILITIES:
        assert raw[column].str.split(".").str[-1].str.len().max() <= 3
    assert np.allclose(pairs[PROBABILITIES].sum(axis=1), 1.0, atol=1e-9)


def test_parquet_keeps_full_precision_and_holds_the_record(
    null_run: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "predictions.parquet"
    _predict(null_run["run"], null_run["new"], out)
    pairs = pd.read_parquet(out)
    p = pairs[PROBABILITIES].to_numpy()
    assert not np.allclose(p, np.round(p, 3), atol=1e-9)  # not rounded
    stored = read_parquet_record(out)
    summary = json.loads(out.with_name("predictions_summary.json").read_text())
    assert stored == {"record": summary["record"], "caveat": summary["caveat"]}
    assert (record_caveats(pairs) == summary["caveat"]).all()


def test_the_api_exposes_the_record_and_its_predictions_carry_the_caveat(
    null_run: dict[str, Path],
) -> None:
    model = load_model(null_run["run"])
    assert model.record is not None and model.record["chance"] == pytest.approx(1 / 3)
    assert "includes chance" in model.caveat
    result = model.predict_change(null_run["new"])
    assert (record_caveats(result.pairs) == model.caveat).all()
    assert result.summary["record"] == model.record


def record_caveats(pairs: pd.DataFrame) -> pd.Series:
    """Each row's caveat without the reason a scan unlike the training scans appends
    (tests/pipeline/test_predict_ood.py checks that one)."""
    return pairs["caveat"].str.replace(OOD_REASON, "", regex=True)


def _model_with_record(run: Path, folder: Path, record: dict | None) -> Path:
    shutil.copytree(run / "change-model", folder)
    info = json.loads((folder / "model.json").read_text())
    if record is None:
        info.pop("record", None)  # as a model saved before records existed
    else:
        info["record"] = record
    (folder / "model.json").write_text(json.dumps(info))
    return folder


def test_a_record_above_chance_and_untrained_gives_no_caveat(
    null_run: dict[str, Path], tmp_path: Path
) -> None:
    """The same saved model with a record that beats chance and the untrained encoder (written
    by hand): no caveat warning, every caveat empty."""
    good = {
        **load_model(null_run["run"]).record,
        "balanced_accuracy": 0.62,
        "ci95": [0.51, 0.72],
        "untrained": {"balanced_accuracy": 0.40, "ci95": [0.30, 0.50]},
    }
    folder = _model_with_record(null_run["run"], tmp_path / "model", good)
    out = tmp_path / "predictions.csv"
    stdout, stderr = _predict(folder, null_run["new"], out)
    # No caveat warning (the data warnings about the new scored pairs may still be printed).
    assert "do not trust" not in stderr
    assert "record: held-out test balanced accuracy 0.62 (95% CI 0.51-0.72)" in stdout
    pairs = pd.read_csv(out, keep_default_na=False)
    assert len(pairs) > 0 and (record_caveats(pairs) == "").all()
    assert json.loads(out.with_name("predictions_summary.json").read_text())["caveat"] == ""


def test_a_model_without_a_record_says_so(null_run: dict[str, Path], tmp_path: Path) -> None:
    folder = _model_with_record(null_run["run"], tmp_path / "old-model", None)
    out = tmp_path / "predictions.csv"
    stdout, stderr = _predict(folder, null_run["new"], out)
    assert (
        f"record: {NO_RECORD}" in stdout
        and f"warning: do not trust these predictions: {NO_RECORD}" in stderr
    )
    summary = json.loads(out.with_name("predictions_summary.json").read_text())
    assert summary["record"] is None and summary["caveat"].startswith(NO_RECORD)
    pairs = pd.read_csv(out, keep_default_na=False)
    assert pairs["caveat"].str.startswith(NO_RECORD).all()
    assert (pairs["model_record"] == NO_RECORD).all()


def test_rerunning_gives_an_older_cached_model_its_record(null_run: dict[str, Path]) -> None:
    """A cell's change model saved without a record (an older learner) gets it from the
    cell's evaluation when `learner run` passes over the cached cell again."""
    run = null_run["run"]
    model_json = run / "cells" / "mse" / "seed0" / "change-model" / "model.json"
    info = json.loads(model_json.read_text())
    record = info.pop("record")
    model_json.write_text(json.dumps(info))
    result = runner.invoke(app, _run_args(null_run["train"], run))
    assert result.exit_code == 0, result.output
    assert json.loads(model_json.read_text())["record"] == record
    assert json.loads((run / "change-model" / "model.json").read_text())["record"] == record


def test_evaluate_saves_its_change_model_with_its_record(
    null_run: dict[str, Path], tmp_path: Path
) -> None:
    """`learner evaluate` records its own held-out evaluation (no untrained baseline there)."""
    checkpoint = null_run["run"] / "cells" / "mse" / "seed0" / "run" / "checkpoints" / "best.ckpt"
    embeddings = tmp_path / "embeddings.parquet"
    embed = ["embed", "--checkpoint", str(checkpoint), "--manifest", str(null_run["train"])]
    assert runner.invoke(app, [*embed, "--out", str(embeddings)]).exit_code == 0
    config = tmp_path / "eval.yaml"
    config.write_text("eval:\n  n_boot: 50\n")
    evaluate = ["evaluate", "--embeddings", str(embeddings), "--config", str(config)]
    result = runner.invoke(app, [*evaluate, "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    measured = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    model = load_model(tmp_path / "eval" / "change-model")
    assert model.record is not None and model.record["untrained"] is None
    assert model.record["balanced_accuracy"] == measured["metrics"]["balanced_accuracy"]
    assert model.record["ci95"] == measured["ci95"]["balanced_accuracy"]
    assert model.record["trained_on"]["manifest"] == str(null_run["train"])
