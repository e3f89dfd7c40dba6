"""The probe screen re-reads cached cells with every probe variant, against head_delta and
the mse probe on the same test pairs, and never needs a retraining."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score

from learner.evaluate.classifier import CV_CS
from learner.evaluate.embeddings_io import write_embeddings
from tests.evaluate.test_change import make_cohort


def fake_run(root: Path, seeds: list[int], folds: int = 0) -> Path:
    """A quality run's layout: cells/<objective>/<tag>/embeddings.parquet, results.json;
    tags ``seed<S>``, or ``seed<S>-fold<K>`` with ``folds``."""
    tags = [
        (seed, f"seed{seed}" + (f"-fold{k}" if folds else ""))
        for seed in seeds
        for k in range(max(folds, 1))
    ]
    for i, (seed, tag) in enumerate(tags):
        for objective, kind in (("mse", "exact"), ("untrained", "random")):
            frame = make_cohort(30, seed=seed + 100 * i, kind=kind)
            if objective == "untrained":
                frame["pred_score"] = np.nan  # a random encoder's head is not read
            write_embeddings(
                frame,
                root / "cells" / objective / tag / "embeddings.parquet",
                {"objective": objective, "seed": seed},
            )
    results = {
        "dataset": {"splits": [{"cell": tag} for _, tag in tags]},
        "config": {
            "eval": {"delta": 1.0},
            "data": {"higher_is_better": True},
            "run": {"seeds": seeds},
        },
        "ceilings": {"oracle_truth": {"balanced_accuracy": {"per_seed": [0.9] * len(seeds)}}},
    }
    (root / "results.json").write_text(json.dumps(results))
    return root


def test_screen_every_variant_against_head_delta_and_mse(
    tmp_path: Path, load_benchmark: Callable[[str], ModuleType]
) -> None:
    probes = load_benchmark("probes.py")
    run = fake_run(tmp_path / "run", [0])
    variants = ["logreg", "pca8", "logreg-cv", "pca-val", "hybrid-cv"]
    block = probes.screen_run(run, [0], n_boot=20, variants=variants, log=lambda _: None)
    rows = block["rows"]
    assert {f"mse/{name}" for name in variants} <= set(rows)
    # No head on the untrained encoder: the hybrid probes are skipped, the others screened.
    assert "untrained/pca8" in rows and "untrained/hybrid-cv" not in rows
    reference = rows["mse/logreg"]
    assert reference["minus_mse"]["mean"] == 0.0
    assert block["against"] == ["untrained"] and reference["minus_untrained"]["mean"] > 0.2
    assert rows["untrained/pca8"]["minus_mse_same_probe"]["mean"] < 0
    assert rows["mse/pca8"]["minus_mse_same_probe"]["mean"] == 0.0
    # An embedding that encodes the score reads change; noise does not.
    noise = rows["untrained/logreg"]["balanced_accuracy"]["mean"]
    assert reference["balanced_accuracy"]["mean"] > noise + 0.2
    assert set(rows["mse/pca-val"]["chosen_k"]) <= set(probes.PCA_GRID)
    assert all(c in CV_CS for c in rows["mse/logreg-cv"]["chosen_c"])
    entry = rows["untrained/logreg"]["minus_head_delta"]
    lo, hi = entry["ci95"]
    assert entry["mean"] < 0 and lo <= entry["mean"] <= hi
    assert math.isclose(block["oracle_truth"], 0.9)
    text = probes.markdown(block)
    assert "| mse/pca8 |" in text and "- untrained, same probe" in text


def test_screen_without_truth_reports_no_fraction(
    tmp_path: Path, load_benchmark: Callable[[str], ModuleType]
) -> None:
    """Real data have no oracle: the screen still runs, with no fraction of the achievable."""
    probes = load_benchmark("probes.py")
    run = fake_run(tmp_path / "run", [0])
    results = json.loads((run / "results.json").read_text())
    results["ceilings"] = {"chance": {"balanced_accuracy": 1 / 3}}
    (run / "results.json").write_text(json.dumps(results))
    # A fine-tuned cell is compared with the encoder it started from (here: the same one).
    shutil.copytree(run / "cells" / "mse", run / "cells" / "mse-ft")
    block = probes.screen_run(run, [0], n_boot=10, variants=["logreg"], log=lambda _: None)
    assert block["rows"]["mse-ft/logreg"]["minus_base"]["mean"] == 0.0
    assert "minus_base" not in block["rows"]["mse/logreg"]
    assert math.isnan(block["oracle_truth"])
    assert math.isnan(block["rows"]["mse/logreg"]["fraction_of_achievable"])
    assert block["rows"]["mse/logreg"]["balanced_accuracy"]["mean"] > 0.5
    text = probes.markdown(block)
    assert "no oracle" in text and "| mse/logreg |" in text


def test_screen_reads_every_fold_of_a_seed(
    tmp_path: Path, load_benchmark: Callable[[str], ModuleType]
) -> None:
    """A k-fold run (OASIS-2): a seed's unit is its folds together, as in results.json."""
    probes = load_benchmark("probes.py")
    run = fake_run(tmp_path / "run", [0, 1], folds=3)
    block = probes.screen_run(
        run, [0, 1], n_boot=10, variants=["logreg", "rate-pca8"], log=lambda _: None
    )
    row = block["rows"]["mse/logreg"]
    assert len(row["balanced_accuracy"]["per_seed"]) == 2
    cfg = probes.Config.model_validate(json.loads((run / "results.json").read_text())["config"])
    folds = [
        probes.evaluate_cell(
            probes.read_embeddings(run / "cells" / "mse" / f"seed1-fold{k}" / "embeddings.parquet")[
                0
            ],
            cfg,
            1,
            probes.VARIANTS["logreg"],
        )
        for k in range(3)
    ]
    assert len({f.metrics["balanced_accuracy"] for f in folds}) > 1  # reading one would show
    # The seed's value pools its folds' test pairs, as `learner run` does for a k-fold seed.
    pooled = pd.concat([f.test_pairs for f in folds], ignore_index=True)
    expected = balanced_accuracy_score(pooled["label"], pooled["predicted"])
    assert math.isclose(row["balanced_accuracy"]["per_seed"][1], expected)
    assert "mse/rate-pca8" in block["rows"]
