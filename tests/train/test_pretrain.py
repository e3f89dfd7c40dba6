"""Pretraining end to end on the tiny synthetic cohort: run folder, checkpoints, embeddings,
patient hygiene, and exact resume after a kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from learner.cli import app
from learner.config import Config
from learner.data import dataset as dataset_module
from learner.evaluate.embeddings_io import read_embeddings
from learner.train import prepared as prepared_module
from learner.train import pretrain as pretrain_module
from learner.train.pretrain import pretrain


def test_pretrain_writes_run_folder_and_embeds(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[bool, set[str]]] = []
    real = dataset_module.ScanDataset

    class Spy(real):  # type: ignore[misc,valid-type]
        def __init__(self, frame: pd.DataFrame, **kwargs: object) -> None:
            seen.append((bool(kwargs["train"]), set(frame["split"])))
            super().__init__(frame, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(prepared_module, "ScanDataset", Spy)  # make_dataset builds it there
    run = tmp_path / "run"
    result = pretrain(tiny_config, run, progress=False)

    for rel in (
        "config.yaml",
        "split.json",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
        "logs/csv/metrics.csv",
    ):
        assert (run / rel).is_file(), rel
    # The dev extra installs tensorboard, so the tests see its event files too.
    assert pretrain_module.tensorboard_available(), "install the dev extra (it has tensorboard)"
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents*"))
    # Only training patients reach the training dataset.
    assert [splits for is_train, splits in seen if is_train] == [{"train"}]

    ckpt = torch.load(result.best, map_location="cpu", weights_only=True)
    meta = ckpt["learner"]
    assert meta["seed"] == 0 and len(meta["split_hash"]) == 64
    assert set(meta["versions"]) >= {"torch", "lightning", "learner"}
    assert "git_commit" in meta and meta["config"]["objective"]["name"] == "weighted"
    assignment = meta["split"]
    train = {p for p, s in assignment.items() if s == "train"}
    test = {p for p, s in assignment.items() if s == "test"}
    assert train and test and not train & test

    metrics = pd.read_csv(run / "logs" / "csv" / "metrics.csv")
    for column in ("val/loss", "val/score_mae", "val/spearman", "train/batches_without_pos"):
        assert column in metrics.columns

    out = tmp_path / "emb.parquet"
    res = CliRunner().invoke(
        app,
        [
            "embed",
            "--checkpoint",
            str(result.best),
            "--manifest",
            str(tiny_config.data.manifest),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    frame, emb_meta = read_embeddings(out)
    manifest = pd.read_csv(tiny_config.data.manifest)
    assert len(frame) == len(manifest)
    assert frame["path"].nunique() == len(manifest)
    assert len(frame["embedding"].iloc[0]) == 8 * 8  # width 8 -> 64-d
    assert set(frame.loc[frame["split"] == "test", "patient_id"]) == test
    assert emb_meta["objective"] == "weighted"


def test_pretrain_without_tensorboard_writes_the_csv_log(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tensorboard is an optional extra: without it training runs and logs to CSV only.
    monkeypatch.setattr(pretrain_module, "tensorboard_available", lambda: False)
    monkeypatch.setattr(
        pretrain_module,
        "TensorBoardLogger",
        lambda *a, **k: pytest.fail("TensorBoardLogger made without tensorboard"),
    )
    tiny_config.train.epochs = 1
    run = tmp_path / "run"
    pretrain(tiny_config, run, progress=False)
    metrics = pd.read_csv(run / "logs" / "csv" / "metrics.csv")
    assert {"val/loss", "train/loss"} <= set(metrics.columns)
    assert not (run / "logs" / "tensorboard").exists()


def test_existing_run_is_not_overwritten(tiny_config: Config, tmp_path: Path) -> None:
    run = tmp_path / "run"
    tiny_config.train.epochs = 1
    pretrain(tiny_config, run, progress=False)
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    res = CliRunner().invoke(
        app,
        ["pretrain", "--config", str(_config_file(tiny_config, tmp_path)), "--out", str(run)],
    )
    assert res.exit_code == 2 and "--resume" in res.output
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before


def test_a_resume_with_other_settings_is_refused_naming_them(
    tiny_config: Config, tmp_path: Path
) -> None:
    """The run folder's key says what the run was made from: --resume with a changed
    learning rate stops naming it (nothing written; more epochs alone would be allowed),
    --resume-changed continues."""
    run = tmp_path / "run"
    tiny_config.train.epochs = 1
    pretrain(tiny_config, run, progress=False)
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    tiny_config.train.epochs = 2
    tiny_config.train.lr = tiny_config.train.lr * 10
    args = ["pretrain", "--config", str(_config_file(tiny_config, tmp_path)), "--out", str(run)]
    res = CliRunner().invoke(app, [*args, "--resume"])
    assert res.exit_code == 2, res.output
    assert "train.lr:" in res.output and "train.epochs" not in res.output
    assert "--resume-changed" in res.output
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = CliRunner().invoke(app, [*args, "--resume", "--resume-changed"])
    assert res.exit_code == 0, res.output
    # Lightning's "Previous log files ... will be deleted" would say the opposite of the truth.
    assert not [w for w in caught if "will be deleted" in str(w.message)]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1  # the second epoch ran
    # The CSV log keeps the first run's epoch beside the resumed one's.
    metrics = pd.read_csv(run / "logs" / "csv" / "metrics.csv")
    assert sorted(metrics["epoch"].dropna().unique()) == [0, 1]
    assert metrics["val/loss"].notna().sum() == 2
    # TensorBoard keeps the first run's event file beside the resumed run's.
    assert len(list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))) == 2


def _config_file(cfg: Config, tmp_path: Path) -> Path:
    from learner.config import save_config

    path = tmp_path / "cfg.yaml"
    save_config(cfg, path)
    return path


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2  # three epochs: 0, 1, 2
    return ckpt["state_dict"]


def test_resume_after_kill_matches_uninterrupted(tiny_config: Config, tmp_path: Path) -> None:
    tiny_config.train.epochs = 3
    cfg_file = _config_file(tiny_config, tmp_path)
    learner_cmd = [sys.executable, "-m", "learner.cli"]
    base = [*learner_cmd, "pretrain", "--config", str(cfg_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    straight = tmp_path / "straight"
    subprocess.run([*base, "--out", str(straight)], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*base, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # in epoch 2 (or later): the run is cut short
    proc.wait()
    assert last.exists(), "the run was killed before its first checkpoint"
    done_epoch = torch.load(last, map_location="cpu", weights_only=True)["epoch"]

    res = subprocess.run(
        [*base, "--out", str(killed), "--resume"], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    a, b = _final_weights(straight), _final_weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs (killed after epoch {done_epoch})"
