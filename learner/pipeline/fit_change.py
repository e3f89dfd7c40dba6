"""Fit, calibrate, save and select change models from the cells of a `learner run`.

For one cell (objective x seed [x fold]) the saved probe is the one `run` evaluated: fitted on
the pairs of training and validation patients, so that its labels on the test patients are
exactly those in the cell's ``test_pairs.parquet``. Two things use the validation patients
alone, through a second probe fitted on training patients only:

- **selection**: its balanced accuracy on validation pairs ranks the cells; the best cell's
  model is copied to ``OUT/change-model`` (test patients never choose);
- **calibration**: a temperature fitted on validation pairs (minimum NLL), applied to the
  saved probe's logits only where it lowers the validation ECE; otherwise the raw
  probabilities are kept (``model.json``'s ``calibration``: ``method`` ``temperature`` or
  ``none``, ``temperature`` applied, ``fitted_temperature``, ``ece_validation_raw`` /
  ``_calibrated``, ``kept`` ``raw`` or ``calibrated``). Temperature scaling never changes a
  label. The calibration is checked on the test patients: ECE and a reliability diagram, raw
  and with the fitted temperature, whichever was kept;
- **the answer**: which label a prediction's ``answer`` column reads, the probe's or the
  regression head's (``predicted_change`` in the model's band), whichever had the higher
  balanced accuracy on validation pairs (``model.json``'s ``answer``: ``chosen``, ``rule``
  and both validation numbers; :mod:`learner.evaluate.answer`);
- **the OOD reference**: the training scans' embeddings, against which a new scan's distance
  is measured, in units of the validation scans' distances (``ood.npz`` and ``model.json``'s
  ``ood``; :mod:`learner.evaluate.ood`).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from learner.config import Config
from learner.data.pairs import (
    CLINICIAN,
    SCORE,
    consecutive_pairs,
    label_changes,
    labels_source,
    split_label_counts,
    with_change_labels,
)
from learner.data.splits import TRAINING_SPLITS
from learner.errors import DataError
from learner.evaluate.answer import choose_answer, no_validation_answer
from learner.evaluate.calibration import (
    MAX_TEMPERATURE,
    choose_calibration,
    expected_calibration_error,
    reliability_bins,
    softmax,
)
from learner.evaluate.change import evaluate_change
from learner.evaluate.embeddings_io import read_embeddings
from learner.evaluate.features import change_features, visit_embeddings, visit_times
from learner.evaluate.metrics import CLASS_METRICS, label_codes
from learner.evaluate.ood import OodCheck
from learner.evaluate.plots import plot_reliability
from learner.evaluate.probe import Probe
from learner.io import write_json
from learner.pipeline.change_model import MODEL_FILE, save_change_model
from learner.pipeline.grid import UNTRAINED
from learner.pipeline.record import build_record, record_caveat, record_line, trained_on
from learner.pipeline.run import AblationResult, pretrained_checkpoint
from learner.provenance import KEY_FILE, read_key, write_key
from learner.train.checkpoint import load_checkpoint

CHANGE_MODEL_DIR = "change-model"
SELECTION_METRIC = "balanced_accuracy"
Log = Callable[[str], None]


@dataclass
class FittedChange:
    """A calibrated probe and what was measured about it."""

    probe: Probe
    band: float
    validation: dict[str, float]
    test: dict[str, float]
    calibration: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    answer: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)


def _split_features(
    frame: pd.DataFrame, split: str, feature: str
) -> tuple[np.ndarray, pd.DataFrame]:
    visits, matrix = visit_embeddings(frame)
    pairs = consecutive_pairs(visits)
    chosen = pairs[pairs["split"] == split].reset_index(drop=True)
    head = visits["pred_score"].to_numpy(dtype=np.float64)
    return change_features(matrix, chosen, feature, head, visit_times(visits)), chosen


def fit_change_model(
    frame: pd.DataFrame,
    *,
    delta: float | str,
    higher_is_better: bool,
    feature: str,
    classifier: str,
    seed: int,
    pca: int | str = 0,
) -> FittedChange:
    """Fit the probe as `run` does, select and calibrate on validation patients, check the
    calibration on test patients.

    Args:
        frame: a cell's embeddings frame (``split`` train / val / test).
        delta, higher_is_better, feature, classifier, seed, pca: as for
            :func:`learner.evaluate.change.evaluate_change`.

    Returns:
        :class:`FittedChange`; ``validation`` holds NaN (and a note explains) when the
        validation patients give no pairs.
    """
    common: dict[str, Any] = {
        "delta": delta,
        "higher_is_better": higher_is_better,
        "feature": feature,
        "classifier": classifier,
        "n_boot": 0,
        "seed": seed,
        "pca": pca,
    }
    full = evaluate_change(frame, **common)
    assert full.probe is not None
    probe = full.probe
    notes = list(full.warnings)
    validation = dict.fromkeys(CLASS_METRICS, math.nan)
    # Until validation pairs say otherwise: raw probabilities (temperature 1).
    calibration: dict[str, Any] = {
        "method": "none",
        "fitted_on": "validation patients",
        "temperature": 1.0,
        "fitted_temperature": None,
        "ece_validation_raw": None,
        "ece_validation_calibrated": None,
        "kept": "raw",
    }
    try:
        val = evaluate_change(frame, train_splits=("train",), test_split="val", **common)
    except DataError as exc:
        notes.append(f"no validation estimate ({exc.problems[0]}); raw probabilities kept")
        answer = no_validation_answer(f"no validation estimate ({exc.problems[0]})")
    else:
        assert val.probe is not None
        val_probe = val.probe
        x_val, _ = _split_features(frame, "val", feature)
        val_codes = label_codes(val.test_pairs["label"])
        calibration.update(choose_calibration(val_probe.logits(x_val), val_codes))
        calibration["n_validation_pairs"] = len(val_codes)
        fitted = float(calibration["fitted_temperature"])
        if calibration["kept"] == "raw":
            notes.append(
                f"temperature scaling (T = {fitted:.2f}) did not lower the validation ECE "
                f"({_fmt(calibration['ece_validation_raw'])} raw, "
                f"{_fmt(calibration['ece_validation_calibrated'])} scaled): raw "
                "probabilities kept"
            )
        elif fitted > 0.99 * MAX_TEMPERATURE:
            notes.append(
                f"calibration flattened the probabilities as far as allowed (T = "
                f"{fitted:.0f}): on validation patients near-uniform probabilities fit "
                "better than the probe's own"
            )
        validation = {m: float(val.metrics[m]) for m in CLASS_METRICS}
        answer = _validation_answer(val.test_pairs, full.band, higher_is_better)
    probe.temperature = float(calibration["temperature"])
    x_test, _ = _split_features(frame, "test", feature)
    test_codes = label_codes(full.test_pairs["label"])
    logits = probe.logits(x_test)
    raw = softmax(logits)
    # Test ECE with the fitted temperature whether or not it was kept: what scaling would do.
    scaling = calibration["fitted_temperature"] or 1.0
    calibrated = softmax(logits / scaling)
    calibration.update(
        n_test_pairs=len(test_codes),
        ece_test_raw=expected_calibration_error(raw, test_codes),
        ece_test_calibrated=expected_calibration_error(calibrated, test_codes),
        reliability_test={
            "raw": reliability_bins(raw, test_codes).to_dict(orient="list"),
            "calibrated": reliability_bins(calibrated, test_codes).to_dict(orient="list"),
        },
    )
    return FittedChange(
        probe=probe,
        band=full.band,
        validation=validation,
        test={m: float(full.metrics[m]) for m in CLASS_METRICS},
        calibration=calibration,
        notes=notes,
        answer=answer,
        labels=labels_block(frame),
    )


def labels_block(frame: pd.DataFrame) -> dict[str, Any]:
    """``model.json``'s ``labels``: where the labels of the pairs came from, per split, and
    the ``source`` of those the saved probe was fitted on (training and validation patients'
    pairs): ``clinician`` (every one a clinician's change_label), ``score`` (none) or
    ``mixed``."""
    counts = split_label_counts(frame, ("train", "val", "test"))
    fitted = {k: counts["train"][k] + counts["val"][k] for k in (CLINICIAN, SCORE)}
    return {
        "source": labels_source(fitted),
        "fitted_on": fitted,
        **counts,
        "rule": "a pair's label is the clinician's change_label where the later visit has "
        "one, else the score change in the stable band",
    }


def _validation_answer(pairs: pd.DataFrame, band: float, higher_is_better: bool) -> dict[str, Any]:
    """Probe or head (:mod:`learner.evaluate.answer`), judged on the validation pairs of a
    probe fitted on training patients, every label with the model's own band."""
    change = pairs["change"].to_numpy(np.float64)
    # ``head_change`` is oriented so that higher = better; the head's raw change is its sign back.
    raw_head = pairs["head_change"].to_numpy(np.float64) * (1.0 if higher_is_better else -1.0)
    # A clinician's label stands as it is; a score's is read in the model's own band.
    truth = pairs["label"].astype(str).to_numpy(dtype=object)
    from_score = (
        pairs["label_source"].to_numpy() == SCORE
        if "label_source" in pairs.columns
        else np.ones(len(pairs), dtype=bool)
    )
    if from_score.any():
        truth[from_score] = label_changes(
            change[from_score], band, higher_is_better=higher_is_better
        )
    return choose_answer(
        truth.tolist(),
        pairs["predicted"].astype(str).tolist(),
        raw_head,
        band=band,
        higher_is_better=higher_is_better,
    )


def fit_ood_reference(
    frame: pd.DataFrame, kind: str = "video"
) -> tuple[OodCheck | None, dict[str, Any]]:
    """The OOD reference of a cell's embeddings frame (:mod:`learner.evaluate.ood`): its
    training scans (``train`` and a pretraining pool, what the encoder learnt from) against
    its validation scans, from their embeddings and, where the frame has them, their input
    descriptors (``kind``: the model's input kind, to say why there are none); and
    ``model.json``'s ``ood`` block (``available`` false with the ``reason`` when the frame has
    no training or no validation scan)."""
    splits = frame["split"].astype(str)
    training, validation = splits.isin(TRAINING_SPLITS), splits == "val"

    def stacked(column: str, mask: pd.Series) -> np.ndarray:
        rows = list(frame.loc[mask, column])
        return np.stack(rows) if rows else np.zeros((0, 0))

    descriptors, note = None, ""
    if kind == "tabular":
        note = "tabular input: its features are what the embedding part compares"
    elif (
        "descriptor" not in frame.columns
        or frame.loc[training | validation, "descriptor"].isna().any()
    ):
        note = (
            "the embeddings hold no input descriptors (made by an older learner): the "
            "embedding part alone; embed again and fit the model again for the input part"
        )
    else:
        descriptors = (stacked("descriptor", training), stacked("descriptor", validation))
    try:
        check = OodCheck.fit(
            (stacked("embedding", training), stacked("embedding", validation)),
            descriptors,
            input_note=note,
        )
    except DataError as exc:
        return None, {"available": False, "reason": exc.problems[0]}
    return check, {
        **check.describe(),
        "reference_splits": [s for s in TRAINING_SPLITS if (splits == s).any()],
    }


def save_fitted_change_model(
    folder: Path,
    frame: pd.DataFrame,
    checkpoint: Path,
    *,
    delta: float | str,
    higher_is_better: bool,
    feature: str,
    classifier: str,
    seed: int,
    source: dict[str, Any],
    pca: int | str = 0,
    evaluation: dict[str, Any] | None = None,
    untrained: dict[str, Any] | None = None,
    target: str = "observed",
) -> dict[str, Any]:
    """Fit (:func:`fit_change_model`) and save a change model with the encoder of
    ``checkpoint``; returns its ``model.json`` content.

    ``source`` (e.g. objective, cell) is recorded in ``model.json`` as given. ``evaluation``
    (the held-out test evaluation of this probe, as ``ChangeResult.to_json`` writes it) and
    ``untrained`` (the untrained baseline's on the same test patients, if measured) become
    the model's ``record`` (:mod:`learner.pipeline.record`); without ``evaluation`` the model
    has no record.
    """
    module, meta = load_checkpoint(checkpoint)
    fitted = fit_change_model(
        frame,
        delta=delta,
        higher_is_better=higher_is_better,
        feature=feature,
        classifier=classifier,
        seed=seed,
        pca=pca,
    )
    ood, ood_info = fit_ood_reference(frame, module.cfg.data.input.kind)
    info = {
        **source,
        "seed": seed,
        "band": fitted.band,
        "delta": delta,
        "feature": feature,
        "classifier": classifier,
        "pca": pca,
        "higher_is_better": higher_is_better,
        "selected_on": SELECTION_METRIC,
        "metrics": {"validation": fitted.validation, "test": fitted.test},
        "calibration": fitted.calibration,
        "answer": fitted.answer,
        "labels": fitted.labels,
        "notes": fitted.notes,
        "split": meta.get("split", {}),
        "split_hash": meta.get("split_hash"),
        "feature_stats": meta.get("feature_stats"),
        "record": None
        if evaluation is None
        else model_record(
            evaluation,
            untrained=untrained,
            manifest=module.cfg.data.manifest,
            split=meta.get("split", {}),
            split_hash=meta.get("split_hash"),
            run_dir=Path(checkpoint).parent.parent,
            target=target,
            source=str(source.get("cell") or checkpoint),
        ),
        "ood": ood_info,
    }
    save_change_model(folder, module, fitted.probe, info, ood)
    loaded: dict[str, Any] = json.loads((folder / MODEL_FILE).read_text(encoding="utf-8"))
    return loaded


def model_record(
    evaluation: dict[str, Any],
    *,
    untrained: dict[str, Any] | None,
    manifest: str | Path | None,
    split: dict[str, str],
    split_hash: str | None,
    run_dir: Path,
    target: str,
    source: str,
) -> dict[str, Any]:
    """The record of a change model (:func:`learner.pipeline.record.build_record`): its
    held-out evaluation, and the data it was trained on (the manifest's fingerprint read from
    the pretraining run's key)."""
    key = read_key(Path(run_dir) / KEY_FILE) or {}
    data = trained_on(
        split,
        manifest=str(manifest) if manifest is not None else None,
        manifest_fingerprint=key.get("manifest.content"),
        split_hash=split_hash,
    )
    return build_record(evaluation, untrained=untrained, data=data, target=target, source=source)


def target_name(cfg: Config) -> str:
    """``eval.target`` as one word: ``observed``, ``truth`` or ``column NAME``."""
    target = cfg.eval.target
    return target if isinstance(target, str) else f"column {target.column}"


def _read_evaluation(folder: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def untrained_evaluation(cell_dir: Path, feature: str) -> dict[str, Any] | None:
    """The ``untrained`` baseline's evaluation beside ``cell_dir`` (same seed and fold), when
    it was made on the same manifest, split and evaluation settings; None otherwise."""
    base = cell_dir.parent.parent / UNTRAINED / cell_dir.name
    ours, theirs = read_key(cell_dir / KEY_FILE), read_key(base / KEY_FILE)
    ours_eval = read_key(cell_dir / f"eval-{feature}" / KEY_FILE)
    theirs_eval = read_key(base / f"eval-{feature}" / KEY_FILE)
    if ours is None or theirs is None or ours_eval is None or theirs_eval is None:
        return None
    same_data = all(ours.get(k) == theirs.get(k) for k in ("manifest.content", "split.hash"))

    def settings(key: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in key.items() if k != "pretrain.digest"}

    if not same_data or settings(ours_eval) != settings(theirs_eval):
        return None
    return _read_evaluation(base / f"eval-{feature}")


def save_cell_change_model(
    cell_dir: Path,
    cfg: Config,
    *,
    objective: str,
    feature: str,
    seed: int,
    labels_from: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """``cell_dir/change-model`` from the cell's embeddings and best checkpoint (reused when
    already saved); returns its ``model.json`` content. Its ``record`` is the cell's own
    evaluation on its test patients, with the ``untrained`` cell's beside it.
    ``labels_from``: the run's manifest frame, whose clinician change labels replace those
    the cached embeddings hold (as the cell's evaluation does)."""
    folder = cell_dir / CHANGE_MODEL_DIR
    evaluated = _read_evaluation(cell_dir / f"eval-{feature}")
    untrained = untrained_evaluation(cell_dir, feature)
    cell = f"{objective}/{cell_dir.name}"
    # The probe depends on what the cell's evaluation depends on (band, classifier, feature,
    # pretraining): reuse the saved model only while the evaluation's key is the one it was
    # fitted under (learner.provenance).
    evaluation = read_key(cell_dir / f"eval-{feature}" / KEY_FILE)
    if (folder / MODEL_FILE).is_file() and evaluation is not None:
        if read_key(folder / KEY_FILE) == evaluation:
            info: dict[str, Any] = json.loads((folder / MODEL_FILE).read_text(encoding="utf-8"))
            # One saved before calibration could be declined (no ``kept``), before the
            # answer was chosen on validation patients (no ``answer``), or before it kept an
            # OOD reference (no ``ood``), is fitted again.
            if "kept" in info.get("calibration", {}) and "answer" in info and "ood" in info:
                if evaluated is not None:
                    # A model saved before records existed, or before the baseline ran, gets its
                    # record from the evaluation that is already there.
                    record = model_record(
                        evaluated,
                        untrained=untrained,
                        manifest=info.get("config", {}).get("data", {}).get("manifest"),
                        split=info.get("split", {}),
                        split_hash=info.get("split_hash"),
                        run_dir=pretrained_checkpoint(cell_dir).parent.parent,
                        target=target_name(cfg),
                        source=cell,
                    )
                    if info.get("record") != json.loads(json.dumps(record)):
                        info["record"] = record
                        write_json(folder / MODEL_FILE, info)
                return info
    frame, _ = read_embeddings(cell_dir / "embeddings.parquet")
    if labels_from is not None:
        frame = with_change_labels(frame, labels_from)
    info = save_fitted_change_model(
        folder,
        frame,
        pretrained_checkpoint(cell_dir),
        delta=cfg.eval.delta,
        higher_is_better=cfg.data.higher_is_better,
        feature=feature,
        classifier=cfg.eval.classifier,
        pca=cfg.eval.pca,
        seed=seed,
        source={"objective": objective, "cell": cell},
        evaluation=evaluated,
        untrained=untrained,
        target=target_name(cfg),
    )
    if evaluation is not None:
        write_key(folder / KEY_FILE, evaluation)
    return info


def probe_settings(cfg: Config) -> dict[str, Any]:
    """The config's probe: ``feature``, ``classifier``, ``pca`` and the ``seed``, as
    keyword arguments of :func:`~learner.evaluate.change.evaluate_change` (and of the change
    model fitted with it)."""
    return {
        "feature": cfg.eval.feature,
        "classifier": cfg.eval.classifier,
        "pca": cfg.eval.pca,
        "seed": cfg.train.seed,
    }


def save_evaluated_change_model(
    frame: pd.DataFrame,
    meta: dict[str, Any],
    out: Path,
    cfg: Config,
    *,
    higher_is_better: bool,
    delta: float | str,
    evaluation: dict[str, Any] | None = None,
) -> Path | None:
    """`learner evaluate`: ``out/change-model`` when the embeddings name the checkpoint that
    made them (``learner embed`` records it); None otherwise. ``delta`` is the band the
    evaluation used (``--delta``, the config's, or the run's); ``evaluation`` (its
    ``metrics.json`` content) is the model's held-out record (no ``untrained`` baseline:
    `evaluate` does not measure one)."""
    checkpoint = Path(str(meta.get("checkpoint", "")))
    if not checkpoint.is_file():
        return None
    folder = Path(out) / CHANGE_MODEL_DIR
    save_fitted_change_model(
        folder,
        frame,
        checkpoint,
        delta=delta,
        higher_is_better=higher_is_better,
        **probe_settings(cfg),
        source={"objective": meta.get("objective"), "checkpoint": str(checkpoint)},
        evaluation=evaluation,
        target=target_name(cfg),
    )
    return folder


def _validation_score(info: dict[str, Any]) -> float:
    value = info["metrics"]["validation"].get(SELECTION_METRIC)
    return float(value) if value is not None and math.isfinite(value) else -math.inf


def save_run_change_models(
    ablation: AblationResult, cfg: Config, out: Path, *, log: Log = print
) -> dict[str, Any]:
    """A change model per objective and seed, the validation-best one copied to
    ``out/change-model``; adds ``change_model`` to ``results.json`` and returns it (empty for
    one-visit data: there is no change to predict)."""
    if ablation.results.get("task") == "interpatient":
        return {}
    out = Path(out)
    feature = cfg.run.features[0]
    candidates: dict[str, dict[str, Any]] = {}
    for label, run_dirs in ablation.run_dirs.items():
        for run_dir in run_dirs:
            cell_dir = run_dir.parent
            seed = int(cell_dir.name.removeprefix("seed").split("-")[0])
            info = save_cell_change_model(
                cell_dir,
                cfg,
                objective=label,
                feature=feature,
                seed=seed,
                labels_from=ablation.manifest.frame if ablation.manifest is not None else None,
            )
            candidates[info["cell"]] = {**info, "folder": cell_dir / CHANGE_MODEL_DIR}
    if not candidates:
        raise DataError("the run has no trained cell to save a change model from")
    # max keeps the first of equal scores: the config's objective order breaks ties.
    cell = max(candidates, key=lambda c: _validation_score(candidates[c]))
    chosen = candidates[cell]
    selection = {
        "cell": cell,
        "metric": SELECTION_METRIC,
        "on": "validation patients",
        "validation": chosen["metrics"]["validation"].get(SELECTION_METRIC),
        "candidates": {
            c: info["metrics"]["validation"].get(SELECTION_METRIC) for c, info in candidates.items()
        },
    }
    target = out / CHANGE_MODEL_DIR
    tmp = out / (CHANGE_MODEL_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(chosen["folder"], tmp)
    model_info = json.loads((tmp / MODEL_FILE).read_text(encoding="utf-8"))
    write_json(tmp / MODEL_FILE, {**model_info, "selection": selection})
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)

    calibration = chosen["calibration"]
    kept = calibration.get("kept", "calibrated")
    bins = {
        f"{name} (ECE {_fmt(calibration[f'ece_test_{name}'])})"
        + (", kept" if name == kept else ""): pd.DataFrame(table)
        for name, table in calibration["reliability_test"].items()
    }
    figure = plot_reliability(bins, out / "figures" / "reliability.png")
    summary = {
        **selection,
        "folder": CHANGE_MODEL_DIR,
        "test": chosen["metrics"]["test"],
        "temperature": calibration["temperature"],
        "fitted_temperature": calibration.get("fitted_temperature", calibration["temperature"]),
        "calibration_kept": kept,
        "ece_validation_raw": calibration.get("ece_validation_raw"),
        "ece_validation_calibrated": calibration.get("ece_validation_calibrated"),
        "ece_test_raw": calibration["ece_test_raw"],
        "ece_test_calibrated": calibration["ece_test_calibrated"],
        "figure": figure.relative_to(out).as_posix(),
        "record": chosen.get("record"),
        "caveat": record_caveat(chosen.get("record")),
        "answer": chosen.get("answer"),
    }
    ablation.results["change_model"] = summary
    write_json(ablation.results_path, ablation.results)
    log(
        f"change model: {target} ({cell}, validation {SELECTION_METRIC} "
        f"{_fmt(selection['validation'])}; test ECE {_fmt(summary['ece_test_raw'])} raw, "
        f"{_fmt(summary['ece_test_calibrated'])} with temperature scaling; {kept} "
        "probabilities kept)"
    )
    log(f"change model record: {record_line(chosen.get('record'))}")
    if summary["caveat"]:
        log(f"change model caveat: {summary['caveat']} (every prediction will carry it)")
    for note in chosen.get("notes", []):
        log(f"change model note: {note}")
    return summary


def _fmt(value: Any) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.3f}"
