"""`learner embed`: one embedding per scan, streamed to Parquet so memory stays flat."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from learner.config import Config
from learner.data.dataset import SCAN_RANK
from learner.data.manifest import Manifest
from learner.device import resolve_device
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

_META_COLUMNS = ("patient_id", "visit", "visit_order", "zone", "path", "score", "split")


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
) -> Path:
    """Embed every row of ``frame`` (a manifest frame with a ``split`` column) into ``out``."""
    model.eval()
    frame = frame.reset_index(drop=True)
    dataset = make_dataset(data, frame, train=False, seed=0)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    meta = {
        **metadata,
        "score_range": list(model.score_range),
        "higher_is_better": model.cfg.data.higher_is_better,
    }
    with EmbeddingsWriter(out, meta) as writer:
        for batch in loader:
            x = batch["x"].to(model.device)
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
            writer.write_batch(chunk)
    return out


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
) -> Path:
    """`learner embed`: embed a manifest with a trained checkpoint.

    Patients of the run's split keep their split; patients the run never saw are ``external``.
    """
    target = resolve_device(device)  # a bad --device fails before the checkpoint is read
    model, meta = load_checkpoint(checkpoint)
    model.to(target)
    cfg: Config = model.cfg
    if clips_per_scan is not None:
        cfg.data.input.clips_per_scan = clips_per_scan
    manifest = config_manifest(cfg, manifest_path)
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
    return embed_frame(model, data, frame, out, metadata=metadata, batch_size=batch_size)
