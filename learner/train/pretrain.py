"""`learner pretrain`: split by patient, build loaders, train with Lightning, write a run folder.

Run folder: ``config.yaml`` (resolved), ``split.json`` (+ hash), ``checkpoints/{last,best}.ckpt``,
``logs/csv/metrics.csv`` and, where TensorBoard is installed (the ``tensorboard`` extra),
``logs/tensorboard``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

from learner import signals
from learner.config import Config, save_config
from learner.data.dataset import ScanDataset
from learner.data.samplers import PatientBatchSampler
from learner.data.splits import (
    TRAINING_SPLITS,
)
from learner.device import on_gpu
from learner.errors import ConfigError, DataError
from learner.io import atomic_path, write_json
from learner.provenance import (
    KEY_FILE,
    changed_keys,
    git_commit,
    manifest_fingerprint,
    normalised,
    package_versions,
    pretrain_key,
    read_key,
    write_key,
)
from learner.train.loader import loader_kwargs
from learner.train.module import LearnerModule
from learner.train.prepared import (
    PreparedData,
    check_input_kind,
    config_manifest,
    make_dataset,
    model_config,
    prepare_data,
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed, so a kill never leaves a
    truncated ``last.ckpt``; they are read back with ``weights_only=True`` (no pickle)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # --resume never unpickles arbitrary objects from disk, whatever torch's default;
        # without a map_location the parent's default (storages stay where saved) applies.
        extra = {} if map_location is None else {"map_location": map_location}
        try:
            return super().load_checkpoint(path, weights_only=True, **extra)
        except Exception as exc:  # torch raises many types for a foreign or damaged file
            raise DataError(
                f"{path}: not a loadable learner checkpoint ({type(exc).__name__}); delete it "
                "and rerun without --resume, or choose a new --out"
            ) from None


class EpochSeeding(L.Callback):
    """Reseed torch, the batch sampler and the dataset from (seed, epoch) at every epoch
    start, so that a run resumed from ``last.ckpt`` replays exactly what an uninterrupted run
    would have done."""

    def __init__(self, seed: int, sampler: PatientBatchSampler, dataset: ScanDataset) -> None:
        self.seed, self.sampler, self.dataset = seed, sampler, dataset

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        torch.manual_seed(self.seed * 100_003 + epoch)
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)


class StopOnSignal(L.Callback):
    """Stop training at the first batch boundary after a SIGINT / SIGTERM (see
    :mod:`learner.signals`), and make sure a resumable ``last.ckpt`` exists from the start.

    Raising ``KeyboardInterrupt`` here, never inside a logger's writer, lets Lightning's
    interrupt path finalise the loggers (flushing TensorBoard) and tear the trainer down.
    ``last.ckpt`` then holds the last finished epoch, or the state before the first step; a
    ``--resume`` from it replays the interrupted epoch exactly (every epoch is seeded from
    (seed, epoch) by :class:`EpochSeeding`).
    """

    def __init__(self, last: Path) -> None:
        self.last = last

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        signals.training_started()
        # A fresh run (pretrain refuses a folder holding last.ckpt without --resume). Every
        # rank calls save_checkpoint (it holds a barrier) and rank 0 writes; a per-rank
        # last.exists() test here would race with that write.
        if trainer.ckpt_path is None:
            trainer.save_checkpoint(self.last)
        self._check()

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        signals.training_ended()
        self._check()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        signals.training_ended()

    @staticmethod
    def _check() -> None:
        if signals.received() is not None:
            raise KeyboardInterrupt


@dataclass
class PretrainResult:
    run_dir: Path
    best: Path
    last: Path
    data: PreparedData


def _quiet_lightning() -> None:
    # Lightning's tips (e.g. on num_workers for tiny CPU data) are noise for our users.
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*is deprecated.*")
    # On --resume the earlier epochs' rows are put back (_keep_history), so Lightning's
    # "Previous log files ... will be deleted" would tell the user the opposite of the truth.
    warnings.filterwarnings(
        "ignore", message=".*Previous log files in this directory will be deleted.*"
    )


def tensorboard_available() -> bool:
    """Whether Lightning's TensorBoard logger can write: ``tensorboard`` or ``tensorboardX``
    is importable (neither is a dependency: the ``tensorboard`` extra installs it)."""
    return any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX"))


def _loggers(out: Path) -> list[Logger]:
    """The CSV log, which the report reads, and a TensorBoard log where TensorBoard is
    installed."""
    logs = str(out / "logs")
    loggers: list[Logger] = []
    if tensorboard_available():
        loggers.append(TensorBoardLogger(logs, name="tensorboard", version=""))
    loggers.append(CSVLogger(logs, name="csv", version=""))
    return loggers


RESUMABLE_KEY = "train.epochs"


def _read_metrics(path: Path) -> pd.DataFrame | None:
    """The CSV log of the run being resumed, or None when it has none."""
    return pd.read_csv(path) if path.is_file() and path.stat().st_size else None


def _keep_history(path: Path, earlier: pd.DataFrame) -> None:
    """``metrics.csv`` after a resume: the earlier rows of the epochs before the first one
    the resumed run logged, then the resumed run's rows. Lightning's CSV logger starts the file
    afresh, which lost every epoch before the resume; the rows of an interrupted, replayed
    epoch are the resumed run's."""
    new = pd.read_csv(path) if path.is_file() and path.stat().st_size else pd.DataFrame()
    first = new["epoch"].min() if "epoch" in new.columns and len(new) else math.inf
    kept = earlier[earlier["epoch"] < first] if "epoch" in earlier.columns else earlier
    with atomic_path(path) as tmp:
        pd.concat([kept, new], ignore_index=True).to_csv(tmp, index=False)


def pretrain(
    cfg: Config,
    out: Path,
    *,
    resume: bool = False,
    data: PreparedData | None = None,
    progress: bool = True,
    callbacks: list[L.Callback] | None = None,
    resume_changed: bool = False,
) -> PretrainResult:
    """Train one model; returns the run folder and checkpoint paths.

    The run folder's ``key.json`` records what the run was made from (the pretraining key of
    :mod:`learner.provenance`). ``resume`` with other pretraining settings, manifest or split
    is refused naming the keys that differ, unless ``resume_changed``; ``train.epochs`` may
    change (a resume with more epochs trains longer).
    """
    _quiet_lightning()
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if last.exists() and not resume:
        raise ConfigError(
            f"{out}: already holds a trained run ({last.name}); pass --resume to continue it "
            "or choose a new --out"
        )
    if data is None:
        loaded = config_manifest(cfg)
        check_input_kind(cfg, loaded)  # before any model is built or file written
        data = prepare_data(cfg, loaded)
    manifest = data.manifest
    key = normalised(
        pretrain_key(
            cfg, manifest_fingerprint(manifest.frame, manifest.feature_columns), data.split_hash
        )
    )
    stored = read_key(out / KEY_FILE) if resume and last.exists() else None
    # Raising train.epochs is how a run is trained longer: a resume may change it.
    changes = [
        line
        for line in (changed_keys(stored, key) if stored is not None else [])
        if not line.startswith(f"{RESUMABLE_KEY}:")
    ]
    if changes and not resume_changed:
        raise ConfigError(
            f"{out}: --resume with other settings than the run was made with "
            f"({'; '.join(changes)}); resume with the run's settings, pass --resume-changed "
            "to continue with the new ones, or choose a new --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_key(out / KEY_FILE, key)
    save_config(cfg, out / "config.yaml")
    write_json(out / "split.json", {"hash": data.split_hash, "assignment": data.assignment})

    seed = cfg.train.seed
    L.seed_everything(seed, workers=True, verbose=False)
    frame = data.frame
    train_frame = frame[frame["split"].isin(TRAINING_SPLITS)].reset_index(drop=True)
    val_frame = frame[frame["split"] == "val"].reset_index(drop=True)
    if train_frame.empty or val_frame.empty:
        raise DataError(
            f"{data.manifest.source}: the split left no training or no validation patients; "
            "add patients or change data.split.ratios"
        )
    train_scores = train_frame["score"].dropna()
    if train_scores.nunique() < 2:
        found = (
            f"every labelled training scan has score {train_scores.iloc[0]:g}"
            if len(train_scores)
            else "no training scan has a score"
        )
        raise DataError(
            f"{data.manifest.source}: {found}; the score MSE and the pair objectives need "
            "different scores across patients: check the score column"
        )
    train_ds = make_dataset(data, train_frame, train=True, seed=seed, batch_augment=True)
    val_ds = make_dataset(data, val_frame, train=False, seed=seed)
    # intra / all pairs need a patient's own scans in the batch: two per patient, from two
    # visits where it has them (the paper's inter-patient pairs want patients distinct).
    same_patient = cfg.objective.pairs != "inter" and cfg.objective.name != "mse"
    visit_column = "visit" if "visit" in train_frame.columns else "visit_order"
    sampler = PatientBatchSampler(
        train_frame["patient_id"].map(data.patient_codes).to_numpy(),
        train_frame["score"].to_numpy(dtype=float),
        cfg.train.batch_size,
        seed=seed,
        drop_last=cfg.train.drop_last,
        group=2 if same_patient else 1,
        visit_codes=pd.factorize(train_frame[visit_column].astype(str))[0],
    )
    world = cfg.train.devices * cfg.train.num_nodes
    distributed = world > 1
    # Workers slice, the training device augments (learner.data.training_batch); workers
    # persist across epochs and a GPU gets pinned batches (learner.train.loader).
    loading = loader_kwargs(cfg, on_gpu(cfg.train.accelerator))
    # A DataLoader iterator draws its workers' base seed when it is made: from torch's global
    # generator unless it has its own. That is once per epoch without persistent workers and
    # once per run with them, so the global stream (dropout) would depend on the workers.
    # The items draw nothing from that seed (their RNG is (seed, epoch, index)).
    train_loader = DataLoader(
        train_ds, batch_sampler=sampler, generator=torch.Generator().manual_seed(seed), **loading
    )
    # Every rank validates on the whole validation set in batches of the global batch size:
    # the pair terms depend on the batch, and this keeps val/loss that of one process.
    val_loader = DataLoader(
        val_ds,
        batch_size=cfg.train.batch_size * world,
        generator=torch.Generator().manual_seed(seed),
        **loading,
    )

    run_info = {
        "seed": seed,
        "split_hash": data.split_hash,
        "split": data.assignment,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "feature_stats": (
            [data.feature_stats[0].tolist(), data.feature_stats[1].tolist()]
            if data.feature_stats is not None
            else None
        ),
    }
    model = LearnerModule(model_config(cfg, data), data.score_range, run_info)
    if cfg.model.pretrained is not None:
        from learner.models.pretrained import load_torchvision_resnet18

        load_torchvision_resnet18(model.encoder, cfg.model.pretrained)

    checkpoint_cb = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs,
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy="ddp" if distributed else "auto",
        # Batch statistics over the global batch, as one process would compute them;
        # torch's SyncBatchNorm runs on GPUs only (on CPU each rank keeps its own).
        sync_batchnorm=distributed and on_gpu(cfg.train.accelerator),
        default_root_dir=str(out),
        precision=cfg.train.precision,
        gradient_clip_val=cfg.train.grad_clip,
        deterministic=cfg.train.deterministic,
        callbacks=[checkpoint_cb, EpochSeeding(seed, sampler, train_ds), StopOnSignal(last)]
        + ([RichProgressBar()] if progress else [])
        + list(callbacks or []),
        logger=_loggers(out),
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        use_distributed_sampler=False,
    )
    ckpt_path = str(last) if resume and last.exists() else None
    metrics_csv = out / "logs" / "csv" / "metrics.csv"
    history = _read_metrics(metrics_csv) if ckpt_path is not None else None
    try:
        trainer.fit(model, train_loader, val_loader, ckpt_path=ckpt_path)
    except ValueError as exc:
        if "Expected more than 1 value per channel when training" not in str(exc):
            raise
        raise ConfigError(
            f"train.batch_size {cfg.train.batch_size}: an epoch's last training batch holds one "
            f"scan, and {cfg.model.encoder} reduces it to one value per channel, where batch "
            "norm cannot train; set train.drop_last: true or choose another batch size"
        ) from None
    except SystemExit:
        # Lightning turns Ctrl-C into sys.exit(1) after its graceful shutdown; hand the
        # interrupt back so the CLI reports it (exit 130). last.ckpt is the last finished epoch.
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if history is not None and trainer.is_global_zero:
            _keep_history(metrics_csv, history)
    if signals.received() is not None:  # arrived after the last batch
        raise KeyboardInterrupt
    best = ckpt_dir / "best.ckpt"
    return PretrainResult(run_dir=out, best=best if best.exists() else last, last=last, data=data)
