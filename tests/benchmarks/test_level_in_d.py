"""benchmarks/level_in_d.py: it finds a patient's level in ``d`` when the encoder puts it
there, and none when ``d`` is acquisition noise alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

from learner.evaluate.embeddings_io import write_embeddings


def _embeddings(path: Path, *, level_in_d: bool, patients: int = 60, seed: int = 0) -> Path:
    """Three visits per patient; the embedding is the patient's level on 4 axes plus noise,
    and with ``level_in_d`` a visit-dependent term proportional to the level on 2 more."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        level = rng.normal(size=4)
        for visit in range(3):
            extra = level[:2] * visit if level_in_d else np.zeros(2)
            embedding = np.concatenate([level, extra]) + rng.normal(0, 0.3, size=6)
            score = float(level[0] + rng.normal())
            rows.append(
                {
                    "patient_id": f"P{p:02d}",
                    "visit_order": visit,
                    "score": score,
                    "split": "test",
                    "pred_score": score,
                    "embedding": embedding.astype(np.float32),
                }
            )
    write_embeddings(pd.DataFrame(rows), path, {"objective": "synthetic"})
    return path


def test_level_in_d_tells_a_level_carrying_d_from_noise(
    load_benchmark: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    module = load_benchmark("level_in_d.py")
    carried, _ = module.level_in_d(_embeddings(tmp_path / "a.parquet", level_in_d=True))
    noise, _ = module.level_in_d(_embeddings(tmp_path / "b.parquet", level_in_d=False))
    assert carried > 0.3
    assert noise < 0.05
