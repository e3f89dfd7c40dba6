"""The recipe search scores a cell on validation patients only, and caches it."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from learner.data.manifest import load_manifest
from learner.data.synthetic import write_cohort
from learner.errors import ConfigError
from learner.evaluate.ceilings import load_truth


def test_val_cell_on_a_tiny_cohort(
    tmp_path: Path, load_benchmark: Callable[[str], ModuleType]
) -> None:
    recipe = load_benchmark("recipe.py")
    path = write_cohort("lus", tmp_path / "cohort", patients=24, seed=0, preset="tiny").manifest
    manifest = load_manifest(path)
    truth = load_truth(manifest.source)
    tiny = [
        f"data.manifest={path}",
        "data.input.size=32",
        "data.input.frames=4",
        "model.width=8",
        "train.epochs=1",
        "data.input.augment=2.0",
    ]
    cfg = recipe.variant_config("synth-lus", tiny, seed=0)
    assert cfg.objective.name == "mse" and cfg.data.input.augment == 2.0
    folder = tmp_path / "cell"
    first = recipe.val_cell(cfg, manifest, truth, folder)
    assert set(first) == set(recipe.METRICS)
    assert all(math.isfinite(v) for v in first.values())
    assert 0.0 <= first["probe"] <= 1.0 and first["oracle"] > 0.0
    assert first["noise_mae"] > 0 and first["mean_mae"] > 0
    # Cached: the second call trains nothing and reads the same numbers.
    stamp = (folder / "embeddings.parquet").stat().st_mtime_ns
    assert recipe.val_cell(cfg, manifest, truth, folder) == first
    assert (folder / "embeddings.parquet").stat().st_mtime_ns == stamp
    # A changed pretraining input never reuses the cell: it is refused, naming the key.
    changed = recipe.variant_config("synth-lus", [*tiny, "train.epochs=2"], seed=0)
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        recipe.val_cell(changed, manifest, truth, folder)
    untrained = recipe.val_cell(cfg, manifest, truth, tmp_path / "untrained", untrained=True)
    assert math.isnan(untrained["head_delta"]) and untrained["oracle"] == first["oracle"]
    summary = recipe.summarise({"0": first})
    assert summary["mean"]["val_mae"] == first["val_mae"]


def _quality_file(mse: float, head: float, mae: float) -> dict:
    def row(value: float, fraction: float | None = None) -> dict:
        entry = {"balanced_accuracy": {"mean": value, "per_seed": [value, value]}}
        if fraction is not None:
            entry["fraction_of_achievable"] = {"mean": fraction}
        return entry

    return {
        "objectives": {
            "mse": {**row(mse, 0.5), "score_mae": {"mean": mae}},
            "head_delta": row(head, 0.8),
            "untrained": row(0.40),
        },
        "ceilings": {"oracle_truth": {"balanced_accuracy": {"mean": 0.6}}},
    }


def test_each_curve_family_renders_its_own_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load_benchmark: Callable[[str], ModuleType]
) -> None:
    import json

    recipe = load_benchmark("recipe.py")
    monkeypatch.setattr(recipe, "RESULTS", tmp_path)
    assert recipe.curve_file("lus").name == "recipe_pool_curve.json"
    assert recipe.curve_file("mri").name == "recipe_pool_curve_mri.json"
    # Only the MRI pool-100 point has a test file here; the other pools are left out.
    tag, run = recipe.CURVES["mri"][100]
    (tmp_path / f"quality_{tag}.json").write_text(json.dumps(_quality_file(0.47, 0.51, 3.4)))
    val = {"mean": {"val_mae": 3.1, "head_delta_fraction": 0.6}}
    curve = {"seeds": [0, 1], "runs": {run: {"mse": val}}}
    lines = recipe.curve_markdown(curve, "mri").splitlines()
    assert len(lines) == 3
    assert lines[2] == "| 100 | 2 | 0.470 | 0.510 | 0.400 | 0.600 | 80% | 50% | 3.4 | 3.1 | 60% |"
    # The LUS family's tags are other files: nothing of them here.
    assert len(recipe.curve_markdown(curve, "lus").splitlines()) == 2
