"""`learner embed`: one embedding per scan, streamed to Parquet so memory stays flat.

Bad rows: by default the first scan that cannot be read (or is of another kind than the
model's) stops the job with one line naming the row. Given a ``skipped`` list, such rows are
left out and listed there instead (``--on-error skip``), each as a
:class:`~learner.data.manifest.SkippedRow`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from learner.config import Config
from learner.data.dataset import SCAN_RANK
from learner.data.descriptor import input_descriptor
from learner.data.manifest import Manifest, SkippedRow
from learner.data.readers import read_scan
from learner.device import resolve_device
from learner.errors import DataError
from learner.evaluate.embeddings_io import EmbeddingsWriter
from learner.train.checkpoint import load_checkpoint
from learner.train.module import LearnerModule
from learner.train.prepared import (
    PreparedData,
    config_manifest,
    input_spec,
    make_dataset,
    resolve_cache,
)

# change_label (a clinician's change judgement) travels along so that `learner evaluate`
# and `learner predict` read it from the embeddings as `run` reads it from the manifest.
_META_COLUMNS = (
    "patient_id",
    "visit",
    "visit_order",
    "zone",
    "path",
    "score",
    "split",
    "change_label",
)


@torch.no_grad()
def embed_frame(
    model: LearnerModule,
    data: PreparedData,
    frame: pd.DataFrame,
    out: Path,
    *,
    metadata: dict[str, Any],
    batch_size: int = 32,
    num_workers: int = 0,
    skipped: list[SkippedRow] | None = None,
) -> Path:
    """Embed every row of ``frame`` (a manifest frame with a ``split`` column) into ``out``.

    Each row also gets the scan's input ``descriptor`` (:mod:`learner.data.descriptor`; none
    for tabular input), from the same eval-mode, unaugmented tensor the encoder embeds.

    With ``skipped`` (a list), a row whose scan cannot be read or is of another kind than
    the model's is left out and appended there; if no row is left, :class:`DataError` is
    raised and ``out`` keeps what it held. Without it, the first such row raises.
    """
    model.eval()
    frame = frame.reset_index(drop=True)
    if skipped is not None:
        frame = _screen_vectors(data, frame, skipped)
        if frame.empty and skipped:
            raise nothing_left(skipped)
    dataset: Dataset[dict[str, Any]] = make_dataset(data, frame, train=False, seed=0)
    collate = default_collate
    if skipped is not None:
        dataset, collate = _Tolerant(dataset), _collate_good
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    meta = {
        **metadata,
        "score_range": list(model.score_range),
        "higher_is_better": model.cfg.data.higher_is_better,
    }
    with EmbeddingsWriter(out, meta) as writer:
        for batch in loader:
            if skipped is not None:
                skipped += [_skipped_row(frame, i, line) for i, line in batch.pop("failed")]
                if "x" not in batch:
                    continue
            x = batch["x"].to(model.device)
            # What the encoder is given, summarised (learner.data.descriptor): the OOD check's
            # input part, measured in the same pass (no second read of any scan).
            descriptor = input_descriptor(x, data.input.kind)
            if x.ndim == data_rank(data) + 2:  # several clips per scan: (B, K, ...)
                b, k = x.shape[:2]
                u, pred = model(x.flatten(0, 1))
                u = u.view(b, k, -1).mean(1)
                pred = pred.view(b, k).mean(1)
            else:
                u, pred = model(x)
            idx = batch["index"].numpy()
            rows = frame.iloc[idx]
            chunk = pd.DataFrame(
                {
                    col: (
                        rows[col].astype(str).to_numpy()
                        if col in ("patient_id", "visit")
                        else rows[col].to_numpy()
                    )
                    for col in _META_COLUMNS
                    if col in rows.columns
                }
            )
            chunk["pred_score"] = model.to_raw_score(pred.float().cpu()).numpy().astype(np.float64)
            chunk["embedding"] = list(u.float().cpu().numpy())
            if descriptor is not None:
                chunk["descriptor"] = list(descriptor.cpu().numpy())
            writer.write_batch(chunk)
        if skipped is not None and writer.n_rows == 0 and len(skipped):
            # Raised inside the writer: the file is discarded, never an empty one in its place.
            raise nothing_left(skipped)
    return out


def nothing_left(skipped: list[SkippedRow]) -> DataError:
    """The error when every row was skipped: one line saying so, then one per row."""
    lines = [f"row {s.row}: {s.reason}" for s in skipped]
    head = (
        f"no scan could be read: all {len(skipped)} row(s) were skipped; fix the rows below "
        "(or check that the manifest is for this model)"
    )
    return DataError(head, problems=[head, *lines])


class _Tolerant(Dataset[dict[str, Any]]):
    """A dataset whose unreadable items come back as ``{"index", "error"}`` instead of raising."""

    def __init__(self, dataset: Dataset[dict[str, Any]]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return self.dataset[index]
        except DataError as exc:
            return {"index": int(index), "error": exc.problems[0]}


def _collate_good(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The readable items collated as usual, plus ``failed``: (index, message) of the others."""
    good = [item for item in items if "error" not in item]
    batch: dict[str, Any] = default_collate(good) if good else {}
    batch["failed"] = [(item["index"], item["error"]) for item in items if "error" in item]
    return batch


def _skipped_row(frame: pd.DataFrame, index: int, message: str) -> SkippedRow:
    row = frame.iloc[index]
    number = int(row["row"]) if "row" in frame.columns else index + 2
    # The dataset names the row; the entry carries it separately.
    reason = message.removeprefix(f"manifest row {number}, column path: ")
    return SkippedRow(number, str(row.get("path", "")), reason)


def _screen_vectors(
    data: PreparedData, frame: pd.DataFrame, skipped: list[SkippedRow]
) -> pd.DataFrame:
    """Tabular input read from (F,) files is read whole when the dataset is built: leave out
    (into ``skipped``) the rows whose file is not a vector of the model's length."""
    if data.input.kind != "tabular" or data.input.feature_columns or "path" not in frame:
        return frame
    length = None if data.feature_stats is None else len(data.feature_stats[0])
    keep = np.ones(len(frame), dtype=bool)
    for i, path in enumerate(frame["path"].astype(str)):
        number = int(frame["row"].iloc[i]) if "row" in frame.columns else i + 2
        try:
            scan = read_scan(path)
        except DataError as exc:
            reason = exc.problems[0]
        else:
            if scan.kind != "vector":
                article = "an" if scan.kind[0] in "aeiou" else "a"
                reason = f"{path}: is {article} {scan.kind}, not the (F,) vector this model reads"
            elif length is not None and scan.array.shape != (length,):
                reason = (
                    f"{path}: holds {scan.array.shape[0]} features but this model reads "
                    f"{length}; save vectors of the training length"
                )
            else:
                continue
        keep[i] = False
        skipped.append(SkippedRow(number, path, reason))
    return frame[keep].reset_index(drop=True)


def data_rank(data: PreparedData) -> int:
    """Rank of one item's ``x`` without the batch axis."""
    return SCAN_RANK[data.input.kind]


def prepared_for_model(
    model: LearnerModule,
    manifest: Manifest,
    frame: pd.DataFrame,
    *,
    assignment: dict[str, str],
    split_hash: str,
    feature_stats: tuple[np.ndarray, np.ndarray] | None,
) -> PreparedData:
    """The data a trained model embeds a new manifest with: its input spec, its score range,
    its training feature statistics, and the decode cache beside the manifest."""
    cfg: Config = model.cfg
    return PreparedData(
        manifest=manifest,
        frame=frame,
        assignment=assignment,
        split_hash=split_hash,
        score_range=model.score_range,
        patient_codes={p: i for i, p in enumerate(sorted(frame["patient_id"].unique()))},
        input=input_spec(cfg),
        cache=resolve_cache(cfg, manifest.source),
        feature_stats=feature_stats,
    )


def embed_checkpoint(
    checkpoint: Path,
    manifest_path: Path,
    out: Path,
    *,
    batch_size: int = 32,
    clips_per_scan: int | None = None,
    device: str = "cpu",
    skipped: list[SkippedRow] | None = None,
) -> Path:
    """`learner embed`: embed a manifest with a trained checkpoint.

    Patients of the run's split keep their split; patients the run never saw are ``external``.
    ``skipped``: as in :func:`embed_frame` (``--on-error skip``); also rows whose scan file
    is missing or unreadable, which otherwise stop the job before the model runs.
    """
    target = resolve_device(device)  # a bad --device fails before the checkpoint is read
    model, meta = load_checkpoint(checkpoint)
    model.to(target)
    cfg: Config = model.cfg
    if clips_per_scan is not None:
        cfg.data.input.clips_per_scan = clips_per_scan
    manifest = config_manifest(cfg, manifest_path, skip_bad_files=skipped is not None)
    if skipped is not None:
        skipped += manifest.skipped
        if manifest.frame.empty:
            raise nothing_left(skipped)
    frame = manifest.frame.copy()
    assignment: dict[str, str] = meta.get("split", {})
    frame["split"] = frame["patient_id"].map(assignment).fillna("external")
    stats = meta.get("feature_stats")
    data = prepared_for_model(
        model,
        manifest,
        frame,
        assignment=assignment,
        split_hash=str(meta.get("split_hash", "")),
        feature_stats=(np.asarray(stats[0]), np.asarray(stats[1])) if stats else None,
    )
    metadata = {
        "objective": cfg.objective.name,
        "delta": cfg.eval.delta,  # so `evaluate` uses the band the training config names
        "seed": meta.get("seed"),
        "split_hash": meta.get("split_hash"),
        "checkpoint": str(checkpoint),
    }
    return embed_frame(
        model, data, frame, out, metadata=metadata, batch_size=batch_size, skipped=skipped
    )
