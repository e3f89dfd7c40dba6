"""The training / embedding dataset: manifest rows in, model-ready tensors out.

What is cached (:class:`~learner.data.cache.DecodeCache`), so that epoch 2 decodes nothing:

- ``video``: every frame, resized once to ``size`` x ``size``, as uint8 (T, S, S) grey or
  (T, S, S, 3) RGB (grey whenever ``channels == 1``: a third of the disk). Frames are sampled
  from the cached array per item, so training still sees new frame samplings every epoch.
- ``image`` (a still: PNG / JPEG, single-frame DICOM, 2-D NIfTI slice): padded to a square
  with its minimum, resized to ``size`` x ``size`` once, uint8 (S, S) grey or (S, S, 3) RGB.
- ``volume`` and ``slices``: the volume resampled onto the fixed ``size``^3 grid and
  intensity-normalised, stored as **float16** (half the disk of float32; ample precision for
  normalised intensities; uint8 would quantise the subtle atrophy signal). ``slices`` reads the
  same cache entry and cuts frames from it per item.

Items are ``{"x": float32 tensor, "y": float, "pid": int64, "index": int}``. Training items
draw all randomness from an RNG seeded by ``(seed, epoch, index)``: results do not depend on
DataLoader worker count or order. With ``batch_augment=True`` a training item is what a
worker slices (uint8 frames, or the cached float16 volume) plus its augmentation parameters
under ``"aug"``, and :func:`learner.data.training_batch.finish_training_batch` makes the
batch on the training device; without, the item is finished in place by the same code.
Call :meth:`ScanDataset.set_epoch` each epoch; the epoch is held in shared memory so that
persistent workers see the change.

Example:
    >>> np.save("clip.npy", np.zeros((20, 64, 64), np.uint8))  # a (T, H, W) grey clip
    >>> frame = pd.DataFrame({"patient_id": ["P1"], "path": ["clip.npy"], "score": [250.0]})
    >>> spec = InputSpec(kind="video", frames=16, size=112, channels=1)
    >>> ds = ScanDataset(frame, input=spec, train=True, cache=None,
    ...                  score_range=(0.0, 500.0), patient_codes={"P1": 0})
    >>> item = ds[0]
    >>> item["x"].shape, item["y"], int(item["pid"])
    (torch.Size([16, 1, 112, 112]), 0.5, 0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from learner.data.augment import (
    ClipAugment,
    VolumeAugment,
    draw_clip_params,
    draw_volume_params,
)
from learner.data.cache import DecodeCache
from learner.data.clips import (
    grey_frames,
    normalize_intensity,
    pad_square,
    prepare_clip,
    resample_volume,
    resize_frames,
    sample_frame_indices,
    slices_as_frames,
)
from learner.data.readers import Scan, read_scan
from learner.data.training_batch import AUGMENT_KEY, training_input
from learner.errors import ConfigError, DataError

InputKind = Literal["video", "image", "volume", "slices", "tabular"]
INPUT_KINDS: tuple[str, ...] = ("video", "image", "volume", "slices", "tabular")

# Bump when what a cache entry holds changes, so stale entries are never read back.
_CACHE_FORMAT = 1


# What a config sets to read each kind of scan the readers return: (data.input.kind,
# model.encoder, what the encoder is), the first pair the usual one.
SETTINGS_FOR_SCAN: dict[str, tuple[tuple[str, str, str], ...]] = {
    "video": (("video", "tsm_resnet18", "a video encoder"),),
    "image": (("image", "resnet2d_18", "a 2-D encoder"),),
    "volume": (
        ("volume", "resnet3d_18", "a 3-D encoder"),
        ("slices", "tsm_slices", "slices as frames"),
    ),
    "vector": (("tabular", "mlp", "for feature vectors"),),
}
SCAN_KIND_PHRASE = {
    "video": "a video",
    "image": "an image",
    "volume": "a volume",
    "vector": "a (F,) feature vector",
}


def settings_for_scan(scan_kind: str) -> str:
    """The config settings that read scans of ``scan_kind``, as a user writes them:
    ``data.input.kind=image and model.encoder=resnet2d_18 (a 2-D encoder)``."""
    options = [
        f"data.input.kind={kind} and model.encoder={encoder} ({what})"
        for kind, encoder, what in SETTINGS_FOR_SCAN[scan_kind]
    ]
    return ", or ".join(options)


# Rank of one scan's ``x`` without the batch axis, per input kind (one clip per scan; with
# several evaluation clips per scan an item gains a leading clip axis).
SCAN_RANK = {"video": 4, "image": 3, "slices": 4, "volume": 4, "tabular": 1}


@dataclass(frozen=True)
class InputSpec:
    """What the encoder consumes.

    Attributes:
        kind: ``video`` (clips, (T, C, H, W)), ``image`` (stills, (C, H, W)), ``volume``
            ((1, D, H, W)), ``slices`` (a volume shown as a clip of T slices, (T, C, H, W)) or
            ``tabular`` ((F,)).
        frames: T, frames (or slices) per clip.
        size: H = W of a clip; the cubic grid edge of a volume.
        channels: C of a clip, 1 (grey) or 3 (RGB).
        feature_columns: the manifest columns of a tabular scan, in order; empty: each
            scan is a (F,) ``.npy`` vector named in the ``path`` column.
        clips_per_scan: K clip samplings per scan at evaluation (video only); items then hold
            x of shape (K, T, C, H, W), to be averaged after the encoder.
        augment: strength of the training augmentation (:meth:`ClipAugment.scaled`,
            :meth:`VolumeAugment.scaled`): 1 = the default ranges, 0 = none.
    """

    kind: InputKind
    frames: int = 16
    size: int = 112
    channels: int = 1
    feature_columns: tuple[str, ...] = ()
    clips_per_scan: int = 1
    augment: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ConfigError(f"input.kind: {self.kind!r} is not one of {', '.join(INPUT_KINDS)}")
        if self.frames < 1 or self.size < 8:
            raise ConfigError(
                f"input.frames must be >= 1 and input.size >= 8, got {self.frames} and {self.size}"
            )
        if not self.augment >= 0:
            raise ConfigError(f"input.augment: {self.augment} must be >= 0 (0 = no augmentation)")
        if self.channels not in (1, 3):
            raise ConfigError(f"input.channels: {self.channels} is not 1 (grey) or 3 (RGB)")
        if self.clips_per_scan < 1 or (self.clips_per_scan > 1 and self.kind != "video"):
            raise ConfigError(
                f"input.clips_per_scan: {self.clips_per_scan}; must be >= 1, and above 1 only "
                "for video (volumes and features have a single view)"
            )


class ScanDataset(Dataset[dict[str, Any]]):
    """Manifest rows as model inputs, normalised scores and patient codes.

    Args:
        frame: manifest rows (:class:`~learner.data.manifest.Manifest` ``frame``): needs
            ``patient_id`` and ``score``, plus ``path`` (scans) or the feature columns.
        input: what to produce (:class:`InputSpec`).
        train: random frame sampling and augmentation when True; deterministic otherwise.
        cache: decoded-array cache, or None to decode every time.
        score_range: (low, high) mapped to (0, 1); scores outside are clipped.
        patient_codes: patient_id -> integer code (the loss compares codes).
        seed: base of every item RNG.
        feature_stats: optional (mean, std) arrays of shape (F,) standardising tabular
            features; compute them on the training rows only.
        batch_augment: training items leave their float conversion, standardisation and
            augmentation to :func:`~learner.data.training_batch.finish_training_batch` on the
            training device (pretraining does this); otherwise each item is finished here.

    Raises:
        ConfigError: a bad score range or a feature column the frame lacks.
        DataError: a missing ``path`` column or a missing feature value (naming the row).
        ValueError: a patient without a code (``patient_codes`` built from another frame).
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        *,
        input: InputSpec,
        train: bool,
        cache: DecodeCache | None,
        score_range: tuple[float, float],
        patient_codes: Mapping[str, int],
        seed: int = 0,
        feature_stats: tuple[np.ndarray, np.ndarray] | None = None,
        batch_augment: bool = False,
    ) -> None:
        low, high = (float(v) for v in score_range)
        if not np.isfinite([low, high]).all() or high <= low:
            raise ConfigError(f"score range {score_range}: needs finite low < high")
        self.input = input
        self.train = train
        self.batch_augment = batch_augment
        self._clip_augment = ClipAugment().scaled(input.augment)
        self._volume_augment = VolumeAugment().scaled(input.augment)
        self.cache = cache
        self.seed = int(seed)
        self.score_range = (low, high)

        frame = frame.reset_index(drop=True)
        rows = (
            frame["row"].tolist() if "row" in frame.columns else [i + 2 for i in range(len(frame))]
        )
        self._rows: list[Any] = rows
        scores = pd.to_numeric(frame["score"], errors="coerce").to_numpy(np.float64)
        self._y = np.clip((scores - low) / (high - low), 0.0, 1.0).astype(np.float32)
        unknown = sorted(set(frame["patient_id"].astype(str)) - set(patient_codes))
        if unknown:
            raise ValueError(
                f"no patient code for {len(unknown)} patient(s), e.g. {unknown[0]!r}; "
                "build patient_codes from the same manifest"
            )
        self._pid = np.array(
            [patient_codes[p] for p in frame["patient_id"].astype(str)], dtype=np.int64
        )

        self._paths: list[str] = []
        self._features: np.ndarray = np.empty((len(frame), 0), dtype=np.float32)
        if input.kind == "tabular":
            features = (
                _feature_matrix(frame, list(input.feature_columns), rows)
                if input.feature_columns
                else read_vectors(frame, rows)
            )
            if feature_stats is not None:
                mean, std = (np.asarray(a, dtype=np.float32) for a in feature_stats)
                # A constant training column has std 0: leave it centred rather than divide.
                features = (features - mean) / np.where(std > 0, std, np.float32(1.0))
            self._features = features.astype(np.float32, copy=False)
        else:
            if "path" not in frame.columns:
                raise DataError(
                    f"manifest has no 'path' column but input.kind is {input.kind!r}; add the "
                    "scan paths or use input.kind 'tabular' with feature columns"
                )
            self._paths = frame["path"].astype(str).tolist()

        # Shared memory: persistent DataLoader workers hold copies of the dataset, and must
        # still see set_epoch() from the main process.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self._y)

    @property
    def epoch(self) -> int:
        """The epoch the training RNGs are derived from."""
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (new frame samplings and augmentations for training items)."""
        self._epoch.fill_(int(epoch))

    @property
    def scores(self) -> np.ndarray:
        """Normalised scores (N,) float32, NaN for unlabelled scans (for samplers)."""
        return self._y

    @property
    def patient_codes(self) -> np.ndarray:
        """Patient code of every item (N,) int64 (for samplers)."""
        return self._pid

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One item: x (see :class:`InputSpec`), y, pid, index.

        Raises:
            IndexError: ``index`` out of range.
            DataError: the scan cannot be read or is of the wrong kind (names the manifest row).
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scans")
        index = int(index) % len(self)
        kind = self.input.kind
        item: dict[str, Any] = {}
        try:
            if kind == "tabular":
                x = torch.from_numpy(self._features[index].copy())
            elif self.train:
                x, aug = self._training_slice(index)
                if self.batch_augment:
                    item[AUGMENT_KEY] = aug
                else:  # finished here: the batched arithmetic on a batch of one
                    x = training_input(x[None], aug[None], kind=kind, channels=self.input.channels)
                    x = x[0]
            elif kind == "video":
                x = self._video_item(index)
            elif kind == "image":
                x = self._image_item(index)
            elif kind == "volume":
                x = self._volume_item(index)
            else:
                x = self._slices_item(index)
        except DataError as exc:
            # A scan that passed the manifest check but does not decode: name its row.
            raise DataError(
                f"manifest row {self._rows[index]}, column path: {exc.problems[0]}"
            ) from None
        return {
            "x": x,
            "y": float(self._y[index]),
            "pid": torch.tensor(self._pid[index], dtype=torch.int64),
            "index": index,
            **item,
        }

    def _rng(self, index: int) -> np.random.Generator:
        """Training RNG of item ``index`` at the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    # -- training: what a worker slices -----------------------------------------------------

    def _training_slice(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw training input of item ``index`` and its augmentation parameters (see
        :mod:`learner.data.training_batch`), every draw from the item's RNG in the order the
        per-item augmentation always drew them: frames first, then the transform."""
        kind, spec, rng = self.input.kind, self.input, self._rng(index)
        if kind == "video":
            frames = self._video_frames(index)
            indices = sample_frame_indices(len(frames), spec.frames, train=True, rng=rng)
            picked = np.asarray(frames[indices])
            if spec.channels == 1:
                picked = grey_frames(picked)
            if picked.shape[1:3] != (spec.size, spec.size):  # uncached: as decoded
                picked = resize_frames(picked, spec.size)
            x = torch.from_numpy(_with_channels(picked, spec.channels))
        elif kind == "image":
            x = torch.from_numpy(_with_channels(self._image_pixels(index)[None], spec.channels)[0])
        elif kind == "slices":
            volume = self._volume_grid(index)
            frames = slices_as_frames(volume, spec.frames, dtype=None)  # float16 stays so
            x = torch.from_numpy(np.ascontiguousarray(frames))
        else:
            x = torch.from_numpy(np.array(self._volume_grid(index)))  # off the memmap
        aug = np.zeros(0, dtype=np.float32)
        if spec.augment > 0:
            aug = (
                draw_volume_params(rng, self._volume_augment)
                if kind == "volume"
                else draw_clip_params(rng, self._clip_augment, spec.size, spec.size)
            )
        return x, torch.from_numpy(aug)

    # -- video ---------------------------------------------------------------------------

    def _video_item(self, index: int) -> torch.Tensor:
        spec = self.input
        frames = self._video_frames(index)
        clips = [
            self._clip(frames, indices)
            for indices in _eval_frame_indices(len(frames), spec.frames, spec.clips_per_scan)
        ]
        if spec.clips_per_scan == 1:
            return torch.from_numpy(clips[0])
        return torch.from_numpy(np.stack(clips))

    def _video_frames(self, index: int) -> np.ndarray:
        """Every frame of scan ``index``: resized (grey) uint8 from the cache, else as decoded."""
        path = Path(self._paths[index])
        if self.cache is None:
            return self._read(path, "video").array
        params = {
            "format": _CACHE_FORMAT,
            "stage": "video",
            "size": self.input.size,
            "grey": self.input.channels == 1,
        }
        return self.cache.get(path, params, lambda: self._decode_video(path))

    def _decode_video(self, path: Path) -> np.ndarray:
        video = self._read(path, "video").array
        if self.input.channels == 1:
            video = grey_frames(video)
        return resize_frames(video, self.input.size)

    def _clip(self, frames: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Frames at ``indices`` -> float32 (T, C, H, W), resized and standardised.

        Resizing is per frame, so picking frames before resizing (uncached) gives exactly
        what picking from the resized cache gives.
        """
        spec = self.input
        # Grey conversion is per pixel: converting the picked frames equals picking from the
        # converted cache, and skips converting frames no clip uses.
        picked = np.asarray(frames[indices])
        if spec.channels == 1:
            picked = grey_frames(picked)
        # The picked frames are already the clip: prepare_clip must keep them all, in order.
        return prepare_clip(
            picked, frames=len(picked), size=spec.size, channels=spec.channels, train=False
        ).astype(np.float32, copy=False)

    # -- stills --------------------------------------------------------------------------

    def _image_pixels(self, index: int) -> np.ndarray:
        """The still, resized (grey) uint8, from the cache or decoded."""
        path = Path(self._paths[index])
        if self.cache is None:
            return self._decode_image(path)
        params = {
            "format": _CACHE_FORMAT,
            "stage": "image",
            "size": self.input.size,
            "grey": self.input.channels == 1,
        }
        return np.asarray(self.cache.get(path, params, lambda: self._decode_image(path)))

    def _image_item(self, index: int) -> torch.Tensor:
        # A still is a one-frame clip from here on: the same scaling and standardisation.
        clip = prepare_clip(
            self._image_pixels(index)[None],
            frames=1,
            size=self.input.size,
            channels=self.input.channels,
            train=False,
        )
        return torch.from_numpy(clip[0])

    def _decode_image(self, path: Path) -> np.ndarray:
        image = self._read(path, "image").array
        if self.input.channels == 1:
            image = grey_frames(image[None])[0]
        return resize_frames(pad_square(image)[None], self.input.size)[0]

    # -- volumes -------------------------------------------------------------------------

    def _volume_grid(self, index: int) -> np.ndarray:
        """The normalised volume on the size^3 grid (S, S, S), float16 (cached) or float32."""
        path = Path(self._paths[index])
        if self.cache is None:
            return self._build_volume(path)
        params = {"format": _CACHE_FORMAT, "stage": "volume", "size": self.input.size}
        return self.cache.get(path, params, lambda: self._build_volume(path))

    def _build_volume(self, path: Path) -> np.ndarray:
        scan = self._read(path, "volume")
        size = self.input.size
        grid = resample_volume(scan.array, scan.spacing, (size, size, size))
        return normalize_intensity(grid).astype(np.float16)

    def _volume_item(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._volume_grid(index), dtype=np.float32))[None]

    def _slices_item(self, index: int) -> torch.Tensor:
        frames = slices_as_frames(self._volume_grid(index), self.input.frames)
        clip = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))[:, None]
        return clip.expand(-1, self.input.channels, -1, -1).contiguous()

    # -- reading -------------------------------------------------------------------------

    def _read(self, path: Path, expected: str) -> Scan:
        scan = read_scan(path)
        if expected == "video" and scan.kind == "image":
            # A still where clips are expected (a single-frame DICOM among cines): one frame.
            return Scan(scan.array[None], "video", None, None, scan.original_shape)
        if scan.kind != expected:
            raise DataError(
                f"{path}: read as {SCAN_KIND_PHRASE[scan.kind]} but data.input.kind is "
                f"{self.input.kind!r}; fix the manifest row, or for such scans set "
                f"{settings_for_scan(scan.kind)}"
            )
        return scan


def _with_channels(frames: np.ndarray, channels: int) -> np.ndarray:
    """uint8 frames (T, S, S) grey or (T, S, S, 3) RGB, as RGB where the encoder takes 3
    channels: a batch mixing grey and colour sources then stacks. Writable and contiguous:
    copied only where needed (a cache entry's read-only map), not the frames a slice made."""
    if channels == 3 and frames.ndim == 3:
        return np.repeat(frames[..., None], 3, axis=-1)
    return np.require(frames, requirements=("C_CONTIGUOUS", "WRITEABLE"))


def _eval_frame_indices(n_frames: int, n_segments: int, n_clips: int) -> list[np.ndarray]:
    """Deterministic frame indices of ``n_clips`` evaluation clips.

    One clip: the standard evaluation sampling (segment centres). Several: the k-th clip takes
    the point at fraction (k + 0.5) / K of each segment, so the K clips tile the video.
    """
    if n_clips == 1:
        return [np.asarray(sample_frame_indices(n_frames, n_segments, train=False))]
    segment = n_frames / n_segments
    return [
        np.minimum(
            ((np.arange(n_segments) + (k + 0.5) / n_clips) * segment).astype(np.int64),
            n_frames - 1,
        )
        for k in range(n_clips)
    ]


def read_vectors(frame: pd.DataFrame, rows: list[Any] | None = None) -> np.ndarray:
    """The (F,) ``.npy`` vectors named in ``frame["path"]``, stacked: (N, F) float32.

    Raises:
        DataError: no ``path`` column, a file that is not a (F,) vector, or vectors of
            different lengths (naming the manifest row).
    """
    if "path" not in frame.columns:
        raise DataError(
            "tabular input without data.feature_columns reads (F,) .npy files from the path "
            "column, but the manifest has none; add paths or name the feature columns"
        )
    rows = rows if rows is not None else [i + 2 for i in range(len(frame))]
    vectors: list[np.ndarray] = []
    for row, path in zip(rows, frame["path"].astype(str), strict=True):
        scan = read_scan(Path(path))
        if scan.kind != "vector":
            raise DataError(
                f"manifest row {row}, column path: {path} is a {scan.kind}, not a (F,) feature "
                "vector; save one numpy.save vector per scan or set data.input.kind"
            )
        if vectors and scan.array.shape != vectors[0].shape:
            raise DataError(
                f"manifest row {row}, column path: {path} holds {scan.array.shape[0]} features "
                f"but row {rows[0]} holds {vectors[0].shape[0]}; save vectors of one length"
            )
        vectors.append(scan.array)
    if not vectors:
        return np.empty((0, 0), dtype=np.float32)
    return np.stack(vectors).astype(np.float32, copy=False)


def _feature_matrix(frame: pd.DataFrame, columns: list[str], rows: list[Any]) -> np.ndarray:
    """Tabular features (N, F) float32; every value must be a finite number."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"input.feature_columns: column {missing[0]!r} is not in the manifest; available: "
            f"{', '.join(map(str, frame.columns))}"
        )
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(
            f"manifest row {rows[r]}, column {columns[c]}: {frame[columns[c]].iloc[r]!r} is not a "
            "finite number; fill it in or drop the row"
        )
    return values.astype(np.float32)
