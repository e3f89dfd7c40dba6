"""`learner run`: every objective x seed (x fold) x feature: pretrain, embed, evaluate.

Each cell lives in ``OUT/cells/<label>/seed<S>[-fold<K>]/``; a cell whose ``eval-<feature>``
folder holds ``metrics.json`` is finished and is read back instead of recomputed, so an
interrupted run continues where it stopped. ``results.json`` follows the contract of DESIGN
section 2, with the baselines under the names ``head_delta`` and ``untrained``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd

from learner.config import Config, RunVariant
from learner.data.manifest import Manifest, load_manifest
from learner.data.splits import kfold_patients
from learner.errors import ConfigError
from learner.evaluate.bootstrap import bootstrap_distribution, percentile_interval
from learner.evaluate.change import (
    CLASS_METRICS,
    HEAD_DELTA_PREFIX,
    METRICS,
    ChangeResult,
    class_metrics,
    confusion_counts,
    evaluate_change,
    label_codes,
)
from learner.evaluate.embed import embed_frame, load_checkpoint
from learner.evaluate.embeddings_io import read_embeddings
from learner.io import atomic_path, write_json
from learner.train.module import LearnerModule
from learner.train.pretrain import (
    PreparedData,
    model_config,
    package_versions,
    prepare_data,
    pretrain,
)

Log = Callable[[str], None]
HEAD_DELTA = "head_delta"
UNTRAINED = "untrained"
REFERENCE = "mse"


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


def result_name(label: str, feature: str, features: Sequence[str]) -> str:
    """``weighted`` for the default feature; ``weighted+concat`` for another."""
    return label if feature == features[0] else f"{label}+{feature}"


def _evaluate_cell(
    emb_path: Path, cell_dir: Path, cfg: Config, features: Sequence[str], seed: int
) -> dict[str, CellResult]:
    frame, _ = read_embeddings(emb_path)
    out: dict[str, CellResult] = {}
    for feature in features:
        folder = cell_dir / f"eval-{feature}"
        if (folder / "metrics.json").exists():
            out[feature] = CellResult.load(folder)
            continue
        result = evaluate_change(
            frame,
            delta=cfg.eval.delta,
            higher_is_better=cfg.data.higher_is_better,
            feature=feature,
            classifier=cfg.eval.classifier,
            n_boot=cfg.eval.n_boot,
            seed=seed,
        )
        cell = CellResult.from_change(result)
        cell.save(folder)
        out[feature] = cell
    return out


def _cell_done(cell_dir: Path, features: Sequence[str]) -> bool:
    return all((cell_dir / f"eval-{f}" / "metrics.json").exists() for f in features)


def run_cell(
    cfg: Config,
    data: PreparedData,
    cell_dir: Path,
    *,
    features: Sequence[str],
    seed: int,
    progress: bool,
) -> dict[str, CellResult]:
    """Pretrain (or resume), embed and evaluate one objective x seed (x fold)."""
    emb = cell_dir / "embeddings.parquet"
    if not _cell_done(cell_dir, features):
        pretrain_and_embed(
            cfg,
            data,
            cell_dir,
            metadata={"objective": cfg.objective.name, "seed": seed},
            progress=progress,
        )
    return _evaluate_cell(emb, cell_dir, cfg, features, seed)


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
        embed_frame(
            model,
            data,
            data.frame,
            emb,
            metadata={**metadata, "checkpoint": "best"},
            batch_size=cfg.train.batch_size,
        )
    return emb


def run_untrained(
    cfg: Config, data: PreparedData, cell_dir: Path, *, features: Sequence[str], seed: int
) -> dict[str, CellResult]:
    """The ``untrained`` baseline: a random-init encoder (seeded), same classifier."""
    emb = cell_dir / "embeddings.parquet"
    if not _cell_done(cell_dir, features) and not emb.exists():
        L.seed_everything(seed, verbose=False)
        model = LearnerModule(model_config(cfg, data), data.score_range, {"seed": seed})
        embed_frame(
            model,
            data,
            data.frame,
            emb,
            metadata={"objective": UNTRAINED, "seed": seed},
            batch_size=cfg.train.batch_size,
        )
    return _evaluate_cell(emb, cell_dir, cfg, features, seed)


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
                if len(cells) == 1 and key_boots[0] is not None:
                    boots.append(np.asarray(key_boots[0]))
        out[name] = _stat_entry(per_seed, boots)
    return out


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
    bootstrap of the difference (resample b averaged over seeds)."""
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

        def diff(idx: np.ndarray, sa: Any = sa, sb: Any = sb) -> float:
            return float(sa(idx) - sb(idx))

        per_seed.append(diff(np.arange(len(merged))))
        if n_boot > 0:
            boots.append(
                bootstrap_distribution(merged["patient_id"].to_numpy(), diff, n_boot, seed)
            )
    return _stat_entry(per_seed, boots)


@dataclass
class AblationResult:
    results_path: Path
    results: dict[str, Any]
    cells: dict[str, list[list[CellResult]]]
    run_dirs: dict[str, list[Path]]


def run_ablation(
    cfg: Config,
    out: Path,
    *,
    progress: bool = True,
    log: Log = print,
    manifest: Manifest | None = None,
) -> AblationResult:
    """Run the whole grid and write ``results.json``; returns it with the per-cell results."""
    out = Path(out)
    variants = objective_variants(cfg)
    features = list(dict.fromkeys(cfg.run.features))
    if manifest is None:
        if cfg.data.manifest is None:
            raise ConfigError(
                "data.manifest is not set; pass --set data.manifest=PATH/manifest.csv"
            )
        manifest = load_manifest(
            cfg.data.manifest, feature_columns=cfg.data.feature_columns, columns=cfg.data.columns
        )
    patients = sorted(manifest.frame["patient_id"].unique())

    units: dict[str, list[list[CellResult]]] = {}
    run_dirs: dict[str, list[Path]] = {}
    datasets: list[dict[str, Any]] = []
    for seed in cfg.run.seeds:
        split_seed = cfg.data.split.seed if cfg.data.split.seed is not None else seed
        folds: list[dict[str, str] | None]
        folds = (
            list(kfold_patients(patients, k=cfg.data.split.folds, seed=split_seed))
            if cfg.data.split.folds
            else [None]
        )
        seed_cells: dict[str, list[CellResult]] = {}
        for k, assignment in enumerate(folds):
            tag = f"seed{seed}" + (f"-fold{k}" if assignment is not None else "")
            base = cell_config(cfg, {"name": REFERENCE}, seed)
            data = prepare_data(base, manifest, assignment)
            datasets.append({"cell": tag, "split_hash": data.split_hash})
            for label, overrides in variants:
                cell_dir = out / "cells" / label / tag
                state = "cached" if _cell_done(cell_dir, features) else "running"
                log(f"[{tag}] {label}: {state}")
                ccfg = cell_config(cfg, overrides, seed)
                res = run_cell(
                    ccfg, data, cell_dir, features=features, seed=seed, progress=progress
                )
                run_dirs.setdefault(label, []).append(cell_dir / "run")
                for feature, cell in res.items():
                    seed_cells.setdefault(result_name(label, feature, features), []).append(cell)
            if cfg.run.baselines:
                cell_dir = out / "cells" / UNTRAINED / tag
                state = "cached" if _cell_done(cell_dir, features) else "running"
                log(f"[{tag}] {UNTRAINED}: {state}")
                res = run_untrained(base, data, cell_dir, features=features, seed=seed)
                for feature, cell in res.items():
                    seed_cells.setdefault(result_name(UNTRAINED, feature, features), []).append(
                        cell
                    )
        for name, cells in seed_cells.items():
            units.setdefault(name, []).append(cells)

    results = build_results(cfg, manifest, units, datasets)
    path = out / "results.json"
    write_json(path, results)
    return AblationResult(path, results, units, run_dirs)


def build_results(
    cfg: Config,
    manifest: Manifest,
    units: dict[str, list[list[CellResult]]],
    datasets: list[dict[str, Any]],
) -> dict[str, Any]:
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
    frame = manifest.frame
    first = next(iter(units.values()))[0][0].summary if units else {}
    return {
        "objectives": objectives,
        "comparisons": {"reference": REFERENCE, "differences": comparisons},
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
            UNTRAINED: "random-init encoder, same classifier",
            "prefix " + HEAD_DELTA_PREFIX: "in per-cell metrics.json only",
        },
    }
