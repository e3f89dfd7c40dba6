"""Clinicians' own change labels end to end: a `learner run` whose manifest's change_label
contradicts the score trains its probe (and eval.finetune's loss) on the clinicians' labels,
says so in results.json, report.md and model.json, and `learner predict` says which labels
the model learnt from and judges against the new manifest's labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tabular_cohort import tabular_config, write_score_table
from typer.testing import CliRunner

from learner.cli import app
from learner.data.pairs import LABELS, label_changes
from learner.pipeline import finetune
from learner.pipeline.commands import run_and_report
from learner.pipeline.finetune import finetune_change
from learner.train.module import LearnerModule
from learner.train.prepared import model_config, prepare_data

BAND = 2.0  # tabular_config's eval.delta
REVERSED = {"worsen": "improve", "stable": "stable", "improve": "worsen"}


def _labelled_cohort(folder: Path, *, every: int = 4) -> tuple[Path, pd.DataFrame]:
    """24 patients x 4 visits whose features follow the score; every non-first visit of
    every patient but each ``every``-th carries the *reverse* of its score label as the
    clinician's change_label (the others none). Returns the manifest and its frame."""
    path = write_score_table(folder, patients=24, visits=4, seed=3, score_sd=6.0, nuisance=4)
    table = pd.read_csv(path, dtype={"patient_id": str})
    change = table.groupby("patient_id")["score"].diff()
    labels = np.full(len(table), "", dtype=object)
    number = table["patient_id"].str[1:].astype(int)
    given = change.notna() & (number % every != every - 1)
    labels[given] = [REVERSED[x] for x in label_changes(change[given], BAND)]
    table["change_label"] = labels
    table.to_csv(path, index=False)
    return path, table


def _score_labels(table: pd.DataFrame) -> np.ndarray:
    change = table.groupby("patient_id")["score"].diff()
    out = np.full(len(table), None, dtype=object)
    out[change.notna()] = label_changes(change[change.notna()], BAND)
    return out


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("change-label")
    manifest, _ = _labelled_cohort(root / "cohort")
    cfg = tabular_config(manifest, features=8, epochs=2)
    run_and_report(cfg, root / "run", log=lambda _: None)
    return {"root": root, "run": root / "run", "manifest": manifest}


def test_run_counts_the_labels_it_trained_and_judged_on(labelled_run: dict[str, Path]) -> None:
    run = labelled_run["run"]
    model = json.loads((run / "change-model" / "model.json").read_text())
    split = model["split"]
    pairs_of = {s: [p for p, v in split.items() if v == s] for s in ("train", "val", "test")}

    def expected(patients: list[str]) -> dict[str, int]:
        # 3 pairs per patient; each 4th patient (P03, P07, ...) has no clinician label.
        unlabelled = sum(int(p[1:]) % 4 == 3 for p in patients)
        return {"clinician": 3 * (len(patients) - unlabelled), "score": 3 * unlabelled}

    labels = model["labels"]
    assert labels["source"] == "mixed"
    for name in ("train", "val", "test"):
        assert labels[name] == expected(pairs_of[name]), name
    assert labels["fitted_on"] == expected(pairs_of["train"] + pairs_of["val"])

    results = json.loads((run / "results.json").read_text())
    block = results["dataset"]["label_sources"]
    assert block["source"] == "mixed"
    assert block["per_seed"] == [
        {"train": expected(pairs_of["train"] + pairs_of["val"]), "test": expected(pairs_of["test"])}
    ]
    report = (run / "report.md").read_text()
    assert "Change labels: clinicians' `change_label` where given" in report

    # The held-out pairs are judged against the clinicians' labels where given.
    cell = run / "cells" / "mse" / "seed0" / "eval-diff"
    test_pairs = pd.read_parquet(cell / "test_pairs.parquet")
    clinician = test_pairs["label_source"] == "clinician"
    assert clinician.sum() == expected(pairs_of["test"])["clinician"]
    score = label_changes(test_pairs["change"], BAND)
    assert (test_pairs["label"][clinician] != score[clinician]).sum() > 0
    assert (test_pairs["label"][~clinician] == score[~clinician]).all()


def test_predict_says_which_labels_and_follows_the_clinicians(
    labelled_run: dict[str, Path],
) -> None:
    run, manifest = labelled_run["run"], labelled_run["manifest"]
    out = labelled_run["root"] / "predictions.csv"
    result = CliRunner().invoke(
        app, ["predict", "--model", str(run), "--manifest", str(manifest), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    model = json.loads((run / "change-model" / "model.json").read_text())
    fitted = model["labels"]["fitted_on"]
    line = (
        f"labels: the model's probe was trained on clinicians' change_label for "
        f"{fitted['clinician']} of {fitted['clinician'] + fitted['score']} pairs (the rest "
        "from the score)"
    )
    assert line in result.stdout
    test = model["labels"]["test"]
    assert (
        f"test labels from clinicians' change_label for {test['clinician']} of "
        f"{test['clinician'] + test['score']} test pairs, the observed score for the rest"
    ) in result.stdout
    summary = json.loads(out.with_name("predictions_summary.json").read_text())
    assert summary["labels"]["model"]["fitted_on"] == fitted
    assert summary["labels"]["true_labels"] == {"clinician": 54, "score": 18}

    pairs = pd.read_csv(out, dtype={"patient_id": str})
    table = pd.read_csv(manifest, dtype={"patient_id": str})
    score_label = dict(
        zip(
            zip(table["patient_id"], table["visit"], strict=True), _score_labels(table), strict=True
        )
    )
    pairs["score_label"] = [
        score_label[(p, v)] for p, v in zip(pairs["patient_id"], pairs["visit_to"], strict=True)
    ]
    clinician = pairs["true_label_source"] == "clinician"
    assert (pairs.loc[~clinician, "true_label"] == pairs.loc[~clinician, "score_label"]).all()
    assert (pairs.loc[clinician, "true_label"] != pairs.loc[clinician, "score_label"]).any()
    # On the patients the probe was trained on, its labels follow the clinicians' (the
    # reverse of the score's): a probe trained on score labels would do the opposite.
    seen = pairs["patient_id"].map(model["split"]).isin(["train", "val"]) & clinician
    follows_clinicians = (pairs["label"][seen] == pairs["true_label"][seen]).mean()
    follows_score = (pairs["label"][seen] == pairs["score_label"][seen]).mean()
    assert follows_clinicians > follows_score + 0.2, (follows_clinicians, follows_score)


def test_predict_without_change_labels_keeps_its_columns(labelled_run: dict[str, Path]) -> None:
    table = pd.read_csv(labelled_run["manifest"], dtype={"patient_id": str})
    plain = labelled_run["root"] / "plain.csv"
    table.drop(columns=["change_label"]).to_csv(plain, index=False)
    out = labelled_run["root"] / "plain-predictions.csv"
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            str(labelled_run["run"]),
            "--manifest",
            str(plain),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "true_label_source" not in pd.read_csv(out).columns
    summary = json.loads(out.with_name("plain-predictions_summary.json").read_text())
    assert "true_labels" not in summary["labels"]


def test_finetune_loss_reads_the_clinician_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, table = _labelled_cohort(tmp_path, every=10**6)  # every pair labelled
    cfg = tabular_config(manifest, features=8)
    data = prepare_data(cfg)
    torch.manual_seed(0)
    model = LearnerModule(model_config(cfg, data), data.score_range, {"seed": 0})

    targets: list[torch.Tensor] = []

    class Recording(torch.nn.CrossEntropyLoss):
        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            targets.append(target.detach().cpu())
            return super().forward(logits, target)

    monkeypatch.setattr(finetune.nn, "CrossEntropyLoss", Recording)
    result = finetune_change(
        model, data, epochs=1, lr=1e-3, delta=BAND, higher_is_better=True, seed=0, batch_pairs=8
    )
    assert result.labels == {
        "train": {"clinician": result.n_train_pairs, "score": 0},
        "val": {"clinician": result.n_val_pairs, "score": 0},
    }
    # Training pairs in pair order (patient, then visit), as the loss saw them shuffled.
    train = sorted(p for p, s in data.assignment.items() if s == "train")
    labelled = table.set_index(["patient_id", "visit"])["change_label"]
    clinician = [labelled[(p, v)] for p in train for v in (1, 2, 3)]
    order = np.random.default_rng(0).permutation(len(clinician))
    expected = [LABELS.index(clinician[i]) for i in order]
    assert torch.cat(targets).tolist() == expected
    # The clinicians reversed the score's labels: the score's codes are not what the loss saw.
    from_score = [LABELS.index(REVERSED[clinician[i]]) for i in order]
    assert from_score != expected
