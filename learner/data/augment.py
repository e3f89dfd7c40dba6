"""Training-time augmentations for clips (T, C, H, W), stills (C, H, W) and volumes (1, D, H, W).

Two halves, so that a DataLoader worker only draws numbers and the training device does the
arithmetic (issue 29: per-item affine grids in the workers left a GPU waiting 70-80% of the
time):

- ``draw_*_params`` draw every random parameter of one item from the
  ``numpy.random.Generator`` passed in, as a small float32 vector. An item's augmentation is
  thus a pure function of its RNG (the dataset derives that RNG from seed, epoch and index,
  which keeps runs reproducible with any number of DataLoader workers).
- ``apply_*_params`` apply a whole batch of such vectors at once (one ``affine_grid`` /
  ``grid_sample`` call per batch) on whatever device the batch is on.

``augment_clip`` / ``augment_image`` / ``augment_volume`` compose the two for one item (the
draws in the same order as always, so a seed gives the transforms it always gave). A clip gets
ONE transform shared by all its frames: motion between frames is signal, not something to
scramble. Nothing here runs at evaluation.

Geometric transforms resample once through a single affine grid (crop, rotation and scale
composed), and fill what falls outside the source with the input's minimum: the background of
an ultrasound sector or an MRI field of view is dark, and a mid-grey corner would be an
artefact the encoder could learn.

Example:
    >>> rng = np.random.default_rng(0)
    >>> clip = torch.randn(16, 1, 112, 112)
    >>> augment_clip(clip, rng).shape
    torch.Size([16, 1, 112, 112])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ClipAugment:
    """Ranges of the 2D clip augmentation.

    Attributes:
        crop_scale: area fraction of the random resized crop.
        crop_aspect: aspect-ratio range of the crop (log-uniform); kept near 1 because
            stretching distorts ultrasound geometry.
        rotation_deg: rotation drawn uniformly in +-rotation_deg.
        brightness: additive shift in +-brightness (input units; one std after per-clip
            standardisation).
        contrast: multiplicative factor about the clip mean in 1 +- contrast.
    """

    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_aspect: tuple[float, float] = (0.9, 1.0 / 0.9)
    rotation_deg: float = 10.0
    brightness: float = 0.15
    contrast: float = 0.15

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0.0 < self.crop_aspect[0] <= self.crop_aspect[1]:
            raise ValueError(f"crop_aspect must be 0 < low <= high, got {self.crop_aspect}")
        if self.rotation_deg < 0 or self.brightness < 0 or not 0 <= self.contrast < 1:
            raise ValueError(
                "rotation_deg and brightness must be >= 0 and contrast in [0, 1), got "
                f"{self.rotation_deg}, {self.brightness}, {self.contrast}"
            )

    def scaled(self, strength: float) -> ClipAugment:
        """These ranges widened (strength > 1) or narrowed (< 1) about no change; 0 = off.

        Every range grows linearly with ``strength``; the crop's area floor stops at 0.25
        and the contrast at 0.9, beyond which a clip would no longer show its lung.
        """
        if strength < 0:
            raise ValueError(f"augmentation strength must be >= 0, got {strength}")
        if strength == 1.0:  # exactly these ranges (no rounding through the arithmetic below)
            return self
        low_aspect = math.exp(strength * math.log(self.crop_aspect[0]))
        high_aspect = math.exp(strength * math.log(self.crop_aspect[1]))
        return ClipAugment(
            crop_scale=(max(0.25, 1.0 - strength * (1.0 - self.crop_scale[0])), 1.0),
            crop_aspect=(low_aspect, high_aspect),
            rotation_deg=strength * self.rotation_deg,
            brightness=strength * self.brightness,
            contrast=min(0.9, strength * self.contrast),
        )


@dataclass(frozen=True)
class VolumeAugment:
    """Ranges of the 3D volume augmentation.

    Attributes:
        rotation_deg: rotation about each axis drawn uniformly in +-rotation_deg.
        scale: isotropic zoom factor range.
        intensity_scale: multiplicative factor in 1 +- intensity_scale.
        intensity_shift: additive shift in +-intensity_shift.
    """

    rotation_deg: float = 5.0
    scale: tuple[float, float] = (0.95, 1.05)
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must satisfy 0 < low <= high, got {self.scale}")
        if self.rotation_deg < 0 or self.intensity_shift < 0 or not 0 <= self.intensity_scale < 1:
            raise ValueError(
                "rotation_deg and intensity_shift must be >= 0 and intensity_scale in [0, 1), "
                f"got {self.rotation_deg}, {self.intensity_shift}, {self.intensity_scale}"
            )

    def scaled(self, strength: float) -> VolumeAugment:
        """These ranges widened (strength > 1) or narrowed (< 1) about no change; 0 = off.

        The zoom range stops at 0.5-1.5 and the intensity scale at 0.9.
        """
        if strength < 0:
            raise ValueError(f"augmentation strength must be >= 0, got {strength}")
        if strength == 1.0:
            return self
        return VolumeAugment(
            rotation_deg=strength * self.rotation_deg,
            scale=(
                max(0.5, 1.0 - strength * (1.0 - self.scale[0])),
                min(1.5, 1.0 + strength * (self.scale[1] - 1.0)),
            ),
            intensity_scale=min(0.9, strength * self.intensity_scale),
            intensity_shift=strength * self.intensity_shift,
        )


# A clip's parameter vector: the 2 x 3 affine theta (row-major), contrast, brightness.
CLIP_PARAMS = 8
# A volume's: the 3 x 4 affine theta (row-major), intensity gain, intensity shift.
VOLUME_PARAMS = 14


def draw_clip_params(
    rng: np.random.Generator, spec: ClipAugment | None, height: int, width: int
) -> np.ndarray:
    """One clip's random resized crop + rotation + brightness/contrast, as a parameter vector.

    Args:
        rng: source of every random parameter (drawn in a fixed order).
        spec: ranges; defaults to :class:`ClipAugment`'s.
        height, width: the frame size the transform applies to (the rotation is built in
            pixel units, so that non-square frames are not sheared).

    Returns:
        float32 ``(CLIP_PARAMS,)``: theta (6), contrast, brightness.
    """
    spec = spec or ClipAugment()
    area = rng.uniform(*spec.crop_scale)
    aspect = math.exp(rng.uniform(math.log(spec.crop_aspect[0]), math.log(spec.crop_aspect[1])))
    crop_w = min(1.0, math.sqrt(area * aspect))
    crop_h = min(1.0, math.sqrt(area / aspect))
    # Crop centre in normalised coordinates, kept so that the crop lies inside the frame.
    centre_x = rng.uniform(-(1.0 - crop_w), 1.0 - crop_w)
    centre_y = rng.uniform(-(1.0 - crop_h), 1.0 - crop_h)
    angle = math.radians(rng.uniform(-spec.rotation_deg, spec.rotation_deg))
    contrast = rng.uniform(1.0 - spec.contrast, 1.0 + spec.contrast)
    brightness = rng.uniform(-spec.brightness, spec.brightness)

    # affine_grid works in normalised [-1, 1] coordinates per axis; rotate in pixel units
    # (S^-1 R S) so that non-square frames are not sheared.
    half = np.array([width / 2.0, height / 2.0])
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    linear = np.diag([crop_w, crop_h]) @ (np.diag(1.0 / half) @ rotation @ np.diag(half))
    theta = np.concatenate([linear, [[centre_x], [centre_y]]], axis=1)
    return np.concatenate([theta.ravel(), [contrast, brightness]]).astype(np.float32)


def apply_clip_params(clips: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply one parameter vector per clip to a batch of clips, every frame alike.

    Args:
        clips: float (B, T, C, H, W).
        params: (B, CLIP_PARAMS) from :func:`draw_clip_params`, on any device.

    Returns:
        Float (B, T, C, H, W), same dtype and device.

    Raises:
        ValueError: ``clips`` is not 5-D floating point or ``params`` does not match it.
    """
    if clips.ndim != 5 or not clips.is_floating_point():
        raise ValueError(
            f"expected float clips (B, T, C, H, W), got {tuple(clips.shape)} {clips.dtype}"
        )
    params = _check_params(params, clips.shape[0], CLIP_PARAMS).to(clips.device, clips.dtype)
    b, t, c, h, w = clips.shape
    theta = params[:, :6].reshape(b, 2, 3)
    # The frames and channels of a clip share its transform: sample them as channels of one
    # image, one grid per clip.
    out = _resample(clips.reshape(b, t * c, h, w), theta).reshape(b, t, c, h, w)
    contrast, brightness = (params[:, i].view(b, 1, 1, 1, 1) for i in (6, 7))
    mean = out.mean(dim=(1, 2, 3, 4), keepdim=True)
    return (out - mean) * contrast + mean + brightness


def draw_volume_params(rng: np.random.Generator, spec: VolumeAugment | None) -> np.ndarray:
    """One volume's small 3D rotation + isotropic zoom + intensity gain and shift.

    Returns:
        float32 ``(VOLUME_PARAMS,)``: theta (12), gain, shift.
    """
    spec = spec or VolumeAugment()
    angles = np.radians(rng.uniform(-spec.rotation_deg, spec.rotation_deg, size=3))
    zoom = rng.uniform(*spec.scale)
    gain = rng.uniform(1.0 - spec.intensity_scale, 1.0 + spec.intensity_scale)
    shift = rng.uniform(-spec.intensity_shift, spec.intensity_shift)
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        rotation = rotation @ _axis_rotation(axis, float(angle))
    # Sampling the source on a grid shrunk by 1/zoom magnifies the content by zoom.
    theta = np.concatenate([rotation / zoom, np.zeros((3, 1))], axis=1)
    return np.concatenate([theta.ravel(), [gain, shift]]).astype(np.float32)


def apply_volume_params(volumes: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply one parameter vector per volume to a batch (B, C, D, H, W); see
    :func:`apply_clip_params`."""
    if volumes.ndim != 5 or not volumes.is_floating_point():
        raise ValueError(
            f"expected float volumes (B, C, D, H, W), got {tuple(volumes.shape)} {volumes.dtype}"
        )
    b = volumes.shape[0]
    params = _check_params(params, b, VOLUME_PARAMS).to(volumes.device, volumes.dtype)
    out = _resample(volumes, params[:, :12].reshape(b, 3, 4))
    gain, shift = (params[:, i].view(b, 1, 1, 1, 1) for i in (12, 13))
    return out * gain + shift


def augment_clip(
    clip: torch.Tensor, rng: np.random.Generator, spec: ClipAugment | None = None
) -> torch.Tensor:
    """Random resized crop + rotation + brightness/contrast of one clip, the same for every
    frame: :func:`draw_clip_params` then :func:`apply_clip_params` on a batch of one.

    Args:
        clip: float tensor (T, C, H, W).
        rng: source of every random parameter.
        spec: ranges; defaults to :class:`ClipAugment`'s.

    Returns:
        Float tensor (T, C, H, W), same dtype.

    Raises:
        ValueError: ``clip`` is not 4-D floating point.
    """
    if clip.ndim != 4 or not clip.is_floating_point():
        raise ValueError(
            f"expected a float clip (T, C, H, W), got {tuple(clip.shape)} {clip.dtype}"
        )
    params = draw_clip_params(rng, spec, clip.shape[-2], clip.shape[-1])
    return apply_clip_params(clip[None], torch.from_numpy(params)[None])[0]


def augment_image(
    image: torch.Tensor, rng: np.random.Generator, spec: ClipAugment | None = None
) -> torch.Tensor:
    """:func:`augment_clip` for a still (C, H, W): a one-frame clip, the same transforms."""
    if image.ndim != 3:
        raise ValueError(f"expected a float image (C, H, W), got {tuple(image.shape)}")
    return augment_clip(image[None], rng, spec)[0]


def augment_volume(
    volume: torch.Tensor, rng: np.random.Generator, spec: VolumeAugment | None = None
) -> torch.Tensor:
    """Small 3D rotation + isotropic zoom, then intensity scaling and shift, of one volume.

    Args:
        volume: float tensor (C, D, H, W) (C = 1 for the encoders here).
        rng: source of every random parameter.
        spec: ranges; defaults to :class:`VolumeAugment`'s.

    Returns:
        Float tensor (C, D, H, W), same dtype.

    Raises:
        ValueError: ``volume`` is not 4-D floating point.
    """
    if volume.ndim != 4 or not volume.is_floating_point():
        raise ValueError(
            f"expected a float volume (C, D, H, W), got {tuple(volume.shape)} {volume.dtype}"
        )
    params = draw_volume_params(rng, spec)
    return apply_volume_params(volume[None], torch.from_numpy(params)[None])[0]


def _check_params(params: torch.Tensor, batch: int, width: int) -> torch.Tensor:
    if params.shape != (batch, width):
        raise ValueError(
            f"expected augmentation parameters of shape ({batch}, {width}), got "
            f"{tuple(params.shape)}"
        )
    return params


def _axis_rotation(axis: int, angle: float) -> np.ndarray:
    """3x3 rotation by ``angle`` radians about coordinate ``axis`` (0, 1 or 2)."""
    cos, sin = math.cos(angle), math.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = cos, -sin, sin, cos
    return matrix


def _resample(batch: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply affine ``theta[i]`` to item ``i`` of ``batch`` (N, C, *spatial), bilinear.

    Points that map outside the source take the item's minimum (its dark background).
    """
    fill = batch.amin(dim=tuple(range(1, batch.ndim)), keepdim=True)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    # zeros padding of (x - fill) is padding with fill.
    sampled = F.grid_sample(
        batch - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return sampled + fill
