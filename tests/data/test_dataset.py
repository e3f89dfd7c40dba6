"""ScanDataset: item shapes and dtypes per input kind, determinism, epochs, caching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

import learner.data.dataset as dataset_module
from learner.data.cache import DecodeCache
from learner.data.dataset import InputSpec, ScanDataset
from learner.errors import ConfigError, DataError


def write_mp4(path: Path, frames: int = 20, size: int = 64, rgb: bool = False) -> Path:
    """A small H.264 clip: a bright bar sweeping over a gradient."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        ramp = np.linspace(0, 160, size, dtype=np.float32)
        for t in range(frames):
            image = np.tile(ramp, (size, 1))
            image[:, (t * 3) % size : (t * 3) % size + 6] = 250
            rgb_image = np.stack([image, image * 0.5, 255 - image], -1) if rgb else image[..., None]
            rgb_image = np.broadcast_to(rgb_image, (size, size, 3)).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb_image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 20, (20, 24, 28)).astype(np.float32)
    np.save(root / "vol_a.npy", volume)
    np.save(root / "vol_b.npy", volume[::-1].copy() * 2)
    return {
        "clip_a": write_mp4(root / "a.mp4"),
        "clip_b": write_mp4(root / "b.mp4", frames=12, rgb=True),
        "vol_a": root / "vol_a.npy",
        "vol_b": root / "vol_b.npy",
    }


def frame_of(paths: list[Path], scores: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": [f"p{i}" for i in range(len(paths))],
            "path": [str(p) for p in paths],
            "score": scores,
            "row": list(range(2, len(paths) + 2)),
        }
    )


def make(
    frame: pd.DataFrame,
    spec: InputSpec,
    *,
    train: bool,
    cache: DecodeCache | None = None,
    seed: int = 0,
    batch_augment: bool = False,
) -> ScanDataset:
    codes = {p: i for i, p in enumerate(sorted(frame["patient_id"].unique()))}
    return ScanDataset(
        frame,
        input=spec,
        train=train,
        cache=cache,
        score_range=(0.0, 30.0),
        patient_codes=codes,
        seed=seed,
        batch_augment=batch_augment,
    )


@pytest.fixture
def video_frame(scans: dict[str, Path]) -> pd.DataFrame:
    return frame_of([scans["clip_a"], scans["clip_b"]], [15.0, float("nan")])


VIDEO = InputSpec(kind="video", frames=8, size=32, channels=1)


class CountingReader:
    """Wraps read_scan to count decodes."""

    def __init__(self) -> None:
        self.calls = 0
        self.real = dataset_module.read_scan

    def __call__(self, path: Any) -> Any:
        self.calls += 1
        return self.real(path)


@pytest.mark.parametrize("channels", [1, 3])
def test_video_item_shape_dtype_and_labels(video_frame: pd.DataFrame, channels: int) -> None:
    spec = InputSpec(kind="video", frames=8, size=32, channels=channels)
    ds = make(video_frame, spec, train=False)
    assert len(ds) == 2
    for i in range(2):
        item = ds[i]
        assert item["x"].shape == (8, channels, 32, 32)
        assert item["x"].dtype == torch.float32
        assert item["pid"].dtype == torch.int64 and int(item["pid"]) == i
        assert item["index"] == i
    assert ds[0]["y"] == pytest.approx(0.5)
    assert np.isnan(ds[1]["y"])
    # Per-clip standardisation (prepare_clip) and a visible moving bar.
    x = ds[0]["x"]
    assert abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1.0, abs=1e-3)
    assert not torch.allclose(x[0], x[-1])


def test_scores_are_clipped_into_unit_range(scans: dict[str, Path]) -> None:
    frame = frame_of([scans["vol_a"], scans["vol_b"]], [-5.0, 45.0])
    ds = make(frame, InputSpec(kind="volume", size=16), train=False)
    assert (ds[0]["y"], ds[1]["y"]) == (0.0, 1.0)


def test_eval_items_deterministic_train_items_vary_by_epoch(video_frame: pd.DataFrame) -> None:
    ev = make(video_frame, VIDEO, train=False)
    torch.testing.assert_close(ev[0]["x"], ev[0]["x"], rtol=0, atol=0)
    ev.set_epoch(3)
    torch.testing.assert_close(ev[0]["x"], make(video_frame, VIDEO, train=False)[0]["x"])

    tr = make(video_frame, VIDEO, train=True, seed=1)
    twin = make(video_frame, VIDEO, train=True, seed=1)
    tr.set_epoch(0)
    epoch0 = tr[0]["x"]
    tr.set_epoch(1)
    epoch1 = tr[0]["x"]
    twin.set_epoch(1)
    assert epoch0.shape == epoch1.shape == (8, 1, 32, 32)
    assert not torch.allclose(epoch0, epoch1)
    torch.testing.assert_close(twin[0]["x"], epoch1, rtol=0, atol=0)
    other_seed = make(video_frame, VIDEO, train=True, seed=2)
    other_seed.set_epoch(1)
    assert not torch.allclose(other_seed[0]["x"], epoch1)


def test_augment_strength_reaches_training_items(video_frame: pd.DataFrame) -> None:
    """``augment`` changes training items only: 0 gives the evaluation clip's pixels on the
    training frame sampling, and a stronger setting moves further from them."""
    spec = dict(kind="video", frames=8, size=32)
    items = {}
    for strength in (0.0, 1.0, 3.0):
        ds = make(video_frame, InputSpec(**spec, augment=strength), train=True, seed=1)
        ds.set_epoch(0)
        items[strength] = ds[0]["x"]
    plain = items[0.0]
    assert abs(float(plain.mean())) < 1e-4  # standardised, then untouched
    gap = {k: float((v - plain).abs().mean()) for k, v in items.items() if k}
    assert 0 < gap[1.0] < gap[3.0]
    evaluation = make(video_frame, InputSpec(**spec, augment=3.0), train=False)[0]["x"]
    torch.testing.assert_close(
        evaluation, make(video_frame, InputSpec(**spec), train=False)[0]["x"], rtol=0, atol=0
    )


def test_cached_and_uncached_items_agree(video_frame: pd.DataFrame, tmp_path: Path) -> None:
    plain = make(video_frame, VIDEO, train=True)
    cached = make(video_frame, VIDEO, train=True, cache=DecodeCache(tmp_path))
    for ds in (plain, cached):
        ds.set_epoch(4)
    for i in range(2):
        torch.testing.assert_close(plain[i]["x"], cached[i]["x"], rtol=0, atol=1e-5)


def test_second_epoch_with_cache_decodes_nothing(
    video_frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = CountingReader()
    monkeypatch.setattr(dataset_module, "read_scan", reader)
    cache = DecodeCache(tmp_path)
    ds = make(video_frame, VIDEO, train=True, cache=cache)
    ds.set_epoch(0)
    first = [ds[i]["x"] for i in range(len(ds))]
    assert reader.calls == 2
    ds.set_epoch(1)
    second = [ds[i]["x"] for i in range(len(ds))]
    assert reader.calls == 2
    assert cache.hits == 2 and cache.misses == 2
    assert not torch.allclose(first[0], second[0])
    # A cache entry holds every frame, resized and grey, as uint8.
    stored = sorted(tmp_path.rglob("*.npy"))
    shapes = sorted(np.load(p, mmap_mode="r").shape for p in stored)
    assert shapes == [(12, 32, 32), (20, 32, 32)]
    assert all(np.load(p, mmap_mode="r").dtype == np.uint8 for p in stored)


def test_without_cache_every_item_decodes(
    video_frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = CountingReader()
    monkeypatch.setattr(dataset_module, "read_scan", reader)
    ds = make(video_frame, VIDEO, train=False)
    ds[0]
    ds[0]
    assert reader.calls == 2


def test_eval_clips_per_scan_are_stacked_and_distinct(video_frame: pd.DataFrame) -> None:
    spec = InputSpec(kind="video", frames=4, size=32, channels=1, clips_per_scan=3)
    ev = make(video_frame, spec, train=False)
    x = ev[0]["x"]
    assert x.shape == (3, 4, 1, 32, 32)
    assert not torch.allclose(x[0], x[1]) and not torch.allclose(x[1], x[2])
    torch.testing.assert_close(x, ev[0]["x"], rtol=0, atol=0)
    # Training items stay single clips.
    assert make(video_frame, spec, train=True)[0]["x"].shape == (4, 1, 32, 32)


def test_volume_item_and_cache_dtype(scans: dict[str, Path], tmp_path: Path) -> None:
    frame = frame_of([scans["vol_a"], scans["vol_b"]], [10.0, 20.0])
    spec = InputSpec(kind="volume", size=16)
    cache = DecodeCache(tmp_path)
    ev = make(frame, spec, train=False, cache=cache)
    item = ev[1]
    assert item["x"].shape == (1, 16, 16, 16) and item["x"].dtype == torch.float32
    assert abs(float(item["x"].mean())) < 0.1  # normalize_intensity: robust z-score
    stored = sorted(tmp_path.rglob("*.npy"))
    assert len(stored) == 1 and np.load(stored[0], mmap_mode="r").dtype == np.float16
    # The float16 cache changes values by less than float16 rounding.
    torch.testing.assert_close(
        item["x"], make(frame, spec, train=False)[1]["x"], atol=5e-3, rtol=1e-3
    )

    tr = make(frame, spec, train=True, cache=cache)
    tr.set_epoch(0)
    a = tr[0]["x"]
    tr.set_epoch(1)
    assert a.shape == (1, 16, 16, 16)
    assert not torch.allclose(a, tr[0]["x"])


@pytest.mark.parametrize("channels", [1, 3])
def test_slices_items_share_the_volume_cache(
    scans: dict[str, Path], tmp_path: Path, channels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = frame_of([scans["vol_a"]], [10.0])
    cache = DecodeCache(tmp_path)
    make(frame, InputSpec(kind="volume", size=16), train=False, cache=cache)[0]
    reader = CountingReader()
    monkeypatch.setattr(dataset_module, "read_scan", reader)
    spec = InputSpec(kind="slices", frames=5, size=16, channels=channels)
    ev = make(frame, spec, train=False, cache=cache)
    x = ev[0]["x"]
    assert reader.calls == 0
    assert x.shape == (5, channels, 16, 16) and x.dtype == torch.float32
    if channels == 3:
        torch.testing.assert_close(x[:, 0], x[:, 2])
    tr = make(frame, spec, train=True, cache=cache)
    assert tr[0]["x"].shape == (5, channels, 16, 16)
    assert not torch.allclose(tr[0]["x"], x)


def test_tabular_items_and_standardisation() -> None:
    frame = pd.DataFrame(
        {
            "patient_id": ["a", "a", "b"],
            "score": [3.0, 6.0, float("nan")],
            "f1": [1.0, 2.0, 3.0],
            "f2": [10.0, 20.0, 60.0],
            "row": [2, 3, 4],
        }
    )
    spec = InputSpec(kind="tabular", feature_columns=("f2", "f1"))
    ds = make(frame, spec, train=True)
    item = ds[2]
    assert item["x"].dtype == torch.float32 and item["x"].shape == (2,)
    torch.testing.assert_close(item["x"], torch.tensor([60.0, 3.0]))
    assert int(ds[0]["pid"]) == int(ds[1]["pid"]) != int(ds[2]["pid"])
    assert ds[1]["y"] == pytest.approx(0.2) and np.isnan(item["y"])
    scaled = ScanDataset(
        frame,
        input=spec,
        train=False,
        cache=None,
        score_range=(0, 30),
        patient_codes={"a": 0, "b": 1},
        feature_stats=(np.array([20.0, 2.0]), np.array([10.0, 0.0])),
    )
    torch.testing.assert_close(scaled[2]["x"], torch.tensor([4.0, 1.0]))


def test_tabular_errors_name_column_and_row() -> None:
    frame = pd.DataFrame(
        {"patient_id": ["a", "b"], "score": [1.0, 2.0], "f1": [1.0, np.nan], "row": [2, 9]}
    )
    with pytest.raises(ConfigError, match="'f9'"):
        make(frame, InputSpec(kind="tabular", feature_columns=("f9",)), train=False)
    with pytest.raises(DataError, match="row 9, column f1"):
        make(frame, InputSpec(kind="tabular", feature_columns=("f1",)), train=False)


def test_image_items_are_padded_resized_stills_cached_as_uint8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tall = np.zeros((40, 20), np.uint8)
    tall[:, :10] = 200  # left half bright: after padding to 40 x 40, columns 10-20 are bright
    np.save(tmp_path / "tall.npy", tall)
    frame = frame_of([tmp_path / "tall.npy"], [12.0])
    spec = InputSpec(kind="image", size=20, channels=1)
    reader = CountingReader()
    monkeypatch.setattr(dataset_module, "read_scan", reader)
    cache = DecodeCache(tmp_path / "cache")
    ds = make(frame, spec, train=False, cache=cache)
    x = ds[0]["x"]
    assert x.shape == (1, 20, 20) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 1e-5  # standardised like a clip
    column = x[0].mean(dim=0)
    assert column[6:9].min() > column[:4].max() and column[6:9].min() > column[12:].max()
    assert ds[0]["y"] == pytest.approx(0.4)
    stored = [np.load(p, mmap_mode="r") for p in sorted((tmp_path / "cache").rglob("*.npy"))]
    assert [(a.shape, a.dtype) for a in stored] == [((20, 20), np.uint8)]
    torch.testing.assert_close(make(frame, spec, train=False, cache=cache)[0]["x"], x)
    assert reader.calls == 1  # the second dataset read the cache
    # Training items: augmented, reproducible per (seed, epoch, index), new each epoch.
    train = make(frame, spec, train=True, cache=cache)
    train.set_epoch(0)
    first = train[0]["x"]
    torch.testing.assert_close(train[0]["x"], first)
    train.set_epoch(1)
    assert first.shape == (1, 20, 20) and not torch.allclose(train[0]["x"], first)
    # Three channels keep an RGB still's colours (a PNG whose channels are three views).
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 250, np.arange(8, dtype=np.uint8)[None] * 30
    with av.open(str(tmp_path / "rgb.png"), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.width = stream.height = 8
        stream.pix_fmt = "rgb24"
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24"))]:
            container.mux(packet)
    spec3 = InputSpec(kind="image", size=8, channels=3)
    x3 = make(frame_of([tmp_path / "rgb.png"], [1.0]), spec3, train=False)[0]["x"]
    assert x3.shape == (3, 8, 8)
    assert torch.equal(x3[0], x3[0, :1].expand(8, 8))  # flat red channel
    assert (x3[2, 0].diff() > 0).all()  # blue rises along the columns
    assert float(x3[1].max()) < float(x3[0].min())  # no green at all


def test_a_still_where_clips_are_expected_is_a_one_frame_clip(tmp_path: Path) -> None:
    np.save(tmp_path / "still.npy", np.arange(64, dtype=np.uint8).reshape(8, 8))
    x = make(frame_of([tmp_path / "still.npy"], [1.0]), VIDEO, train=False)[0]["x"]
    assert x.shape[1:] == (1, 32, 32)
    assert all(torch.equal(x[0], frame) for frame in x)  # the one frame, repeated


def test_wrong_scan_kind_is_a_data_error(scans: dict[str, Path]) -> None:
    frame = frame_of([scans["vol_a"]], [1.0])
    with pytest.raises(DataError, match=r"vol_a\.npy: read as a volume"):
        make(frame, VIDEO, train=False)[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "audio"},
        {"kind": "video", "channels": 2},
        {"kind": "volume", "clips_per_scan": 2},
        {"kind": "video", "frames": 0},
        {"kind": "video", "augment": -0.5},
    ],
)
def test_input_spec_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="input"):
        InputSpec(**kwargs)


def test_bad_construction_arguments(video_frame: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="score range"):
        ScanDataset(
            video_frame,
            input=VIDEO,
            train=False,
            cache=None,
            score_range=(1.0, 1.0),
            patient_codes={"p0": 0, "p1": 1},
        )
    with pytest.raises(ValueError, match="no patient code"):
        ScanDataset(
            video_frame,
            input=VIDEO,
            train=False,
            cache=None,
            score_range=(0, 1),
            patient_codes={"p0": 0},
        )
    with pytest.raises(IndexError):
        make(video_frame, VIDEO, train=False)[2]


def test_persistent_workers_follow_set_epoch(video_frame: pd.DataFrame, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ds = make(video_frame, VIDEO, train=True, cache=DecodeCache(tmp_path))
    loader = DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True)
    by_worker = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        by_worker.append(next(iter(loader))["x"])
    for epoch in range(2):
        ds.set_epoch(epoch)
        expected = torch.stack([ds[i]["x"] for i in range(2)])
        torch.testing.assert_close(by_worker[epoch], expected, rtol=0, atol=0)
    assert not torch.allclose(by_worker[0], by_worker[1])
