"""Siamese change fine-tuning (``eval.finetune``): validation patients choose the epoch, test
patients are never read, and `learner run` adds a cached, keyed ``<objective>-ft`` row whose
saved encoder reproduces its embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tabular_cohort import tabular_config, write_score_table

from learner.config import Config
from learner.errors import ConfigError, DataError
from learner.evaluate.embeddings_io import read_embeddings
from learner.pipeline.embed import embed_checkpoint
from learner.pipeline.finetune import finetune_change
from learner.pipeline.run import run_ablation
from learner.train.checkpoint import load_checkpoint
from learner.train.module import LearnerModule
from learner.train.prepared import model_config, prepare_data


def _write_table(folder: Path) -> Path:
    """24 patients x 4 visits; 4 features follow the score, 4 are patient-level nuisance."""
    return write_score_table(folder, patients=24, visits=4, seed=3, score_sd=6.0, nuisance=4)


FEATURES = [f"f{i}" for i in range(8)]


def _config(manifest: Path, *extra: str) -> Config:
    return tabular_config(manifest, *extra, features=8)


def _untrained(cfg: Config, seed: int = 0) -> tuple[LearnerModule, object]:
    data = prepare_data(cfg)
    torch.manual_seed(seed)
    return LearnerModule(model_config(cfg, data), data.score_range, {"seed": seed}), data


def _finetune(model: LearnerModule, data: object, epochs: int = 8, lr: float = 3e-3):  # type: ignore[no-untyped-def]
    return finetune_change(
        model,
        data,  # type: ignore[arg-type]
        epochs=epochs,
        lr=lr,
        delta=2.0,
        higher_is_better=True,
        seed=0,
        batch_pairs=8,
    )


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_validation_picks_the_epoch_and_the_input_model_is_untouched(tmp_path: Path) -> None:
    model, data = _untrained(_config(_write_table(tmp_path)))
    before = _state(model)
    result = _finetune(model, data)

    assert [h["epoch"] for h in result.history] == list(range(9))
    scores = [h["val_balanced_accuracy"] for h in result.history]
    assert result.best_epoch == int(np.argmax(scores))  # the first best: ties go earlier
    # Positive control: the change follows 4 of the 8 features, and an untrained encoder
    # fine-tuned on the training pairs reads it better than its frozen linear probe did.
    assert max(scores[1:]) > scores[0]
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # the argument is not modified
    moved = any(not torch.equal(v, before[k]) for k, v in result.model.state_dict().items())
    assert moved == (result.best_epoch > 0)
    assert result.n_train_pairs > 0 and result.n_val_pairs > 0


def test_zero_epochs_keeps_the_pretrained_encoder(tmp_path: Path) -> None:
    model, data = _untrained(_config(_write_table(tmp_path)))
    result = _finetune(model, data, epochs=0)
    assert result.best_epoch == 0 and len(result.history) == 1
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_test_patients_are_never_read(tmp_path: Path) -> None:
    cfg = _config(_write_table(tmp_path))
    model, data = _untrained(cfg)
    reference = _finetune(model, data, epochs=3)

    # Scramble every test patient's features and scores: the fine-tuned encoder is identical.
    frame = data.frame  # type: ignore[attr-defined]
    test = frame["split"] == "test"
    assert test.any()
    rng = np.random.default_rng(0)
    frame.loc[test, FEATURES] = rng.normal(0, 50, size=(int(test.sum()), len(FEATURES)))
    frame.loc[test, "score"] = rng.uniform(0, 100, size=int(test.sum()))
    changed = _finetune(model, data, epochs=3)
    assert changed.history == reference.history
    for name, value in changed.model.state_dict().items():
        assert torch.equal(value, reference.model.state_dict()[name]), name


def test_no_validation_pairs_is_a_clear_error(tmp_path: Path) -> None:
    model, data = _untrained(_config(_write_table(tmp_path)))
    frame = data.frame  # type: ignore[attr-defined]
    frame.loc[frame["split"] == "val", "split"] = "train"
    with pytest.raises(DataError, match=r"eval\.finetune needs validation patients"):
        _finetune(model, data, epochs=1)


def test_run_adds_keyed_finetuned_rows(tmp_path: Path) -> None:
    manifest = _write_table(tmp_path / "data")
    out = tmp_path / "run"
    plain = run_ablation(_config(manifest), out, progress=False, log=lambda _: None).results

    lines: list[str] = []
    results = run_ablation(
        _config(manifest, "eval.finetune=3"), out, progress=False, log=lines.append
    ).results
    # The base cells and their evaluations are reused: fine-tuning settings are not theirs.
    assert "[seed0] mse: cached" in lines and not any("re-evaluating" in x for x in lines)
    assert results["cells"]["mse/seed0"] == plain["cells"]["mse/seed0"]
    assert {"mse-ft", "untrained-ft"} <= set(results["objectives"])
    assert {"mse-ft", "untrained-ft"} <= set(results["comparisons"]["differences"])
    assert "mse-ft" in results["comparisons"]["differences_to_untrained"]

    cell = out / "cells" / "mse-ft" / "seed0"
    summary = json.loads((cell / "finetune.json").read_text())
    assert 0 <= summary["best_epoch"] <= 3 and len(summary["history"]) == 4
    # The saved encoder is the one that embedded the cell.
    _, meta = load_checkpoint(cell / "finetuned.ckpt")
    assert meta["finetune"]["from"] == "mse/seed0"
    again = embed_checkpoint(cell / "finetuned.ckpt", manifest, tmp_path / "again.parquet")
    stored, _ = read_embeddings(cell / "embeddings.parquet")
    fresh, _ = read_embeddings(again)
    np.testing.assert_allclose(
        np.stack(fresh["embedding"].to_list()), np.stack(stored["embedding"].to_list()), atol=1e-6
    )

    # A changed fine-tuning setting is a changed input of the -ft cells only, and is named.
    with pytest.raises(ConfigError, match=r"eval\.finetune_lr"):
        run_ablation(
            _config(manifest, "eval.finetune=3", "eval.finetune_lr=0.01"),
            out,
            progress=False,
            log=lambda _: None,
        )


def test_evaluate_refuses_finetune(tmp_path: Path) -> None:
    """`learner evaluate` reads fixed embeddings: asking it to fine-tune is an error, not a
    setting silently ignored."""
    from typer.testing import CliRunner

    from learner.cli import app
    from learner.config import save_config

    cfg = _config(_write_table(tmp_path / "data"), "eval.finetune=3")
    save_config(cfg, tmp_path / "config.yaml")
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--embeddings",
            str(tmp_path / "missing.parquet"),
            "--config",
            str(tmp_path / "config.yaml"),
            "--out",
            str(tmp_path / "eval"),
        ],
    )
    assert result.exit_code != 0
    assert "eval.finetune" in result.output and "learner run" in result.output
    assert not (tmp_path / "eval").exists()
