"""The same warnings everywhere (issue 28, item 6): `validate`, `evaluate`, `run` and
`predict` call one function, learner.evaluate.data_warnings.data_warnings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from learner.cli import app
from learner.evaluate.data_warnings import data_warnings
from learner.evaluate.embeddings_io import write_embeddings

runner = CliRunner()
SKEWED = {"worsen": 2, "stable": 17, "improve": 0}


def test_imbalance_missing_class_few_pairs_and_patients_are_warned() -> None:
    lines = data_warnings(
        delta=2, pair_counts=[{"class_counts_test": SKEWED, "n_test_patients": 4}]
    )
    text = "\n".join(lines)
    assert "class 'improve' has 0 test pairs" in text
    assert "class 'worsen' has 2 test pairs" in text
    assert "'stable' is 89% of test pairs" in text
    assert "only 4 test patients" in text
    healthy = {"worsen": 25, "stable": 30, "improve": 25}
    assert (
        data_warnings(delta=2, pair_counts=[{"class_counts_test": healthy, "n_test_patients": 9}])
        == []
    )
    none = data_warnings(
        delta=2, pair_counts=[{"class_counts_test": {}, "n_test_patients": 0}], judged_on="manifest"
    )
    assert none and none[0].startswith("no manifest change pairs")
    # Scores: outside the range, or using a sliver of it; for predict, the model's range.
    (outside,) = data_warnings(delta=2, scores=np.array([-5.0, 40.0]), score_range=(0, 30))
    assert "outside data.score_range [0, 30]" in outside
    (scored,) = data_warnings(delta=2, scores=[50.0], score_range=(0, 30), judged_on="scored")
    assert "outside the model's data.score_range" in scored
    assert (
        data_warnings(delta=2, scores=[10.0, 11.0], score_range=(0, 30), judged_on="scored") == []
    )


def _embeddings(path: Path) -> Path:
    """Training patients with every class; test patients whose pairs are 2 worsen, 17 stable
    and no improve (the OASIS-2 test set of issue 28)."""
    rng = np.random.default_rng(0)
    rows = []

    def patient(pid: str, split: str, scores: list[float]) -> None:
        for order, score in enumerate(scores):
            rows.append(
                {
                    "patient_id": pid,
                    "visit": str(order),
                    "visit_order": order,
                    "score": score,
                    "split": split,
                    "pred_score": score + rng.normal(),
                    "embedding": rng.normal(size=4).astype(np.float32),
                }
            )

    for i in range(12):
        split = "train" if i < 9 else "val"
        patient(f"T{i}", split, [20.0, 25.0, 25.5, 19.0, 19.5, 24.0])
    changes = [[0.0] * 5 + [-5.0], [0.0] * 5 + [-6.0], [0.5] * 3, [0.0] * 4]
    for i, steps in enumerate(changes):
        patient(f"S{i}", "test", list(20.0 + np.cumsum([0.0, *steps])))
    write_embeddings(
        pd.DataFrame(rows), path, {"score_range": [0, 30], "higher_is_better": True, "delta": 2}
    )
    return path


def test_evaluate_writes_the_imbalance_warnings(tmp_path: Path) -> None:
    embeddings = _embeddings(tmp_path / "e.parquet")
    out = tmp_path / "eval"
    result = runner.invoke(
        app, ["evaluate", "--embeddings", str(embeddings), "--out", str(out), "--delta", "2"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_counts_test"] == SKEWED
    warnings = "\n".join(metrics["warnings"])
    assert "class 'improve' has 0 test pairs" in warnings
    assert "'stable' is 89% of test pairs" in warnings
    assert "only 4 test patients" in warnings
    assert "'stable' is 89% of test pairs" in result.stderr


def test_validate_with_a_config_checks_the_score_range(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    rows = [(f"p{i}", v, 10.0 + 30 * v + i, 0.1 * i) for i in range(6) for v in (1, 2)]
    pd.DataFrame(rows, columns=["patient_id", "visit", "score", "f1"]).to_csv(manifest, index=False)
    config = tmp_path / "config.yaml"
    config.write_text(
        "data:\n  score_range: [0, 30]\n  feature_columns: [f1]\n  input:\n    kind: tabular\n"
        "model:\n  encoder: mlp\neval:\n  delta: 2\n",
        encoding="utf-8",
    )
    args = ["validate", str(manifest), "--features", "f1"]
    with_config = runner.invoke(app, [*args, "--config", str(config)])
    assert with_config.exit_code == 0, with_config.output
    assert "outside data.score_range [0, 30]" in with_config.stderr
    # Every pair improves: the same class warnings as evaluate's, on the manifest's pairs.
    assert "class 'worsen' has 0 manifest pairs" in with_config.stderr
    assert "'improve' is 100% of manifest pairs" in with_config.stderr
    without = runner.invoke(app, args)
    assert without.exit_code == 0 and "score_range" not in without.stderr
