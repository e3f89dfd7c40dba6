"""Determinism (issue #7): the same seed and config give an identical results.json on CPU."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def test_same_seed_and_config_give_identical_results(
    reference_run: Path,
    run_command: Callable[[Path, Path], list[str]],
    cli: Any,
    tmp_path: Path,
) -> None:
    """A second tiny `learner run` in a fresh folder, with a fresh decode cache."""
    out = tmp_path / "out"
    cli.succeeds(cli.invoke(run_command(out, tmp_path / "cache")))
    first = json.loads((reference_run / "results.json").read_text())
    again = json.loads((out / "results.json").read_text())

    objectives = first["objectives"]
    assert set(objectives) >= {"mse", "weighted", "head_delta", "untrained"}
    accuracy = objectives["weighted"]["accuracy"]["mean"]
    assert isinstance(accuracy, float) and math.isfinite(accuracy)
    # Exact equality: no tolerance would hide a seed that is not threaded through.
    assert again["objectives"] == objectives
    assert again["comparisons"] == first["comparisons"]
    assert again["dataset"] == first["dataset"]
    # The configs differ only where the runs were told to differ (the cache folder).
    config, reference = again["config"], first["config"]
    assert config["data"].pop("cache_dir") != reference["data"].pop("cache_dir")
    assert config == reference

    # The embeddings behind the numbers are equal scan by scan.
    for label in ("mse", "weighted", "untrained"):
        name = Path("cells") / label / "seed0" / "embeddings.parquet"
        a, b = pd.read_parquet(reference_run / name), pd.read_parquet(out / name)
        assert a["path"].tolist() == b["path"].tolist()
        np.testing.assert_array_equal(np.stack(a["embedding"]), np.stack(b["embedding"]))
