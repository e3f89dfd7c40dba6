"""Reading a learner checkpoint back: its metadata alone, or the model it rebuilds.

Checkpoints load with ``weights_only=True``: nothing on disk is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from learner.errors import DataError
from learner.train.module import LearnerModule


def load_checkpoint(path: Path) -> tuple[LearnerModule, dict[str, Any]]:
    """Rebuild the model from a checkpoint (``weights_only=True``: no pickle from disk)."""
    ckpt, meta = _read_checkpoint(path)
    info = {k: v for k, v in meta.items() if k not in ("config", "score_range")}
    model = LearnerModule(meta["config"], tuple(meta["score_range"]), info)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, meta


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """A learner checkpoint's metadata (its config, score range, run info), no model built."""
    return _read_checkpoint(path)[1]


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint's contents and its learner metadata, or a one-line DataError."""
    if not Path(path).is_file():
        raise DataError(f"{path}: checkpoint not found; pass a .ckpt from a pretrain run folder")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(
            f"{path}: not a loadable learner checkpoint ({type(exc).__name__}); "
            "pass checkpoints/best.ckpt or last.ckpt of a pretrain run"
        ) from None
    meta = ckpt.get("learner") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "config" not in meta:
        raise DataError(f"{path}: checkpoint has no learner metadata; was it written by learner?")
    return ckpt, meta
