"""`learner run`: every objective x seed (x fold) x feature: pretrain, embed, evaluate.

Each cell lives in ``OUT/cells/<label>/seed<S>[-fold<K>]/``; a cell whose ``eval-<feature>``
folder holds ``metrics.json`` is finished and is read back instead of recomputed, so an
interrupted run continues where it stopped. ``results.json`` follows the contract of DESIGN
section 2, with the baselines under the names ``head_delta`` and ``untrained``.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import pandas as pd

from learner.config import Config, RunVariant, TransferEncoder
from learner.data.manifest import Manifest
from learner.data.splits import kfold_patients, pool_patients
from learner.device import training_device
from learner.errors import ConfigError, DataError
from learner.evaluate.bootstrap import bootstrap_distribution, percentile_interval
from learner.evaluate.ceilings import (
    CHANCE_BALANCED,
    ORACLES,
    evaluate_oracle,
    fraction_of_achievable,
    load_truth,
    regressor_against_mean,
    render_regressor_mae,
    score_noise_mae,
)
from learner.evaluate.change import (
    CLASS_METRICS,
    HEAD_DELTA_PREFIX,
    METRICS,
    ChangeResult,
    class_metrics,
    confusion_counts,
    evaluate_change,
    has_change_pairs,
    label_codes,
)
from learner.evaluate.embed import checkpoint_meta, embed_frame, load_checkpoint
from learner.evaluate.embeddings_io import read_embeddings
from learner.evaluate.interpatient import evaluate_interpatient, pool_interpatient
from learner.evaluate.verdict import (
    class_table_warnings,
    concat_warning,
    degenerate_classes,
    pair_batch_counts,
    pair_term_warning,
    regressor_warning,
    score_range_warnings,
    verdict,
)
from learner.io import atomic_path, write_json
from learner.provenance import (
    KEY_FILE,
    changed_keys,
    digest,
    digest_file,
    evaluation_key,
    finetune_key,
    key_changes,
    manifest_fingerprint,
    normalised,
    pretrain_key,
    read_key,
    transfer_key,
    write_key,
)
from learner.train.finetune import finetune_change, save_finetuned
from learner.train.module import LearnerModule
from learner.train.pretrain import (
    PreparedData,
    config_manifest,
    model_config,
    package_versions,
    prepare_data,
    pretrain,
)

Log = Callable[[str], None]
HEAD_DELTA = "head_delta"
UNTRAINED = "untrained"
REFERENCE = "mse"
# Label suffix of a fine-tuned encoder's row (eval.finetune): ``weighted-ft``.
FINETUNED = "-ft"


@dataclass
class CellResult:
    """What the aggregation needs from one evaluated cell; saved to and loaded from disk."""

    summary: dict[str, Any]
    metrics: dict[str, float]
    head_delta: dict[str, float]
    bootstrap: dict[str, np.ndarray] = field(default_factory=dict)
    test_pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    figure1: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def from_change(cls, result: ChangeResult) -> CellResult:
        return cls(
            summary=result.to_json(),
            metrics=dict(result.metrics),
            head_delta=dict(result.head_delta),
            bootstrap=dict(result.bootstrap),
            test_pairs=result.test_pairs.copy(),
            figure1=result.figure1.copy(),
        )

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "test_pairs.parquet") as tmp:
            self.test_pairs.to_parquet(tmp, index=False)
        with atomic_path(folder / "bootstrap.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **self.bootstrap)  # type: ignore[arg-type]
        # metrics.json last: its presence marks the cell finished.
        write_json(folder / "metrics.json", self.summary)

    @classmethod
    def load(cls, folder: Path) -> CellResult:
        summary = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        with np.load(folder / "bootstrap.npz", allow_pickle=False) as npz:
            boot = {k: npz[k] for k in npz.files}
        fig1 = pd.DataFrame(summary.get("figure1", {}))

        def floats(d: dict[str, Any]) -> dict[str, float]:
            return {k: math.nan if v is None else float(v) for k, v in d.items()}

        return cls(
            summary=summary,
            metrics=floats(summary["metrics"]),
            head_delta=floats(summary["head_delta"]),
            bootstrap=boot,
            test_pairs=pd.read_parquet(folder / "test_pairs.parquet"),
            figure1=fig1,
        )


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


def _untrained_name(name: str) -> str:
    """``weighted+concat`` -> ``untrained+concat``: the baseline with the same feature."""
    _, plus, feature = name.partition("+")
    return UNTRAINED + plus + feature


def result_name(label: str, feature: str, features: Sequence[str]) -> str:
    """``weighted`` for the default feature; ``weighted+concat`` for another."""
    return label if feature == features[0] else f"{label}+{feature}"


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


def _evaluate_cell(cell: Cell, features: Sequence[str], log: Log) -> dict[str, CellResult]:
    """Evaluate each feature, reusing a cached evaluation only when its key still holds."""
    emb_path = cell.folder / "embeddings.parquet"
    frame: pd.DataFrame | None = None
    out: dict[str, CellResult] = {}
    for feature in features:
        folder = cell.folder / f"eval-{feature}"
        key = normalised(evaluation_key(cell.cfg, cell.digest, feature))
        stored = read_key(folder / KEY_FILE)
        if (folder / "metrics.json").exists():
            if stored == key:
                out[feature] = CellResult.load(folder)
                continue
            changes = changed_keys(stored, key) if stored is not None else ["(no key)"]
            log(f"[{cell.tag}] {cell.label}: re-evaluating {feature} ({'; '.join(changes)})")
        if frame is None:
            frame, _ = read_embeddings(emb_path)
        result = evaluate_change(
            frame,
            delta=cell.cfg.eval.delta,
            higher_is_better=cell.cfg.data.higher_is_better,
            feature=feature,
            classifier=cell.cfg.eval.classifier,
            pca=cell.cfg.eval.pca,
            n_boot=cell.cfg.eval.n_boot,
            seed=cell.cfg.train.seed,
        )
        result_cell = CellResult.from_change(result)
        result_cell.summary["key"] = {"digest": digest(key), "pretrain_digest": cell.digest}
        val_mae, mean_mae = regressor_against_mean(frame)
        result_cell.summary["regressor"] = {"val_mae": val_mae, "val_mae_of_train_mean": mean_mae}
        write_key(folder / KEY_FILE, key)
        result_cell.save(folder)
        out[feature] = result_cell
    return out


def _cell_done(cell: Cell, features: Sequence[str]) -> bool:
    return (cell.folder / "embeddings.parquet").exists() and all(
        (cell.folder / f"eval-{f}" / "metrics.json").exists() for f in features
    )


def run_cell(
    cell: Cell, *, features: Sequence[str], progress: bool, log: Log = print
) -> dict[str, CellResult]:
    """Pretrain (or resume), embed and evaluate one objective x seed (x fold)."""
    embed_cell(cell, progress=progress)
    return _evaluate_cell(cell, features, log)


def embed_cell(cell: Cell, *, progress: bool) -> Path:
    """The cell's embeddings (trained, resumed, or the untrained baseline's), its key written
    first so that even an interrupted cell says what it was made from."""
    write_key(cell.folder / KEY_FILE, cell.key)
    if cell.base is not None:
        return finetune_and_embed(cell, cell.base)
    if cell.untrained:
        return embed_untrained(cell)
    if cell.checkpoint is not None:
        return embed_transferred(cell)
    return pretrain_and_embed(
        cell.cfg,
        cell.data,
        cell.folder,
        metadata={"objective": cell.cfg.objective.name, "seed": cell.cfg.train.seed},
        progress=progress,
    )


def pretrain_and_embed(
    cfg: Config,
    data: PreparedData,
    cell_dir: Path,
    *,
    metadata: dict[str, Any],
    progress: bool = False,
) -> Path:
    """``cell_dir/embeddings.parquet`` from the best checkpoint of ``cell_dir/run``.

    Pretrains (resuming from ``last.ckpt`` when one exists) only when the embeddings are
    missing; returns their path.
    """
    emb = cell_dir / "embeddings.parquet"
    if not emb.exists():
        run_dir = cell_dir / "run"
        resume = (run_dir / "checkpoints" / "last.ckpt").exists()
        result = pretrain(cfg, run_dir, resume=resume, data=data, progress=progress)
        model, _ = load_checkpoint(result.best)
        embed_all(
            model, cfg, data, emb, {**metadata, "checkpoint": "best", "delta": cfg.eval.delta}
        )
    return emb


def embed_all(
    model: LearnerModule, cfg: Config, data: PreparedData, emb: Path, metadata: dict[str, Any]
) -> None:
    """Embed every scan of ``data`` into ``emb`` on the device the run trains on, with its
    loader workers (a GPU run's cells embed on the GPU, not on one CPU process)."""
    embed_frame(
        model.to(training_device(cfg.train.accelerator)),
        data,
        data.frame,
        emb,
        metadata=metadata,
        batch_size=cfg.train.batch_size,
        num_workers=cfg.data.num_workers,
    )


def untrained_model(cell: Cell) -> LearnerModule:
    """The ``untrained`` baseline's model: a random-init encoder, seeded by the cell's seed."""
    seed = cell.cfg.train.seed
    L.seed_everything(seed, verbose=False)
    return LearnerModule(model_config(cell.cfg, cell.data), cell.data.score_range, {"seed": seed})


def embed_untrained(cell: Cell) -> Path:
    """The ``untrained`` baseline's embeddings: a random-init encoder (seeded)."""
    emb = cell.folder / "embeddings.parquet"
    if not emb.exists():
        seed = cell.cfg.train.seed
        metadata = {"objective": UNTRAINED, "seed": seed, "delta": cell.cfg.eval.delta}
        embed_all(untrained_model(cell), cell.cfg, cell.data, emb, metadata)
    return emb


def embed_transferred(cell: Cell) -> Path:
    """A ``run.transfer`` cell's embeddings: the checkpoint's encoder, frozen, reading this
    data set's scans."""
    emb = cell.folder / "embeddings.parquet"
    if not emb.exists():
        assert cell.checkpoint is not None
        model, _ = load_checkpoint(cell.checkpoint)
        metadata = {
            "objective": cell.label,
            "seed": cell.cfg.train.seed,
            "delta": cell.cfg.eval.delta,
            "transferred_from": str(cell.checkpoint),
        }
        embed_all(model, cell.cfg, cell.data, emb, metadata)
    return emb


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


def finetune_and_embed(cell: Cell, base: Cell) -> Path:
    """``eval.finetune``: fine-tune ``base``'s encoder on the training patients' change pairs
    (:mod:`learner.train.finetune`), save it as ``finetuned.ckpt`` beside ``finetune.json``
    (the epochs' validation scores and the chosen epoch), and embed every scan with it."""
    emb = cell.folder / "embeddings.parquet"
    if emb.exists():
        return emb
    if base.untrained:
        model = untrained_model(base)
    elif base.checkpoint is not None:
        model, _ = load_checkpoint(base.checkpoint)
    else:
        model, _ = load_checkpoint(pretrained_checkpoint(base.folder))
    cfg = cell.cfg
    result = finetune_change(
        model.to(training_device(cfg.train.accelerator)),
        cell.data,
        epochs=cfg.eval.finetune,
        lr=cfg.eval.finetune_lr,
        delta=cfg.eval.delta,
        higher_is_better=cfg.data.higher_is_better,
        seed=cfg.train.seed,
        batch_pairs=max(1, cfg.train.batch_size // 2),
        weight_decay=cfg.train.weight_decay,
        grad_clip=cfg.train.grad_clip,
    )
    write_json(cell.folder / "finetune.json", result.summary())
    save_finetuned(result, cell.folder / "finetuned.ckpt", {"from": base.name})
    metadata = {
        "objective": cell.label,
        "seed": cfg.train.seed,
        "delta": cfg.eval.delta,
        "finetune_best_epoch": result.best_epoch,
    }
    embed_all(result.model, cfg, cell.data, emb, metadata)
    return emb


def pretrained_checkpoint(cell_dir: Path) -> Path:
    """The checkpoint a trained cell embedded with: its run's best (else last) checkpoint."""
    checkpoints = cell_dir / "run" / "checkpoints"
    best = checkpoints / "best.ckpt"
    return best if best.exists() else checkpoints / "last.ckpt"


# --------------------------------------------------------------------------- aggregation


def _pooled(cells: Sequence[CellResult]) -> pd.DataFrame:
    return pd.concat([c.test_pairs for c in cells], ignore_index=True)


def _class_stat(table: pd.DataFrame, column: str, metric: str) -> Callable[[np.ndarray], float]:
    true = label_codes(table["label"])
    pred = label_codes(table[column])
    k = CLASS_METRICS.index(metric)

    def stat(idx: np.ndarray) -> float:
        return class_metrics(confusion_counts(true[idx], pred[idx]))[k]

    return stat


def metric_block(
    units: Sequence[Sequence[CellResult]], *, head: bool, n_boot: int, seed: int
) -> dict[str, Any]:
    """``{METRIC: {mean, std, per_seed, ci95}}`` over seeds; each unit is one seed's folds.

    Class metrics are computed on the seed's pooled test pairs (every fold's held-out
    patients), with a patient bootstrap; the other metrics average the folds. The ci95 of a
    class metric pools the seeds' bootstrap resamples (resample b averaged over seeds).
    """
    column = "head_predicted" if head else "predicted"
    names = list(CLASS_METRICS) + ([] if head else [m for m in METRICS if m not in CLASS_METRICS])
    if head:
        names.append("score_mae")
    out: dict[str, Any] = {}
    for name in names:
        per_seed: list[float] = []
        boots: list[np.ndarray] = []
        for cells in units:
            if name in CLASS_METRICS:
                table = _pooled(cells)
                if head and table[column].isna().all():
                    per_seed.append(math.nan)
                    continue
                stat = _class_stat(table, column, name)
                per_seed.append(stat(np.arange(len(table))))
                if n_boot > 0:
                    boots.append(
                        bootstrap_distribution(table["patient_id"].to_numpy(), stat, n_boot, seed)
                    )
            else:
                vals = [c.metrics.get(name, math.nan) for c in cells]
                per_seed.append(float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan)
                key_boots = [c.bootstrap.get(name) for c in cells]
                if all(b is not None for b in key_boots):
                    boots.append(_fold_mean_resamples(key_boots))
        out[name] = _stat_entry(per_seed, boots)
    return out


def _fold_mean_resamples(boots: Sequence[Any]) -> np.ndarray:
    """Resamples of a seed's fold-averaged metric: resample b averaged over the folds. The
    folds' patients are disjoint and each fold was resampled on its own, so this is a
    bootstrap stratified by fold (one fold: its resamples unchanged)."""
    n = min(np.asarray(b).shape[0] for b in boots)
    stacked = np.stack([np.asarray(b[:n], dtype=float) for b in boots])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample undefined in every fold
        return np.asarray(np.nanmean(stacked, axis=0))


def _stat_entry(per_seed: list[float], boots: list[np.ndarray]) -> dict[str, Any]:
    values = np.asarray(per_seed, dtype=float)
    finite = values[np.isfinite(values)]
    mean = float(finite.mean()) if finite.size else math.nan
    std = float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size else math.nan)
    ci = [math.nan, math.nan]
    if boots and len(boots) == len(per_seed):
        n = min(b.shape[0] for b in boots)
        stacked = np.stack([np.asarray(b[:n], dtype=float) for b in boots])
        with warnings.catch_warnings():
            # A resample undefined in every seed stays NaN; percentile_interval skips it.
            warnings.simplefilter("ignore", RuntimeWarning)
            pooled = np.nanmean(stacked, axis=0)
        lo, hi = percentile_interval(pooled, 0.95)
        ci = [float(lo), float(hi)]
    elif finite.size == 1:
        ci = [mean, mean]
    return {"mean": mean, "std": std, "per_seed": values.tolist(), "ci95": ci}


def paired_difference(
    units_a: Sequence[Sequence[CellResult]],
    units_b: Sequence[Sequence[CellResult]],
    metric: str,
    *,
    column_a: str = "predicted",
    column_b: str = "predicted",
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Metric(a) - metric(b) on the same test pairs (same seeds and splits), with a patient
    bootstrap of the difference (resample b averaged over seeds) and the
    ``min_detectable_difference``: the half-width of that interval, the size of an effect
    the comparison could have missed."""
    entry = paired_statistic(
        units_a,
        units_b,
        metric,
        lambda a, b: a - b,
        column_a=column_a,
        column_b=column_b,
        n_boot=n_boot,
        seed=seed,
    )
    lo, hi = entry["ci95"]
    entry["min_detectable_difference"] = (
        (hi - lo) / 2.0 if math.isfinite(lo) and math.isfinite(hi) else math.nan
    )
    return entry


def paired_statistic(
    units_a: Sequence[Sequence[CellResult]],
    units_b: Sequence[Sequence[CellResult]],
    metric: str,
    combine: Callable[[float, float], float],
    *,
    column_a: str = "predicted",
    column_b: str = "predicted",
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """``combine(metric(a), metric(b))`` on the test pairs both evaluated (same seeds and
    splits), with a patient bootstrap that resamples both together (resample b averaged over
    seeds)."""
    per_seed: list[float] = []
    boots: list[np.ndarray] = []
    keys = ["patient_id", "visit_from", "visit_to"]
    for cells_a, cells_b in zip(units_a, units_b, strict=True):
        ta, tb = _pooled(cells_a), _pooled(cells_b)
        extra = [k for k in ("zone",) if k in ta.columns and k in tb.columns]
        merged = ta[[*keys, *extra, "label", column_a]].merge(
            tb[[*keys, *extra, column_b]], on=keys + extra, suffixes=("_a", "_b")
        )
        col_a = column_a + "_a" if column_a == column_b else column_a
        col_b = column_b + "_b" if column_a == column_b else column_b
        sa = _class_stat(merged, col_a, metric)
        sb = _class_stat(merged, col_b, metric)

        def stat(idx: np.ndarray, sa: Any = sa, sb: Any = sb) -> float:
            return float(combine(sa(idx), sb(idx)))

        per_seed.append(stat(np.arange(len(merged))))
        if n_boot > 0:
            boots.append(
                bootstrap_distribution(merged["patient_id"].to_numpy(), stat, n_boot, seed)
            )
    entry = _stat_entry(per_seed, boots)
    if not math.isfinite(entry["mean"]):  # undefined (e.g. an oracle at chance): no interval
        entry["ci95"] = [math.nan, math.nan]
    return entry


@dataclass
class AblationResult:
    results_path: Path
    results: dict[str, Any]
    cells: dict[str, list[list[CellResult]]]
    run_dirs: dict[str, list[Path]]


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
    key = normalised(finetune_key(base.cfg, base.digest))
    folder = out / "cells" / label / base.tag
    return Cell(label, base.tag, base.cfg, base.data, folder, key, base=base)


def run_ablation(
    cfg: Config,
    out: Path,
    *,
    progress: bool = True,
    log: Log = print,
    manifest: Manifest | None = None,
    replace_changed: bool = False,
) -> AblationResult:
    """Run the whole grid and write ``results.json``; returns it with the per-cell results.

    Every cell's cached artefacts carry a key (:mod:`learner.provenance`). A cell whose
    evaluation settings changed is re-evaluated from its cached embeddings; one whose
    pretraining inputs changed stops the run with the changed keys (``replace_changed``
    retrains it instead), so results.json never describes numbers other inputs produced.

    Raises:
        ConfigError: a bad grid, or cached cells made with other inputs.
    """
    out = Path(out)
    variants = objective_variants(cfg)
    features = list(dict.fromkeys(cfg.run.features))
    if manifest is None:
        manifest = config_manifest(cfg)

    grid, splits = plan_cells(cfg, manifest, variants, out)
    every = [cell for seed_cells in grid for fold in seed_cells for cell in fold]
    check_cache(every, out, replace=replace_changed, log=log)
    if not has_change_pairs(manifest.frame):
        if cfg.eval.finetune:
            raise ConfigError(
                f"{manifest.source}: eval.finetune trains on change pairs and no patient has "
                "two consecutive labelled visits; set eval.finetune: 0"
            )
        return run_interpatient(cfg, manifest, out, every, splits, progress=progress, log=log)

    truth = load_truth(manifest.source)
    units: dict[str, list[list[CellResult]]] = {}
    oracles: dict[str, list[list[CellResult]]] = {}
    pair_counts: dict[str, list[tuple[float, float, float]]] = {}
    run_dirs: dict[str, list[Path]] = {}
    keys: dict[str, Any] = {}
    floors: list[dict[str, float]] = []
    for seed_cells in grid:
        by_name: dict[str, list[CellResult]] = {}
        oracle_folds: dict[str, list[CellResult]] = {}
        for fold in seed_cells:
            if truth is not None:
                for name, result in _oracle_cells(cfg, fold[0], truth).items():
                    oracle_folds.setdefault(name, []).append(result)
                floors.append(_score_floors(fold[0].data.frame, truth))
            for cell in fold:
                state = "cached" if _cell_done(cell, features) else "running"
                log(f"[{cell.tag}] {cell.label}: {state}")
                res = run_cell(cell, features=features, progress=progress, log=log)
                if cell.trained_here:
                    run_dirs.setdefault(cell.label, []).append(cell.folder / "run")
                    counts = pair_batch_counts(cell.folder / "run")
                    if counts is not None:
                        pair_counts.setdefault(cell.label, []).append(counts)
                keys[cell.name] = {
                    "pretrain": cell.digest,
                    "evaluation": {
                        f: r.summary.get("key", {}).get("digest") for f, r in res.items()
                    },
                }
                for feature, result in res.items():
                    name = result_name(cell.label, feature, features)
                    by_name.setdefault(name, []).append(result)
        for name, cells in by_name.items():
            units.setdefault(name, []).append(cells)
        for name, cells in oracle_folds.items():
            oracles.setdefault(name, []).append(cells)
    if any(len(u) != len(grid) for u in oracles.values()):
        oracles = {}  # a fold whose truth was incomplete: no ceiling rather than a partial one

    results = build_results(cfg, manifest, units, splits, oracles=oracles)
    if floors:
        results["ceilings"]["score_mae_floors"] = _mean_floors(floors, units)
    results["warnings"] = run_warnings(cfg, manifest, units, pair_counts)
    results["degenerate"] = _degenerate(units)
    results["verdict"] = verdict(results)
    results["cells"] = keys
    path = out / "results.json"
    write_json(path, results)
    return AblationResult(path, results, units, run_dirs)


def run_interpatient(
    cfg: Config,
    manifest: Manifest,
    out: Path,
    cells: Sequence[Cell],
    splits: list[dict[str, Any]],
    *,
    progress: bool,
    log: Log,
) -> AblationResult:
    """One visit per patient, so no change pairs: pretrain and embed every cell, then measure
    on held-out patients whether the embedding orders *patients* by score (Figure 1 across
    patients) and the head's score MAE, with patient-bootstrap CIs and paired differences to
    mse. The unit is the scan where scores differ within a patient, else the patient."""
    frames_by_tag: dict[str, dict[str, pd.DataFrame]] = {}
    seed_of_tag: dict[str, int] = {}
    keys: dict[str, Any] = {}
    for cell in cells:
        state = "cached" if (cell.folder / "embeddings.parquet").exists() else "running"
        log(f"[{cell.tag}] {cell.label}: {state}")
        emb = embed_cell(cell, progress=progress)
        frames_by_tag.setdefault(cell.tag, {})[cell.label], _ = read_embeddings(emb)
        seed_of_tag[cell.tag] = cell.cfg.train.seed
        keys[cell.name] = {"pretrain": cell.digest}
    frame = manifest.frame
    spread = frame.groupby(["patient_id", "visit_order"])["score"].nunique(dropna=True)
    unit: Literal["scan", "patient"] = "scan" if bool((spread > 1).any()) else "patient"
    per_tag = [
        evaluate_interpatient(
            frames, reference=REFERENCE, unit=unit, n_boot=cfg.eval.n_boot, seed=seed_of_tag[tag]
        )
        for tag, frames in frames_by_tag.items()
    ]
    pooled = pool_interpatient(per_tag)
    for name in pooled["objectives"]:
        if name == UNTRAINED:
            pooled["objectives"][name]["score_mae"] = _stat_entry([math.nan] * len(per_tag), [])
    results: dict[str, Any] = {
        "task": "interpatient",
        "objectives": pooled["objectives"],
        "ceilings": {},
        "comparisons": pooled["comparisons"],
        "dataset": {
            "manifest": str(manifest.source),
            "patients": int(frame["patient_id"].nunique()),
            "scans": len(frame),
            "visits": int(frame.groupby("patient_id")["visit_order"].nunique().sum()),
            "unit": unit,
            "held_out_patients_per_seed": pooled["held_out_patients_per_seed"],
            "inter_patient_pairs_per_seed": pooled["inter_patient_pairs_per_seed"],
            "splits": splits,
        },
        "config": cfg.to_plain(),
        "versions": package_versions(),
        "cells": keys,
        "metric_notes": {
            "task": "no patient has two labelled visits, so there is no change to classify: "
            "accuracy, balanced accuracy and macro-F1 do not exist for this data",
            "spearman_distance": "rho(cosine distance, |score gap|) over pairs of held-out "
            f"{unit}s of different patients",
            "score_mae": "the regression head on held-out scans (raw score units)",
            "score_spearman": "rho(predicted score, score) on held-out units",
        },
    }
    results["warnings"] = list(manifest.warnings) + score_range_warnings(
        frame["score"].to_numpy(dtype=np.float64), cfg.data.score_range
    )
    results["degenerate"] = None
    results["verdict"] = verdict(results)
    path = out / "results.json"
    write_json(path, results)
    return AblationResult(path, results, {}, {})


def _oracle_cells(cfg: Config, cell: Cell, truth: pd.DataFrame) -> dict[str, CellResult]:
    """The ceilings of one seed (fold): the oracles on the cell's split and pairs."""
    out: dict[str, CellResult] = {}
    for name, column in ORACLES.items():
        result = evaluate_oracle(
            cell.data.frame,
            truth,
            column,
            delta=cfg.eval.delta,
            higher_is_better=cfg.data.higher_is_better,
            classifier=cfg.eval.classifier,
            seed=cell.cfg.train.seed,
        )
        if result is not None:
            out[name] = CellResult.from_change(result)
    return out


def _score_floors(frame: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """What the score regressor's validation MAE can reach on one seed's (fold's) split:
    the label noise (recorded score against truth's ``score_clean``) and a perfect reader of
    each scan (a line from the severity it was rendered with to the score)."""
    return {
        "label_noise": score_noise_mae(frame, truth, "val"),
        "perfect_reader": render_regressor_mae(frame, truth, "val"),
    }


def _mean_floors(
    floors: Sequence[dict[str, float]], units: dict[str, list[list[CellResult]]]
) -> dict[str, Any]:
    """Means over seeds (folds) of the two floors, beside the mse regressor's own validation
    MAE, so a reader sees how far the regressor is from what the labels allow (None where
    undefined)."""

    def mean(values: Sequence[Any]) -> float | None:
        finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        return float(np.mean(finite)) if finite else None

    regressor = [
        c.summary.get("regressor", {}).get("val_mae")
        for cells in units.get(REFERENCE, [])
        for c in cells
    ]
    return {
        "split": "val",
        "label_noise": mean([f["label_noise"] for f in floors]),
        "perfect_reader": mean([f["perfect_reader"] for f in floors]),
        "mse_regressor": mean(regressor),
    }


def _first_feature_summaries(units: dict[str, list[list[CellResult]]]) -> list[dict[str, Any]]:
    """Every seed's (fold's) evaluation summary of the reference objective."""
    name = REFERENCE if REFERENCE in units else next(iter(units), None)
    if name is None:
        return []
    return [c.summary for cells in units[name] for c in cells]


def _degenerate(units: dict[str, list[list[CellResult]]]) -> str | None:
    summaries = _first_feature_summaries(units)
    return degenerate_classes(summaries) if summaries else None


def run_warnings(
    cfg: Config,
    manifest: Manifest,
    units: dict[str, list[list[CellResult]]],
    pair_counts: dict[str, list[tuple[float, float, float]]],
) -> list[str]:
    """Every warning that qualifies the run's numbers, one line each, naming the fix."""
    scores = manifest.frame["score"].to_numpy(dtype=np.float64)
    out = list(manifest.warnings)
    out += score_range_warnings(scores, cfg.data.score_range)
    out += class_table_warnings(_first_feature_summaries(units), cfg.eval.delta)
    for label, counts in pair_counts.items():
        line = pair_term_warning(label, tuple(np.sum(counts, axis=0)), cfg.objective.tau)
        if line is not None:
            out.append(line)
    floors = [c.summary.get("regressor", {}) for cells in units.get(REFERENCE, []) for c in cells]
    val = [f.get("val_mae") for f in floors if f.get("val_mae") is not None]
    mean = [f.get("val_mae_of_train_mean") for f in floors if f.get("val_mae") is not None]
    if val and all(m is not None for m in mean):
        line = regressor_warning(float(np.mean(val)), float(np.mean(mean)))
        if line is not None:
            out.append(line)
    line = concat_warning(cfg.run.features)
    if line is not None:
        out.append(line)
    for cells in units.values():
        for note in (n for seed_cells in cells for c in seed_cells for n in c.summary["warnings"]):
            if note not in out:
                out.append(note)
    return out


def _majority_rate(units: list[list[CellResult]]) -> float:
    """Accuracy of always predicting the majority class of the test pairs, mean over seeds."""
    rates = []
    for cells in units:
        labels = _pooled(cells)["label"].astype(str)
        rates.append(float(labels.value_counts(normalize=True).max()) if len(labels) else math.nan)
    return float(np.nanmean(rates)) if rates else math.nan


def build_results(
    cfg: Config,
    manifest: Manifest,
    units: dict[str, list[list[CellResult]]],
    datasets: list[dict[str, Any]],
    *,
    oracles: dict[str, list[list[CellResult]]] | None = None,
) -> dict[str, Any]:
    """results.json (DESIGN section 2) from the per-cell results and, where the cohort's
    truth is known, the oracles' (the ``ceilings`` block and ``fraction_of_achievable``)."""
    oracles = oracles or {}
    n_boot, seed0 = cfg.eval.n_boot, cfg.run.seeds[0]
    objectives: dict[str, Any] = {}
    for name, u in units.items():
        objectives[name] = metric_block(u, head=False, n_boot=n_boot, seed=seed0)
    if cfg.run.baselines and REFERENCE in units:
        objectives[HEAD_DELTA] = metric_block(
            units[REFERENCE], head=True, n_boot=n_boot, seed=seed0
        )
    comparisons: dict[str, Any] = {}
    ref = units.get(REFERENCE)
    for name, u in units.items():
        if name == REFERENCE or ref is None:
            continue
        comparisons[name] = {
            m: paired_difference(u, ref, m, n_boot=n_boot, seed=seed0) for m in CLASS_METRICS
        }
    if ref is not None:
        comparisons[HEAD_DELTA] = {
            m: paired_difference(
                ref,
                ref,
                m,
                column_a="head_predicted",
                column_b="predicted",
                n_boot=n_boot,
                seed=seed0,
            )
            for m in CLASS_METRICS
        }
    to_untrained: dict[str, Any] = {}
    for name, u in units.items():
        base = _untrained_name(name)
        if name != base and base in units:
            to_untrained[name] = {
                "balanced_accuracy": paired_difference(
                    u, units[base], "balanced_accuracy", n_boot=n_boot, seed=seed0
                )
            }
    if ref is not None and UNTRAINED in units:
        to_untrained[HEAD_DELTA] = {
            "balanced_accuracy": paired_difference(
                ref,
                units[UNTRAINED],
                "balanced_accuracy",
                column_a="head_predicted",
                n_boot=n_boot,
                seed=seed0,
            )
        }
    for name in objectives:
        if name.split("+")[0] == UNTRAINED:
            # A random head's score error says nothing; the table shows a dash.
            objectives[name]["score_mae"] = _stat_entry([math.nan] * len(units[name]), [])

    first_units = next(iter(units.values()), [])
    ceilings: dict[str, Any] = {
        "chance": {"balanced_accuracy": CHANCE_BALANCED, "accuracy": _majority_rate(first_units)}
    }
    for name, ou in oracles.items():
        block = metric_block(ou, head=False, n_boot=n_boot, seed=seed0)
        ceilings[name] = {m: block[m] for m in CLASS_METRICS}
    ceiling = next((k for k in ORACLES if k in oracles), None)
    if ceiling is not None:
        for name, u in units.items():
            objectives[name]["fraction_of_achievable"] = paired_statistic(
                u,
                oracles[ceiling],
                "balanced_accuracy",
                fraction_of_achievable,
                n_boot=n_boot,
                seed=seed0,
            )
        if HEAD_DELTA in objectives and ref is not None:
            objectives[HEAD_DELTA]["fraction_of_achievable"] = paired_statistic(
                ref,
                oracles[ceiling],
                "balanced_accuracy",
                fraction_of_achievable,
                column_a="head_predicted",
                n_boot=n_boot,
                seed=seed0,
            )
        ceilings["fraction_reference"] = ceiling
    else:
        # The contract keeps the key; without a truth.csv there is no oracle to divide by.
        for block in objectives.values():
            block["fraction_of_achievable"] = {
                **_stat_entry([math.nan] * len(cfg.run.seeds), []),
                "note": "no truth.csv beside the manifest: no oracle, no fraction",
            }

    frame = manifest.frame
    first = next(iter(units.values()))[0][0].summary if units else {}
    return {
        "objectives": objectives,
        "ceilings": ceilings,
        "comparisons": {
            "reference": REFERENCE,
            "differences": comparisons,
            "differences_to_untrained": to_untrained,
        },
        "dataset": {
            "manifest": str(manifest.source),
            "patients": int(frame["patient_id"].nunique()),
            "scans": len(frame),
            "visits": int(frame.groupby("patient_id")["visit_order"].nunique().sum()),
            "stable_band": first.get("band"),
            "test_pairs_per_seed": first.get("n_test_pairs"),
            "test_patients_per_seed": first.get("n_test_patients"),
            "class_counts_test": first.get("class_counts_test"),
            "splits": datasets,
        },
        "config": cfg.to_plain(),
        "versions": package_versions(),
        "metric_notes": {
            "ci95": "95% patient-bootstrap interval on test patients (resamples averaged "
            "over seeds); std is the seed-to-seed spread",
            HEAD_DELTA: "the mse model's regression head: predicted score change as the only "
            "feature of the same classifier",
            UNTRAINED: "random-init encoder, same classifier; no score_mae (its head is random)",
            "suffix " + FINETUNED: "eval.finetune: the encoder fine-tuned end to end on the "
            "training patients' change pairs (validation patients chose the epoch), read by "
            "the same probe; its score_mae is the unchanged head (random for untrained-ft) "
            "reading the fine-tuned encoder",
            "ceilings": "chance: 1/3 balanced accuracy, majority-class rate for accuracy; "
            "oracle_truth / oracle_clean_score: the same probe, pairs and band on the true "
            "change of truth.csv's severity / score_clean",
            "fraction_of_achievable": "(balanced accuracy - 1/3) / (oracle - 1/3), paired "
            "patient bootstrap on the same test pairs",
            "min_detectable_difference": "half-width of the paired 95% CI: an effect of that "
            "size could be missed",
            "prefix " + HEAD_DELTA_PREFIX: "in per-cell metrics.json only",
        },
    }
