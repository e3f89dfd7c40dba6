"""run.transfer: an encoder pretrained on one data set, embedded frozen on another and read by
the same probe as every objective (cross-data-set transfer), keyed by the checkpoint's bytes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tabular_cohort import tabular_config, write_score_table

from learner.config import Config
from learner.errors import ConfigError
from learner.evaluate.embeddings_io import read_embeddings
from learner.pipeline.embed import embed_frame
from learner.pipeline.run import run_ablation
from learner.train.checkpoint import load_checkpoint
from learner.train.module import LearnerModule
from learner.train.prepared import config_manifest, prepare_data
from learner.train.pretrain import pretrain


def _write_table(folder: Path, seed: int, patients: int) -> Path:
    """Patients x 3 visits; the features follow the score (both cohorts share the mapping)."""
    return write_score_table(
        folder, patients=patients, visits=3, seed=seed, features=6, score_sd=6.0, prefix=f"S{seed}P"
    )


def _config(manifest: Path, *extra: str) -> Config:
    return tabular_config(manifest, *extra, features=6)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A checkpoint pretrained on another cohort (other patients, other seed)."""
    manifest = _write_table(tmp_path / "source", seed=7, patients=16)
    result = pretrain(_config(manifest), tmp_path / "source-run", progress=False)
    return Path(result.best)


def test_a_transferred_encoder_is_a_keyed_frozen_row(tmp_path: Path, source: Path) -> None:
    target = _write_table(tmp_path / "target", seed=1, patients=20)
    transfer = f"run.transfer=[{{label: other, checkpoint: {source}}}]"
    out = tmp_path / "run"
    lines: list[str] = []
    results = run_ablation(_config(target, transfer), out, log=lines.append, progress=False)
    assert "[seed0] other: running" in lines
    assert "other" in results.results["objectives"]
    assert "other" in results.results["comparisons"]["differences"]
    assert "other" not in results.run_dirs  # nothing pretrained here: not a change-model pick

    # Frozen: the row's embeddings are the checkpoint's encoder reading the target scans as
    # the run prepares them (a table standardised with the target's training rows).
    stored, meta = read_embeddings(out / "cells" / "other" / "seed0" / "embeddings.parquet")
    cfg = _config(target)
    data = prepare_data(cfg, config_manifest(cfg))
    model, _ = load_checkpoint(source)
    embed_frame(model, data, data.frame, tmp_path / "fresh.parquet", metadata={})
    fresh, _ = read_embeddings(tmp_path / "fresh.parquet")
    np.testing.assert_allclose(
        np.stack(stored["embedding"].to_list()), np.stack(fresh["embedding"].to_list()), atol=1e-6
    )
    assert meta["transferred_from"] == str(source)

    lines.clear()
    run_ablation(_config(target, transfer), out, log=lines.append, progress=False)
    assert "[seed0] other: cached" in lines

    # Another checkpoint under the same path is another input: the run stops and names it.
    shutil.copy(source.parent / "last.ckpt", source)
    with pytest.raises(ConfigError, match=r"transfer\.checkpoint"):
        run_ablation(_config(target, transfer), out, log=lambda _: None, progress=False)


def test_bad_transfer_entries_are_one_line_errors(tmp_path: Path, source: Path) -> None:
    target = _write_table(tmp_path / "target", seed=1, patients=20)

    def run(entry: str) -> None:
        cfg = _config(target, f"run.transfer=[{entry}]")
        run_ablation(cfg, tmp_path / "run", log=lambda _: None, progress=False)

    with pytest.raises(ConfigError, match=r"run\.transfer 'mse': the label is taken"):
        run(f"{{label: mse, checkpoint: {source}}}")
    with pytest.raises(ConfigError, match=r"run\.transfer 'x': .*missing\.ckpt: checkpoint not"):
        run(f"{{label: x, checkpoint: {tmp_path / 'missing.ckpt'}}}")

    # An encoder of 2-D stills cannot read a table: refused before anything trains.
    stills = Config.model_validate(
        {"data": {"input": {"kind": "image", "size": 32}}, "model": {"encoder": "resnet2d_18"}}
    )
    model = LearnerModule(stills.to_plain(), (0.0, 30.0))
    image_ckpt = tmp_path / "stills.ckpt"
    meta = {"config": stills.to_plain(), "score_range": [0.0, 30.0]}
    torch.save({"state_dict": model.state_dict(), "learner": meta}, image_ckpt)
    with pytest.raises(ConfigError, match=r"reads data\.input kind image \(yours tabular\)"):
        run(f"{{label: x, checkpoint: {image_ckpt}}}")
    assert not (tmp_path / "run" / "cells").exists()
