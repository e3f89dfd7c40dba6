"""Loader settings (issue 29): ``data.num_workers: auto``, persistent workers, pinned memory
on a GPU and the prefetch factor reach pretraining's DataLoaders, and training receives the
workers' raw batches and augments them itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from learner.config import Config, build_config
from learner.provenance import pretrain_key
from learner.train import loader as loader_module
from learner.train.loader import AUTO_WORKERS_CAP, loader_kwargs, resolve_num_workers
from learner.train.module import LearnerModule
from learner.train.pretrain import pretrain


@pytest.mark.parametrize(
    ("cpus", "gpu", "expected"),
    [(16, True, 15), (2, True, 1), (1, True, 0), (64, True, AUTO_WORKERS_CAP), (16, False, 0)],
)
def test_auto_workers(monkeypatch: pytest.MonkeyPatch, cpus: int, gpu: bool, expected: int) -> None:
    monkeypatch.setattr(loader_module, "usable_cpus", lambda: cpus)
    assert resolve_num_workers("auto", gpu) == expected
    assert resolve_num_workers(3, gpu) == 3  # a number is taken as it is


def test_loader_kwargs_follow_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader_module, "usable_cpus", lambda: 8)
    cfg = build_config({}, ["data.prefetch_factor=4"])
    assert cfg.data.num_workers == "auto"  # the default
    assert loader_kwargs(cfg, gpu=True) == {
        "num_workers": 7,
        "persistent_workers": True,
        "pin_memory": True,
        "prefetch_factor": 4,
    }
    # On a CPU auto means none: torch refuses a prefetch factor without workers.
    assert loader_kwargs(cfg, gpu=False) == {
        "num_workers": 0,
        "persistent_workers": False,
        "pin_memory": False,
        "prefetch_factor": None,
    }
    assert loader_kwargs(cfg, gpu=False, workers=2)["persistent_workers"] is True


@pytest.mark.parametrize("value", ["-1", "many"])
def test_bad_worker_settings_are_config_errors(value: str) -> None:
    from learner.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match="num_workers"):
        build_config({}, [f"data.num_workers={value}"])


def test_loader_settings_stay_out_of_the_cache_key() -> None:
    default = pretrain_key(Config(), "m", "s")
    other = pretrain_key(
        build_config({}, ["data.num_workers=3", "data.prefetch_factor=5"]), "m", "s"
    )
    assert default == other


class Capture(L.Callback):
    """The DataLoaders and the first raw training batch the trainer saw."""

    def __init__(self) -> None:
        self.loaders: dict[str, Any] = {}
        self.first_batch: dict[str, Any] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.loaders["train"] = trainer.train_dataloader
        self.loaders["val"] = trainer.val_dataloaders

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.first_batch is None:
            self.first_batch = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}


def test_loader_settings_reach_pretraining(tiny_config: Config, tmp_path: Path) -> None:
    cfg = tiny_config.model_copy(deep=True)
    cfg = build_config(
        cfg.to_plain(), ["data.num_workers=1", "data.prefetch_factor=3", "train.epochs=1"]
    )
    capture = Capture()
    pretrain(cfg, tmp_path / "run", progress=False, callbacks=[capture])
    for name in ("train", "val"):
        loader = capture.loaders[name]
        assert loader.num_workers == 1, name
        assert loader.persistent_workers is True, name
        assert loader.prefetch_factor == 3, name
        assert loader.pin_memory is False, name  # no GPU here
    # The workers sent uint8 frames and the parameters; the module finished the batch.
    batch = capture.first_batch
    assert batch is not None and batch["x"].dtype == torch.uint8 and "aug" in batch
    assert batch["aug"].shape == (batch["x"].shape[0], 8)


def test_a_raw_batch_trains_like_the_finished_one(tiny_config: Config) -> None:
    from learner.train.prepared import make_dataset, prepare_data

    data = prepare_data(tiny_config)
    frame = data.frame[data.frame["split"] == "train"].reset_index(drop=True).iloc[:6]
    raw = make_dataset(data, frame, train=True, seed=0, batch_augment=True)
    per_item = make_dataset(data, frame, train=True, seed=0)
    collate = torch.utils.data.default_collate
    raw_batch = collate([raw[i] for i in range(len(frame))])
    finished = collate([per_item[i] for i in range(len(frame))])
    torch.manual_seed(0)
    module = LearnerModule(tiny_config.to_plain(), data.score_range).eval()
    import warnings

    with warnings.catch_warnings():  # LightningModule.log without a Trainer warns
        warnings.filterwarnings("ignore", message=".*self.trainer.*")
        warnings.filterwarnings("ignore", message=".*self.log.*")
        loss_raw = module.training_step(raw_batch, 0)
        loss_finished = module.training_step(finished, 0)
    torch.testing.assert_close(loss_raw, loss_finished, rtol=1e-5, atol=1e-6)
