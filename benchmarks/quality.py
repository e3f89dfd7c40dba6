"""Quality benchmark of issue #6: every objective against mse, with paired differences.

For a longitudinal data set (``parkinsons``, the synthetic cohorts) it builds the manifest
(:mod:`benchmarks.datasets`), runs ``learner run``'s grid (objectives x seeds x features, plus
the ``head_delta`` and ``untrained`` baselines) into ``benchmarks/work/runs/<name>``, copies
``results.json`` to ``benchmarks/results/quality_<name>.json`` (with the wall time and the
extra paired differences to ``contrastive``) and prints a markdown table and a plain verdict.
For the one-visit COVID-BLUES sets (``covid-blues-severity``, ``covid-blues-sf``) there is no
change task: it runs the inter-patient evaluation of
:mod:`learner.evaluate.interpatient` instead (and, for the severity model, the external POCUS
set and the trajectory of its four-day patient).

Finished cells are cached, so an interrupted run continues where it stopped.

Usage:
    .venv/bin/python benchmarks/quality.py --dataset parkinsons
    .venv/bin/python benchmarks/quality.py --dataset synth-lus-null --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/quality.py --dataset parkinsons --quick   # smoke run
    .venv/bin/python benchmarks/quality.py --layouts          # OASIS-2 view layouts (val only)
    .venv/bin/python benchmarks/quality.py --dataset oasis2-slices

For ``oasis2-slices`` the results also hold ``cdr_change`` (CDR change classified from the
same embeddings) and ``inter_subject`` (do the embedding and the head order held-out subjects
by MMSE); every comparison to mse carries ``min_detectable_difference`` (half the paired CI).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

# Heavy numerics share two cores with other jobs: one thread each, set before torch loads.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks import datasets  # noqa: E402
from learner.config import Config, load_config  # noqa: E402
from learner.data.manifest import load_manifest  # noqa: E402
from learner.errors import LearnerError  # noqa: E402
from learner.evaluate.aggregate import paired_difference  # noqa: E402
from learner.evaluate.metrics import CLASS_METRICS  # noqa: E402
from learner.io import write_json  # noqa: E402
from learner.pipeline.grid import REFERENCE  # noqa: E402
from learner.pipeline.report import write_reports  # noqa: E402
from learner.pipeline.run import AblationResult, run_ablation  # noqa: E402
from learner.provenance import (  # noqa: E402
    KEY_FILE,
    claim_folder,
    digest_file,
    key_changes,
    manifest_fingerprint,
    pretrain_key,
    read_key,
    write_key,
)
from learner.train.prepared import config_manifest  # noqa: E402

CONFIGS = REPO / "benchmarks" / "configs"
RESULTS = REPO / "benchmarks" / "results"
RUNS = datasets.WORK / "runs"

# Data set -> config file (change task) for the longitudinal sets.
CHANGE_CONFIGS = {
    "parkinsons": "parkinsons.yaml",
    "synth-lus": "synth_lus.yaml",
    **{f"synth-lus-pool{n}": "synth_lus.yaml" for n in datasets.POOL_SIZES},
    **{f"synth-lus-pool300-nuisance{s:g}": "synth_lus.yaml" for s in datasets.NUISANCE_LEVELS},
    **{f"synth-lus-null-pool{n}": "synth_lus.yaml" for n in datasets.POOL_SIZES},
    "synth-lus-null": "synth_lus.yaml",
    "synth-lus-pool300-test240": "synth_lus.yaml",
    "synth-lus-null-pool300-test240": "synth_lus.yaml",
    "synth-lus-bench": "synth_lus_bench.yaml",
    "synth-lus-bench-null": "synth_lus_bench.yaml",
    "synth-mri": "synth_mri.yaml",
    "synth-mri-slices": "synth_mri_slices.yaml",
    "synth-mri-slices-pool300": "synth_mri_slices.yaml",
    "synth-mri-null-slices-pool300": "synth_mri_slices.yaml",
    **{f"synth-mri-pool{n}": "synth_mri.yaml" for n in datasets.POOL_SIZES},
    "synth-mri-null-pool300": "synth_mri.yaml",
    "synth-mri-pool300-test240": "synth_mri.yaml",
    "synth-mri-null-pool300-test240": "synth_mri.yaml",
    "synth-mri-slices-pool300-test240": "synth_mri_slices.yaml",
    "synth-mri-null-slices-pool300-test240": "synth_mri_slices.yaml",
    "synth-mri-bench": "synth_mri_bench.yaml",
    "synth-mri-bench-slices": "synth_mri_bench_slices.yaml",
    "oasis2-slices": "oasis2_slices.yaml",
}
# Data sets that reuse another's manifest (same cohort, another encoder).
SOURCE = {
    "synth-mri-slices": "synth-mri",
    "synth-mri-slices-pool300": "synth-mri-pool300",
    "synth-mri-null-slices-pool300": "synth-mri-null-pool300",
    "synth-mri-slices-pool300-test240": "synth-mri-pool300-test240",
    "synth-mri-null-slices-pool300-test240": "synth-mri-null-pool300-test240",
    "synth-mri-bench": "synth-mri",
    "synth-mri-bench-slices": "synth-mri",
}
INTERPATIENT_CONFIGS = {
    "covid-blues-severity": "covid_blues_severity.yaml",
    "covid-blues-sf": "covid_blues_sf.yaml",
}
# The comparisons the verdict is about: LEARNER's weighted objectives against mse and the
# plain contrastive loss.
CONTENDERS = ("weighted", "weighted_soft")
SECOND_REFERENCE = "contrastive"
QUICK = [
    "run.objectives=[mse, contrastive, weighted]",
    "run.seeds=[0]",
    "eval.n_boot=200",
]


def config_for(name: str, overrides: list[str], *, quick: bool) -> Config:
    """The data set's benchmark config with ``--set`` overrides (and the quick ones)."""
    table = {**CHANGE_CONFIGS, **INTERPATIENT_CONFIGS}
    if name not in table:
        raise SystemExit(f"--dataset {name!r} is unknown; use one of {', '.join(table)}")
    extra = list(QUICK) if quick else []
    cfg = load_config(CONFIGS / table[name], extra + overrides)
    if quick:
        cfg.train.epochs = max(2, cfg.train.epochs // 5)
    return cfg


def fmt(entry: dict[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    """``mean [lo, hi]`` of a results.json metric entry, ``-`` when undefined."""
    if not entry or entry.get("mean") is None or not math.isfinite(entry["mean"]):
        return "-"
    spec = f"+.{digits}f" if signed else f".{digits}f"
    text = format(entry["mean"], spec)
    lo, hi = (entry.get("ci95") or [None, None])[:2]
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        text += f" [{format(lo, spec)}, {format(hi, spec)}]"
    return text


def extra_differences(ablation: AblationResult, cfg: Config) -> dict[str, Any]:
    """Paired differences of the weighted variants within each feature.

    ``results.json`` compares every row to ``mse`` with the first feature (``diff``); here
    each weighted variant is also compared to ``contrastive`` of the same feature and, for
    the other features (``concat``), to ``mse`` of the same feature: same seeds, same pairs.
    """
    features = list(dict.fromkeys(cfg.run.features))
    out: dict[str, Any] = {}
    for feature in features:
        suffix = "" if feature == features[0] else f"+{feature}"
        refs = [SECOND_REFERENCE] if not suffix else [REFERENCE, SECOND_REFERENCE]
        for ref_name in refs:
            ref = ablation.cells.get(ref_name + suffix)
            if ref is None:
                continue
            for name in CONTENDERS:
                units = ablation.cells.get(name + suffix)
                if units is None:
                    continue
                out[f"{name}{suffix} - {ref_name}{suffix}"] = {
                    m: paired_difference(
                        units, ref, m, n_boot=cfg.eval.n_boot, seed=cfg.run.seeds[0]
                    )
                    for m in CLASS_METRICS
                }
    return out


def _verdict_word(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("mean") is None:
        return "not run"
    lo, hi = entry["ci95"]
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "no CI"
    if lo > 0:
        return "better (CI above 0)"
    if hi < 0:
        return "worse (CI below 0)"
    return "no detectable difference (CI crosses 0)"


def mdd(entry: dict[str, Any] | None) -> str:
    """The minimum detectable difference of a paired comparison (half its CI width)."""
    value = (entry or {}).get("min_detectable_difference")
    if value is None and entry and entry.get("ci95") and None not in entry["ci95"]:
        value = (entry["ci95"][1] - entry["ci95"][0]) / 2
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def fraction(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("mean") is None or not math.isfinite(entry["mean"]):
        return "-"
    lo, hi = (entry.get("ci95") or [None, None])[:2]
    ci = f" [{lo:.0%}, {hi:.0%}]" if lo is not None and hi is not None else ""
    return f"{entry['mean']:.0%}{ci}"


def markdown_table(results: dict[str, Any]) -> str:
    """Objectives (rows) x metrics, the fraction of the achievable, and the paired
    balanced-accuracy difference to mse with its minimum detectable difference; then the
    ceilings (chance, oracles) where the results have them."""
    diffs = results["comparisons"]["differences"]
    lines = [
        "| objective | bal. acc. | macro-F1 | accuracy | Fig. 1 rho | of achievable "
        "| bal. acc. - mse (diff) | MDD | macro-F1 - mse (diff) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, block in results["objectives"].items():
        d = diffs.get(name, {})
        ref = name == REFERENCE
        lines.append(
            f"| {name} | {fmt(block.get('balanced_accuracy'))} | {fmt(block.get('macro_f1'))} "
            f"| {fmt(block.get('accuracy'))} | {fmt(block.get('spearman_distance'))} "
            f"| {fraction(block.get('fraction_of_achievable'))} "
            f"| {'(reference)' if ref else fmt(d.get('balanced_accuracy'), signed=True)} "
            f"| {'' if ref else mdd(d.get('balanced_accuracy'))} "
            f"| {'(reference)' if ref else fmt(d.get('macro_f1'), signed=True)} |"
        )
    ceilings = results.get("ceilings", {})
    if "chance" in ceilings:
        chance = ceilings["chance"]
        lines.append(
            f"| chance | {chance['balanced_accuracy']:.3f} | - | {chance['accuracy']:.3f} "
            "| - | 0% | | | |"
        )
    for name in ("oracle_truth", "oracle_clean_score"):
        if name in ceilings:
            block = ceilings[name]
            lines.append(
                f"| {name} | {fmt(block.get('balanced_accuracy'))} "
                f"| {fmt(block.get('macro_f1'))} | {fmt(block.get('accuracy'))} | - "
                f"| {'100%' if ceilings.get('fraction_reference') == name else '-'} | | | |"
            )
    extra = results.get("extra_differences", {})
    if extra:
        lines += ["", "| paired difference | bal. acc. | macro-F1 |", "|---|---|---|"]
        for key, block in extra.items():
            lines.append(
                f"| {key} | {fmt(block.get('balanced_accuracy'), signed=True)} "
                f"| {fmt(block.get('macro_f1'), signed=True)} |"
            )
    return "\n".join(lines)


def verdict(results: dict[str, Any]) -> list[str]:
    """Plain lines: does each weighted variant beat mse and contrastive (balanced accuracy),
    each compared within its own pair feature?"""
    diffs = results["comparisons"]["differences"]
    extra = results.get("extra_differences", {})
    lines = []
    for name in results["objectives"]:
        base, _, feature = name.partition("+")
        if base not in CONTENDERS:
            continue
        suffix = f"+{feature}" if feature else ""
        if suffix:
            vs_mse = extra.get(f"{name} - {REFERENCE}{suffix}", {}).get("balanced_accuracy")
        else:
            vs_mse = diffs.get(name, {}).get("balanced_accuracy")
        line = f"{name} vs {REFERENCE}{suffix}: {fmt(vs_mse, signed=True)} -> "
        line += _verdict_word(vs_mse)
        key = f"{name} - {SECOND_REFERENCE}{suffix}"
        if key in extra:
            e2 = extra[key].get("balanced_accuracy")
            line += f"; vs {SECOND_REFERENCE}{suffix}: {fmt(e2, signed=True)} -> "
            line += _verdict_word(e2)
        lines.append(line)
    return lines


def run_change(
    name: str, cfg: Config, out: Path, *, replace_changed: bool = False
) -> dict[str, Any]:
    """Build, run the ablation grid, write reports and the results copy; return results.

    ``replace_changed`` retrains cached cells whose inputs changed (``learner run
    --replace-changed``); without it such cells stop the run with the changed keys.
    """
    manifest_path = datasets.build(SOURCE.get(name, name))
    cfg.data.manifest = manifest_path
    manifest = config_manifest(cfg)  # with its eval.target column, where it names one
    start = time.perf_counter()
    ablation = run_ablation(
        cfg, out, progress=False, manifest=manifest, replace_changed=replace_changed
    )
    wall = time.perf_counter() - start
    write_reports(ablation, out)
    results = dict(ablation.results)
    results["extra_differences"] = extra_differences(ablation, cfg)
    if name == OASIS2:
        results["cdr_change"] = run_cdr_change(cfg, manifest, out)
        results["inter_subject"] = run_inter_subject(cfg, out)
    results["benchmark"] = {
        "dataset": name,
        "wall_s_this_invocation": round(wall, 1),
        "note": "wall time of this invocation; cached cells from earlier runs take ~0 s",
        "torch_threads": torch.get_num_threads(),
    }
    return results


# --------------------------------------------------------------------------- inter-patient

# Unit of the inter-patient pairs: a clip for per-clip severity, a patient for a per-patient
# score (the S/F-like ratio is one number per patient).
INTERPATIENT_UNIT = {"covid-blues-severity": "scan", "covid-blues-sf": "patient"}
# The COVID-BLUES severity model is also applied, frozen, to the POCUS clips.
EXTERNAL = {"covid-blues-severity": "pocus"}


def _embed_cells(
    cfg: Config, manifest: Any, out: Path, seed: int, log: Any
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Pretrain + embed every objective (and the untrained baseline) of one seed.

    Returns:
        ``(frames, checkpoints)``: name -> embeddings frame, name -> best checkpoint.
    """
    import lightning as L

    from learner.evaluate.embeddings_io import read_embeddings
    from learner.pipeline.embed import embed_frame
    from learner.pipeline.grid import UNTRAINED, cell_config, objective_variants
    from learner.train.checkpoint import load_checkpoint
    from learner.train.module import LearnerModule
    from learner.train.prepared import prepare_data
    from learner.train.pretrain import pretrain

    base = cell_config(cfg, {"name": REFERENCE}, seed)
    data = prepare_data(base, manifest)
    digest = manifest_fingerprint(manifest.frame, manifest.feature_columns)
    frames: dict[str, Any] = {}
    checkpoints: dict[str, Path] = {}
    for label, overrides in objective_variants(cfg):
        cell = out / "cells" / label / f"seed{seed}"
        emb = cell / "embeddings.parquet"
        best = cell / "run" / "checkpoints" / "best.ckpt"
        ccfg = cell_config(cfg, overrides, seed)
        claim_folder(cell, pretrain_key(ccfg, digest, data.split_hash))
        if not emb.exists():
            log(f"[seed{seed}] {label}: running")
            last = cell / "run" / "checkpoints" / "last.ckpt"
            result = pretrain(ccfg, cell / "run", resume=last.exists(), data=data, progress=False)
            best = result.best
            model, _ = load_checkpoint(best)
            meta = {"objective": label, "seed": seed, "checkpoint": "best"}
            embed_frame(model, data, data.frame, emb, metadata=meta, batch_size=32)
        else:
            log(f"[seed{seed}] {label}: cached")
            if not best.exists():
                best = cell / "run" / "checkpoints" / "last.ckpt"
        frames[label], _ = read_embeddings(emb)
        checkpoints[label] = best
    if cfg.run.baselines:
        emb = out / "cells" / UNTRAINED / f"seed{seed}" / "embeddings.parquet"
        claim_folder(emb.parent, pretrain_key(base, digest, data.split_hash, untrained=True))
        if not emb.exists():
            L.seed_everything(seed, verbose=False)
            model = LearnerModule(base.to_plain(), data.score_range, {"seed": seed})
            meta = {"objective": UNTRAINED, "seed": seed}
            embed_frame(model, data, data.frame, emb, metadata=meta, batch_size=32)
        frames[UNTRAINED], _ = read_embeddings(emb)
    return frames, checkpoints


def run_interpatient(name: str, cfg: Config, out: Path) -> dict[str, Any]:
    """One-visit data: pretrain every objective per seed, evaluate on held-out patients
    (and, for the severity model, on the external POCUS set and its four-day patient)."""
    from learner.evaluate.embeddings_io import read_embeddings
    from learner.evaluate.interpatient import (
        cosine_trajectory,
        evaluate_interpatient,
        pool_interpatient,
    )
    from learner.pipeline.embed import embed_checkpoint
    from learner.provenance import package_versions

    manifest_path = datasets.build(name)
    cfg.data.manifest = manifest_path
    manifest = load_manifest(manifest_path)
    unit = INTERPATIENT_UNIT[name]
    external = EXTERNAL.get(name)
    external_manifest = datasets.build(external) if external else None
    start = time.perf_counter()
    held_out, outside = [], []
    trajectories: dict[str, Any] = {}
    for seed in cfg.run.seeds:
        frames, checkpoints = _embed_cells(cfg, manifest, out, seed, print)
        held_out.append(
            evaluate_interpatient(
                frames, reference=REFERENCE, unit=unit, n_boot=cfg.eval.n_boot, seed=seed
            )
        )
        if external_manifest is None:
            continue
        ext_frames = {}
        for label, ckpt in checkpoints.items():
            path = out / "cells" / label / f"seed{seed}" / f"external-{external}.parquet"
            if not path.exists():
                embed_checkpoint(ckpt, external_manifest, path)
            ext_frames[label], _ = read_embeddings(path)
        outside.append(
            evaluate_interpatient(
                ext_frames,
                reference=REFERENCE,
                test_split="external",
                unit="scan",
                n_boot=cfg.eval.n_boot,
                seed=seed,
            )
        )
        if seed == cfg.run.seeds[0]:
            for label, frame in ext_frames.items():
                table = cosine_trajectory(frame, datasets.POCUS_TRAJECTORY)
                trajectories[label] = table.to_dict(orient="list")
    results: dict[str, Any] = {
        "task": "inter-patient (one visit per patient)",
        "held_out": pool_interpatient(held_out),
        "dataset": {
            "manifest": str(manifest_path),
            "patients": int(manifest.frame["patient_id"].nunique()),
            "scans": len(manifest.frame),
        },
        "config": cfg.to_plain(),
        "versions": package_versions(),
        "benchmark": {"dataset": name, "wall_s_this_invocation": 0.0},
        # Not a `learner run` results.json: one visit per patient leaves no change task, so
        # there is no accuracy / balanced accuracy / macro-F1 to report (and none is invented).
        "contract_note": "inter-patient evaluation; the change-classification metrics of the "
        "results.json contract do not exist for one-visit data",
    }
    if outside:
        results["external"] = {
            "dataset": external,
            "manifest": str(external_manifest),
            **pool_interpatient(outside),
        }
        results["trajectory"] = {
            "patient": datasets.POCUS_TRAJECTORY,
            "seed": cfg.run.seeds[0],
            "per_objective": trajectories,
        }
    results["benchmark"]["wall_s_this_invocation"] = round(time.perf_counter() - start, 1)
    return results


def interpatient_table(block: dict[str, Any], title: str) -> str:
    diffs = block["comparisons"]["differences"]
    lines = [
        f"{title} (unit: {block['unit']}; held-out patients per seed "
        f"{block['held_out_patients_per_seed']}, inter-patient pairs per seed "
        f"{block['inter_patient_pairs_per_seed']})",
        "",
        "| objective | rho(cos. distance, abs. score gap) | score MAE | rho(pred, score) "
        "| rho - mse | MAE - mse |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in block["objectives"].items():
        d = diffs.get(name, {})
        ref = name == REFERENCE
        lines.append(
            f"| {name} | {fmt(m['spearman_distance'])} | {fmt(m['score_mae'])} "
            f"| {fmt(m['score_spearman'])} "
            f"| {'(reference)' if ref else fmt(d.get('spearman_distance'), signed=True)} "
            f"| {'(reference)' if ref else fmt(d.get('score_mae'), signed=True)} |"
        )
    return "\n".join(lines)


def interpatient_markdown(results: dict[str, Any]) -> str:
    parts = [interpatient_table(results["held_out"], "Held-out patients")]
    if "external" in results:
        parts.append(interpatient_table(results["external"], "External set"))
        traj = results["trajectory"]
        lines = [
            f"Trajectory of patient {traj['patient']} (seed {traj['seed']}): cosine distance "
            "of each visit's embedding to visit 1, and the head's predicted score",
            "",
            "| objective | "
            + " | ".join(
                f"day {v} (sev. {s:g})"
                for v, s in zip(
                    next(iter(traj["per_objective"].values()))["visit"],
                    next(iter(traj["per_objective"].values()))["score"],
                    strict=True,
                )
            )
            + " |",
            "|---" * (1 + len(next(iter(traj["per_objective"].values()))["visit"])) + "|",
        ]
        for label, t in traj["per_objective"].items():
            cells = [
                f"{d:.3f} / {p:.2f}"
                for d, p in zip(t["distance_to_first"], t["pred_score"], strict=True)
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def interpatient_verdict(results: dict[str, Any]) -> list[str]:
    lines = []
    for key in ("held_out", "external"):
        if key not in results:
            continue
        diffs = results[key]["comparisons"]["differences"]
        for name in (*CONTENDERS, SECOND_REFERENCE):
            if name not in diffs:
                continue  # not among this run's objectives
            entry = diffs[name].get("spearman_distance")
            lines.append(
                f"{key}: {name} - mse, rho(distance, score gap): {fmt(entry, signed=True)} "
                f"-> {_verdict_word(entry)}"
            )
    return lines


# --------------------------------------------------------------------------- OASIS-2 (#13)

OASIS2 = "oasis2-slices"
# The second target: CDR (0, 0.5, 1, 2; higher is worse); any change of CDR between two
# visits is a change (stable band 0), evaluated on the embeddings the MMSE models made.
CDR_BAND = 0.0
# How the three views of a visit enter (benchmarks.datasets.build_oasis2_slices writes one
# manifest per layout): config overrides of each.
LAYOUTS: dict[str, list[str]] = {
    "zones": ["data.input.kind=image", "model.encoder=resnet2d_18", "data.input.channels=1"],
    "channels": ["data.input.kind=image", "model.encoder=resnet2d_18", "data.input.channels=3"],
    "frames": [
        "data.input.kind=video",
        "model.encoder=tsm_resnet18",
        "data.input.channels=1",
        "data.input.frames=3",
    ],
}
# The layout choice is made on validation subjects: seeded train / val splits (the few test
# subjects these ratios need are never looked at), classifier fit on training pairs.
LAYOUT_SPLIT = ["data.split.folds=null", "data.split.ratios=[0.6, 0.3, 0.1]"]
LAYOUT_OBJECTIVES = ("mse", "weighted")


def _cells_of(cfg: Config, out: Path) -> list[tuple[int, str]]:
    """(seed, cell tag) of every cell of a run, in run order."""
    folds = cfg.data.split.folds
    tags = []
    for seed in cfg.run.seeds:
        if folds:
            tags += [(seed, f"seed{seed}-fold{k}") for k in range(folds)]
        else:
            tags.append((seed, f"seed{seed}"))
    return tags


def _labels(cfg: Config) -> list[str]:
    from learner.pipeline.grid import UNTRAINED, objective_variants

    return (
        [label for label, _ in objective_variants(cfg)]
        + ([UNTRAINED] if cfg.run.baselines else [])
        + [entry.label for entry in cfg.run.transfer]
    )


def run_cdr_change(cfg: Config, manifest: Any, out: Path) -> dict[str, Any]:
    """CDR change (any change of CDR) classified from the MMSE models' embeddings.

    The same cells, the same test subjects, the same probe; only the labels differ: each
    scan's score is replaced by its visit's CDR (``visits.csv`` of the built data set), with
    lower = better and a stable band of 0. Aggregated exactly as ``learner run`` aggregates.
    """
    import pandas as pd

    from learner.evaluate.aggregate import CellResult
    from learner.evaluate.change import evaluate_change
    from learner.evaluate.embeddings_io import read_embeddings
    from learner.pipeline.results import build_results

    visits = pd.read_csv(Path(manifest.source).parent / "visits.csv", dtype={"patient_id": str})
    cdr = {(p, str(v)): float(c) for p, v, c in visits[["patient_id", "visit", "cdr"]].values}
    ccfg = cfg.model_copy(deep=True)
    ccfg.eval.delta = CDR_BAND
    ccfg.data.higher_is_better = False
    units: dict[str, list[list[Any]]] = {}
    for label in _labels(cfg):
        per_seed: dict[int, list[Any]] = {}
        for seed, tag in _cells_of(cfg, out):
            folder = out / "cells" / label / tag / "eval-cdr"
            key = {
                "target": "cdr",
                "band": CDR_BAND,
                "classifier": cfg.eval.classifier,
                "n_boot": cfg.eval.n_boot,
                "seed": seed,
                "visits.csv": digest_file(Path(manifest.source).parent / "visits.csv"),
                "pretrain": read_key(out / "cells" / label / tag / KEY_FILE),
            }
            if (folder / "metrics.json").exists() and not key_changes(folder, key):
                cell = CellResult.load(folder)
            else:
                frame, _ = read_embeddings(out / "cells" / label / tag / "embeddings.parquet")
                keys = zip(frame["patient_id"].astype(str), frame["visit"].astype(str), strict=True)
                frame["score"] = [cdr[k] for k in keys]
                cell = CellResult.from_change(
                    evaluate_change(
                        frame,
                        delta=CDR_BAND,
                        higher_is_better=False,
                        feature="diff",
                        classifier=cfg.eval.classifier,
                        pca=cfg.eval.pca,
                        n_boot=cfg.eval.n_boot,
                        seed=seed,
                    )
                )
                write_key(folder / KEY_FILE, key)
                cell.save(folder)
            per_seed.setdefault(seed, []).append(cell)
        units[label] = list(per_seed.values())
    results = build_results(ccfg, manifest, units, [])
    results["target"] = "CDR change between consecutive visits (band 0, lower is better)"
    for key in ("config", "versions"):
        results.pop(key, None)  # the run's own, already in the main results
    return results


def run_inter_subject(cfg: Config, out: Path) -> dict[str, Any]:
    """Does the embedding (and the head) order held-out subjects by MMSE?

    Per cell (seed x fold), on its test subjects: subject-mean embeddings and MMSE,
    Spearman rho of cosine distance against |MMSE gap| over subject pairs, and of the
    head's mean prediction against the mean MMSE; pooled over cells like seeds.
    """
    from learner.evaluate.embeddings_io import read_embeddings
    from learner.evaluate.interpatient import evaluate_interpatient, pool_interpatient

    per_cell = []
    for seed, tag in _cells_of(cfg, out):
        frames = {
            label: read_embeddings(out / "cells" / label / tag / "embeddings.parquet")[0]
            for label in _labels(cfg)
        }
        per_cell.append(
            evaluate_interpatient(
                frames, reference=REFERENCE, unit="patient", n_boot=cfg.eval.n_boot, seed=seed
            )
        )
    return pool_interpatient(per_cell)


def run_layouts(cfg: Config, seeds: list[int], out: Path, log: Any = print) -> dict[str, Any]:
    """Zones / channels / frames on validation subjects (mse and weighted, ``seeds``)."""
    from learner.pipeline.grid import cell_config

    datasets.build(OASIS2)
    work = datasets.WORK / OASIS2
    table: dict[str, Any] = {}
    for layout, overrides in LAYOUTS.items():
        path = work / f"manifest-{layout}.csv"
        lcfg = load_config(
            CONFIGS / CHANGE_CONFIGS[OASIS2],
            [*overrides, *LAYOUT_SPLIT, f"data.manifest={path}"],
        )
        # The quick smoke run shortens training the same way config_for does.
        lcfg.train.epochs = cfg.train.epochs
        manifest = load_manifest(path)
        for objective in LAYOUT_OBJECTIVES:
            start = time.perf_counter()
            scores = [
                _val_scores(
                    cell_config(lcfg, {"name": objective}, seed),
                    manifest,
                    out / layout / objective,
                    f"{layout}/{objective}",
                    seed,
                    log,
                )
                for seed in seeds
            ]
            entry: dict[str, Any] = {"wall_s_this_invocation": 0.0}
            for metric in scores[0]:
                vals = [sc[metric] for sc in scores]
                entry[metric] = {"per_seed": vals, "mean": float(sum(vals) / len(vals))}
            entry["wall_s_this_invocation"] = round(time.perf_counter() - start, 1)
            table[f"{layout}/{objective}"] = entry
    means = {
        layout: sum(table[f"{layout}/{o}"]["balanced_accuracy"]["mean"] for o in LAYOUT_OBJECTIVES)
        / len(LAYOUT_OBJECTIVES)
        for layout in LAYOUTS
    }
    return {
        "dataset": OASIS2,
        "metric": "validation subjects only: change balanced accuracy (classifier fit on "
        "training subjects' pairs; zones: zone-matched view pairs, others: visit pairs), "
        "macro-F1, and Spearman rho of the head's subject-mean prediction vs mean MMSE",
        "split": LAYOUT_SPLIT,
        "seeds": seeds,
        "epochs": cfg.train.epochs,
        "cells": table,
        "balanced_accuracy_mean_over_objectives": means,
        "chosen": max(means, key=lambda k: means[k]),
    }


def layouts_table(result: dict[str, Any]) -> str:
    lines = [
        "| layout / objective | val bal. acc. per seed | mean | val macro-F1 mean "
        "| val rho(head, MMSE) mean | val pairs |",
        "|---|---|---|---|---|---|",
    ]
    for label, cell in result["cells"].items():
        seeds = ", ".join(f"{x:.3f}" for x in cell["balanced_accuracy"]["per_seed"])
        lines.append(
            f"| {label} | {seeds} | {cell['balanced_accuracy']['mean']:.3f} "
            f"| {cell['macro_f1']['mean']:.3f} | {cell['score_spearman']['mean']:.3f} "
            f"| {cell['val_pairs']['mean']:.0f} |"
        )
    return "\n".join(lines)


def oasis2_markdown(results: dict[str, Any]) -> str:
    """The CDR second target and the inter-subject check, after the MMSE table."""
    cdr = results["cdr_change"]
    parts = [
        "Second target: CDR change (band 0, lower is better; the same embeddings and test "
        f"subjects; test class counts {cdr['dataset'].get('class_counts_test')})",
        "",
        markdown_table(cdr),
        "",
        interpatient_table(
            results["inter_subject"], "Inter-subject check: held-out subjects ordered by MMSE"
        ),
    ]
    return "\n".join(parts)


# Objective-defaults sweep (issue #6): chosen on the synthetic LUS cohort's *validation*
# patients only (classifier trained on training patients' pairs, tested on validation
# patients' pairs); test patients never enter it.
SWEEP_DATASET = "synth-lus"
SWEEP_GRID: list[tuple[str, dict[str, Any]]] = [
    ("mse", {"name": "mse"}),
    *[
        (
            f"weighted_tau{tau}_m{m}",
            {"name": "weighted", "partition": "threshold", "tau": tau, "margin": m},
        )
        for tau in (0.05, 0.1, 0.2)
        for m in (0.25, 0.5)
    ],
    *[
        (f"weighted_soft_m{m}", {"name": "weighted", "partition": "soft", "margin": m})
        for m in (0.25, 0.5)
    ],
    # lambda (weight of the pair term against the score MSE) at the threshold default.
    *[
        (
            f"weighted_tau0.1_m0.5_lam{lam}",
            {"name": "weighted", "partition": "threshold", "tau": 0.1, "margin": 0.5, "lam": lam},
        )
        for lam in (0.5, 2.0)
    ],
]


def validation_change(frame: Any, cfg: Config, seed: int) -> Any:
    """Change classification on validation patients only: the probe (and ``head_delta``)
    fit on training patients' pairs, tested on validation patients' pairs; test patients
    never enter. Returns the :class:`~learner.evaluate.change.ChangeResult`."""
    from learner.evaluate.change import evaluate_change

    return evaluate_change(
        frame,
        delta=cfg.eval.delta,
        higher_is_better=cfg.data.higher_is_better,
        feature="diff",
        classifier=cfg.eval.classifier,
        pca=cfg.eval.pca,
        train_splits=("train",),
        test_split="val",
        n_boot=0,
        seed=seed,
    )


def _val_scores(
    ccfg: Config, manifest: Any, folder: Path, label: str, seed: int, log: Any
) -> dict[str, float]:
    """Pretrain + embed one cell (cached in ``folder/seed<S>``) and score it on validation
    patients only: change classification (classifier fit on training patients' pairs) and
    the head's rank correlation with the score over validation patients."""
    from learner.evaluate.embeddings_io import read_embeddings
    from learner.evaluate.interpatient import evaluate_interpatient
    from learner.pipeline.run import pretrain_and_embed
    from learner.train.prepared import prepare_data

    cell = folder / f"seed{seed}"
    emb = cell / "embeddings.parquet"
    data = prepare_data(ccfg, manifest)
    digest = manifest_fingerprint(manifest.frame, manifest.feature_columns)
    claim_folder(cell, pretrain_key(ccfg, digest, data.split_hash))
    if not emb.exists():
        log(f"[val seed{seed}] {label}: running")
        pretrain_and_embed(ccfg, data, cell, metadata={"objective": label, "seed": seed})
    frame, _ = read_embeddings(emb)
    res = validation_change(frame, ccfg, seed)
    ranks = evaluate_interpatient({label: frame}, test_split="val", unit="patient", n_boot=0)
    return {
        "balanced_accuracy": res.metrics["balanced_accuracy"],
        "macro_f1": res.metrics["macro_f1"],
        "score_spearman": ranks.metrics[label]["score_spearman"],
        "val_pairs": float(res.n_test_pairs),
    }


def run_sweep(cfg: Config, out: Path, seeds: list[int], log: Any = print) -> dict[str, Any]:
    """Pretrain every sweep variant and score change classification on validation patients.

    Returns:
        ``{"variants": {label: {"overrides", "per_seed", "mean", "wall_s"}}, "chosen": label,
        ...}``; the metric is balanced accuracy on validation-patient pairs.
    """
    from learner.pipeline.grid import cell_config

    manifest_path = datasets.build(SWEEP_DATASET)
    cfg.data.manifest = manifest_path
    manifest = load_manifest(manifest_path)
    variants: dict[str, Any] = {}
    for label, overrides in SWEEP_GRID:
        start = time.perf_counter()
        scores = [
            _val_scores(cell_config(cfg, overrides, seed), manifest, out / label, label, seed, log)
            for seed in seeds
        ]
        per_seed = [sc["balanced_accuracy"] for sc in scores]
        f1 = [sc["macro_f1"] for sc in scores]
        variants[label] = {
            "overrides": overrides,
            "val_balanced_accuracy_per_seed": per_seed,
            "val_balanced_accuracy_mean": float(sum(per_seed) / len(per_seed)),
            "val_macro_f1_mean": float(sum(f1) / len(f1)),
            "wall_s_this_invocation": round(time.perf_counter() - start, 1),
        }
    weighted = {k: v for k, v in variants.items() if k != "mse"}
    chosen = max(weighted, key=lambda k: weighted[k]["val_balanced_accuracy_mean"])
    return {
        "dataset": SWEEP_DATASET,
        "metric": "balanced accuracy of change classification on validation patients "
        "(classifier fit on training patients' pairs); test patients unused",
        "seeds": seeds,
        "epochs": cfg.train.epochs,
        "variants": variants,
        "chosen": chosen,
        "chosen_overrides": variants[chosen]["overrides"],
    }


def sweep_table(sweep: dict[str, Any]) -> str:
    lines = [
        "| variant | val bal. acc. per seed | mean | val macro-F1 mean | wall s |",
        "|---|---|---|---|---|",
    ]
    for label, v in sweep["variants"].items():
        seeds = ", ".join(f"{x:.3f}" for x in v["val_balanced_accuracy_per_seed"])
        lines.append(
            f"| {label} | {seeds} | {v['val_balanced_accuracy_mean']:.3f} "
            f"| {v['val_macro_f1_mean']:.3f} | {v['wall_s_this_invocation']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="data set name (see the module docstring)")
    parser.add_argument(
        "--sweep", action="store_true", help="objective-defaults sweep on synth-lus val patients"
    )
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 objectives, few epochs")
    parser.add_argument("--seeds", type=int, nargs="+", help="override run.seeds")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--out", type=Path, help="run folder (default benchmarks/work/runs/NAME)")
    parser.add_argument(
        "--tag",
        help="name of the results files, benchmarks/results/quality_TAG.{json,md} (default: "
        "the data set name); use one for a partial grid so it cannot overwrite a full one",
    )
    parser.add_argument(
        "--render", action="store_true", help="only re-print the tables of a saved results file"
    )
    parser.add_argument(
        "--replace-changed",
        action="store_true",
        help="retrain cached cells of OUT whose inputs changed (a scan file's path, size or time "
        "is part of the key, so re-copied shared data changes it); change tasks only",
    )
    parser.add_argument(
        "--layouts",
        action="store_true",
        help="OASIS-2 view layouts (zones / channels / frames) on validation subjects",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.sweep:
        return main_sweep(args)
    if args.layouts:
        return main_layouts(args)
    if not args.dataset:
        parser.error("--dataset NAME or --sweep is required")
    name = args.dataset
    if args.replace_changed and name in INTERPATIENT_CONFIGS:
        parser.error(f"--replace-changed applies to change tasks; for {name} use a new --out")
    overrides = list(args.overrides)
    if args.seeds:
        overrides.append("run.seeds=[" + ",".join(str(s) for s in args.seeds) + "]")
    try:
        cfg = config_for(name, overrides, quick=args.quick)
        out = args.out or RUNS / (name + ("-quick" if args.quick else ""))
        tag = (args.tag or name) + ("-quick" if args.quick else "")
        saved = RESULTS / f"quality_{tag}.json"
        if args.render:
            results = json.loads(saved.read_text(encoding="utf-8"))
        elif name in INTERPATIENT_CONFIGS:
            results = run_interpatient(name, cfg, out)
        else:
            results = run_change(name, cfg, out, replace_changed=args.replace_changed)
        if name in INTERPATIENT_CONFIGS:
            table, lines = interpatient_markdown(results), interpatient_verdict(results)
        else:
            table, lines = markdown_table(results), verdict(results)
        if "cdr_change" in results:
            table += "\n\n" + oasis2_markdown(results)
            lines += [f"CDR change: {line}" for line in verdict(results["cdr_change"])]
            lines += interpatient_verdict({"held_out": results["inter_subject"]})
    except LearnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"quality_{tag}.json", results)
    text = table + "\n\nVerdict:\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    (RESULTS / f"quality_{tag}.md").write_text(text, encoding="utf-8")
    print(text)
    print(json.dumps(results.get("benchmark", {})))
    return 0


def main_layouts(args: argparse.Namespace) -> int:
    """``--layouts``: write benchmarks/results/oasis2_layouts.{json,md}."""
    cfg = config_for(OASIS2, list(args.overrides), quick=args.quick)
    seeds = list(args.seeds or [0, 1, 2])
    tag = "oasis2_layouts" + ("-quick" if args.quick else "")
    out = args.out or RUNS / tag
    start = time.perf_counter()
    result = run_layouts(cfg, seeds, out)
    result["wall_s_this_invocation"] = round(time.perf_counter() - start, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{tag}.json", result)
    text = layouts_table(result) + f"\n\nChosen (mean val bal. acc.): {result['chosen']}\n"
    (RESULTS / f"{tag}.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def main_sweep(args: argparse.Namespace) -> int:
    """``--sweep``: run the grid, write benchmarks/results/sweep_defaults.{json,md}."""
    overrides = list(args.overrides)
    cfg = load_config(CONFIGS / CHANGE_CONFIGS[SWEEP_DATASET], overrides)
    seeds = list(args.seeds or [0])
    if args.quick:
        cfg.train.epochs = 2
    out = args.out or RUNS / ("sweep-defaults" + ("-quick" if args.quick else ""))
    start = time.perf_counter()
    sweep = run_sweep(cfg, out, seeds)
    sweep["wall_s_this_invocation"] = round(time.perf_counter() - start, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "sweep_defaults" + ("-quick" if args.quick else "")
    write_json(RESULTS / f"{tag}.json", sweep)
    text = sweep_table(sweep) + f"\n\nChosen: {sweep['chosen']} {sweep['chosen_overrides']}\n"
    (RESULTS / f"{tag}.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
