"""Clip and volume augmentations: determinism, shapes, one transform per clip, ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.data.augment import (
    ClipAugment,
    VolumeAugment,
    augment_clip,
    augment_image,
    augment_volume,
)


def gradient_clip(frames: int = 4, channels: int = 1, size: int = 32) -> torch.Tensor:
    """A clip whose frames are the same smooth image with a bright square."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = x + 0.5 * y
    image[8:16, 8:16] += 2.0
    return image.expand(frames, channels, size, size).clone()


def test_clip_deterministic_given_rng_and_shape_preserving() -> None:
    clip = torch.randn(5, 3, 24, 40)
    a = augment_clip(clip, np.random.default_rng(4))
    b = augment_clip(clip, np.random.default_rng(4))
    c = augment_clip(clip, np.random.default_rng(5))
    assert a.shape == clip.shape and a.dtype == clip.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, clip)


def test_clip_same_transform_for_every_frame() -> None:
    clip = gradient_clip(frames=6)
    out = augment_clip(clip, np.random.default_rng(0))
    for t in range(1, 6):
        torch.testing.assert_close(out[t], out[0])


def test_clip_identity_when_ranges_are_zero() -> None:
    spec = ClipAugment(
        crop_scale=(1.0, 1.0),
        crop_aspect=(1.0, 1.0),
        rotation_deg=0.0,
        brightness=0.0,
        contrast=0.0,
    )
    clip = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(
        augment_clip(clip, np.random.default_rng(0), spec), clip, atol=1e-5, rtol=0
    )


def test_clip_intensity_jitter_stays_in_range() -> None:
    spec = ClipAugment(
        crop_scale=(1.0, 1.0),
        crop_aspect=(1.0, 1.0),
        rotation_deg=0.0,
        brightness=0.2,
        contrast=0.2,
    )
    clip = torch.randn(2, 1, 16, 16)
    for seed in range(20):
        out = augment_clip(clip, np.random.default_rng(seed), spec)
        ratio = out.std() / clip.std()
        shift = out.mean() - clip.mean()
        assert 0.8 - 1e-4 <= ratio <= 1.2 + 1e-4
        assert abs(float(shift)) <= 0.2 + 1e-4


def test_rotation_only_moves_the_square_a_little() -> None:
    spec = ClipAugment(
        crop_scale=(1.0, 1.0),
        crop_aspect=(1.0, 1.0),
        rotation_deg=10.0,
        brightness=0.0,
        contrast=0.0,
    )
    clip = gradient_clip(frames=1, size=48)
    out = augment_clip(clip, np.random.default_rng(1), spec)

    # The bright square's centroid stays near its place (+-10 degrees about the centre).
    def centroid(img: torch.Tensor) -> torch.Tensor:
        mask = (img > 1.5).float()
        ys, xs = torch.nonzero(mask, as_tuple=True)
        return torch.stack([ys.float().mean(), xs.float().mean()])

    moved = torch.linalg.norm(centroid(out[0, 0]) - centroid(clip[0, 0]))
    assert 0.1 < float(moved) < 5.0


def test_outside_of_source_is_filled_with_the_minimum() -> None:
    spec = ClipAugment(
        crop_scale=(1.0, 1.0),
        crop_aspect=(1.0, 1.0),
        rotation_deg=10.0,
        brightness=0.0,
        contrast=0.0,
    )
    clip = torch.ones(1, 1, 32, 32) * 5.0
    clip[..., 16, 16] = 1.0
    out = augment_clip(clip, np.random.default_rng(3), spec)
    # Corners rotate out of the frame; they take the minimum (1), never 0.
    assert float(out.min()) >= 1.0 - 1e-5


def test_volume_deterministic_and_shape_preserving() -> None:
    volume = torch.randn(1, 12, 16, 20)
    a = augment_volume(volume, np.random.default_rng(2))
    b = augment_volume(volume, np.random.default_rng(2))
    assert a.shape == volume.shape and a.dtype == volume.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, augment_volume(volume, np.random.default_rng(3)))


def test_volume_identity_when_ranges_are_zero() -> None:
    spec = VolumeAugment(
        rotation_deg=0.0, scale=(1.0, 1.0), intensity_scale=0.0, intensity_shift=0.0
    )
    volume = torch.randn(1, 8, 8, 8)
    torch.testing.assert_close(
        augment_volume(volume, np.random.default_rng(0), spec), volume, atol=1e-5, rtol=0
    )


def test_volume_small_affine_keeps_content_close() -> None:
    zz, yy, xx = torch.meshgrid(*(torch.linspace(-1, 1, 24),) * 3, indexing="ij")
    volume = torch.exp(-(xx**2 + yy**2 + zz**2) / 0.2)[None]
    out = augment_volume(
        volume, np.random.default_rng(0), VolumeAugment(intensity_scale=0.0, intensity_shift=0.0)
    )
    corr = np.corrcoef(out.flatten().numpy(), volume.flatten().numpy())[0, 1]
    assert 0.95 < corr < 1.0


@pytest.mark.parametrize("bad", [torch.zeros(3, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.int64)])
def test_rejects_wrong_inputs(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="expected a float"):
        augment_clip(bad, np.random.default_rng(0))
    with pytest.raises(ValueError, match="expected a float"):
        augment_volume(bad, np.random.default_rng(0))


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="crop_scale"):
        ClipAugment(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="scale"):
        VolumeAugment(scale=(1.1, 1.0))


def test_image_is_augmented_as_a_one_frame_clip() -> None:
    image = torch.randn(3, 24, 20)
    out = augment_image(image, np.random.default_rng(5))
    assert out.shape == image.shape
    expected = augment_clip(image[None], np.random.default_rng(5))[0]
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, image)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        augment_image(torch.randn(1, 3, 8, 8), np.random.default_rng(0))


def test_strength_scales_every_range_and_zero_is_identity() -> None:
    base = ClipAugment()
    assert base.scaled(1.0) is base
    wide = base.scaled(2.0)
    assert wide.rotation_deg == 2 * base.rotation_deg
    assert wide.brightness == 2 * base.brightness and wide.contrast == 2 * base.contrast
    assert wide.crop_scale[0] < base.crop_scale[0] and wide.crop_aspect[0] < base.crop_aspect[0]
    assert base.scaled(10.0).crop_scale[0] == 0.25 and base.scaled(10.0).contrast == 0.9
    clip = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(
        augment_clip(clip, np.random.default_rng(0), base.scaled(0.0)), clip, atol=1e-5, rtol=0
    )
    volume = torch.randn(1, 8, 8, 8)
    torch.testing.assert_close(
        augment_volume(volume, np.random.default_rng(0), VolumeAugment().scaled(0.0)),
        volume,
        atol=1e-5,
        rtol=0,
    )
    # Stronger augmentation moves a clip further from the original, on the same draws.
    gentle, strong = (
        float((augment_clip(clip, np.random.default_rng(1), base.scaled(k)) - clip).abs().mean())
        for k in (0.5, 2.0)
    )
    assert strong > gentle
    with pytest.raises(ValueError, match="strength"):
        base.scaled(-1.0)
