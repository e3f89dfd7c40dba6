"""The grid of `learner run`: one cell per objective (or baseline) x seed (x fold), each with
its config, its prepared data, its folder ``OUT/cells/<label>/<tag>/`` and its cache key.

Planning reads the manifest and the checkpoints ``run.transfer`` names, never trains; the
cache check refuses (or replaces) cells whose folder was made from other inputs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learner.config import Config, RunVariant, TransferEncoder
from learner.data.manifest import Manifest
from learner.data.splits import fixed_test_patients, kfold_patients, pool_patients
from learner.errors import ConfigError, DataError
from learner.provenance import (
    change_label_content,
    digest,
    digest_file,
    finetune_key,
    key_changes,
    manifest_fingerprint,
    normalised,
    pretrain_key,
    transfer_key,
)
from learner.train.checkpoint import checkpoint_meta
from learner.train.prepared import PreparedData, prepare_data

Log = Callable[[str], None]


HEAD_DELTA = "head_delta"


UNTRAINED = "untrained"


REFERENCE = "mse"


# Label suffix of a fine-tuned encoder's row (eval.finetune): ``weighted-ft``.
FINETUNED = "-ft"


def objective_variants(cfg: Config) -> list[tuple[str, dict[str, Any]]]:
    """(label, objective overrides) for every entry of ``run.objectives``."""
    variants: list[tuple[str, dict[str, Any]]] = []
    for item in cfg.run.objectives:
        if isinstance(item, RunVariant):
            overrides = {"name": item.label, **item.objective}
            variants.append((item.label, overrides))
        else:
            variants.append((item, {"name": item}))
    labels = [v[0] for v in variants]
    if len(set(labels)) != len(labels):
        raise ConfigError("run.objectives: labels must be unique; give variants a distinct label")
    if REFERENCE not in labels:
        raise ConfigError("run.objectives must include mse: every objective is compared to it")
    return variants


def cell_config(cfg: Config, overrides: dict[str, Any], seed: int) -> Config:
    tree = cfg.to_plain()
    tree["objective"] = {**tree["objective"], **overrides}
    tree["train"]["seed"] = seed
    try:
        return Config.model_validate(tree)
    except Exception as exc:
        raise ConfigError(f"run.objectives entry {overrides}: {exc}".splitlines()[0]) from None


def untrained_name(name: str) -> str:
    """``weighted+concat`` -> ``untrained+concat``: the baseline with the same feature."""
    _, plus, feature = name.partition("+")
    return UNTRAINED + plus + feature


@dataclass(frozen=True)
class Reading:
    """One way the probe reads a cell's embeddings: a pair feature and a PCA setting.

    The first feature read with ``eval.pca`` is the row itself (``weighted``); another
    feature adds ``+concat``; a ``run.probes`` entry adds ``+pca-<k|auto>`` (``weighted+pca-auto``),
    so that a low-capacity probe and the full-rank one stand side by side on the same cells.
    """

    feature: str
    pca: int | str
    suffix: str
    folder: str

    def name(self, label: str) -> str:
        return label + self.suffix


def readings(cfg: Config) -> list[Reading]:
    """Every (feature, probe) reading of a run: ``run.features`` x (``eval.pca``, then each
    other entry of ``run.probes``). The ``eval.pca`` readings keep their ``eval-<feature>``
    folders, so adding probes never re-evaluates a cached cell."""
    features = list(dict.fromkeys(cfg.run.features))
    probes = cfg.run.probes
    if probes is None:
        # Judged against a finer target, each row also gets the low-capacity probe fixed in
        # advance (issue 27): a full-rank probe alone understates what the embedding holds.
        probes = [] if cfg.eval.target == "observed" else ["auto"]  # eval.pca: auto
    pcas = [cfg.eval.pca, *(p for p in dict.fromkeys(probes) if p != cfg.eval.pca)]
    out = []
    for i, pca in enumerate(pcas):
        probe = "" if i == 0 else f"+pca-{pca}"
        for feature in features:
            plus = "" if feature == features[0] else f"+{feature}"
            folder = f"eval-{feature}" + ("" if i == 0 else f"-pca-{pca}")
            out.append(Reading(feature, pca, plus + probe, folder))
    return out


@dataclass
class Cell:
    """One cell of the grid: an objective (or the untrained baseline) x seed (x fold)."""

    label: str
    tag: str
    cfg: Config
    data: PreparedData
    folder: Path
    key: dict[str, Any]
    untrained: bool = False
    # eval.finetune: the cell whose encoder this one fine-tunes (it runs first).
    base: Cell | None = None
    # run.transfer: the checkpoint of an encoder pretrained elsewhere (nothing trains here).
    checkpoint: Path | None = None

    @property
    def trained_here(self) -> bool:
        """Whether this cell pretrains an encoder on this data set (it has a run folder)."""
        return not self.untrained and self.base is None and self.checkpoint is None

    @property
    def name(self) -> str:
        return f"{self.label}/{self.tag}"

    @property
    def digest(self) -> str:
        return digest(self.key)


def stale_cells(cells: Sequence[Cell]) -> list[tuple[Cell, list[str]]]:
    """Cells whose folder holds artefacts made from other inputs, with the keys that differ.

    A folder with artefacts but no key file (written by a learner without cache keys, or
    by hand) is stale too: nothing says how it was made.
    """
    stale = []
    for cell in cells:
        changes = key_changes(cell.folder, cell.key)
        if changes:
            stale.append((cell, changes))
    return stale


def check_cache(cells: Sequence[Cell], out: Path, *, replace: bool, log: Log) -> None:
    """Refuse (or, with ``replace``, delete) cached cells whose pretraining key changed.

    Raises:
        ConfigError: naming the first stale cell, the keys that changed and how to proceed.
    """
    stale = stale_cells(cells)
    if not stale:
        return
    if not replace:
        cell, changes = stale[0]
        more = f" (and {len(stale) - 1} more cells)" if len(stale) > 1 else ""
        raise ConfigError(
            f"{out}: cell {cell.name}{more} was made with other settings ({'; '.join(changes)}); "
            "write to a new --out, or pass --replace-changed to retrain the changed cells"
        )
    for cell, changes in stale:
        log(f"[{cell.tag}] {cell.label}: replacing ({'; '.join(changes)})")
        shutil.rmtree(cell.folder)


def check_transfer(cfg: Config, entry: TransferEncoder) -> None:
    """Refuse a ``run.transfer`` checkpoint that is missing or reads another input.

    Raises:
        ConfigError: one line naming the entry, what differs and the fix.
    """
    where = f"run.transfer {entry.label!r}"
    try:
        meta = checkpoint_meta(entry.checkpoint)
    except DataError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    theirs = Config.model_validate(meta["config"]).data.input
    ours = cfg.data.input
    fields = ["kind"]
    if ours.kind != "tabular":
        fields += ["size", "channels"] + (["frames"] if ours.kind in ("video", "slices") else [])
    differ = [
        f"{f} {getattr(theirs, f)} (yours {getattr(ours, f)})"
        for f in fields
        if getattr(theirs, f) != getattr(ours, f)
    ]
    if differ:
        raise ConfigError(
            f"{where}: {entry.checkpoint} reads data.input {', '.join(differ)}; set this run's "
            "data.input to match, or pretrain the source with this run's input"
        )


def plan_cells(
    cfg: Config, manifest: Manifest, variants: Sequence[tuple[str, dict[str, Any]]], out: Path
) -> tuple[list[list[list[Cell]]], list[dict[str, Any]]]:
    """Every cell of the grid with its key and its folder ``out/cells/<label>/<tag>``:
    seeds -> folds -> cells, and the splits used."""
    manifest_digest = manifest_fingerprint(manifest.frame, manifest.feature_columns)
    labels = {label for label, _ in variants} | {UNTRAINED}
    transfer_digests: dict[str, str] = {}  # each checkpoint read once, not once per cell
    for entry in cfg.run.transfer:
        if entry.label in labels or entry.label.endswith(FINETUNED) or "+" in entry.label:
            raise ConfigError(
                f"run.transfer {entry.label!r}: the label is taken, ends in {FINETUNED!r} or "
                "holds '+'; give the transferred encoder a distinct label"
            )
        labels.add(entry.label)
        check_transfer(cfg, entry)
        transfer_digests[entry.label] = digest_file(entry.checkpoint)
    pool = set(pool_patients(manifest.frame))  # pretraining only: never in a fold's test
    if cfg.data.split.folds and fixed_test_patients(manifest.frame):
        raise ConfigError(
            f"{manifest.source}: the split column fixes a test set, and data.split.folds "
            "would test every patient in turn; set data.split.folds: null, or empty the "
            "test marks"
        )
    patients = sorted(set(manifest.frame["patient_id"].unique()) - pool)
    grid: list[list[list[Cell]]] = []
    splits: list[dict[str, Any]] = []
    for seed in cfg.run.seeds:
        split_seed = cfg.data.split.seed if cfg.data.split.seed is not None else seed
        folds: list[dict[str, str] | None]
        folds = (
            list(kfold_patients(patients, k=cfg.data.split.folds, seed=split_seed))
            if cfg.data.split.folds
            else [None]
        )
        seed_cells: list[list[Cell]] = []
        for k, assignment in enumerate(folds):
            tag = f"seed{seed}" + (f"-fold{k}" if assignment is not None else "")
            base = cell_config(cfg, {"name": REFERENCE}, seed)
            data = prepare_data(base, manifest, assignment)
            splits.append({"cell": tag, "split_hash": data.split_hash})
            cells = []
            for label, overrides in variants:
                ccfg = cell_config(cfg, overrides, seed)
                key = pretrain_key(ccfg, manifest_digest, data.split_hash)
                folder = out / "cells" / label / tag
                cells.append(Cell(label, tag, ccfg, data, folder, normalised(key)))
            if cfg.run.baselines:
                key = pretrain_key(base, manifest_digest, data.split_hash, untrained=True)
                folder = out / "cells" / UNTRAINED / tag
                cells.append(Cell(UNTRAINED, tag, base, data, folder, normalised(key), True))
            for entry in cfg.run.transfer:
                checkpoint = transfer_digests[entry.label]
                key = transfer_key(base, checkpoint, manifest_digest, data.split_hash)
                folder = out / "cells" / entry.label / tag
                cells.append(
                    Cell(
                        entry.label,
                        tag,
                        base,
                        data,
                        folder,
                        normalised(key),
                        checkpoint=Path(entry.checkpoint),
                    )
                )
            if cfg.eval.finetune:
                cells += [finetuned_cell(cell, out) for cell in cells]
            seed_cells.append(cells)
        grid.append(seed_cells)
    return grid, splits


def finetuned_cell(base: Cell, out: Path) -> Cell:
    """The ``<label>-ft`` cell that fine-tunes ``base``'s encoder (``eval.finetune``)."""
    label = base.label + FINETUNED
    key = finetune_key(base.cfg, base.digest)
    labels = change_label_content(base.data.frame)
    if labels is not None:
        key["change_label.content"] = labels  # the fine-tuning loss reads clinician labels
    key = normalised(key)
    folder = out / "cells" / label / base.tag
    return Cell(label, base.tag, base.cfg, base.data, folder, key, base=base)
