"""`learner predict`: a change model applied to new patients.

Per scan, the regression head's score; per consecutive visit pair of each patient,
``p_worsen, p_stable, p_improve``, the label, the predicted score change (head), and the
cosine distance between the two visit embeddings. With zones, pairs are first formed zone
by zone (as in training) and their probabilities then averaged per visit pair. Scores are
optional: where both visits of a pair have one, the true label is added, and a summary of
the metrics on those pairs.

Each pair row holds the probe's ``label`` and the regression head's (``head_label``:
``predicted_change`` in the model's stable band), whether they ``agree``, and the ``answer``
to read, from the one chosen on validation patients when the model was fitted
(``answer_from``; :mod:`learner.evaluate.answer`).

Where the manifest has a clinician's ``change_label`` (the later visit's judgement of the change
from the previous one), that is a pair's true label, and ``true_label_source`` says which
pairs' true labels are the clinician's and which the score's. The summary's ``labels`` says
which labels the model's probe was trained on (``model.json``'s ``labels``).

Every pair row also carries the model's held-out record (``model_record``, one line) and a
``caveat``: empty where the record beats chance and the untrained encoder on the model's test
patients, else the short reason not to trust the row (:mod:`learner.pipeline.record`). The
summary holds the whole record; a Parquet file holds it in its metadata
(``learner.record``). CSV probabilities are rounded to 3 decimals (summing to 1), Parquet
keeps full precision.

Every scan gets an out-of-distribution score (``ood_score``, ``ood_p``, ``ood``;
:mod:`learner.evaluate.ood`): how far it is from the scans the model was trained on, at the
encoder's input (``ood_input_score``) and in its embedding (``ood_embedding_score``), in units
of its validation scans' distances; ``ood_by`` says which part flags it. A flagged scan
(another view, modality or preprocessing than the training scans) is still predicted, but
each pair row with a flagged scan says so (``ood``, and a reason appended to its
``caveat``) and the summary lists it (``ood``). A model saved without an OOD reference gives
empty OOD columns and a note; one without the input part, the embedding part and a note.

Bad rows (``on_error="skip"``, the default): a row whose scan file is missing, unreadable or
of another kind than the model's is left out and listed in the summary (``skipped``: row,
path, reason); pairs are formed from the visits that remain. Only when no row is left does
prediction fail (:class:`~learner.errors.DataError`). ``on_error="stop"``: the first bad row
fails the whole call.

Example (needs the change model of a `learner run` folder and a manifest of scans):
    >>> from learner.pipeline.change_model import load_change_model
    >>> model = load_change_model("runs/demo/change-model")  # doctest: +SKIP
    >>> pairs = predict_change(model, "new_patients/manifest.csv").pairs  # doctest: +SKIP
    >>> pairs[["patient_id", "visit_from", "visit_to", "label", "p_improve"]]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from learner.data.manifest import SINGLE_VISIT, Manifest, SkippedRow, load_manifest
from learner.data.pairs import (
    CHANGE_LABEL,
    CLINICIAN,
    SCORE,
    consecutive_pairs,
    label_changes,
    source_counts,
)
from learner.data.readers import scan_from_memory, write_scan
from learner.errors import ConfigError, DataError
from learner.evaluate.answer import NO_CHOICE, RULE, head_labels
from learner.evaluate.data_warnings import data_warnings
from learner.evaluate.embeddings_io import read_embeddings
from learner.evaluate.features import (
    change_features,
    cosine_distance,
    visit_embeddings,
    visit_times,
)
from learner.evaluate.metrics import class_metrics, confusion_counts, label_codes
from learner.evaluate.probe import CLASSES
from learner.io import atomic_path, write_json
from learner.pipeline.change_model import ChangeModel
from learner.pipeline.embed import embed_frame, nothing_left, prepared_for_model
from learner.pipeline.record import record_line, record_lines

PROBABILITIES = tuple(f"p_{c}" for c in CLASSES)
EXTERNAL = "external"
ON_ERROR = ("skip", "stop")
# The probe's label, the head's, whether they agree, and the one to read (with its source).
ANSWER_COLUMNS = ("label", "head_label", "agree", "answer", "answer_from")
# The model's record, on every pair row (learner.pipeline.record).
RECORD_COLUMNS = ("caveat", "model_record")
# Per scan: how unlike the training scans it is (learner.evaluate.ood): combined, which part
# flags it, and each part's score; per pair: the max over its scans' scores, and whether any
# of them is flagged.
OOD_SCAN_COLUMNS = ("ood_score", "ood_p", "ood", "ood_by", "ood_input_score", "ood_embedding_score")
OOD_PAIR_COLUMNS = ("ood_score", "ood")
CSV_DECIMALS = 3
PARQUET_RECORD_KEY = b"learner.record"


@dataclass
class Predictions:
    """What :func:`predict_change` found.

    Attributes:
        scans: one row per scan: patient_id, visit, visit_order, [zone,] path, score,
            pred_score, seen (the model's split of the patient, ``external`` if never seen),
            ood_score, ood_p, ood, ood_by, ood_input_score, ood_embedding_score
            (:mod:`learner.evaluate.ood`; empty for a model saved without an OOD reference,
            ood_input_score for one without the input part).
        pairs: one row per consecutive visit pair: patient_id, visit_from, visit_to (as
            written in the manifest), visit_order_from, visit_order_to, p_worsen, p_stable,
            p_improve, label (the probe's), head_label (predicted_change in the model's
            band), agree, answer (the label to read), answer_from (``probe``, ``head`` or
            ``probe (no validation choice recorded)``; :mod:`learner.evaluate.answer`),
            predicted_change, distance, [n_zones,] and, where both visits
            have a score, score_from, score_to, change, true_label (the clinician's
            change_label where the manifest gives one), [true_label_source, with a
            change_label column]; ood_score (the largest of the pair's scans) and ood
            (any of them flagged); then ``caveat`` (empty,
            or why not to trust the row: the model's held-out record does not beat chance or
            the untrained encoder, or there is none; a flagged scan in the pair) and
            ``model_record`` (that record in one line).
        zone_pairs: with zones, the same per zone before averaging (else None).
        summary: the model used, its held-out ``record`` (None when it has none) and
            ``caveat``, ``answer`` (which label answers, by which rule, and how often probe
            and head agree), counts, notes, ``warnings``
            (:func:`~learner.evaluate.data_warnings.data_warnings` on the pairs with scores
            and the scores against the model's range), ``metrics`` on labelled pairs,
            ``skipped_rows`` with ``skipped`` (row, path, reason of each row left out), and
            ``ood`` (the rule, counts of flagged scans and pairs, each flagged scan).
    """

    scans: pd.DataFrame
    pairs: pd.DataFrame
    zone_pairs: pd.DataFrame | None
    summary: dict[str, Any] = field(default_factory=dict)


def _embed_manifest(
    model: ChangeModel, manifest: Manifest, skipped: list[SkippedRow] | None = None
) -> pd.DataFrame:
    """Embed every scan of ``manifest``; the embeddings frame (one row per scan embedded).
    With ``skipped``, unreadable scans are left out and appended there (else they raise)."""
    frame = manifest.frame.copy()
    assignment: dict[str, str] = model.info.get("split", {}) or {}
    frame["split"] = frame["patient_id"].map(assignment).fillna(EXTERNAL)
    stats = model.info.get("feature_stats")
    data = prepared_for_model(
        model.module,
        manifest,
        frame,
        assignment=assignment,
        split_hash=str(model.info.get("split_hash", "")),
        feature_stats=(np.asarray(stats[0]), np.asarray(stats[1])) if stats else None,
    )
    with tempfile.TemporaryDirectory(prefix="learner-predict-") as tmp:
        path = Path(tmp) / "embeddings.parquet"
        embed_frame(
            model.module,
            data,
            frame,
            path,
            metadata={"change_model": str(model.folder)},
            batch_size=model.module.cfg.train.batch_size,
            skipped=skipped,
        )
        embedded, _ = read_embeddings(path)
    return embedded


def embed_items(model: ChangeModel, items: Sequence[Any], *, layout: str = "scan") -> pd.DataFrame:
    """Embed scans given as paths, arrays or objects: the embeddings frame, one row per item,
    in order.

    An in-memory item (a numpy array in ``layout``, a nibabel image, a pydicom dataset) is
    turned into the :class:`~learner.data.readers.Scan` its file would give
    (:func:`~learner.data.readers.scan_from_memory`, the readers' own code and orientation
    rule), written where :func:`~learner.data.readers.read_scan` reads it back unchanged, and
    embedded as a file: file and array give the same model input.
    """
    cfg = model.module.cfg
    columns = list(cfg.data.feature_columns or [])
    # Tables given as columns take vectors in column order; (F,) vector files take paths.
    tabular = cfg.data.input.kind == "tabular" and bool(columns)
    with tempfile.TemporaryDirectory(prefix="learner-embed-") as tmp:
        rows: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            row: dict[str, Any] = {"patient_id": f"item{i:06d}", "visit": 0, "score": ""}
            is_path = isinstance(item, str | os.PathLike)
            if tabular:
                vector = np.asarray(np.load(item, allow_pickle=False) if is_path else item)
                if vector.shape != (len(columns),):
                    raise ConfigError(
                        f"item {i}: a feature vector of shape {vector.shape}; this model takes "
                        f"({len(columns)},) in the order {columns}"
                    )
                row.update(dict(zip(columns, vector.tolist(), strict=True)))
            elif is_path:
                row["path"] = str(Path(item).resolve())
            else:
                # Through a file, so in-memory scans take exactly the readers' and datasets'
                # path.
                scan = scan_from_memory(item, layout, name=f"item {i}")
                row["path"] = str(write_scan(scan, tmp, f"item{i:06d}"))
            rows.append(row)
        if not rows:
            return pd.DataFrame({"pred_score": [], "embedding": []})
        tmp_path = Path(tmp) / "items.csv"
        pd.DataFrame(rows).to_csv(tmp_path, index=False)
        manifest = load_manifest(tmp_path, feature_columns=columns if tabular else None)
        # Every item is its own patient: no duplicate-row or pairing rule applies across items.
        embedded = _embed_manifest(model, manifest)
    return embedded.sort_values("patient_id", kind="stable").reset_index(drop=True)


def embed_scans(model: ChangeModel, items: Sequence[Any], *, layout: str = "scan") -> np.ndarray:
    """Embed scans given as file paths, arrays or objects; returns (N, D) float32.

    Args:
        model: the change model.
        items: file paths; numpy arrays laid out as ``layout`` says; nibabel images;
            pydicom datasets (see :func:`learner.data.readers.scan_from_memory`).
        layout: ``scan`` (default: what a reader returns: video (T, H, W) uint8, volume
            (D, H, W), image (H, W), feature vector (F,)), ``nibabel`` (``get_fdata()``),
            ``pydicom`` (``pixel_array``) or ``pyav`` (stacked rgb24 frames). A file and the
            same scan in its library's layout give the same embedding.
    """
    return np.stack(list(embed_items(model, items, layout=layout)["embedding"]))


def predict_scores(model: ChangeModel, items: Sequence[Any], *, layout: str = "scan") -> np.ndarray:
    """The regression head's score (raw units) for scans given as in :func:`embed_scans`: (N,)."""
    return embed_items(model, items, layout=layout)["pred_score"].to_numpy(np.float64)


def ood_scores(model: ChangeModel, items: Sequence[Any], *, layout: str = "scan") -> pd.DataFrame:
    """How unlike the model's training scans each item is (given as in :func:`embed_scans`):
    one row per item, in order, with ``ood_score``, ``ood_p``, ``ood``, ``ood_by`` (the
    parts that flag it: ``input``, ``embedding``, both joined by ``+``, or empty),
    ``ood_input_score`` (NaN for a model without the input part) and
    ``ood_embedding_score`` (:mod:`learner.evaluate.ood`).

    Raises:
        DataError: the model has no OOD reference (saved without one).
    """
    if model.ood_reference is None:
        raise DataError(f"{model.folder}: {_no_ood_note(model)}")
    embedded = embed_items(model, items, layout=layout)
    return _ood_columns(model, embedded)[list(OOD_SCAN_COLUMNS)]


def _ood_columns(model: ChangeModel, embedded: pd.DataFrame) -> pd.DataFrame:
    """``embedded`` without its embeddings and descriptors, with each scan's OOD columns
    (empty without a reference)."""
    out = embedded.drop(columns=[c for c in ("embedding", "descriptor") if c in embedded])
    check = model.ood_reference
    if check is None or not len(out):
        for column in OOD_SCAN_COLUMNS:
            out[column] = np.full(len(out), math.nan)
        out["ood"] = np.full(len(out), None, dtype=object)
        out["ood_by"] = np.full(len(out), None, dtype=object)
        return out
    descriptors = (
        np.stack(list(embedded["descriptor"]))
        if check.input is not None and "descriptor" in embedded
        else None
    )
    found = check.score(np.stack(list(embedded["embedding"])), descriptors)
    out["ood_score"], out["ood_p"], out["ood"] = found.score, found.p, found.flag
    out["ood_by"] = found.by
    missing = np.full(len(out), math.nan)
    out["ood_input_score"] = found.parts["input"].score if "input" in found.parts else missing
    out["ood_embedding_score"] = found.parts["embedding"].score
    return out


def _no_ood_note(model: ChangeModel) -> str:
    """Why a model has no OOD reference, and what to do."""
    reason = (model.info.get("ood") or {}).get("reason")
    why = reason or "saved by a learner before OOD references existed"
    return f"no OOD reference in this model ({why}); fit it again to get one"


def _as_manifest(
    source: str | Path | pd.DataFrame,
    model: ChangeModel,
    columns: Mapping[str, str] | None,
    *,
    skip_bad_files: bool = False,
) -> Manifest:
    features = model.module.cfg.data.feature_columns
    options: dict[str, Any] = {
        "feature_columns": features,
        "require_score": False,
        "skip_bad_files": skip_bad_files,
        # The model's own mapping unless the caller names the new data's columns.
        "columns": model.module.cfg.data.columns if columns is None else columns,
    }
    if not isinstance(source, pd.DataFrame):
        return load_manifest(Path(source), **options)
    frame = source.copy()
    if "path" in frame.columns:
        # Relative paths in a frame start at the working directory.
        frame["path"] = [str(Path(p).resolve()) for p in frame["path"].astype(str)]
    for name in frame.columns:
        if frame[name].dtype == object:
            # A column of mixed cells ("" beside numbers, as a clinic's sheet gives) is text,
            # as the same manifest read from CSV would be; parquet refuses mixed objects.
            frame[name] = [None if _blank(v) else str(v) for v in frame[name]]
    with tempfile.TemporaryDirectory(prefix="learner-predict-") as tmp:
        tmp_path = Path(tmp) / "manifest.parquet"
        frame.to_parquet(tmp_path, index=False)
        return load_manifest(tmp_path, **options)


def _blank(value: Any) -> bool:
    """A missing cell of a frame: None, NaN or NaT."""
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def predict_change(
    model: ChangeModel,
    manifest: str | Path | pd.DataFrame,
    *,
    columns: Mapping[str, str] | None = None,
    on_error: Literal["skip", "stop"] = "skip",
) -> Predictions:
    """Predict per scan and per consecutive visit pair for the patients of ``manifest``.

    Args:
        model: from :func:`learner.pipeline.change_model.load_change_model`.
        manifest: a manifest file (CSV / Parquet) or a frame with its columns; ``score`` may
            be absent or empty.
        columns: the manifest's names for the standard columns (``{"patient_id": "subject#"}``).
        on_error: ``skip``: a row whose scan file is missing, unreadable or of another kind
            than the model's is left out and listed in ``summary["skipped"]``; ``stop``: the
            first such row raises.

    Returns:
        :class:`Predictions`. A patient with one visit gets per-scan predictions and a note.

    Raises:
        DataError: with ``skip``, when no row could be predicted (one line per skipped row).
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error {on_error!r}: use 'skip' or 'stop'")
    skip = on_error == "skip"
    loaded = _as_manifest(manifest, model, columns, skip_bad_files=skip)
    skipped: list[SkippedRow] | None = list(loaded.skipped) if skip else None
    if skipped and loaded.frame.empty:
        raise nothing_left(skipped)
    embedded = _embed_manifest(model, loaded, skipped)
    zone = ["zone"] if "zone" in embedded.columns and embedded["zone"].notna().any() else []
    scans = _ood_columns(model, embedded).rename(columns={"split": "seen"})

    visits, matrix = visit_embeddings(embedded)
    # Every consecutive pair, labelled or not: pair on a placeholder score, read the real one.
    pairs = consecutive_pairs(visits.assign(score=0.0))
    start, end = pairs["index_from"].to_numpy(), pairs["index_to"].to_numpy()
    head = visits["pred_score"].to_numpy(np.float64)
    x = change_features(matrix, pairs, model.feature, head, visit_times(visits))
    proba = model.probe.predict_proba(x) if len(pairs) else np.zeros((0, len(CLASSES)))
    pred = visits["pred_score"].to_numpy(np.float64)
    # consecutive_pairs carries the clinician's label of each pair (None where a pair skips a
    # visit or has none) when the manifest has a change_label column.
    labelled = [CHANGE_LABEL] if CHANGE_LABEL in pairs.columns else []
    table = pairs[["patient_id", *zone, "visit_from", "visit_to", *labelled]].rename(
        columns={"visit_from": "visit_order_from", "visit_to": "visit_order_to"}
    )
    table = table.assign(
        **{name: proba[:, k] for k, name in enumerate(PROBABILITIES)},
        predicted_change=pred[end] - pred[start],
        distance=cosine_distance(matrix[start], matrix[end]),
        score_from=visits["score"].to_numpy(np.float64)[start],
        score_to=visits["score"].to_numpy(np.float64)[end],
    )
    visit_ids = _visit_ids(scans)
    zone_pairs: pd.DataFrame | None = None
    if zone:
        zone_pairs = _finish(table, model, visit_ids, scans)
        visit_scores = scans.groupby(["patient_id", "visit_order"])["score"].mean()
        table = (
            table.groupby(["patient_id", "visit_order_from", "visit_order_to"], sort=True)
            .agg(
                **{name: (name, "mean") for name in PROBABILITIES},
                predicted_change=("predicted_change", "mean"),
                distance=("distance", "mean"),
                n_zones=("zone", "size"),
                **{c: (c, "first") for c in labelled},  # every zone of a visit pair shares it
            )
            .reset_index()
        )
        key_from = list(zip(table["patient_id"], table["visit_order_from"], strict=True))
        key_to = list(zip(table["patient_id"], table["visit_order_to"], strict=True))
        table["score_from"] = visit_scores.reindex(key_from).to_numpy(np.float64)
        table["score_to"] = visit_scores.reindex(key_to).to_numpy(np.float64)
    pair_table = _finish(table, model, visit_ids, scans)
    summary = _summary(model, scans, pair_table, loaded)
    summary.update(_skipped_summary(skipped or []))
    summary["ood"] = _ood_summary(model, scans, pair_table)
    if model.ood_reference is None:
        summary["notes"].append(summary["ood"]["note"])
    elif model.ood_reference.input is None and model.module.cfg.data.input.kind != "tabular":
        # Views and modalities the encoder ignores go unseen without the input part: say so.
        summary["notes"].append(
            f"OOD check without its input part: {model.ood_reference.input_note}"
        )
    return Predictions(scans=scans, pairs=pair_table, zone_pairs=zone_pairs, summary=summary)


def _skipped_summary(skipped: list[SkippedRow]) -> dict[str, Any]:
    """The rows left out, in manifest order: their count and each row, path and reason."""
    rows = sorted(skipped, key=lambda s: s.row)
    return {"skipped_rows": len(rows), "skipped": [s.to_json() for s in rows]}


def _visit_ids(scans: pd.DataFrame) -> pd.Series:
    """(patient_id, visit_order) -> the visit as written in the manifest."""
    return scans.groupby(["patient_id", "visit_order"])["visit"].first()


def _finish(
    table: pd.DataFrame,
    model: ChangeModel,
    visit_ids: pd.Series,
    scans: pd.DataFrame,
) -> pd.DataFrame:
    """Label, visit ids, the true label (the pair's clinician ``change_label`` where it has
    one, else the score's where both visits have a score), and the OOD columns of the pair's
    scans."""
    out = table.reset_index(drop=True).copy()
    proba = out[list(PROBABILITIES)].to_numpy(np.float64)
    out["label"] = np.asarray(CLASSES)[np.argmax(proba, axis=1)] if len(out) else []
    # The head's reading of the same pair, in the model's band (learner.evaluate.answer).
    head = head_labels(out["predicted_change"], model.band, higher_is_better=model.higher_is_better)
    out["head_label"] = head
    out["agree"] = np.asarray(out["label"].to_numpy() == head, dtype=bool)
    source = model.answer_from
    # The head answers where it was chosen and has a reading; else the probe does.
    use_head = np.asarray([source == "head" and h is not None for h in head], dtype=bool)
    out["answer"] = np.where(use_head, head, out["label"].to_numpy(dtype=object))
    out["answer_from"] = np.where(use_head, "head", "probe" if source == "head" else source)
    for side in ("from", "to"):
        keys = list(zip(out["patient_id"], out[f"visit_order_{side}"], strict=True))
        out[f"visit_{side}"] = visit_ids.reindex(keys).to_numpy()
    change = out["score_to"] - out["score_from"]
    labelled = np.isfinite(change.to_numpy(np.float64))
    out["change"] = change
    true = np.full(len(out), None, dtype=object)
    if labelled.any():
        true[labelled] = label_changes(
            change[labelled], model.band, higher_is_better=model.higher_is_better
        )
    sources = np.full(len(out), None, dtype=object)
    sources[labelled] = SCORE
    given = CHANGE_LABEL in out.columns
    if given:
        clinician = out[CHANGE_LABEL].to_numpy(dtype=object)
        use = pd.notna(clinician)
        true[use] = clinician[use]
        sources[use] = CLINICIAN
    out["true_label"] = true
    zone = ["zone"] if "zone" in out.columns else []
    first = ["patient_id", *zone, "visit_from", "visit_to", "visit_order_from", "visit_order_to"]
    middle = [*PROBABILITIES, *ANSWER_COLUMNS, "predicted_change", "distance"]
    last = [c for c in ("n_zones",) if c in out.columns]
    last += ["score_from", "score_to", "change", "true_label"]
    if given:
        out["true_label_source"] = sources
        last.append("true_label_source")
    out["ood_score"], out["ood"] = _pair_ood(out, scans)
    # None (no OOD reference) is not a flag.
    flagged = [flag is not None and bool(flag) for flag in out["ood"]]
    out["caveat"] = [
        _ood_caveat(model.caveat, score) if flag else model.caveat
        for flag, score in zip(flagged, out["ood_score"], strict=True)
    ]
    out["model_record"] = record_line(model.record)
    return out[first + middle + last + list(OOD_PAIR_COLUMNS) + list(RECORD_COLUMNS)]


def _pair_ood(pairs: pd.DataFrame, scans: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per pair row: the largest ``ood_score`` of its two visits' scans (of its zone, on a
    zone row), and whether any of them is flagged (None without an OOD reference)."""
    if not len(pairs) or scans["ood"].isna().all():
        return np.full(len(pairs), math.nan), np.full(len(pairs), None, dtype=object)
    keys = ["patient_id", *(["zone"] if "zone" in pairs.columns else []), "visit_order"]
    per_visit = scans.assign(ood=scans["ood"].astype(bool)).groupby(keys)
    score, flag = per_visit["ood_score"].max(), per_visit["ood"].any()
    scores, flags = [], []
    for side in ("from", "to"):
        index = pd.MultiIndex.from_frame(
            pairs[keys[:-1]].assign(visit_order=pairs[f"visit_order_{side}"])
        )
        scores.append(score.reindex(index).to_numpy(np.float64))
        flags.append(flag.reindex(index).fillna(False).to_numpy(bool))
    return np.fmax(*scores), flags[0] | flags[1]


def _ood_caveat(caveat: str, score: float) -> str:
    """The row's caveat with the reason a flagged scan gives."""
    reason = f"scan unlike the training scans (ood_score {score:.1f})"
    return f"{caveat}; {reason}" if caveat else reason


def _ood_summary(model: ChangeModel, scans: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, Any]:
    """The summary's ``ood``: the rule and thresholds, and the flagged scans and pairs."""
    reference = model.ood_reference
    if reference is None:
        return {"available": False, "note": _no_ood_note(model)}
    flagged = scans[scans["ood"].astype(bool)].sort_values("ood_score", ascending=False)
    named = ("patient_id", "visit", "zone", "path", "ood_score", "ood_p", "ood_by")
    shown = [c for c in named if c in scans]
    return {
        **reference.describe(),
        "scans_flagged": len(flagged),
        "pairs_flagged": int(pairs["ood"].astype(bool).sum()),
        "flagged": json.loads(flagged[shown].to_json(orient="records")),
    }


def _summary(
    model: ChangeModel, scans: pd.DataFrame, pairs: pd.DataFrame, manifest: Manifest
) -> dict[str, Any]:
    # The manifest's own single-visit warning speaks of pretraining; the note below replaces it.
    notes = [w for w in manifest.warnings if SINGLE_VISIT not in w]
    visits = scans.groupby("patient_id")["visit_order"].nunique()
    single = sorted(visits[visits < 2].index.astype(str))
    if single:
        shown = ", ".join(repr(p) for p in single[:5]) + (" ..." if len(single) > 5 else "")
        notes.append(
            f"{len(single)} patient(s) with one visit get per-scan predictions and no pair: {shown}"
        )
    trained = scans["seen"].isin(["train", "val"])
    seen = sorted(set(scans.loc[trained, "patient_id"].astype(str)))
    if seen:
        notes.append(
            f"{len(seen)} patient id(s) are in the model's training split (e.g. {seen[0]!r}); "
            "if they are the same patients, their predictions are not a held-out test"
        )
    summary: dict[str, Any] = {
        "model": str(model.folder),
        "selected": model.info.get("selection", {}).get("cell"),
        "classes": list(CLASSES),
        "band": model.band,
        "higher_is_better": model.higher_is_better,
        "temperature": model.probe.temperature,
        "record": model.record,
        "caveat": model.caveat,
        "record_summary": record_lines(model.record),
        "answer": _answer_summary(model, pairs),
        "patients": int(scans["patient_id"].nunique()),
        "scans": len(scans),
        "pairs": len(pairs),
        "labelled_pairs": int(pairs["true_label"].notna().sum()),
        "labels": _labels_summary(model, pairs),
        "notes": notes,
        "warnings": _data_warnings(model, scans, pairs),
    }
    labelled = pairs[pairs["true_label"].notna()]
    if len(labelled):
        true, predicted = label_codes(labelled["true_label"]), label_codes(labelled["label"])
        confusion = confusion_counts(true, predicted)
        accuracy, balanced, macro_f1 = class_metrics(confusion)
        by_source = {}
        for name, column in (("probe", "label"), ("head", "head_label"), ("answer", "answer")):
            read = labelled[labelled[column].notna()]
            codes = confusion_counts(label_codes(read["true_label"]), label_codes(read[column]))
            by_source[name] = class_metrics(codes)[1] if len(read) else math.nan
        scored = scans[np.isfinite(scans["score"].to_numpy(np.float64))]
        summary["metrics"] = {
            "accuracy": accuracy,
            "balanced_accuracy": balanced,
            "macro_f1": macro_f1,
            "confusion": confusion.tolist(),
            "balanced_accuracy_by_label": by_source,
            "score_mae": float(np.mean(np.abs(scored["pred_score"] - scored["score"])))
            if len(scored)
            else math.nan,
        }
    return summary


def model_labels_line(info: Mapping[str, Any]) -> str:
    """One line on the labels a change model's probe was trained on (``model.json``'s
    ``labels``): the clinicians' change_label, the score's, or both."""
    labels = info.get("labels")
    if not isinstance(labels, Mapping):
        return (
            "the model records no label source (saved by an older learner, which labelled "
            "every pair from the score change)"
        )
    fitted = labels.get("fitted_on", {})
    clinician, total = int(fitted.get(CLINICIAN, 0)), sum(int(v) for v in fitted.values())
    if not clinician:
        return f"the model's probe was trained on score-derived labels for all {total} pairs"
    if clinician == total:
        return f"the model's probe was trained on clinicians' change_label for all {total} pairs"
    return (
        f"the model's probe was trained on clinicians' change_label for {clinician} of "
        f"{total} pairs (the rest from the score)"
    )


def _labels_summary(model: ChangeModel, pairs: pd.DataFrame) -> dict[str, Any]:
    """The summary's ``labels``: what the model's probe was trained on (its ``model.json``
    block and one line) and, with a change_label column here, where the true labels came
    from."""
    out: dict[str, Any] = {
        "model": model.info.get("labels"),
        "model_line": model_labels_line(model.info),
    }
    if "true_label_source" in pairs.columns:
        out["true_labels"] = source_counts(pairs["true_label_source"].to_numpy(dtype=object))
    return out


def _data_warnings(model: ChangeModel, scans: pd.DataFrame, pairs: pd.DataFrame) -> list[str]:
    """The warnings every command gives (:mod:`learner.evaluate.data_warnings`): on the pairs
    with scores (what the summary's metrics rest on) and the scores against the model's
    training range."""
    labelled = pairs[pairs["true_label"].notna()]
    counts = []
    if len(labelled):
        per_class = labelled["true_label"].value_counts()
        counts = [
            {
                "class_counts_test": {c: int(per_class.get(c, 0)) for c in CLASSES},
                "n_test_patients": int(labelled["patient_id"].nunique()),
            }
        ]
    score_range = model.info.get("score_range")
    return data_warnings(
        delta=model.band,
        pair_counts=counts,
        scores=scans["score"].to_numpy(np.float64) if "score" in scans.columns else None,
        score_range=score_range,
        judged_on="scored",
    )


def _answer_summary(model: ChangeModel, pairs: pd.DataFrame) -> dict[str, Any]:
    """Which label the ``answer`` column reads, by which rule, the validation numbers it was
    chosen on, and how often probe and head agree here."""
    choice = model.info.get("answer")
    recorded = model.answer_from != NO_CHOICE and isinstance(choice, Mapping)
    return {
        "from": model.answer_from,
        "rule": RULE if recorded else "none recorded: the probe's label is the answer",
        "balanced_accuracy_validation": choice.get("balanced_accuracy_validation")
        if recorded and isinstance(choice, Mapping)
        else None,
        "n_validation_pairs": choice.get("n_validation_pairs")
        if recorded and isinstance(choice, Mapping)
        else None,
        "pairs_agreeing": int(pairs["agree"].sum()),
        "pairs_disagreeing": int((~pairs["agree"].astype(bool)).sum()),
    }


def round_probabilities(proba: np.ndarray, decimals: int = CSV_DECIMALS) -> np.ndarray:
    """Each row rounded to ``decimals`` so that it still sums to 1 (largest remainder: the
    units lost to flooring go to the largest fractional parts).

    >>> round_probabilities(np.array([[0.3333, 0.3333, 0.3334], [0.12345, 0.5, 0.37655]]))
    array([[0.333, 0.333, 0.334],
           [0.123, 0.5  , 0.377]])
    """
    proba = np.asarray(proba, dtype=np.float64)
    if proba.size == 0:
        return proba.copy()
    scale = 10**decimals
    scaled = proba * scale
    floors = np.floor(scaled)
    short = np.clip(np.rint(scale - floors.sum(axis=1)), 0, proba.shape[1]).astype(int)
    order = np.argsort(floors - scaled, axis=1, kind="stable")  # largest remainder first
    rows = np.arange(len(proba))
    for rank in range(proba.shape[1]):
        floors[rows, order[:, rank]] += rank < short
    return floors / scale


def _for_csv(frame: pd.DataFrame) -> pd.DataFrame:
    if not set(PROBABILITIES) <= set(frame.columns):
        return frame
    out = frame.copy()
    out[list(PROBABILITIES)] = round_probabilities(out[list(PROBABILITIES)].to_numpy(np.float64))
    return out


def _write_parquet(frame: pd.DataFrame, path: Path, record: dict[str, Any]) -> None:
    """``frame`` as Parquet with the model's record in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), PARQUET_RECORD_KEY: json.dumps(record).encode()}
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(metadata), tmp)


def read_parquet_record(path: str | Path) -> dict[str, Any] | None:
    """The ``{"record", "caveat"}`` a predictions Parquet file holds in its metadata."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(PARQUET_RECORD_KEY)
    return json.loads(raw) if raw is not None else None


def write_predictions(result: Predictions, out: Path) -> dict[str, Path]:
    """Write the pair table to ``out`` (``.csv`` or ``.parquet``), the scans (and zone pairs)
    beside it as ``<stem>_scans`` (``<stem>_zones``), and ``<stem>_summary.json``.

    CSV probabilities are rounded to 3 decimals (each row still sums to 1); Parquet keeps
    full precision and holds the model's record and caveat in its metadata
    (:func:`read_parquet_record`)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ConfigError(f"--out {out}: write .csv or .parquet (e.g. --out predictions.csv)")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = {"pairs": out, "scans": out.with_name(f"{out.stem}_scans{suffix}")}
    if result.zone_pairs is not None:
        written["zones"] = out.with_name(f"{out.stem}_zones{suffix}")
    tables = {"pairs": result.pairs, "scans": result.scans, "zones": result.zone_pairs}
    record = {key: result.summary.get(key) for key in ("record", "caveat")}
    for key, path in written.items():
        frame = tables[key]
        assert frame is not None
        with atomic_path(path) as tmp:
            if suffix == ".csv":
                _for_csv(frame).to_csv(tmp, index=False)
            else:
                _write_parquet(frame, tmp, record)
    summary = out.with_name(f"{out.stem}_summary.json")
    write_json(summary, result.summary)
    written["summary"] = summary
    return written
