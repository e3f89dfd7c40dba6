"""The library call behind each CLI command that puts several steps together, so that the
CLI only parses options, calls one function and prints what it returns.

- :func:`evaluate_embeddings` (`learner evaluate`): the change evaluation of an embeddings
  file (or the inter-patient one when it has no change pairs), its figures and, where the
  embeddings name their checkpoint, a saved change model.
- :func:`run_and_report` (`learner run`, `learner demo`): the grid, the change models and
  the reports.
- :func:`pretrain_warnings` (`learner pretrain`): what makes a finished pretraining suspect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from learner.config import Config, load_config
from learner.data.pairs import resolve_delta
from learner.errors import ConfigError
from learner.evaluate.change import ChangeResult, evaluate_change, has_change_pairs
from learner.evaluate.data_warnings import data_warnings
from learner.evaluate.embeddings_io import read_embeddings
from learner.evaluate.interpatient import InterpatientResult, evaluate_interpatient
from learner.evaluate.plots import plot_confusions, plot_figure1, plot_trajectories
from learner.evaluate.verdict import pair_batch_counts, pair_term_warning
from learner.io import write_json
from learner.pipeline.fit_change import (
    probe_settings,
    save_evaluated_change_model,
    save_run_change_models,
)
from learner.pipeline.report import write_reports
from learner.pipeline.run import AblationResult, run_ablation
from learner.train.prepared import config_manifest

Log = Callable[[str], None]


@dataclass
class Evaluation:
    """What `learner evaluate` computed and wrote.

    Exactly one of ``change`` (the change task) and ``interpatient`` (one visit per patient)
    is set. ``band`` / ``band_source``: the stable band asked for and where it came from;
    ``change_model``: the saved change-model folder, or None when the embeddings name no
    checkpoint; ``warnings``: the data warnings (:mod:`learner.evaluate.data_warnings`; for
    the change task also in ``change.warnings``).
    """

    metrics_path: Path
    name: str
    change: ChangeResult | None = None
    interpatient: InterpatientResult | None = None
    band: float | str | None = None
    band_source: str | None = None
    change_model: Path | None = None
    warnings: list[str] = field(default_factory=list)


def evaluate_embeddings(
    embeddings: Path, out: Path, *, config: Path | None = None, delta: str | None = None
) -> Evaluation:
    """`learner evaluate`: classify worsen / stable / improve between consecutive visits.

    The band is ``delta`` if given, else ``config``'s ``eval.delta``, else the band the run
    that wrote the embeddings used, else tertiles (:func:`~learner.data.pairs.resolve_delta`).
    Writes ``out/metrics.json``, ``out/figures/*.png`` and, when the embeddings name the
    checkpoint that made them, ``out/change-model``.

    Raises:
        ConfigError: ``eval.finetune`` set (fine-tuning runs in `learner run` only).
        DataError: an unreadable embeddings file.
    """
    cfg = load_config(config, None)
    if cfg.eval.finetune:
        raise ConfigError(
            f"{config}: eval.finetune fine-tunes encoders and runs in `learner run` only "
            "(`learner evaluate` reads fixed embeddings); set eval.finetune: 0 here"
        )
    if cfg.eval.target != "observed":
        # An embeddings file does not say which manifest (and so which truth.csv or which
        # measurement column) its scans came from.
        raise ConfigError(
            f"{config}: eval.target {cfg.eval.target} needs the manifest the embeddings came "
            "from and runs in `learner run` only; set eval.target: observed here"
        )
    frame, meta = read_embeddings(embeddings)
    name = str(meta.get("objective", "embeddings"))
    if not has_change_pairs(frame):
        scores_ok = data_warnings(
            delta=cfg.eval.delta,
            scores=frame["score"].to_numpy(dtype=float) if "score" in frame.columns else None,
            score_range=meta.get("score_range") or cfg.data.score_range,
        )
        return _evaluate_interpatient(frame, name, out, cfg, scores_ok)
    higher = bool(meta.get("higher_is_better", cfg.data.higher_is_better))
    band, source = resolve_delta(
        delta,
        config=(str(config), cfg.eval.delta) if config is not None else None,
        run=meta.get("delta"),
    )
    result = evaluate_change(
        frame,
        delta=band,
        higher_is_better=higher,
        n_boot=cfg.eval.n_boot,
        **probe_settings(cfg),
    )
    # The warnings `run` gives about the same numbers (learner.evaluate.data_warnings): the
    # test pairs' classes and patients, and the scores against the range the model used.
    score_range = meta.get("score_range") or cfg.data.score_range
    for line in data_warnings(
        delta=band,
        pair_counts=[evaluation_counts(result)],
        scores=frame["score"].to_numpy(dtype=float) if "score" in frame.columns else None,
        score_range=score_range,
    ):
        if line not in result.warnings:
            result.warnings.append(line)
    out.mkdir(parents=True, exist_ok=True)
    evaluated = result.to_json()
    write_json(out / "metrics.json", evaluated)
    plot_figure1({name: result}, out / "figures" / "figure1_distance_vs_change.png")
    plot_confusions({name: result.confusion}, out / "figures" / "confusion_matrix.png")
    plot_trajectories(frame, out / "figures" / "trajectories.png")
    saved = save_evaluated_change_model(
        frame, meta, out, cfg, higher_is_better=higher, delta=band, evaluation=evaluated
    )
    return Evaluation(
        out / "metrics.json",
        name,
        change=result,
        band=band,
        band_source=source,
        change_model=saved,
    )


def evaluation_counts(result: ChangeResult) -> dict[str, Any]:
    """A change evaluation's pair and patient counts, as the data warnings read them."""
    return {
        "class_counts_test": result.class_counts_test,
        "class_counts_train": result.class_counts_train,
        "n_test_patients": result.n_test_patients,
        "seed": result.seed,
    }


def _evaluate_interpatient(
    frame: pd.DataFrame, name: str, out: Path, cfg: Config, warnings: list[str]
) -> Evaluation:
    """`evaluate` on one-visit data: held-out inter-patient rho and score MAE with CIs."""
    result = evaluate_interpatient(
        {name: frame}, unit="scan", n_boot=cfg.eval.n_boot, seed=cfg.train.seed
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "metrics.json",
        {
            "task": "inter-patient (no patient has two labelled visits: no change pairs)",
            "metrics": result.metrics[name],
            "ci95": {k: list(v) for k, v in result.ci95[name].items()},
            "held_out_patients": result.n_patients,
            "held_out_scans": result.n_units,
            "inter_patient_pairs": result.n_pairs,
            "warnings": warnings,
        },
    )
    return Evaluation(out / "metrics.json", name, interpatient=result, warnings=warnings)


@dataclass
class RunOutcome:
    """What `learner run` wrote: the grid's results and the two reports."""

    ablation: AblationResult
    report_md: Path
    report_html: Path


def run_and_report(
    cfg: Config, out: Path, *, replace_changed: bool = False, log: Log = print, warn: Log = print
) -> RunOutcome:
    """`learner run` / `learner demo`: every cell of the grid, a change model per cell (the
    validation-chosen one in ``out/change-model``), report.md and report.html.

    A config asking for several devices trains each cell on one (``warn`` says so): the grid
    runs in this process, and a DDP launcher would rerun all of it in every process.
    """
    if cfg.train.devices * cfg.train.num_nodes > 1:
        warn(
            "note: `learner run` trains each cell in one process on one device "
            f"(train.devices={cfg.train.devices}, train.num_nodes={cfg.train.num_nodes} "
            "ignored); for multi-device training use `learner pretrain`, then `learner embed` "
            "and `learner evaluate` (docs/scale.md)"
        )
        cfg.train.devices = cfg.train.num_nodes = 1
    ablation = run_ablation(cfg, out, log=log, replace_changed=replace_changed)
    save_run_change_models(ablation, cfg, out, log=log)
    md, page = write_reports(ablation, out)
    return RunOutcome(ablation, md, page)


def pretrain_warnings(cfg: Config, run_dir: Path) -> list[str]:
    """What makes a finished pretraining suspect: a score range that does not fit the scores,
    a pair term that saw no negative (or positive) pair in most batches."""
    manifest = config_manifest(cfg)
    scores = manifest.frame["score"].to_numpy(dtype=float)
    lines = data_warnings(delta=cfg.eval.delta, scores=scores, score_range=cfg.data.score_range)
    counts = pair_batch_counts(run_dir)
    if counts is not None:
        line = pair_term_warning(cfg.objective.name, counts, cfg.objective.tau)
        lines += [line] if line else []
    return lines
