"""Beyond the paper, item 1: change probes of lower capacity on the cached embeddings of a
quality run, each against ``head_delta`` and against the ``mse`` probe, on the same test pairs.

A probe only changes how the frozen embeddings are read, so nothing is retrained: every cell
(objective x seed) of a finished ``benchmarks/quality.py`` run is re-evaluated from its
``embeddings.parquet`` with each probe variant below. The variants and their settings were
fixed before any of them was run; where a variant has its own setting to choose (k, C), the
choice is made on training / validation patients only:

- ``logreg``: the project's probe (standardised, balanced multinomial logistic regression,
  C = 1, on ``d``): the reference row;
- ``pca8``: ``d`` on the first 8 principal axes of the training patients' visit embeddings
  (``eval.pca: 8``; 8 as in the lead the issue quotes, fixed in advance);
- ``logreg-cv``: C chosen by balanced accuracy in folds of training patients;
- ``pca8-cv``: both;
- ``pca-val``: k from (2, 4, 8, 16, 32) chosen by balanced accuracy on validation patients'
  pairs (probe fitted on training patients), then refitted on training + validation;
- ``hybrid-pca8`` / ``hybrid-cv``: ``[predicted score change, d]`` with the PCA (the head's
  column kept as it is) or the CV probe, so that the head's feature is not drowned by 128
  others (not for ``untrained``: its head is random).

Each row's balanced accuracy is the mean over seeds; the paired differences to the ``mse``
model's ``head_delta`` and to the ``mse`` ``logreg`` probe resample test patients (resamples
averaged over seeds, as ``learner run`` does); "- mse, same probe" compares each objective
with the ``mse`` embedding read by the same probe variant (the paper's comparison, per
probe). The fraction of the achievable divides by the run's ``oracle_truth`` (mean over
seeds): a ratio of means, steadier than the mean of
per-seed ratios that ``learner run`` reports (a seed whose oracle is near chance inflates
that one). ``--against`` adds the paired difference to other objectives read by the same probe
(default: ``untrained``; its ``logreg`` probe for the hybrid variants).

Usage:
    .venv/bin/python benchmarks/probes.py --run benchmarks/work/runs/synth-lus-pool300-aug2 \
        --run benchmarks/work/runs/synth-lus-null-pool300-aug2 --seeds 0 1 2 3 4
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

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.quality import RESULTS, fmt, mdd, validation_change  # noqa: E402
from learner.config import Config  # noqa: E402
from learner.errors import DataError  # noqa: E402
from learner.evaluate.aggregate import CellResult, metric_block, paired_difference  # noqa: E402
from learner.evaluate.ceilings import fraction_of_achievable  # noqa: E402
from learner.evaluate.change import evaluate_change  # noqa: E402
from learner.evaluate.embeddings_io import read_embeddings  # noqa: E402
from learner.io import write_json  # noqa: E402

# Variant -> evaluate_change settings ("pca": "val" = chosen on validation patients).
VARIANTS: dict[str, dict[str, Any]] = {
    "logreg": {"feature": "diff", "classifier": "logreg", "pca": 0},
    "pca8": {"feature": "diff", "classifier": "logreg", "pca": 8},
    "logreg-cv": {"feature": "diff", "classifier": "logreg-cv", "pca": 0},
    "pca8-cv": {"feature": "diff", "classifier": "logreg-cv", "pca": 8},
    "pca-val": {"feature": "diff", "classifier": "logreg", "pca": "val"},
    "hybrid-pca8": {"feature": "hybrid", "classifier": "logreg", "pca": 8},
    "hybrid-cv": {"feature": "hybrid", "classifier": "logreg-cv", "pca": 0},
    "rate-pca8": {"feature": "rate", "classifier": "logreg", "pca": 8},
}
PCA_GRID = (2, 4, 8, 16, 32)
REFERENCE = "logreg"
BASE_OBJECTIVE = "mse"
UNTRAINED = "untrained"
FINETUNED = "-ft"  # learner.pipeline.run's label suffix of a fine-tuned encoder


def choose_k(frame: Any, cfg: Config, seed: int, classifier: str) -> int:
    """The k of ``PCA_GRID`` with the best balanced accuracy on validation patients' pairs
    (:func:`benchmarks.quality.validation_change`: probe fitted on training patients, test
    patients unused; the smaller k on a tie)."""
    best_k, best = PCA_GRID[0], -math.inf
    for k in PCA_GRID:
        trial = cfg.model_copy(deep=True)
        trial.eval.classifier, trial.eval.pca = classifier, k
        score = validation_change(frame, trial, seed).metrics["balanced_accuracy"]
        if math.isfinite(score) and score > best:
            best_k, best = k, score
    return best_k


def evaluate_cell(frame: Any, cfg: Config, seed: int, variant: dict[str, Any]) -> CellResult:
    pca = variant["pca"]
    chosen = None
    if pca == "val":
        pca = chosen = choose_k(frame, cfg, seed, variant["classifier"])
    result = evaluate_change(
        frame,
        delta=cfg.eval.delta,
        higher_is_better=cfg.data.higher_is_better,
        feature=variant["feature"],
        classifier=variant["classifier"],
        pca=pca,
        n_boot=0,
        seed=seed,
    )
    cell = CellResult.from_change(result)
    if chosen is not None:
        cell.summary["chosen_k"] = chosen
    return cell


def seed_tags(results: dict[str, Any], seeds: list[int]) -> dict[int, list[str]]:
    """Each seed's cell tags in the run: ``seed<S>``, or ``seed<S>-fold<K>`` for every fold of
    a patient-grouped k-fold run (its folds together test every patient once)."""
    listed = [entry["cell"] for entry in results.get("dataset", {}).get("splits", [])]
    out = {}
    for seed in seeds:
        mine = [t for t in listed if t == f"seed{seed}" or t.startswith(f"seed{seed}-fold")]
        out[seed] = mine or [f"seed{seed}"]
    return out


def screen_run(
    run: Path,
    seeds: list[int],
    n_boot: int,
    *,
    results_file: Path | None = None,
    objectives: list[str] | None = None,
    variants: list[str] | None = None,
    against: list[str] | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Every objective x variant x seed of one quality run's cells (the run's results file,
    ``run/results.json`` unless given, supplies the evaluation settings and the oracle)."""
    results = json.loads((results_file or run / "results.json").read_text(encoding="utf-8"))
    cfg = Config.model_validate(results["config"])
    run_seeds = list(cfg.run.seeds)
    missing = [s for s in seeds if s not in run_seeds]
    if missing:
        raise SystemExit(f"{run}: seeds {missing} are not in its results.json; finish the run")
    # Real data have no truth, hence no oracle: the fractions are then NaN (shown as "-").
    truth = results["ceilings"].get("oracle_truth")
    oracle = (
        float(np.mean([truth["balanced_accuracy"]["per_seed"][run_seeds.index(s)] for s in seeds]))
        if truth is not None
        else math.nan
    )
    objectives = objectives or sorted(p.name for p in (run / "cells").iterdir() if p.is_dir())
    cells: dict[str, dict[str, list[list[CellResult]]]] = {}
    tags = seed_tags(results, seeds)
    for objective in objectives:
        for seed in seeds:
            frames = [
                read_embeddings(run / "cells" / objective / tag / "embeddings.parquet")[0]
                for tag in tags[seed]
            ]
            for name in variants or list(VARIANTS):
                variant = VARIANTS[name]
                if objective == UNTRAINED and variant["feature"] == "hybrid":
                    continue  # its head is random: there is no predicted change to read
                try:
                    unit = [evaluate_cell(frame, cfg, seed, variant) for frame in frames]
                except DataError:  # hybrid on a frame without the head's predictions
                    continue
                cells.setdefault(objective, {}).setdefault(name, []).append(unit)
        log(f"{run.name}: {objective} done")

    base = cells[BASE_OBJECTIVE][REFERENCE]
    # Further yardsticks: each named objective's own reference probe (default: untrained).
    others = [o for o in (against if against is not None else ["untrained"]) if o in cells]
    rows: dict[str, Any] = {}
    for objective, by_variant in cells.items():
        for name, units in by_variant.items():
            # A k-fold seed pools its folds' test pairs, as `learner run` reports it.
            per_seed = metric_block(units, head=False, n_boot=0, seed=0)["balanced_accuracy"][
                "per_seed"
            ]
            mean = float(np.mean(per_seed))
            row: dict[str, Any] = {
                "balanced_accuracy": {"mean": mean, "per_seed": per_seed},
                "fraction_of_achievable": fraction_of_achievable(mean, oracle),
                "minus_head_delta": paired_difference(
                    units,
                    base,
                    "balanced_accuracy",
                    column_b="head_predicted",
                    n_boot=n_boot,
                    seed=0,
                ),
                "minus_mse": paired_difference(
                    units, base, "balanced_accuracy", n_boot=n_boot, seed=0
                ),
            }
            # The objective's gain where both are read by the same probe.
            same = cells[BASE_OBJECTIVE].get(name)
            if same is not None and len(same) == len(units):
                row["minus_mse_same_probe"] = paired_difference(
                    units, same, "balanced_accuracy", n_boot=n_boot, seed=0
                )
            # A fine-tuned encoder (eval.finetune) against the encoder it started from.
            started = cells.get(objective.removesuffix(FINETUNED), {}).get(name)
            if objective.endswith(FINETUNED) and started is not None:
                row["minus_base"] = paired_difference(
                    units, started, "balanced_accuracy", n_boot=n_boot, seed=0
                )
            for other in others:
                # Against the other objective read by the same probe (its logreg probe for
                # the hybrid variants, which it may lack).
                theirs = cells[other].get(name) or cells[other][REFERENCE]
                row[f"minus_{other}"] = paired_difference(
                    units, theirs, "balanced_accuracy", n_boot=n_boot, seed=0
                )
            chosen_k = [c.summary.get("chosen_k") for u in units for c in u]
            if any(k is not None for k in chosen_k):
                row["chosen_k"] = chosen_k
            chosen_c = [c.summary.get("chosen_c") for u in units for c in u]
            if any(c is not None for c in chosen_c):
                row["chosen_c"] = chosen_c
            rows[f"{objective}/{name}"] = row
    head = metric_block(base, head=True, n_boot=0, seed=0)["balanced_accuracy"]["per_seed"]
    return {
        "run": str(run.relative_to(REPO)) if run.is_relative_to(REPO) else str(run),
        "dataset": results.get("dataset"),
        "seeds": seeds,
        "oracle_truth": oracle,
        "against": others,
        "head_delta": {
            "mean": float(np.mean(head)),
            "per_seed": head,
            "fraction_of_achievable": fraction_of_achievable(float(np.mean(head)), oracle),
        },
        "rows": rows,
    }


def markdown(block: dict[str, Any]) -> str:
    hd = block["head_delta"]
    lines = [
        f"### {Path(block['run']).name} (seeds {', '.join(map(str, block['seeds']))})",
        "",
        (
            f"`oracle_truth` {block['oracle_truth']:.3f}; `mse` `head_delta` {hd['mean']:.3f} "
            f"({hd['fraction_of_achievable']:.0%} of the achievable); chance 0.333."
            if math.isfinite(block["oracle_truth"])
            else f"no oracle (no truth for these data); `mse` `head_delta` {hd['mean']:.3f}; "
            "chance 0.333."
        ),
        "",
        "| objective / probe | balanced acc | of achievable | - head_delta [95% CI] | MDD "
        "| - mse logreg [95% CI] | - mse, same probe [95% CI] | "
        + "".join(f"- {o}, same probe [95% CI] | " for o in block.get("against", []))
        + "- its base, same probe [95% CI] | chosen |",
        "|---|---|---|---|---|---|---|" + "---|" * len(block.get("against", [])) + "---|---|",
    ]
    for name, row in block["rows"].items():
        chosen = ""
        if "chosen_k" in row:
            chosen = "k " + ",".join(str(k) for k in row["chosen_k"])
        elif "chosen_c" in row:
            chosen = "C " + ",".join(f"{c:g}" for c in row["chosen_c"])
        frac = row["fraction_of_achievable"]
        lines.append(
            f"| {name} | {row['balanced_accuracy']['mean']:.3f} | "
            f"{'-' if not math.isfinite(frac) else f'{frac:.0%}'} | "
            f"{fmt(row['minus_head_delta'], signed=True)} | {mdd(row['minus_head_delta'])} | "
            f"{fmt(row['minus_mse'], signed=True)} | "
            f"{fmt(row.get('minus_mse_same_probe'), signed=True)} | "
            + "".join(f"{fmt(row[f'minus_{o}'], signed=True)} | " for o in block.get("against", []))
            + f"{fmt(row.get('minus_base'), signed=True)} | {chosen} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run",
        type=Path,
        action="append",
        required=True,
        help="a finished quality run folder (its cells and results.json)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument(
        "--tag",
        default="synth-lus-pool300-aug2",
        help="results go to benchmarks/results/probes_<tag>.{json,md}",
    )
    parser.add_argument(
        "--against",
        nargs="*",
        default=None,
        help="objectives whose logreg probe every row is also compared with (default: untrained)",
    )
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), help="probe variants (default: all)"
    )
    parser.add_argument(
        "--results",
        type=Path,
        action="append",
        help="the results file of each --run (default: <run>/results.json)",
    )
    parser.add_argument(
        "--objectives", nargs="+", help="the cells' objectives to screen (default: every one)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results_files = args.results or [None] * len(args.run)
    if len(results_files) != len(args.run):
        raise SystemExit("give one --results per --run, or none")
    blocks = [
        screen_run(
            run.resolve(),
            args.seeds,
            args.n_boot,
            results_file=results,
            objectives=args.objectives,
            variants=args.variants,
            against=args.against,
        )
        for run, results in zip(args.run, results_files, strict=True)
    ]
    out = {
        "command": "benchmarks/probes.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "variants": VARIANTS,
        "pca_grid": list(PCA_GRID),
        "runs": blocks,
        "seconds": time.perf_counter() - start,
    }
    write_json(RESULTS / f"probes_{args.tag}.json", out)
    text = "\n".join(markdown(b) for b in blocks)
    (RESULTS / f"probes_{args.tag}.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
