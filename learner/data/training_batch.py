"""A training batch as DataLoader workers send it, made into the encoder's input on the
training device.

Why: with the decode cache warm, what was left of a training item's cost was float
conversion, standardisation and an affine resampling per clip, in the worker processes, and
a GPU waited for them 70-80% of the time (issue 29, ``benchmarks/gpu_check.py``). A worker
now only slices: the sampled frames of a clip as uint8 (a volume as the cache's float16), plus
the item's augmentation parameters drawn from its own RNG
(:func:`learner.data.augment.draw_clip_params`). :func:`finish_training_batch` does the
arithmetic for the whole batch at once, on whatever device the batch was moved to (a CPU-only
run does the same on the CPU), so the result does not depend on where it ran beyond float
rounding, nor on the number of workers.

What a raw training item holds, per input kind (``x``, then ``aug``):

- ``video``: uint8 (T, S, S) grey or (T, S, S, 3) RGB; (8,) clip parameters.
- ``image``: uint8 (S, S) or (S, S, 3); (8,) clip parameters (a still is a one-frame clip).
- ``slices``: float16 (T, S, S), slices of the normalised volume; (8,) clip parameters.
- ``volume``: float16 (S, S, S), the normalised volume; (14,) volume parameters.

``aug`` of length 0 means no augmentation (``data.input.augment: 0``): the input is then
exactly the standardised frames.

Example:
    >>> batch = {"x": torch.zeros(2, 4, 16, 16, dtype=torch.uint8), "aug": torch.zeros(2, 0)}
    >>> finish_training_batch(batch, kind="video", channels=1)["x"].shape
    torch.Size([2, 4, 1, 16, 16])
"""

from __future__ import annotations

from typing import Any

import torch

from learner.data.augment import apply_clip_params, apply_volume_params
from learner.data.clips import EPS, LUMA

# The key that marks a batch whose input still needs finishing.
AUGMENT_KEY = "aug"


def is_raw(batch: dict[str, Any]) -> bool:
    """Whether ``batch`` holds workers' raw training items (:func:`finish_training_batch`)."""
    return AUGMENT_KEY in batch


def finish_training_batch(batch: dict[str, Any], *, kind: str, channels: int) -> dict[str, Any]:
    """``batch`` with ``x`` made into the encoder's input and ``aug`` consumed.

    Args:
        batch: a collated batch of raw training items (see the module docstring).
        kind: ``data.input.kind``.
        channels: ``data.input.channels`` (1 or 3; clips and stills only).

    Returns:
        A new dict: ``x`` float32 (B, T, C, S, S) for video and slices, (B, C, S, S) for
        stills, (B, 1, S, S, S) for volumes; every other key as it was.
    """
    out = {k: v for k, v in batch.items() if k != AUGMENT_KEY}
    out["x"] = training_input(batch["x"], batch[AUGMENT_KEY], kind=kind, channels=channels)
    return out


# On a CPU a batch is finished in chunks of at most this many bytes of float32: each step
# streams the whole chunk through memory, and a batch of 32 clips of 8 x 224^2 RGB (150 MiB)
# ran 3.5x slower per clip than clip by clip on the 2-core machine (cache misses). A GPU
# takes the batch at once.
CPU_CHUNK_BYTES = 4 * 2**20


@torch.no_grad()
def training_input(x: torch.Tensor, aug: torch.Tensor, *, kind: str, channels: int) -> torch.Tensor:
    """The arithmetic of :func:`finish_training_batch` on the raw input ``x`` and parameters
    ``aug`` (B, P); P = 0: no augmentation."""
    if x.device.type == "cpu" and len(x) > 1:
        # At most `channels` floats per raw value (a grey clip expanded to RGB).
        chunk = max(1, CPU_CHUNK_BYTES // (4 * x[0].numel() * channels))
        if chunk < len(x):
            parts = [
                _training_input(x[i : i + chunk], aug[i : i + chunk], kind, channels)
                for i in range(0, len(x), chunk)
            ]
            return torch.cat(parts)
    return _training_input(x, aug, kind, channels)


def _training_input(x: torch.Tensor, aug: torch.Tensor, kind: str, channels: int) -> torch.Tensor:
    augment = aug.shape[-1] > 0
    if kind == "volume":
        volumes = x.float()[:, None]
        return apply_volume_params(volumes, aug) if augment else volumes
    if kind == "slices":
        clips = x.float()[:, :, None].expand(-1, -1, channels, -1, -1).contiguous()
    elif kind in ("video", "image"):
        frames = x[:, None] if kind == "image" else x  # a still is a one-frame clip
        clips = standardise_clips(_as_clip_channels(frames, channels))
    else:
        raise ValueError(f"no raw training input for input kind {kind!r}")
    if augment:
        clips = apply_clip_params(clips, aug)
    return clips[:, 0] if kind == "image" else clips


def _as_clip_channels(frames: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (B, T, S, S) grey or (B, T, S, S, 3) RGB -> float32 (B, T, C, S, S) in [0, 1]."""
    x = frames.float() / 255.0
    if x.ndim == 5:  # RGB
        if channels == 1:
            luma = torch.as_tensor(LUMA, dtype=x.dtype, device=x.device)
            return (x @ luma)[:, :, None]
        return x.permute(0, 1, 4, 2, 3)
    return x[:, :, None].expand(-1, -1, channels, -1, -1)


def standardise_clips(clips: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std per clip; a constant clip becomes zeros (as
    :func:`learner.data.clips.prepare_clip` standardises one clip)."""
    dims = tuple(range(1, clips.ndim))
    mean = clips.mean(dim=dims, keepdim=True)
    centred = clips - mean
    std = centred.square().mean(dim=dims, keepdim=True).sqrt()
    # The relative threshold of clips._standardise: float rounding leaves a constant clip a
    # tiny std that a fixed eps would blow up into noise.
    constant = std <= EPS * mean.abs().clamp(min=1.0)
    return (centred / std).masked_fill_(constant, 0.0)
