"""Recipe search of issue 12: which training settings make the encoder learn, on validation
patients only.

Each variant is the synthetic LUS benchmark config (``benchmarks/configs/synth_lus.yaml``)
with a few ``--set``-style overrides, pretrained with the ``mse`` objective (the regressor is
what has to stop memorising patients) for each seed, embedded from its best checkpoint, and
scored on the seed's **validation** patients:

- ``val_mae``: the score head's MAE on validation scans, beside ``mean_mae`` (predicting the
  training mean), ``noise_mae`` (the recorded score against truth's ``score_clean``: the
  label noise) and ``reader_mae`` (a line from each clip's true rendered severity to the
  score, fitted on training scans: what a perfect reader of the image achieves; above the
  noise floor because each zone's offset from the patient's severity is in the clip, not in
  the visit's score);
- ``probe`` / ``head_delta``: balanced accuracy of change classification on validation
  patients' pairs (classifier fit on training patients' pairs) from ``d`` and from the head's
  predicted change; ``oracle``: the same protocol on the true severity change, so
  ``fraction`` = (x - 1/3) / (oracle - 1/3) reads each against what the pairs allow;
- ``train_s``: wall seconds of the pretraining.

Test patients are never read. Finished cells are cached under
``benchmarks/work/recipe/<dataset>/<variant>/seed<S>`` (keyed like every other cache), so a
rerun only trains what is new.

Usage:
    .venv/bin/python benchmarks/recipe.py --seeds 0 1
    .venv/bin/python benchmarks/recipe.py --dataset synth-lus-pool300 --variants base wd0.05
    .venv/bin/python benchmarks/recipe.py --render
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

import torch  # noqa: E402

from benchmarks import datasets  # noqa: E402
from benchmarks.quality import (  # noqa: E402
    CHANGE_CONFIGS,
    CONFIGS,
    RESULTS,
    validation_change,
)
from learner.config import Config, load_config  # noqa: E402
from learner.data.manifest import Manifest, load_manifest  # noqa: E402
from learner.evaluate.ceilings import (  # noqa: E402
    evaluate_oracle,
    fraction_of_achievable,
    load_truth,
    regressor_against_mean,
    render_regressor_mae,
    score_noise_mae,
)
from learner.io import write_json  # noqa: E402

# Variant label -> overrides of the benchmark config. "base" is the config as it stands.
GRID: dict[str, list[str]] = {
    "base": [],
    "wd0.05": ["train.weight_decay=0.05"],
    "aug2": ["data.input.augment=2.0"],
    "aug0": ["data.input.augment=0.0"],
    "dropout0.5": ["model.head_dropout=0.5"],
    "lr5e-4": ["train.lr=0.0005"],
    "epochs24": ["train.epochs=24"],
    "batch16": ["train.batch_size=16"],
    "aug3": ["data.input.augment=3.0"],
    "aug2+wd0.05": ["data.input.augment=2.0", "train.weight_decay=0.05"],
    "aug2+epochs24": ["data.input.augment=2.0", "train.epochs=24"],
    "size96": ["data.input.size=96"],
    "width32": ["model.width=32"],
}
METRICS = (
    "val_mae",
    "mean_mae",
    "noise_mae",
    "reader_mae",
    "probe",
    "head_delta",
    "oracle",
    "train_s",
)


def variant_config(dataset: str, overrides: list[str], seed: int) -> Config:
    cfg = load_config(CONFIGS / CHANGE_CONFIGS[dataset], [*overrides, "objective.name=mse"])
    cfg.train.seed = seed
    return cfg


def _oracle(frame: Any, truth: Any, cfg: Config) -> float:
    """The true severity change under the same protocol and validation pairs."""
    result = evaluate_oracle(
        frame,
        truth,
        "severity",
        delta=cfg.eval.delta,
        higher_is_better=cfg.data.higher_is_better,
        classifier=cfg.eval.classifier,
        seed=cfg.train.seed,
        train_splits=("train",),
        test_split="val",
    )
    return math.nan if result is None else float(result.metrics["balanced_accuracy"])


def val_cell(
    cfg: Config, manifest: Manifest, truth: Any, folder: Path, *, untrained: bool = False
) -> dict[str, float]:
    """Pretrain (or load) one cell and score it on validation patients."""
    from learner.evaluate.embeddings_io import read_embeddings
    from learner.pipeline.run import pretrain_and_embed
    from learner.provenance import claim_folder, manifest_fingerprint, pretrain_key
    from learner.train.prepared import prepare_data

    data = prepare_data(cfg, manifest)
    digest = manifest_fingerprint(manifest.frame, manifest.feature_columns)
    key = pretrain_key(cfg, digest, data.split_hash)
    if untrained:
        key = {**key, "untrained": True}
    claim_folder(folder, key)
    emb = folder / "embeddings.parquet"
    timing = folder / "train_s.json"
    if not emb.exists():
        start = time.perf_counter()
        if untrained:
            from learner.pipeline.grid import Cell
            from learner.pipeline.run import embed_untrained

            embed_untrained(
                Cell("untrained", f"seed{cfg.train.seed}", cfg, data, folder, key, untrained=True)
            )
        else:
            pretrain_and_embed(cfg, data, folder, metadata={"objective": "mse"})
        timing.write_text(json.dumps({"train_s": round(time.perf_counter() - start, 1)}))
    frame, _ = read_embeddings(emb)
    train_s = json.loads(timing.read_text())["train_s"] if timing.exists() else math.nan
    return val_metrics(frame, cfg, truth, untrained=untrained, train_s=train_s)


def val_metrics(
    frame: Any, cfg: Config, truth: Any, *, untrained: bool = False, train_s: float = math.nan
) -> dict[str, float]:
    """The validation numbers of one embeddings frame (see the module docstring)."""
    val_mae, mean_mae = regressor_against_mean(frame)
    change = validation_change(frame, cfg, cfg.train.seed)
    probe, head = change.metrics["balanced_accuracy"], change.head_delta["balanced_accuracy"]
    known = truth is not None
    return {
        "val_mae": val_mae,
        "mean_mae": mean_mae,
        "noise_mae": score_noise_mae(frame, truth, "val") if known else math.nan,
        "reader_mae": render_regressor_mae(frame, truth, "val") if known else math.nan,
        "probe": probe,
        "head_delta": math.nan if untrained else head,
        "oracle": _oracle(frame, truth, cfg) if known else math.nan,
        "train_s": train_s,
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def summarise(per_seed: dict[str, dict[str, float]]) -> dict[str, Any]:
    seeds = list(per_seed)
    means = {m: _mean([per_seed[s][m] for s in seeds]) for m in METRICS}
    for name in ("probe", "head_delta"):
        means[f"{name}_fraction"] = _mean(
            [fraction_of_achievable(per_seed[s][name], per_seed[s]["oracle"]) for s in seeds]
        )
    return {"per_seed": per_seed, "mean": means}


def run(dataset: str, variants: list[str], seeds: list[int], log: Any = print) -> dict[str, Any]:
    manifest_path = datasets.build(dataset)
    manifest = load_manifest(manifest_path)
    truth = load_truth(manifest.source)
    work = datasets.WORK / "recipe" / dataset
    table: dict[str, Any] = {}
    for label in ["untrained", *variants]:
        overrides = [] if label == "untrained" else GRID[label]
        per_seed = {}
        for seed in seeds:
            cfg = variant_config(dataset, [*overrides, f"data.manifest={manifest_path}"], seed)
            log(f"[{dataset} seed{seed}] {label}")
            per_seed[str(seed)] = val_cell(
                cfg, manifest, truth, work / label / f"seed{seed}", untrained=label == "untrained"
            )
        table[label] = {"overrides": overrides, **summarise(per_seed)}
    return {
        "dataset": dataset,
        "objective": "mse",
        "seeds": seeds,
        "metric": "validation patients only (test patients never read): score MAE of the "
        "head, change balanced accuracy of the probe on d and of head_delta (classifier fit "
        "on training patients' pairs), the oracle on the true severity change of the same "
        "pairs, and fraction = (x - 1/3) / (oracle - 1/3) per seed, averaged",
        "variants": table,
        "torch": torch.__version__,
    }


def score_run(
    dataset: str, seeds: list[int], labels: tuple[str, ...] = ("mse",), run: str | None = None
) -> dict:
    """Validation numbers of a ``benchmarks/quality.py`` run's cached cells (read only: the
    run's own key says how each was made; nothing is trained here). ``{label: summary}``
    for ``untrained`` and ``labels`` whose cells exist for every seed; ``run`` names the run
    folder under ``benchmarks/work/runs`` when it is not the data set's name."""
    from learner.evaluate.embeddings_io import read_embeddings

    manifest_path = datasets.build(dataset)
    truth = load_truth(manifest_path)
    cells = datasets.WORK / "runs" / (run or dataset) / "cells"
    table: dict[str, Any] = {}
    for label in ("untrained", *labels):
        paths = [cells / label / f"seed{seed}" / "embeddings.parquet" for seed in seeds]
        if not all(p.exists() for p in paths):
            continue
        per_seed = {}
        for seed, path in zip(seeds, paths, strict=True):
            cfg = variant_config(dataset, [f"data.manifest={manifest_path}"], seed)
            frame, _ = read_embeddings(path)
            per_seed[str(seed)] = val_metrics(frame, cfg, truth, untrained=label == "untrained")
        table[label] = {"source": str(cells / label), **summarise(per_seed)}
    return table


# The pool learning curves: family -> pool size -> (quality.py results tag, run folder under
# work/runs). LUS: the base recipe; MRI (3D encoder): the recipe (augmentation 2).
CURVES: dict[str, dict[int, tuple[str, str]]] = {
    "lus": {
        0: ("synth-lus-pool0-mse", "synth-lus-pool0-mse"),
        100: ("synth-lus-pool100", "synth-lus-pool100"),
        300: ("synth-lus-pool300", "synth-lus-pool300"),
        600: ("synth-lus-pool600", "synth-lus-pool600"),
    },
    "mri": {
        0: ("synth-mri-pool0-aug2-mse", "synth-mri-pool0-aug2"),
        100: ("synth-mri-pool100-aug2-mse", "synth-mri-pool100-aug2"),
        300: ("synth-mri-pool300-aug2-mse", "synth-mri-pool300-aug2"),
        600: ("synth-mri-pool600-aug2-mse", "synth-mri-pool600-aug2"),
    },
}


def curve_file(family: str) -> Path:
    """Where ``--score-runs`` keeps a family's validation numbers (LUS: the original name)."""
    return RESULTS / (
        "recipe_pool_curve.json" if family == "lus" else f"recipe_pool_curve_{family}.json"
    )


def curve_markdown(curve: dict[str, Any], family: str = "lus") -> str:
    """One row per pool size: test numbers from ``quality_<tag>.json`` beside the validation
    numbers of :func:`score_run` (:func:`curve_file`)."""
    lines = [
        "| pool | test seeds | test: mse probe | head_delta | untrained | oracle | head_delta "
        "fraction | mse fraction | test MAE | val MAE (seeds "
        + ", ".join(str(s) for s in curve["seeds"])
        + ") | val head_delta fraction |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pool, (tag, run) in CURVES[family].items():
        path = RESULTS / f"quality_{tag}.json"
        if not path.exists() or run not in curve["runs"]:
            continue
        test = json.loads(path.read_text())
        rows = test["objectives"]

        def bal(name: str, rows: dict[str, Any] = rows) -> float:
            return float(rows[name]["balanced_accuracy"]["mean"])

        def frac(name: str, rows: dict[str, Any] = rows) -> str:
            entry = rows[name].get("fraction_of_achievable") or {}
            return f"{entry['mean']:.0%}" if entry.get("mean") is not None else "-"

        val = curve["runs"][run]["mse"]["mean"]
        oracle = test["ceilings"]["oracle_truth"]["balanced_accuracy"]["mean"]
        lines.append(
            f"| {pool} | {len(rows['mse']['balanced_accuracy']['per_seed'])} "
            f"| {bal('mse'):.3f} | {bal('head_delta'):.3f} | {bal('untrained'):.3f} "
            f"| {oracle:.3f} | {frac('head_delta')} "
            f"| {frac('mse')} | {rows['mse']['score_mae']['mean']:.1f} | {val['val_mae']:.1f} "
            f"| {val['head_delta_fraction']:.0%} |"
        )
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['dataset']}, objective mse, seeds {result['seeds']} (validation patients)",
        "",
        "| variant | val MAE | mean-predictor MAE | noise floor | perfect reader | probe on d "
        "| head_delta | oracle | probe fraction | head_delta fraction | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in result["variants"].items():
        # JSON keeps an undefined number as null.
        m = {k: math.nan if v is None else v for k, v in row["mean"].items()}
        cells = [
            f"{m['val_mae']:.1f}",
            f"{m['mean_mae']:.1f}",
            f"{m['noise_mae']:.1f}",
            f"{m['reader_mae']:.1f}",
            f"{m['probe']:.3f}",
            "-" if not math.isfinite(m["head_delta"]) else f"{m['head_delta']:.3f}",
            f"{m['oracle']:.3f}",
            f"{m['probe_fraction']:.0%}",
            "-"
            if not math.isfinite(m["head_delta_fraction"])
            else f"{m['head_delta_fraction']:.0%}",
            f"{m['train_s']:.0f}",
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        default="synth-lus",
        choices=sorted(k for k in CHANGE_CONFIGS if k.startswith("synth-lus")),
    )
    parser.add_argument("--variants", nargs="+", default=list(GRID), choices=list(GRID))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--render", action="store_true", help="re-print the saved table")
    parser.add_argument(
        "--score-runs",
        nargs="+",
        metavar="RUN[=DATASET]",
        help="score the cached mse cells of these quality.py runs (folders under "
        "benchmarks/work/runs; =DATASET when the folder is not named after its data set) on "
        "validation patients, instead of training variants: the pool learning curve",
    )
    parser.add_argument(
        "--curve",
        default="lus",
        choices=sorted(CURVES),
        help="which pool learning curve --score-runs writes and --render prints (default lus)",
    )
    args = parser.parse_args(argv)
    if args.score_runs:
        curve = {
            "metric": "validation patients of benchmarks/quality.py runs (cached cells)",
            "seeds": args.seeds,
            "runs": {
                run: score_run(dataset or run, args.seeds, run=run)
                for run, _, dataset in (arg.partition("=") for arg in args.score_runs)
            },
        }
        write_json(curve_file(args.curve), curve)
        for name, table in curve["runs"].items():
            print(markdown({"dataset": name, "seeds": args.seeds, "variants": table}), "\n")
        print(curve_markdown(curve, args.curve))
        return 0
    out = RESULTS / f"recipe_{args.dataset}.json"
    if args.render:
        print(markdown(json.loads(out.read_text())))
        saved = curve_file(args.curve)
        if saved.exists():
            print("\n" + curve_markdown(json.loads(saved.read_text()), args.curve))
        return 0
    start = time.perf_counter()
    result = run(args.dataset, args.variants, args.seeds)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    if out.exists():  # keep variants of earlier invocations (other --variants)
        earlier = json.loads(out.read_text())
        if earlier.get("seeds") == result["seeds"]:
            result["variants"] = {**earlier["variants"], **result["variants"]}
    write_json(out, result)
    (out.with_suffix(".md")).write_text(markdown(result) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
