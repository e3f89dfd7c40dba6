"""One stable-band rule: `validate`, `evaluate` and `run` read the same default (eval.delta,
tertiles) and `evaluate` on a run's embeddings uses the band that run used."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from learner.cli import app
from learner.config import Config
from learner.data.pairs import DEFAULT_DELTA
from learner.pipeline.run import run_ablation

sys.path.insert(0, str(Path(__file__).parent))
from test_cache_keys import _config, _write_table


def test_one_default() -> None:
    assert Config().eval.delta == DEFAULT_DELTA == "tertiles"


def test_evaluate_uses_the_runs_band_and_validate_the_configs(tmp_path: Path) -> None:
    manifest = _write_table(tmp_path / "data")
    cfg = _config(manifest, "eval.delta=5.0", "run.objectives=[mse]", "run.baselines=false")
    results = run_ablation(cfg, tmp_path / "run", progress=False, log=lambda _: None).results
    assert results["dataset"]["stable_band"] == 5.0
    emb = tmp_path / "run" / "cells" / "mse" / "seed0" / "embeddings.parquet"

    runner = CliRunner()
    out = runner.invoke(app, ["evaluate", "--embeddings", str(emb), "--out", str(tmp_path / "e")])
    assert out.exit_code == 0, out.output
    assert "|change| <= 5 score units (5.0, from the run that wrote the embeddings)" in out.output
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["band"] == 5.0
    run_counts = json.loads((tmp_path / "run/cells/mse/seed0/eval-diff/metrics.json").read_text())
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["class_counts_test"] == run_counts["class_counts_test"]

    out = runner.invoke(
        app, ["evaluate", "--embeddings", str(emb), "--out", str(tmp_path / "e2"), "--delta", "2"]
    )
    assert out.exit_code == 0 and "(2, from --delta)" in out.output

    yaml_path = tmp_path / "cfg.yaml"
    yaml_path.write_text("eval:\n  delta: 5.0\n")
    for extra, shown in (([], "tertiles"), (["--config", str(yaml_path)], "5.0")):
        args = ["validate", str(manifest), "--features", "f0,f1,f2,f3", *extra]
        out = runner.invoke(app, args, terminal_width=200)
        assert out.exit_code == 0, out.output
        assert f"({shown}," in out.output


@pytest.mark.parametrize("delta", ["-1", "wide"])
def test_bad_band_is_one_line(tmp_path: Path, delta: str) -> None:
    manifest = _write_table(tmp_path / "data")
    out = CliRunner().invoke(
        app, ["validate", str(manifest), "--features", "f0,f1", "--delta", delta]
    )
    assert out.exit_code == 2 and "delta" in out.output
