"""Workers slice, the training device augments (issue 29): the batched path must give what
the per-item path gives, draw today's parameter distributions, be deterministic for a seed
whatever the worker count, and be the identity at ``augment: 0``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch.utils.data import DataLoader, default_collate

from learner.data.augment import (
    CLIP_PARAMS,
    VOLUME_PARAMS,
    ClipAugment,
    VolumeAugment,
    apply_clip_params,
    apply_volume_params,
    augment_clip,
    augment_volume,
    draw_clip_params,
    draw_volume_params,
)
from learner.data.cache import DecodeCache
from learner.data.clips import grey_frames, prepare_clip, sample_frame_indices
from learner.data.dataset import InputSpec, ScanDataset
from learner.data.readers import read_scan
from learner.data.training_batch import finish_training_batch, is_raw, standardise_clips
from tests.data.test_dataset import frame_of, make, write_mp4


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("raw_scans")
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        np.save(root / f"vol_{name}.npy", rng.normal(100, 20, (20, 24, 28)).astype(np.float32))
    np.save(root / "img_a.npy", rng.integers(0, 256, (40, 20), dtype=np.uint8))
    np.save(root / "img_b.npy", rng.integers(0, 256, (30, 30), dtype=np.uint8))
    np.save(root / "img_c.npy", rng.integers(0, 256, (28, 36), dtype=np.uint8))
    return {
        "clip_a": write_mp4(root / "a.mp4"),
        "clip_b": write_mp4(root / "b.mp4", frames=12, rgb=True),
        "clip_c": write_mp4(root / "c.mp4", frames=30),
        **{f"vol_{n}": root / f"vol_{n}.npy" for n in ("a", "b", "c")},
        **{f"img_{n}": root / f"img_{n}.npy" for n in ("a", "b", "c")},
    }


def dataset(
    frame: pd.DataFrame, spec: InputSpec, cache: DecodeCache | None, *, batch: bool, seed: int = 0
) -> ScanDataset:
    return make(frame, spec, train=True, cache=cache, seed=seed, batch_augment=batch)


def frame_for(scans: dict[str, Path], kind: str) -> pd.DataFrame:
    prefix = {"volume": "vol", "slices": "vol", "image": "img"}.get(kind, "clip")
    keys = [f"{prefix}_{n}" for n in ("a", "b", "c")]
    return frame_of([scans[k] for k in keys], [3.0, 15.0, 27.0])


CASES = [
    InputSpec(kind="video", frames=8, size=32, channels=1),
    InputSpec(kind="video", frames=4, size=32, channels=3, augment=2.0),
    InputSpec(kind="slices", frames=6, size=24, channels=3),
    InputSpec(kind="volume", size=16),
    InputSpec(kind="image", size=24, channels=1),
    InputSpec(kind="image", size=24, channels=3, augment=0.5),
]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: f"{s.kind}-{s.channels}ch-aug{s.augment:g}")
@pytest.mark.parametrize("cached", [True, False], ids=["cached", "uncached"])
def test_batched_items_equal_the_per_item_path(
    scans: dict[str, Path], tmp_path: Path, spec: InputSpec, cached: bool
) -> None:
    frame = frame_for(scans, spec.kind)
    cache = DecodeCache(tmp_path / "cache") if cached else None
    per_item = dataset(frame, spec, cache, batch=False)
    raw = dataset(frame, spec, cache, batch=True)
    for ds in (per_item, raw):
        ds.set_epoch(3)
    batch = default_collate([raw[i] for i in range(len(raw))])
    assert is_raw(batch)
    # What a worker hands over is small: uint8 pixels, or the cache's float16 volume.
    expected_dtype = torch.float16 if spec.kind in ("volume", "slices") else torch.uint8
    assert batch["x"].dtype == expected_dtype
    finished = finish_training_batch(batch, kind=spec.kind, channels=spec.channels)
    assert not is_raw(finished) and finished["x"].dtype == torch.float32
    expected = torch.stack([per_item[i]["x"] for i in range(len(per_item))])
    torch.testing.assert_close(finished["x"], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(finished["y"], batch["y"])


def test_per_item_path_matches_the_numpy_preparation_then_the_clip_transform(
    scans: dict[str, Path],
) -> None:
    """The training input is the clip prepare_clip makes from the item's sampled frames,
    transformed by augment_clip with the same RNG: the maths of the per-item loader as it
    was before the split (torch float32 standardisation against numpy's float64 aside)."""
    spec = InputSpec(kind="video", frames=8, size=32, channels=1, augment=1.5)
    frame = frame_for(scans, "video")
    ds = dataset(frame, spec, None, batch=False, seed=7)
    ds.set_epoch(2)
    for index in range(len(frame)):
        video = read_scan(Path(frame["path"][index])).array
        rng = np.random.default_rng([7, 2, index])
        indices = sample_frame_indices(len(video), spec.frames, train=True, rng=rng)
        clip = prepare_clip(
            grey_frames(video[indices]), frames=spec.frames, size=32, channels=1, train=False
        )
        expected = augment_clip(torch.from_numpy(clip), rng, ClipAugment().scaled(1.5))
        torch.testing.assert_close(ds[index]["x"], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["video", "slices", "volume"])
def test_augment_zero_is_the_identity(scans: dict[str, Path], tmp_path: Path, kind: str) -> None:
    spec = InputSpec(kind=kind, frames=8, size=32, channels=1, augment=0.0)
    frame = frame_for(scans, kind)
    cache = DecodeCache(tmp_path / "cache")
    raw = dataset(frame, spec, cache, batch=True)
    batch = default_collate([raw[i] for i in range(len(raw))])
    assert batch["aug"].shape == (len(raw), 0)
    x = finish_training_batch(batch, kind=kind, channels=1)["x"]
    evaluation = ScanDataset(
        frame,
        input=spec,
        train=False,
        cache=cache,
        score_range=(0.0, 30.0),
        patient_codes={p: i for i, p in enumerate(frame["patient_id"])},
    )
    for index in range(len(raw)):
        if kind == "video":
            # The frames are sampled at random (TSN offsets are sampling, not augmentation);
            # the pixels are exactly the standardised frames.
            frames = raw._video_frames(index)
            rng = np.random.default_rng([0, 0, index])
            indices = sample_frame_indices(len(frames), spec.frames, train=True, rng=rng)
            expected = prepare_clip(
                np.asarray(frames[indices]), frames=8, size=32, channels=1, train=False
            )
            torch.testing.assert_close(x[index], torch.from_numpy(expected), rtol=0, atol=1e-5)
        else:  # volumes and slices: exactly the evaluation input
            torch.testing.assert_close(x[index], evaluation[index]["x"], rtol=0, atol=0)


def test_same_seed_same_batch_whatever_the_workers(scans: dict[str, Path], tmp_path: Path) -> None:
    torch.set_num_threads(1)
    spec = InputSpec(kind="video", frames=8, size=32, channels=1)
    frame = frame_for(scans, "video")

    def epoch_batches(workers: int, seed: int, epoch: int) -> torch.Tensor:
        ds = dataset(frame, spec, DecodeCache(tmp_path / f"c{workers}"), batch=True, seed=seed)
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=3, num_workers=workers)
        batch = next(iter(loader))
        return finish_training_batch(batch, kind="video", channels=1)["x"]

    in_process = epoch_batches(0, seed=0, epoch=1)
    torch.testing.assert_close(epoch_batches(2, seed=0, epoch=1), in_process, rtol=0, atol=0)
    assert not torch.allclose(epoch_batches(0, seed=0, epoch=2), in_process)
    assert not torch.allclose(epoch_batches(0, seed=1, epoch=1), in_process)


def _uniform_p(values: np.ndarray, low: float, high: float) -> float:
    return float(stats.kstest(values, "uniform", args=(low, high - low)).pvalue)


def test_clip_parameters_follow_the_per_item_distributions() -> None:
    """Each random quantity, recovered from the parameter vectors of 2,000 clips, follows the
    distribution its range names (Kolmogorov-Smirnov against the uniform). The crop's ranges
    keep its sides below the frame's, where nothing clamps them."""
    spec = ClipAugment(
        crop_scale=(0.3, 0.8), crop_aspect=(0.8, 1.25), rotation_deg=20, brightness=0.3
    )
    params = np.stack(
        [draw_clip_params(np.random.default_rng([5, 0, i]), spec, 64, 64) for i in range(2000)]
    )
    assert params.shape == (2000, CLIP_PARAMS) and params.dtype == np.float32
    # Square frames: the linear part is diag(crop_w, crop_h) @ rotation.
    linear = params[:, :6].reshape(-1, 2, 3)[:, :, :2].astype(np.float64)
    crop_w, crop_h = np.linalg.norm(linear[:, 0], axis=1), np.linalg.norm(linear[:, 1], axis=1)
    angle = np.degrees(np.arctan2(linear[:, 1, 0], linear[:, 1, 1]))
    assert _uniform_p(crop_w * crop_h, *spec.crop_scale) > 0.01
    assert _uniform_p(np.log(crop_w / crop_h), *np.log(spec.crop_aspect)) > 0.01
    assert _uniform_p(angle, -spec.rotation_deg, spec.rotation_deg) > 0.01
    assert _uniform_p(params[:, 6], 1 - spec.contrast, 1 + spec.contrast) > 0.01
    assert _uniform_p(params[:, 7], -spec.brightness, spec.brightness) > 0.01
    # The crop's centre keeps the crop inside the frame.
    assert np.all(np.abs(params[:, 2]) <= 1.0 - crop_w + 1e-6)
    assert np.all(np.abs(params[:, 5]) <= 1.0 - crop_h + 1e-6)


def test_volume_parameters_follow_the_per_item_distributions() -> None:
    spec = VolumeAugment().scaled(2.0)
    params = np.stack(
        [draw_volume_params(np.random.default_rng([5, 0, i]), spec) for i in range(2000)]
    )
    assert params.shape == (2000, VOLUME_PARAMS)
    linear = params[:, :12].reshape(-1, 3, 4)[:, :, :3].astype(np.float64)
    zoom = 1.0 / np.cbrt(np.linalg.det(linear))  # rotation / zoom
    assert _uniform_p(zoom, *spec.scale) > 0.01
    assert _uniform_p(params[:, 12], 1 - spec.intensity_scale, 1 + spec.intensity_scale) > 0.01
    assert _uniform_p(params[:, 13], -spec.intensity_shift, spec.intensity_shift) > 0.01


def test_a_batch_applies_each_clip_its_own_transform() -> None:
    torch.manual_seed(0)
    clips = torch.randn(5, 4, 2, 24, 40)
    rngs = [np.random.default_rng(i) for i in range(5)]
    params = torch.from_numpy(np.stack([draw_clip_params(r, None, 24, 40) for r in rngs]))
    batched = apply_clip_params(clips, params)
    for i in range(5):
        alone = augment_clip(clips[i], np.random.default_rng(i))
        torch.testing.assert_close(batched[i], alone, rtol=0, atol=1e-6)
    volumes = torch.randn(3, 1, 12, 12, 12)
    vparams = torch.from_numpy(
        np.stack([draw_volume_params(np.random.default_rng(i), None) for i in range(3)])
    )
    batched = apply_volume_params(volumes, vparams)
    for i in range(3):
        alone = augment_volume(volumes[i], np.random.default_rng(i))
        torch.testing.assert_close(batched[i], alone, rtol=0, atol=1e-6)


def test_parameters_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(2, 8\)"):
        apply_clip_params(torch.zeros(2, 1, 1, 8, 8), torch.zeros(3, 8))
    with pytest.raises(ValueError, match="float clips"):
        apply_clip_params(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8))


def test_standardise_clips_per_clip_and_constant_clip_is_zeros() -> None:
    clips = torch.stack([torch.full((2, 1, 4, 4), 0.7), torch.arange(32.0).view(2, 1, 4, 4)])
    out = standardise_clips(clips)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    torch.testing.assert_close(out[1].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1].std(unbiased=False), torch.tensor(1.0), atol=1e-6, rtol=0)
