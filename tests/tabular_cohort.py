"""Small tabular cohorts for the tests that need a table (importable: pyproject puts tests/ on
the path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from learner.config import Config, build_config


def write_score_table(
    folder: Path,
    *,
    patients: int,
    visits: int,
    seed: int = 0,
    features: int = 4,
    score_sd: float = 4.0,
    nuisance: int = 0,
    prefix: str = "P",
) -> Path:
    """``folder/manifest.csv``: a tabular cohort whose ``features`` columns follow each
    visit's score (level U(10, 40) per patient plus N(0, score_sd) per visit), then
    ``nuisance`` columns that only say which patient it is. Columns ``f0``, ``f1``, ..."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        level = rng.uniform(10, 40)
        offsets = rng.normal(0, 3, size=nuisance)
        for v in range(visits):
            score = level + rng.normal(0, score_sd)
            values = [*(score / 10 + rng.normal(0, 0.3, size=features))]
            if nuisance:
                values += [*(offsets + rng.normal(0, 0.1))]
            row = {"patient_id": f"{prefix}{p:02d}", "visit": v, "score": round(score, 1)}
            row.update({f"f{i}": float(x) for i, x in enumerate(values)})
            rows.append(row)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def tabular_config(
    manifest: Path,
    *extra: str,
    features: int = 4,
    ratios: tuple[float, float, float] = (0.5, 0.25, 0.25),
    objectives: tuple[str, ...] = ("mse",),
    epochs: int = 2,
    batch_size: int = 16,
) -> Config:
    """A config that trains a small MLP on :func:`write_score_table`'s first ``features``
    columns in seconds (one seed, a 2-point stable band, 20 bootstrap resamples); ``extra``
    holds ``key=value`` overrides."""
    tree = {
        "data": {
            "manifest": str(manifest),
            "feature_columns": [f"f{i}" for i in range(features)],
            "input": {"kind": "tabular"},
            "split": {"ratios": list(ratios)},
        },
        "model": {"encoder": "mlp", "mlp_hidden": [16], "mlp_embed_dim": 8},
        "train": {"epochs": epochs, "batch_size": batch_size, "seed": 0},
        "eval": {"delta": 2.0, "n_boot": 20},
        "run": {"objectives": list(objectives), "seeds": [0]},
    }
    return build_config(tree, list(extra))
