"""Training-time augmentations for clips (T, C, H, W), stills (C, H, W) and volumes (1, D, H, W).

Every random parameter is drawn from the ``numpy.random.Generator`` passed in, so an item's
augmentation is a pure function of its RNG (the dataset derives that RNG from seed, epoch and
index, which keeps runs reproducible with any number of DataLoader workers). A clip gets ONE
transform shared by all its frames: motion between frames is signal, not something to
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


def augment_clip(
    clip: torch.Tensor, rng: np.random.Generator, spec: ClipAugment | None = None
) -> torch.Tensor:
    """Random resized crop + rotation + brightness/contrast, the same for every frame.

    Args:
        clip: float tensor (T, C, H, W).
        rng: source of every random parameter.
        spec: ranges; defaults to :class:`ClipAugment`'s.

    Returns:
        Float tensor (T, C, H, W), same dtype.

    Raises:
        ValueError: ``clip`` is not 4-D floating point.
    """
    spec = spec or ClipAugment()
    if clip.ndim != 4 or not clip.is_floating_point():
        raise ValueError(
            f"expected a float clip (T, C, H, W), got {tuple(clip.shape)} {clip.dtype}"
        )
    _, _, height, width = clip.shape

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
    half = torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64)
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    linear = torch.diag(torch.tensor([crop_w, crop_h], dtype=torch.float64)) @ (
        torch.diag(1.0 / half) @ rotation @ torch.diag(half)
    )
    theta = torch.cat([linear, torch.tensor([[centre_x], [centre_y]], dtype=torch.float64)], 1)
    out = _resample(clip, theta.to(clip.dtype))

    mean = out.mean()
    return (out - mean) * contrast + mean + brightness


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
    """Small 3D rotation + isotropic zoom, then intensity scaling and shift.

    Args:
        volume: float tensor (C, D, H, W) (C = 1 for the encoders here).
        rng: source of every random parameter.
        spec: ranges; defaults to :class:`VolumeAugment`'s.

    Returns:
        Float tensor (C, D, H, W), same dtype.

    Raises:
        ValueError: ``volume`` is not 4-D floating point.
    """
    spec = spec or VolumeAugment()
    if volume.ndim != 4 or not volume.is_floating_point():
        raise ValueError(
            f"expected a float volume (C, D, H, W), got {tuple(volume.shape)} {volume.dtype}"
        )
    angles = np.radians(rng.uniform(-spec.rotation_deg, spec.rotation_deg, size=3))
    zoom = rng.uniform(*spec.scale)
    gain = rng.uniform(1.0 - spec.intensity_scale, 1.0 + spec.intensity_scale)
    shift = rng.uniform(-spec.intensity_shift, spec.intensity_shift)

    rotation = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(angles):
        rotation = rotation @ _axis_rotation(axis, float(angle))
    # Sampling the source on a grid shrunk by 1/zoom magnifies the content by zoom.
    theta = torch.cat([rotation / zoom, torch.zeros(3, 1, dtype=torch.float64)], 1)
    out = _resample(volume.unsqueeze(0), theta.to(volume.dtype)).squeeze(0)
    return out * gain + shift


def _axis_rotation(axis: int, angle: float) -> torch.Tensor:
    """3x3 rotation by ``angle`` radians about coordinate ``axis`` (0, 1 or 2)."""
    cos, sin = math.cos(angle), math.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    matrix = torch.eye(3, dtype=torch.float64)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = cos, -sin, sin, cos
    return matrix


def _resample(batch: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply one affine ``theta`` to every item of ``batch`` (N, C, *spatial), bilinear.

    Points that map outside the source take the batch minimum (the dark background).
    """
    fill = batch.min()
    # One sampling grid serves every item: build it once, then broadcast it over the batch.
    grid = F.affine_grid(theta.unsqueeze(0), [1, *batch.shape[1:]], align_corners=False)
    grid = grid.expand(batch.shape[0], *grid.shape[1:])
    # zeros padding of (x - fill) is padding with fill.
    sampled = F.grid_sample(
        batch - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return sampled + fill
