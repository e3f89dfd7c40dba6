"""A `learner run` shared by the pipeline tests: two tiny synthetic cohorts, a run on the
first (mse and weighted, one epoch, one seed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from learner.cli import app

DEMO = Path(__file__).resolve().parents[2] / "learner" / "configs" / "demo.yaml"
RUN_SETTINGS = [
    "model.width=8",
    "data.input.size=32",
    "data.input.frames=4",
    "data.split.ratios=[0.5,0.25,0.25]",
    "train.epochs=1",
    "train.batch_size=8",
    "eval.n_boot=0",
    "run.seeds=[0]",
    "run.objectives=[mse,weighted]",
    "run.baselines=false",
]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``root/cohort-a`` and ``root/cohort-b`` (seeds 0 and 1) and ``root/runs/a``, a
    `learner run` on cohort-a, as docs/predict.md and docs/api.md lay them out."""
    runner = CliRunner()
    root = tmp_path_factory.mktemp("predict")
    for name, seed in (("cohort-a", 0), ("cohort-b", 1)):
        cohort = ["--out", str(root / name), "--patients", "16", "--seed", str(seed)]
        result = runner.invoke(app, ["synth", "lus", *cohort, "--preset", "tiny"])
        assert result.exit_code == 0, result.output
    manifest = root / "cohort-a" / "manifest.csv"
    sets = [arg for s in [f"data.manifest={manifest}", *RUN_SETTINGS] for arg in ("--set", s)]
    result = runner.invoke(
        app, ["run", "--config", str(DEMO), *sets, "--out", str(root / "runs" / "a")]
    )
    assert result.exit_code == 0, result.output
    second = root / "cohort-b" / "manifest.csv"
    return {"root": root, "run": root / "runs" / "a", "first": manifest, "second": second}
