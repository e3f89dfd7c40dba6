"""Clip and volume preprocessing: frame sampling, resizing, channels, grids, intensities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from learner.data.clips import (
    normalize_intensity,
    pad_square,
    prepare_clip,
    resample_volume,
    resize_frames,
    sample_frame_indices,
    slices_as_frames,
)

# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("n_frames", [1, 2, 3, 7, 16, 17, 100, 1001])
@pytest.mark.parametrize("n_segments", [1, 4, 8, 16])
@pytest.mark.parametrize("train", [False, True])
def test_indices_valid_sorted_and_one_per_segment(
    n_frames: int, n_segments: int, train: bool
) -> None:
    rng = np.random.default_rng(n_frames * 100 + n_segments)
    idx = sample_frame_indices(n_frames, n_segments, train=train, rng=rng)
    assert idx.shape == (n_segments,)
    assert idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() < n_frames
    assert np.all(np.diff(idx) >= 0)
    length = n_frames / n_segments
    for i, frame in enumerate(idx):  # every index lies inside its own segment
        assert math.floor(i * length) <= frame <= min(math.ceil((i + 1) * length) - 1, n_frames - 1)
    if n_frames >= n_segments:
        assert len(np.unique(idx)) == n_segments


def test_eval_indices_are_segment_centres_and_deterministic() -> None:
    np.testing.assert_array_equal(sample_frame_indices(10, 5, train=False), [1, 3, 5, 7, 9])
    np.testing.assert_array_equal(sample_frame_indices(100, 4, train=False), [12, 37, 62, 87])
    np.testing.assert_array_equal(sample_frame_indices(1, 3, train=False), [0, 0, 0])
    np.testing.assert_array_equal(sample_frame_indices(3, 8, train=False), [0, 0, 0, 1, 1, 1, 2, 2])
    # The rng does not matter at evaluation.
    a = sample_frame_indices(50, 8, train=False, rng=np.random.default_rng(1))
    b = sample_frame_indices(50, 8, train=False, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)


def test_train_indices_follow_the_rng() -> None:
    a = sample_frame_indices(300, 16, train=True, rng=np.random.default_rng(0))
    b = sample_frame_indices(300, 16, train=True, rng=np.random.default_rng(0))
    c = sample_frame_indices(300, 16, train=True, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    rng = np.random.default_rng(3)
    draws = {tuple(sample_frame_indices(300, 4, train=True, rng=rng)) for _ in range(20)}
    assert len(draws) > 15  # offsets vary from call to call


def test_sampling_rejects_nonpositive_counts() -> None:
    with pytest.raises(ValueError, match="n_frames"):
        sample_frame_indices(0, 4, train=False)
    with pytest.raises(ValueError, match="n_segments"):
        sample_frame_indices(10, 0, train=False)


# --------------------------------------------------------------------------- resizing


def test_resize_frames_shapes_and_dtype() -> None:
    grey = np.full((3, 30, 50), 77, dtype=np.uint8)
    rgb = np.zeros((2, 40, 20, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    out_grey, out_rgb = resize_frames(grey, 16), resize_frames(rgb, 16)
    assert out_grey.shape == (3, 16, 16) and out_grey.dtype == np.uint8
    assert out_rgb.shape == (2, 16, 16, 3) and out_rgb.dtype == np.uint8
    assert np.all(out_grey == 77)  # a flat frame stays flat
    np.testing.assert_array_equal(out_rgb[0, 5, 5], [0, 200, 0])  # channels are not mixed


def test_resize_frames_antialiases() -> None:
    # One-pixel stripes shrunk 4x must average to mid grey, not alias to black or white.
    stripes = np.zeros((1, 64, 64), dtype=np.uint8)
    stripes[:, :, ::2] = 255
    out = resize_frames(stripes, 16).astype(int)
    assert np.all(np.abs(out[:, 2:-2, 2:-2] - 128) <= 3)


def test_resize_frames_validates() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        resize_frames(np.zeros((4, 4), dtype=np.uint8), 8)
    with pytest.raises(ValueError, match="uint8"):
        resize_frames(np.zeros((2, 4, 4), dtype=np.float32), 8)


# --------------------------------------------------------------------------- prepare_clip


@pytest.mark.parametrize("rgb_in", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
def test_prepare_clip_shape_dtype_and_standardised(rgb_in: bool, channels: int) -> None:
    rng = np.random.default_rng(0)
    shape = (40, 50, 60, 3) if rgb_in else (40, 50, 60)
    video = rng.integers(0, 256, size=shape, dtype=np.uint8)
    clip = prepare_clip(video, frames=8, size=32, channels=channels, train=True, rng=rng)
    assert clip.shape == (8, channels, 32, 32)
    assert clip.dtype == np.float32
    assert abs(float(clip.mean())) < 1e-4
    assert float(clip.std()) == pytest.approx(1.0, abs=1e-4)


def test_grey_to_rgb_repeats_the_channel() -> None:
    video = np.random.default_rng(1).integers(0, 256, size=(6, 20, 20), dtype=np.uint8)
    clip = prepare_clip(video, frames=4, size=20, channels=3, train=False)
    np.testing.assert_array_equal(clip[:, 0], clip[:, 1])
    np.testing.assert_array_equal(clip[:, 0], clip[:, 2])


def test_rgb_to_grey_uses_luminance() -> None:
    video = np.random.default_rng(2).integers(0, 256, size=(4, 12, 12, 3), dtype=np.uint8)
    clip = prepare_clip(video, frames=4, size=12, channels=1, train=False)
    luma = video.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    expected = (luma - luma.mean()) / luma.std()
    np.testing.assert_allclose(clip[:, 0], expected, atol=1e-4)
    # Green looks brighter than red, red brighter than blue.
    frame = np.zeros((1, 4, 6, 3), dtype=np.uint8)
    frame[0, :, 0:2, 0] = frame[0, :, 2:4, 1] = frame[0, :, 4:6, 2] = 255
    grey = prepare_clip(frame, frames=1, size=6, channels=1, train=False)[0, 0, 0]
    assert grey[2] > grey[0] > grey[4]


def test_prepare_clip_samples_the_segment_centres() -> None:
    # Frame t is flat with value 10 t: the standardised clip reveals which frames were taken.
    video = np.broadcast_to((10 * np.arange(20, dtype=np.uint8))[:, None, None], (20, 8, 8))
    clip = prepare_clip(video.copy(), frames=4, size=8, channels=1, train=False)
    t = np.array([2, 7, 12, 17], dtype=np.float64)  # centres of [0,5) [5,10) [10,15) [15,20)
    np.testing.assert_allclose(clip[:, 0, 4, 4], (t - t.mean()) / t.std(), atol=1e-5)


def test_prepare_clip_constant_and_float_input() -> None:
    flat = np.full((5, 10, 10), 90, dtype=np.uint8)
    assert np.all(prepare_clip(flat, frames=3, size=8, channels=1, train=False) == 0)
    floats = np.random.default_rng(4).normal(size=(5, 10, 10)).astype(np.float32)
    clip = prepare_clip(floats, frames=3, size=8, channels=3, train=False)
    assert clip.shape == (3, 3, 8, 8) and clip.dtype == np.float32
    assert float(clip.std()) == pytest.approx(1.0, abs=1e-4)


def test_prepare_clip_validates() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 5\)"):
        prepare_clip(np.zeros((2, 3, 4, 5), np.uint8), frames=2, size=4, channels=1, train=False)
    with pytest.raises(ValueError, match="channels"):
        prepare_clip(np.zeros((2, 3, 4), np.uint8), frames=2, size=4, channels=2, train=False)


# --------------------------------------------------------------------------- volumes


def test_resample_volume_same_grid_is_identity() -> None:
    volume = np.random.default_rng(5).normal(size=(6, 7, 8)).astype(np.float32)
    out = resample_volume(volume, (1.0, 1.0, 1.0), (6, 7, 8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, volume, atol=1e-6)


def test_resample_volume_keeps_physical_proportions() -> None:
    # 2 mm slices x 20 = 40 mm = 40 px x 1 mm: a cube, so it fills the whole grid.
    cube = np.ones((20, 40, 40), dtype=np.float32)
    np.testing.assert_allclose(resample_volume(cube, (2.0, 1.0, 1.0), (16, 16, 16)), 1.0)
    # At 1 mm slices it is half as deep: centred, with background (the minimum) around it.
    slab = np.ones((20, 40, 40), dtype=np.float32)
    slab[0, 0, 0] = 0.0
    out = resample_volume(slab, (1.0, 1.0, 1.0), (16, 16, 16))
    assert out.shape == (16, 16, 16)
    assert np.all(out[:4] == 0.0) and np.all(out[12:] == 0.0)
    assert np.all(out[4:12, 4:12, 4:12] > 0.95)
    assert resample_volume(slab, None, (8, 8, 8)).shape == (8, 8, 8)


def test_resample_volume_validates() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        resample_volume(np.zeros((4, 4)), None, (4, 4, 4))
    with pytest.raises(ValueError, match="spacing"):
        resample_volume(np.zeros((4, 4, 4)), (1.0, 0.0, 1.0), (4, 4, 4))


def test_slices_as_frames_picks_evenly_spaced_axial_slices() -> None:
    volume = np.broadcast_to(np.arange(100.0)[:, None, None], (100, 3, 4)).copy()
    frames = slices_as_frames(volume, 4)
    assert frames.shape == (4, 3, 4) and frames.dtype == np.float32
    np.testing.assert_array_equal(frames[:, 0, 0], [12, 37, 62, 87])
    np.testing.assert_array_equal(slices_as_frames(volume[:2], 4)[:, 0, 0], [0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        slices_as_frames(np.zeros((3, 4)), 2)


def test_normalize_intensity_clips_outliers_and_standardises() -> None:
    x = np.random.default_rng(6).normal(size=(20, 20, 20)).astype(np.float32)
    x[0, 0, 0] = 1e6
    out = normalize_intensity(x)
    assert out.shape == x.shape and out.dtype == np.float32
    assert abs(float(out.mean())) < 1e-4 and float(out.std()) == pytest.approx(1.0, abs=1e-3)
    assert float(out.max()) < 4.0  # the outlier was clipped to the 99.5th percentile
    assert np.all(normalize_intensity(np.full((3, 3, 3), 5.0)) == 0.0)
    with pytest.raises(ValueError, match="NaN"):
        normalize_intensity(np.array([1.0, np.nan]))


def test_pad_square_centres_the_image_on_its_minimum() -> None:
    image = np.arange(2 * 4, dtype=np.uint8).reshape(2, 4) + 5
    out = pad_square(image)
    assert out.shape == (4, 4) and out.dtype == np.uint8
    assert np.array_equal(out[1:3], image) and (out[[0, 3]] == 5).all()
    rgb = np.ones((5, 3, 3), np.float32)
    assert pad_square(rgb).shape == (5, 5, 3)
    assert np.array_equal(pad_square(image.T.copy()), out.T)  # tall images pad the columns
    with pytest.raises(ValueError, match="image must be"):
        pad_square(np.zeros((2, 3, 4, 5)))
