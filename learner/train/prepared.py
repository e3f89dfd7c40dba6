"""The data a model trains and embeds with: a manifest split by patient, its score range, its
input spec, its decode cache and, for tabular input, the training rows' feature statistics."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from learner.config import Config, TargetColumn
from learner.data.cache import DecodeCache
from learner.data.dataset import (
    SCAN_KIND_PHRASE,
    SETTINGS_FOR_SCAN,
    InputSpec,
    ScanDataset,
    read_vectors,
    settings_for_scan,
)
from learner.data.manifest import Manifest, load_manifest
from learner.data.readers import read_scan
from learner.data.splits import (
    PRETRAIN,
    TRAINING_SPLITS,
    assign_splits,
    check_no_leakage,
    pool_patients,
    split_hash,
)
from learner.errors import ConfigError, DataError


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
    root = cfg.data.cache_dir
    folder = manifest_path.resolve().parent
    # Beside the manifest only while its folder exists: a manifest given as a frame is read
    # from a temporary file already removed, and re-creating that folder would leave it
    # behind in the temporary directory after every call.
    if root is None and folder.is_dir():
        root = folder / ".learner-cache"
    if root is None or not _writable_folder(root):
        # A read-only data folder (a shared archive) must not stop training.
        root = Path.home() / ".cache" / "learner" / "decode"
        root.mkdir(parents=True, exist_ok=True)
    return DecodeCache(root)


def _writable_folder(root: Path) -> bool:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(root, os.W_OK)


def config_manifest(
    cfg: Config, path: Path | None = None, *, skip_bad_files: bool = False
) -> Manifest:
    """The manifest at ``path`` (default: the one ``data.manifest`` names), read with the
    config's feature columns and column mapping (and an ``eval.target`` column): the one way
    every command that has a config reads a manifest. ``skip_bad_files``: as in
    :func:`~learner.data.manifest.load_manifest`."""
    path = path if path is not None else cfg.data.manifest
    if path is None:
        raise ConfigError("data.manifest is not set; pass --set data.manifest=PATH/manifest.csv")
    target = cfg.eval.target
    return load_manifest(
        path,
        feature_columns=cfg.data.feature_columns,
        columns=cfg.data.columns,
        measurement_columns=[target.column] if isinstance(target, TargetColumn) else [],
        skip_bad_files=skip_bad_files,
    )


# Files probed per file type before giving up on finding a readable one (the unreadable
# ones are reported, row by row, when the scans are decoded).
_PROBES_PER_TYPE = 3


def probe_scan_kinds(frame: pd.DataFrame) -> dict[str, tuple[int, str, str]]:
    """The kinds of scan a manifest holds, as the readers detect them: for each file type
    (extension, or a DICOM series folder) the first readable file is decoded.

    Returns:
        ``{scan kind: (manifest row, path, file type)}`` for the first file of each kind.
    """
    if "path" not in frame.columns or frame.empty:
        return {}
    rows = frame["row"].tolist() if "row" in frame.columns else [i + 2 for i in range(len(frame))]
    tried: dict[str, int] = {}
    found: dict[str, tuple[int, str, str]] = {}
    for row, path in zip(rows, frame["path"].astype(str), strict=True):
        lower = path.lower()
        kind_of_file = ".nii.gz" if lower.endswith(".nii.gz") else Path(lower).suffix or "folder"
        if tried.get(kind_of_file, 0) >= _PROBES_PER_TYPE:
            continue
        try:
            scan = read_scan(path)
        except DataError:
            tried[kind_of_file] = tried.get(kind_of_file, 0) + 1
            continue
        tried[kind_of_file] = _PROBES_PER_TYPE  # one readable file speaks for its type
        found.setdefault(scan.kind, (int(row), path, kind_of_file))
    return found


def check_input_kind(cfg: Config, manifest: Manifest) -> None:
    """Fail before any model is built when the scans are not what ``data.input.kind`` and
    ``model.encoder`` read (2-D slices under a volume config, say), naming both settings
    that fit the scans.

    A still among video clips (a single-frame DICOM among cines) is read as a one-frame clip;
    stills alone (not DICOM) under a video config are refused.

    Raises:
        ConfigError: naming the manifest row, the file, its kind and the settings to use.
    """
    found = probe_scan_kinds(manifest.frame)
    kind, encoder = cfg.data.input.kind, cfg.model.encoder
    for scan_kind, (row, path, file_type) in found.items():
        accepted = {settings[0] for settings in SETTINGS_FOR_SCAN[scan_kind]}
        if kind in accepted:
            continue
        if scan_kind == "image" and kind == "video" and ("video" in found or file_type == ".dcm"):
            continue
        first = SETTINGS_FOR_SCAN[scan_kind][0]
        raise ConfigError(
            f"{manifest.source.name} row {row}: {path} is read as "
            f"{SCAN_KIND_PHRASE[scan_kind]}, but the config has data.input.kind={kind} and "
            f"model.encoder={encoder}; for these scans set {settings_for_scan(scan_kind)} "
            f"(e.g. --set data.input.kind={first[0]} --set model.encoder={first[1]})"
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


def make_dataset(
    data: PreparedData,
    frame: pd.DataFrame,
    *,
    train: bool,
    seed: int,
    batch_augment: bool = False,
) -> ScanDataset:
    """The dataset of ``frame``'s rows; ``batch_augment``: see :class:`ScanDataset`."""
    return ScanDataset(
        frame.reset_index(drop=True),
        input=data.input,
        train=train,
        cache=data.cache,
        score_range=data.score_range,
        patient_codes=data.patient_codes,
        seed=seed,
        feature_stats=data.feature_stats,
        batch_augment=batch_augment,
    )
