"""results.json of `learner run`: the rows, comparisons and ceilings built from the cells'
results, the warnings that qualify them and the score regressor's floors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from learner.config import Config, TargetColumn
from learner.data.manifest import Manifest
from learner.data.pairs import LABEL_SOURCES, labels_source
from learner.evaluate.aggregate import (
    CellResult,
    majority_rate,
    metric_block,
    paired_difference,
    ratio_of_means,
    stat_entry,
)
from learner.evaluate.ceilings import (
    CHANCE_BALANCED,
    ORACLES,
    TRUTH_TARGET,
    fraction_of_achievable,
)
from learner.evaluate.change import AUTO_PCA_NOTE, HEAD_DELTA_PREFIX
from learner.evaluate.data_warnings import data_warnings
from learner.evaluate.interpatient import InterpatientResult, pool_interpatient
from learner.evaluate.metrics import CLASS_METRICS
from learner.evaluate.target import target_block
from learner.evaluate.verdict import (
    concat_warning,
    degenerate_classes,
    pair_term_warning,
    regressor_warning,
    verdict,
)
from learner.pipeline.grid import FINETUNED, HEAD_DELTA, REFERENCE, UNTRAINED, untrained_name
from learner.provenance import package_versions


def mean_floors(
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


def degenerate(units: dict[str, list[list[CellResult]]]) -> str | None:
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
    out += data_warnings(
        delta=cfg.eval.delta,
        pair_counts=_first_feature_summaries(units),
        scores=scores,
        score_range=cfg.data.score_range,
    )
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
            if note.startswith(AUTO_PCA_NOTE):
                continue  # the auto probe's choice: kept in the cell's metrics.json
            if note not in out:
                out.append(note)
    return out


def build_results(
    cfg: Config,
    manifest: Manifest,
    units: dict[str, list[list[CellResult]]],
    datasets: list[dict[str, Any]],
    *,
    oracles: dict[str, list[list[CellResult]]] | None = None,
) -> dict[str, Any]:
    """results.json (a block per objective and baseline, each metric with its interval)
    from the per-cell results and, where the cohort's
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
        base = untrained_name(name)
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
    if UNTRAINED in objectives:
        # A random head's score error says nothing; the table shows a dash. Only the row the
        # results contract exempts: its +feature / +probe rows (and untrained-ft) report the
        # same random head's error as measured, as metric_notes says.
        objectives[UNTRAINED]["score_mae"] = stat_entry([math.nan] * len(units[UNTRAINED]), [])

    first_units = next(iter(units.values()), [])
    ceilings: dict[str, Any] = {
        "chance": {"balanced_accuracy": CHANCE_BALANCED, "accuracy": majority_rate(first_units)}
    }
    for name, ou in oracles.items():
        block = metric_block(ou, head=False, n_boot=n_boot, seed=seed0)
        ceilings[name] = {m: block[m] for m in CLASS_METRICS}
    ceiling = next((k for k in ORACLES if k in oracles), None)
    if ceiling is not None:
        for name, u in units.items():
            objectives[name]["fraction_of_achievable"] = ratio_of_means(
                u,
                oracles[ceiling],
                "balanced_accuracy",
                fraction_of_achievable,
                n_boot=n_boot,
                seed=seed0,
            )
        if HEAD_DELTA in objectives and ref is not None:
            objectives[HEAD_DELTA]["fraction_of_achievable"] = ratio_of_means(
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
                **stat_entry([math.nan] * len(cfg.run.seeds), []),
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
            "ci95": "95% interval of a two-stage bootstrap: seeds resampled, then test "
            "patients within each seed (one seed: the patient bootstrap); std is the "
            "seed-to-seed spread",
            HEAD_DELTA: "the mse model's regression head: predicted score change as the only "
            "feature of the same classifier",
            UNTRAINED: "random-init encoder, same classifier; no score_mae (its head is random; "
            "its +feature and +probe rows give that random head's score_mae as measured)",
            "suffix " + FINETUNED: "eval.finetune: the encoder fine-tuned end to end on the "
            "training patients' change pairs (validation patients chose the epoch), read by "
            "the same probe; its score_mae is the unchanged head (random for untrained-ft) "
            "reading the fine-tuned encoder",
            "ceilings": "chance: 1/3 balanced accuracy, majority-class rate for accuracy; "
            "oracle_truth / oracle_clean_score: the same probe, pairs and band on the true "
            "change of truth.csv's severity / score_clean",
            "fraction_of_achievable": "(mean balanced accuracy - 1/3) / (mean oracle - 1/3), "
            "a ratio of the means over seeds (per_seed: each seed's own ratio), paired "
            "two-stage bootstrap on the same test pairs",
            "min_detectable_difference": "at 80% power: 2.8 standard errors of the paired "
            "difference (its bootstrap sd); a true difference that large is detected at the "
            "5% level 80% of the time, a smaller one may be missed",
            "prefix " + HEAD_DELTA_PREFIX: "in per-cell metrics.json only",
        },
    }


def change_results(
    cfg: Config,
    manifest: Manifest,
    units: dict[str, list[list[CellResult]]],
    splits: list[dict[str, Any]],
    *,
    oracles: dict[str, list[list[CellResult]]],
    floors: Sequence[dict[str, float]],
    pair_counts: dict[str, list[tuple[float, float, float]]],
) -> dict[str, Any]:
    """results.json of a change run: :func:`build_results`, the score regressor's floors
    (where truth.csv gave them), every warning, the degenerate-class note and the verdict."""
    results = build_results(cfg, manifest, units, splits, oracles=oracles)
    labels = labels_summary(units)
    if labels is not None:
        results["dataset"]["label_sources"] = labels
    if floors:
        results["ceilings"]["score_mae_floors"] = mean_floors(floors, units)
    results["warnings"] = run_warnings(cfg, manifest, units, pair_counts)
    results["degenerate"] = degenerate(units)
    target = target_results(cfg, units, oracles)
    if target is not None:
        results["target"] = target
    results["verdict"] = verdict(results)
    return results


def labels_summary(units: dict[str, list[list[CellResult]]]) -> dict[str, Any] | None:
    """results.json's ``dataset.label_sources`` where the manifest has clinician change labels
    (None otherwise): per seed (and fold), how many of the probe's training pairs (training
    and validation patients) and test pairs took the clinician's label and how many the
    score's, and the ``source`` of the training labels over all seeds (``clinician``,
    ``score`` or ``mixed``). Every row of a seed reads the same pairs, so the reference's
    cells speak for all."""
    name = REFERENCE if REFERENCE in units else next(iter(units), None)
    if name is None:
        return None
    per_seed = [
        c.summary["label_sources"]
        for cells in units[name]
        for c in cells
        if "label_sources" in c.summary
    ]
    if not per_seed:
        return None
    trained = {s: sum(entry["train"][s] for entry in per_seed) for s in LABEL_SOURCES}
    return {
        "source": labels_source(trained),
        "per_seed": per_seed,
        "rule": "a pair's label, for training the probe and for judging it, is the "
        "clinician's change_label where the later visit has one, else the score change in "
        "the stable band",
    }


def target_results(
    cfg: Config,
    units: dict[str, list[list[CellResult]]],
    oracles: dict[str, list[list[CellResult]]],
) -> dict[str, Any] | None:
    """results.json's ``target`` block (``eval.target`` other than observed): every row judged
    against the target, kept apart from the observed-score rows, with where the target came
    from and how the probes were fitted; None for ``eval.target: observed``."""
    target = cfg.eval.target
    if target == "observed":
        return None
    block = target_block(
        units,
        reference=REFERENCE,
        untrained=UNTRAINED,
        oracles=oracles,
        n_boot=cfg.eval.n_boot,
        seed=cfg.run.seeds[0],
    )
    if block is None:
        return None
    if isinstance(target, TargetColumn):
        name = f"column {target.column}"
        source = f"manifest column {target.column!r}" + (
            "" if target.higher_is_better else ", negated so that higher = better"
        )
    else:
        name = str(target)
        source = f"truth.csv column {TRUTH_TARGET!r}, negated so that higher = better"
    return {
        "name": name,
        "source": source,
        "probes_fitted_on": "observed-score labels of training patients (as every row)",
        "class_band": "|target change| quantile that makes the test pairs' target classes as "
        "frequent as the observed classes among training pairs",
        "intervals": INTERVALS[block["design"]],
        **block,
    }


# How the target block's intervals resample, by design (learner.evaluate.target).
INTERVALS = {
    "nested": "two-stage bootstrap: seeds resampled, then patients within each seed",
    "crossed": "crossed bootstrap: seeds resampled, and one patient resample shared by every "
    "drawn seed (every seed tested the same patients)",
}


def interpatient_results(
    cfg: Config,
    manifest: Manifest,
    per_tag: Sequence[InterpatientResult],
    splits: list[dict[str, Any]],
    *,
    unit: str,
) -> dict[str, Any]:
    """results.json of a data set without change pairs (one visit per patient): each seed's
    :func:`~learner.evaluate.interpatient.evaluate_interpatient` pooled, with its warnings
    and verdict."""
    pooled = pool_interpatient(list(per_tag))
    for name in pooled["objectives"]:
        if name == UNTRAINED:
            pooled["objectives"][name]["score_mae"] = stat_entry([math.nan] * len(per_tag), [])
    frame = manifest.frame
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
        "metric_notes": {
            "task": "no patient has two labelled visits, so there is no change to classify: "
            "accuracy, balanced accuracy and macro-F1 do not exist for this data",
            "spearman_distance": "rho(cosine distance, |score gap|) over pairs of held-out "
            f"{unit}s of different patients",
            "score_mae": "the regression head on held-out scans (raw score units)",
            "score_spearman": "rho(predicted score, score) on held-out units",
        },
    }
    # One visit per patient: no change pairs to count, only the scores to check.
    results["warnings"] = list(manifest.warnings) + data_warnings(
        delta=cfg.eval.delta,
        scores=frame["score"].to_numpy(dtype=np.float64),
        score_range=cfg.data.score_range,
    )
    results["degenerate"] = None
    results["verdict"] = verdict(results)
    return results
