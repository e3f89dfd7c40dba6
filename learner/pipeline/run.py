"""`learner run`: every objective x seed (x fold) x reading (feature x probe): pretrain,
embed, evaluate.

Each cell lives in ``OUT/cells/<label>/seed<S>[-fold<K>]/``; a cell whose ``eval-<feature>``
folder holds ``metrics.json`` is finished and is read back instead of recomputed, so an
interrupted run continues where it stopped. ``results.json`` holds a block per objective (each
metric with its 95% interval and its difference to ``mse``), with the baselines under the
names ``head_delta`` and ``untrained``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import pandas as pd

from learner.config import Config, TargetColumn
from learner.data.manifest import Manifest
from learner.data.pairs import with_change_labels
from learner.device import on_gpu, training_device
from learner.errors import ConfigError
from learner.evaluate.aggregate import CellResult
from learner.evaluate.ceilings import (
    ORACLES,
    TRUTH_TARGET,
    evaluate_oracle,
    load_truth,
    regressor_against_mean,
    render_regressor_mae,
    score_noise_mae,
    truth_target,
)
from learner.evaluate.change import TARGET_COLUMN, evaluate_change, has_change_pairs
from learner.evaluate.embeddings_io import read_embeddings
from learner.evaluate.interpatient import evaluate_interpatient
from learner.evaluate.target import column_target
from learner.evaluate.verdict import pair_batch_counts
from learner.io import write_json
from learner.pipeline.embed import embed_frame
from learner.pipeline.finetune import finetune_change, save_finetuned
from learner.pipeline.grid import (
    REFERENCE,
    UNTRAINED,
    Cell,
    Log,
    Reading,
    check_cache,
    objective_variants,
    plan_cells,
    readings,
)
from learner.pipeline.results import change_results, interpatient_results
from learner.provenance import (
    KEY_FILE,
    change_label_content,
    changed_keys,
    digest,
    evaluation_key,
    normalised,
    read_key,
    write_key,
)
from learner.train.checkpoint import load_checkpoint
from learner.train.loader import resolve_num_workers
from learner.train.module import LearnerModule
from learner.train.prepared import (
    PreparedData,
    check_input_kind,
    config_manifest,
    model_config,
)
from learner.train.pretrain import pretrain


def _evaluate_cell(
    cell: Cell, reads: Sequence[Reading], log: Log, truth: pd.DataFrame | None = None
) -> dict[Reading, CellResult]:
    """Evaluate each reading (feature x probe), reusing a cached evaluation only when its
    key still holds.

    With ``eval.target: truth`` the frame carries each scan's true severity
    (:func:`~learner.evaluate.ceilings.truth_target`), which ``evaluate_change`` reads for the
    test pairs only, after every prediction."""
    emb_path = cell.folder / "embeddings.parquet"
    frame: pd.DataFrame | None = None
    out: dict[Reading, CellResult] = {}
    content = _target_content(cell, truth)
    labels = change_label_content(cell.data.frame)
    for reading in reads:
        feature, folder = reading.feature, cell.folder / reading.folder
        cfg = cell.cfg if reading.pca == cell.cfg.eval.pca else _with_pca(cell.cfg, reading.pca)
        key = evaluation_key(cfg, cell.digest, feature)
        if content is not None:
            key["target.content"] = content  # edited target values re-evaluate the cell
        if labels is not None:
            key["change_label.content"] = labels  # so do edited clinician labels
        key = normalised(key)
        stored = read_key(folder / KEY_FILE)
        if (folder / "metrics.json").exists():
            if stored == key:
                out[reading] = CellResult.load(folder)
                continue
            changes = changed_keys(stored, key) if stored is not None else ["(no key)"]
            what = reading.folder.removeprefix("eval-")  # diff, concat, diff-pca-auto
            log(f"[{cell.tag}] {cell.label}: re-evaluating {what} ({'; '.join(changes)})")
        if frame is None:
            frame, _ = read_embeddings(emb_path)
            frame = with_change_labels(frame, cell.data.frame)
            target = cell.cfg.eval.target
            if target == "truth" and truth is not None:
                frame[TARGET_COLUMN] = truth_target(frame, truth)
            elif isinstance(target, TargetColumn):
                frame[TARGET_COLUMN] = column_target(
                    frame,
                    cell.data.frame,
                    target.column,
                    higher_is_better=target.higher_is_better,
                )
        result = evaluate_change(
            frame,
            delta=cell.cfg.eval.delta,
            higher_is_better=cell.cfg.data.higher_is_better,
            feature=feature,
            classifier=cell.cfg.eval.classifier,
            pca=reading.pca,
            n_boot=cell.cfg.eval.n_boot,
            seed=cell.cfg.train.seed,
        )
        result_cell = CellResult.from_change(result)
        result_cell.summary["key"] = {"digest": digest(key), "pretrain_digest": cell.digest}
        val_mae, mean_mae = regressor_against_mean(frame)
        result_cell.summary["regressor"] = {"val_mae": val_mae, "val_mae_of_train_mean": mean_mae}
        write_key(folder / KEY_FILE, key)
        result_cell.save(folder)
        out[reading] = result_cell
    return out


def _with_pca(cfg: Config, pca: int | str) -> Config:
    """``cfg`` with another ``eval.pca``: a ``run.probes`` reading's own evaluation key."""
    tree = cfg.to_plain()
    tree["eval"]["pca"] = pca
    return Config.model_validate(tree)


def _target_content(cell: Cell, truth: pd.DataFrame | None) -> str | None:
    """A digest of the values ``eval.target`` judges against (truth.csv's severities, or the
    manifest column), so that an edited target re-evaluates the cached cells; None for the
    observed target. The scans' keys do not see either: they live beside the contract."""
    target = cell.cfg.eval.target
    if target == "truth" and truth is not None:
        table, column = truth, TRUTH_TARGET
    elif isinstance(target, TargetColumn):
        table, column = cell.data.frame, target.column
    else:
        return None
    keys = [c for c in ("path", "patient_id", "visit", "zone") if c in table.columns]
    return digest({column: table[[*keys, column]].to_csv(index=False)})


def _cell_done(cell: Cell, reads: Sequence[Reading]) -> bool:
    return (cell.folder / "embeddings.parquet").exists() and all(
        (cell.folder / r.folder / "metrics.json").exists() for r in reads
    )


def run_cell(
    cell: Cell,
    *,
    reads: Sequence[Reading],
    progress: bool,
    log: Log = print,
    truth: pd.DataFrame | None = None,
) -> dict[Reading, CellResult]:
    """Pretrain (or resume), embed and evaluate one objective x seed (x fold); ``truth``
    (the cohort's truth.csv) serves ``eval.target: truth``."""
    embed_cell(cell, progress=progress)
    return _evaluate_cell(cell, reads, log, truth)


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
        num_workers=resolve_num_workers(cfg.data.num_workers, on_gpu(cfg.train.accelerator)),
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


def finetune_and_embed(cell: Cell, base: Cell) -> Path:
    """``eval.finetune``: fine-tune ``base``'s encoder on the training patients' change pairs
    (:mod:`learner.pipeline.finetune`), save it as ``finetuned.ckpt`` beside ``finetune.json``
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


@dataclass
class AblationResult:
    results_path: Path
    results: dict[str, Any]
    cells: dict[str, list[list[CellResult]]]
    run_dirs: dict[str, list[Path]]
    # The manifest the run read: its clinician change labels serve the change models too.
    manifest: Manifest | None = None


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
    reads = readings(cfg)
    if manifest is None:
        manifest = config_manifest(cfg)
    check_input_kind(cfg, manifest)  # before any model is built

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

    target = cfg.eval.target
    if isinstance(target, TargetColumn) and target.column not in manifest.frame.columns:
        raise ConfigError(
            f"{manifest.source}: eval.target names column {target.column!r}, which the "
            "manifest does not have (or was read without); add the column, or read the "
            "manifest with learner.train.prepared.config_manifest(cfg)"
        )
    truth = load_truth(manifest.source)
    if target == "truth" and truth is None:
        raise ConfigError(
            f"{manifest.source}: eval.target truth needs the truth.csv a synthetic cohort "
            "writes beside its manifest, and there is none; set eval.target: observed"
        )
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
                state = "cached" if _cell_done(cell, reads) else "running"
                if state == "running" and (cell.folder / "embeddings.parquet").exists():
                    state = "evaluating"  # trained and embedded: only a reading is new
                log(f"[{cell.tag}] {cell.label}: {state}")
                res = run_cell(cell, reads=reads, progress=progress, log=log, truth=truth)
                if cell.trained_here:
                    run_dirs.setdefault(cell.label, []).append(cell.folder / "run")
                    counts = pair_batch_counts(cell.folder / "run")
                    if counts is not None:
                        pair_counts.setdefault(cell.label, []).append(counts)
                keys[cell.name] = {
                    "pretrain": cell.digest,
                    "evaluation": {
                        r.folder.removeprefix("eval-"): c.summary.get("key", {}).get("digest")
                        for r, c in res.items()
                    },
                }
                for reading, result in res.items():
                    by_name.setdefault(reading.name(cell.label), []).append(result)
        for name, cells in by_name.items():
            units.setdefault(name, []).append(cells)
        for name, cells in oracle_folds.items():
            oracles.setdefault(name, []).append(cells)
    if any(len(u) != len(grid) for u in oracles.values()):
        oracles = {}  # a fold whose truth was incomplete: no ceiling rather than a partial one

    results = change_results(
        cfg, manifest, units, splits, oracles=oracles, floors=floors, pair_counts=pair_counts
    )
    results["cells"] = keys
    path = out / "results.json"
    write_json(path, results)
    return AblationResult(path, results, units, run_dirs, manifest)


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
    results = interpatient_results(cfg, manifest, per_tag, splits, unit=unit)
    results["cells"] = keys
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
