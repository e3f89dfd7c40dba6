"""A small, fixed summary of what the encoder is given: the *input descriptor* of a scan.

An encoder trained to predict a clinical score keeps what predicts the score and discards the
rest, so a scan of another view, modality or preprocessing can land among the training scans
in embedding space (measured: MRI slices written as a clip for a lung-ultrasound model, and
sagittal among axial brain slices; docs/predict.md). The OOD check therefore also compares
scans where the encoder cannot have thrown anything away: at its input. The descriptor is
computed from the very tensor the encoder receives (after resizing, frame sampling and
intensity normalisation; evaluation items, so no augmentation and no random frame draw):

- **layout**: the tensor averaged over channels (and frames), average-pooled to a coarse
  grid: :data:`GRID_2D` x :data:`GRID_2D` for images and clips, :data:`GRID_3D` cubed for
  volumes (``volume``, and ``slices``, whose frames are a volume's slices). Where the anatomy
  lies (a round head vs an ultrasound sector; a brain seen from above vs from the side);
- **intensities**: the :data:`QUANTILES` of the normalised tensor (at most
  :data:`MAX_QUANTILE_VALUES` values, a fixed stride): the histogram's shape (dark background,
  speckle, contrast);
- **motion** (clips and slices): the mean absolute difference between consecutive frames.

With several evaluation clips per scan the clips' descriptors are averaged, as their
embeddings are. Tabular input has no descriptor (its features are already the input the
OOD check's embedding part compares). The numbers are plain float32, tens per scan: they
travel beside the embedding (``descriptor`` column of the embeddings file).

Example:
    >>> x = torch.zeros(2, 1, 32, 32)  # two (C, H, W) images
    >>> input_descriptor(x, "image").shape
    torch.Size([2, 69])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from learner.data.dataset import SCAN_RANK

GRID_2D = 8
GRID_3D = 4
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Quantiles of a 16-frame 112 px clip (200k values) from a fixed-stride quarter of them: the
# same numbers to two decimals, a quarter of the sort.
MAX_QUANTILE_VALUES = 65536
# Input kinds with a descriptor, and the rank of one item's tensor without the batch axis.
_RANK = {kind: rank for kind, rank in SCAN_RANK.items() if kind != "tabular"}


def descriptor_length(kind: str) -> int:
    """Numbers per scan for input ``kind``; 0 for ``tabular`` (no descriptor)."""
    if kind not in _RANK:
        return 0
    layout = GRID_3D**3 if kind in ("volume", "slices") else GRID_2D**2
    return layout + len(QUANTILES) + (1 if kind in ("video", "slices") else 0)


@torch.no_grad()
def input_descriptor(x: torch.Tensor, kind: str) -> torch.Tensor | None:
    """The (B, P) float32 descriptors of a batch of model inputs ``x`` of input ``kind``
    (``image`` (B, C, H, W); ``video`` / ``slices`` (B, T, C, H, W); ``volume``
    (B, 1, D, H, W); with a clip axis after B when a scan has several evaluation clips);
    None for ``tabular``. P = :func:`descriptor_length`.

    Raises:
        ValueError: ``x`` is not of that kind's rank.
    """
    if kind not in _RANK:
        return None
    rank = _RANK[kind]
    x = x.detach().float()
    if x.ndim == rank + 2:  # (B, K, ...): several clips of one scan, averaged as embeddings are
        b, k = x.shape[:2]
        return input_descriptor(x.flatten(0, 1), kind).view(b, k, -1).mean(1)  # type: ignore[union-attr]
    if x.ndim != rank + 1:
        raise ValueError(f"a {kind} batch needs {rank + 1} dimensions, got shape {tuple(x.shape)}")
    if kind == "image":
        layout = F.adaptive_avg_pool2d(x.mean(1, keepdim=True), GRID_2D)
    elif kind == "video":
        layout = F.adaptive_avg_pool2d(x.mean((1, 2))[:, None], GRID_2D)
    elif kind == "slices":
        layout = F.adaptive_avg_pool3d(x.mean(2)[:, None], GRID_3D)
    else:
        layout = F.adaptive_avg_pool3d(x.mean(1, keepdim=True), GRID_3D)
    flat = x.flatten(1)
    step = math.ceil(flat.shape[1] / MAX_QUANTILE_VALUES)
    levels = torch.tensor(QUANTILES, dtype=flat.dtype, device=flat.device)
    parts = [layout.flatten(1), torch.quantile(flat[:, ::step], levels, dim=1).T]
    if kind in ("video", "slices"):
        motion = (x[:, 1:] - x[:, :-1]).abs().flatten(1).mean(1) if x.shape[1] > 1 else None
        parts.append((motion if motion is not None else flat.new_zeros(len(flat)))[:, None])
    return torch.cat(parts, dim=1).float()
