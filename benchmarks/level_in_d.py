"""Does ``d = u_t+1 - u_t`` carry the patient's level? A check for a null-control excess.

On a ``--null`` cohort the images show each patient's mean severity and no change, while a
patient's level still predicts the direction of the score change (clipped trajectories), so a
feature that carries the level classifies change above chance: the ``concat`` leak
(benchmarks/reports/synthetic-lus.md). ``d`` differences the level away if the encoder's
acquisition noise is independent of it. This script measures, for every objective x seed of a
finished quality run, how much of ``d`` a ridge regression predicts from the pair's mean
embedding ``(u_t + u_t+1) / 2`` (cross-validated R^2 over folds of patients; about 0 or below:
``d`` holds no linearly readable level), and how well the level-predicted part of ``d`` orders
the pairs by score change (Spearman).

Usage:
    .venv/bin/python benchmarks/level_in_d.py --run benchmarks/work/runs/synth-mri-null-pool300-aug2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from sklearn.linear_model import RidgeCV  # noqa: E402
from sklearn.model_selection import GroupKFold  # noqa: E402

from learner.data.pairs import consecutive_pairs  # noqa: E402
from learner.evaluate.embeddings_io import read_embeddings  # noqa: E402
from learner.evaluate.features import visit_embeddings  # noqa: E402

ALPHAS = np.logspace(-2, 3, 12)


def level_in_d(embeddings: Path, folds: int = 5) -> tuple[float, float]:
    """(cross-validated R^2 of d from the pair's mean embedding, Spearman of the predicted
    part's projection on the mean d direction with the score change)."""
    frame, _ = read_embeddings(embeddings)
    visits, matrix = visit_embeddings(frame)
    pairs = consecutive_pairs(visits)
    start = matrix[pairs["index_from"].to_numpy()]
    end = matrix[pairs["index_to"].to_numpy()]
    d, level = end - start, (start + end) / 2
    groups = pairs["patient_id"].to_numpy()
    predicted = np.zeros_like(d)
    for train, test in GroupKFold(folds).split(level, groups=groups):
        model = RidgeCV(alphas=ALPHAS).fit(level[train], d[train])
        predicted[test] = model.predict(level[test])
    r2 = 1.0 - float(((d - predicted) ** 2).sum() / ((d - d.mean(0)) ** 2).sum())
    # The level-predicted part of d read along d's mean direction, against the score change.
    direction = d.mean(0) / (np.linalg.norm(d.mean(0)) or 1.0)
    rho = float(spearmanr(predicted @ direction, pairs["change"].to_numpy()).statistic)
    return r2, rho


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a quality run folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    args = parser.parse_args(argv)
    print("| objective | R^2 of d from the pair's level (mean, min..max over seeds) | rho |")
    print("|---|---|---|")
    for cell in sorted(p for p in (args.run / "cells").iterdir() if p.is_dir()):
        rows = [
            level_in_d(cell / f"seed{seed}" / "embeddings.parquet")
            for seed in args.seeds
            if (cell / f"seed{seed}" / "embeddings.parquet").is_file()
        ]
        if not rows:
            continue
        r2 = np.array([r for r, _ in rows])
        rho = np.array([r for _, r in rows])
        print(
            f"| {cell.name} ({len(rows)} seeds) | {r2.mean():+.3f} ({r2.min():+.3f}.."
            f"{r2.max():+.3f}) | {rho.mean():+.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
