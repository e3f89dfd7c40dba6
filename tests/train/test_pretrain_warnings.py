"""A 0-3 severity trained with an S/F score range (0-500) no longer exits silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from learner.cli import app


def test_wrong_score_range_is_warned_with_the_fix(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(12):
        for v in range(2):
            severity = int(rng.integers(0, 4))
            feats = severity + rng.normal(0, 0.3, size=3)
            rows.append({"patient_id": f"P{p}", "visit": v, "score": severity})
            rows[-1].update({f"f{i}": float(x) for i, x in enumerate(feats)})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    config = tmp_path / "cfg.yaml"
    config.write_text(
        "data:\n  score_range: [0, 500]\n  feature_columns: [f0, f1, f2]\n"
        "  input: {kind: tabular}\nmodel: {encoder: mlp, mlp_hidden: [8], mlp_embed_dim: 4}\n"
        "objective: {name: weighted}\ntrain: {epochs: 2, batch_size: 8}\n"
    )
    result = CliRunner().invoke(
        app,
        [
            "pretrain",
            "--config",
            str(config),
            "--set",
            f"data.manifest={manifest}",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "data.score_range=[0,3]" in result.output
    assert "weighted: no negative pair in" in result.output and "objective.tau" in result.output
