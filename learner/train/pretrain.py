"""`learner pretrain`: split by patient, build loaders, train with Lightning, write a run folder.

Run folder: ``config.yaml`` (resolved), ``split.json`` (+ hash), ``checkpoints/{last,best}.ckpt``,
``logs/tensorboard`` and ``logs/csv/metrics.csv``.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

import learner
from learner import signals
from learner.config import Config, save_config
from learner.data.cache import DecodeCache
from learner.data.dataset import InputSpec, ScanDataset, read_vectors
from learner.data.manifest import Manifest, load_manifest
from learner.data.samplers import PatientBatchSampler
from learner.data.splits import (
    PRETRAIN,
    TRAINING_SPLITS,
    assign_splits,
    check_no_leakage,
    pool_patients,
    split_hash,
)
from learner.device import on_gpu
from learner.errors import ConfigError, DataError
from learner.io import atomic_path, write_json
from learner.train.module import LearnerModule


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
class PreparedData:
    """Everything the training and embedding steps need from the manifest."""

    manifest: Manifest
    frame: pd.DataFrame  # with a `split` column
    assignment: dict[str, str]
    split_hash: str
    score_range: tuple[float, float]
    patient_codes: dict[str, int]
    input: InputSpec
    cache: DecodeCache | None
    # Tabular features are standardised with the training rows' mean and std.
    feature_stats: tuple[np.ndarray, np.ndarray] | None = None


def package_versions() -> dict[str, str]:
    import lightning
    import monai

    versions = {
        "learner": learner.__version__,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    # Plain str: torch's TorchVersion subclass would not load with weights_only=True.
    return {k: str(v) for k, v in versions.items()}


def git_commit() -> str | None:
    """The commit of the learner source tree, when it is a git checkout."""
    root = Path(learner.__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def input_spec(cfg: Config) -> InputSpec:
    inp = cfg.data.input
    return InputSpec(
        kind=inp.kind,
        frames=inp.frames,
        size=inp.size,
        channels=inp.channels,
        feature_columns=tuple(cfg.data.feature_columns or ()),
        clips_per_scan=inp.clips_per_scan,
        augment=inp.augment,
    )


def resolve_cache(cfg: Config, manifest_path: Path) -> DecodeCache | None:
    if cfg.data.input.kind == "tabular":
        return None
    root = cfg.data.cache_dir or manifest_path.resolve().parent / ".learner-cache"
    try:
        root.mkdir(parents=True, exist_ok=True)
        writable = os.access(root, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        # A read-only data folder (a shared archive) must not stop training.
        root = Path.home() / ".cache" / "learner" / "decode"
        root.mkdir(parents=True, exist_ok=True)
    return DecodeCache(root)


def config_manifest(cfg: Config) -> Manifest:
    """The manifest ``data.manifest`` names, read with the config's columns."""
    if cfg.data.manifest is None:
        raise ConfigError("data.manifest is not set; pass --set data.manifest=PATH/manifest.csv")
    return load_manifest(
        cfg.data.manifest, feature_columns=cfg.data.feature_columns, columns=cfg.data.columns
    )


def prepare_data(
    cfg: Config, manifest: Manifest | None = None, assignment: dict[str, str] | None = None
) -> PreparedData:
    """Load the manifest, assign patient-level splits and derive the score range."""
    if manifest is None:
        manifest = config_manifest(cfg)
    frame = manifest.frame.copy()
    split_seed = cfg.data.split.seed if cfg.data.split.seed is not None else cfg.train.seed
    if assignment is None:
        frame = assign_splits(frame, seed=split_seed, ratios=cfg.data.split.ratios)
    else:
        # A pretraining pool marked in the manifest stays out of the folds.
        pool = pool_patients(frame)
        assignment = {**dict.fromkeys(pool, PRETRAIN), **assignment}
        missing = sorted(set(frame["patient_id"]) - set(assignment))
        if missing:
            raise DataError(f"patient {missing[0]} has no split assignment; rerun without folds")
        frame["split"] = frame["patient_id"].map(assignment)
    check_no_leakage(frame)
    assign = dict(frame.groupby("patient_id")["split"].first())
    train_scores = frame.loc[frame["split"].isin(TRAINING_SPLITS), "score"].dropna()
    if cfg.data.score_range is not None:
        score_range = (float(cfg.data.score_range[0]), float(cfg.data.score_range[1]))
    else:
        if train_scores.empty:
            raise DataError(f"{manifest.source}: no labelled training scans; fill the score column")
        lo, hi = float(train_scores.min()), float(train_scores.max())
        score_range = (lo, hi if hi > lo else lo + 1.0)
    codes = {p: i for i, p in enumerate(sorted(frame["patient_id"].unique()))}
    return PreparedData(
        feature_stats=training_feature_stats(cfg, frame),
        manifest=manifest,
        frame=frame,
        assignment=assign,
        split_hash=split_hash(assign),
        score_range=score_range,
        patient_codes=codes,
        input=input_spec(cfg),
        cache=resolve_cache(cfg, manifest.source),
    )


def training_feature_stats(
    cfg: Config, frame: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and std of each feature (columns, or (F,) vector files) over the training rows
    (tabular input only)."""
    if cfg.data.input.kind != "tabular":
        return None
    train = frame[frame["split"].isin(TRAINING_SPLITS)]
    if cfg.data.feature_columns:
        values = train[list(cfg.data.feature_columns)].to_numpy(dtype=np.float64)
    else:
        rows = train["row"].tolist() if "row" in train.columns else None
        values = read_vectors(train, rows).astype(np.float64)
    std = values.std(axis=0)
    return values.mean(axis=0), np.where(std > 0, std, 1.0)


def model_config(cfg: Config, data: PreparedData) -> dict[str, Any]:
    """The config a model is built and saved with: ``cfg``, plus the feature count F when
    (F,) vector files are the input (so that a checkpoint rebuilds the same encoder)."""
    tree = cfg.to_plain()
    vectors = cfg.data.input.kind == "tabular" and not cfg.data.feature_columns
    if vectors and data.feature_stats is not None:
        tree["data"]["input"]["features"] = int(data.feature_stats[0].shape[0])
    return tree


def make_dataset(data: PreparedData, frame: pd.DataFrame, *, train: bool, seed: int) -> ScanDataset:
    return ScanDataset(
        frame.reset_index(drop=True),
        input=data.input,
        train=train,
        cache=data.cache,
        score_range=data.score_range,
        patient_codes=data.patient_codes,
        seed=seed,
        feature_stats=data.feature_stats,
    )


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


def pretrain(
    cfg: Config,
    out: Path,
    *,
    resume: bool = False,
    data: PreparedData | None = None,
    progress: bool = True,
    callbacks: list[L.Callback] | None = None,
) -> PretrainResult:
    """Train one model; returns the run folder and checkpoint paths."""
    _quiet_lightning()
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if last.exists() and not resume:
        raise ConfigError(
            f"{out}: already holds a trained run ({last.name}); pass --resume to continue it "
            "or choose a new --out"
        )
    data = data or prepare_data(cfg)
    out.mkdir(parents=True, exist_ok=True)
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
    train_ds = make_dataset(data, train_frame, train=True, seed=seed)
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
    workers = cfg.data.num_workers
    train_loader = DataLoader(
        train_ds, batch_sampler=sampler, num_workers=workers, persistent_workers=False
    )
    # Every rank validates on the whole validation set in batches of the global batch size:
    # the pair terms depend on the batch, and this keeps val/loss that of one process.
    val_loader = DataLoader(val_ds, batch_size=cfg.train.batch_size * world, num_workers=workers)

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
        logger=[
            TensorBoardLogger(str(out / "logs"), name="tensorboard", version=""),
            CSVLogger(str(out / "logs"), name="csv", version=""),
        ],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        use_distributed_sampler=False,
    )
    ckpt_path = str(last) if resume and last.exists() else None
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
    if signals.received() is not None:  # arrived after the last batch
        raise KeyboardInterrupt
    best = ckpt_dir / "best.ckpt"
    return PretrainResult(run_dir=out, best=best if best.exists() else last, last=last, data=data)
