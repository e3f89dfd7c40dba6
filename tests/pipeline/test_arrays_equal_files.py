"""Arrays equal files (issue 28, item 9): a scan given as a file or in memory, laid out as its
library gives it (nibabel ``get_fdata()``, pydicom ``pixel_array``, PyAV rgb24 frames), gives
the same Scan, the same model input tensor and the same embedding."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from learner.api import Model
from learner.config import Config
from learner.data.dataset import InputSpec, ScanDataset
from learner.data.readers import Scan, read_scan, scan_from_memory, write_scan
from learner.errors import DataError
from learner.evaluate.probe import Probe
from learner.train.module import LearnerModule
from tests.data.test_readers import write_video

# A tiny random-init encoder per input kind: equal inputs must give equal embeddings.
TINY = {
    "image": {"input": {"kind": "image", "size": 32}, "encoder": "resnet2d_18"},
    "volume": {"input": {"kind": "volume", "size": 16}, "encoder": "resnet3d_18"},
    "video": {"input": {"kind": "video", "size": 32, "frames": 4}, "encoder": "tsm_resnet18"},
}


def tiny_model(kind: str, folder: Path) -> Model:
    spec = TINY[kind]
    cfg = Config.model_validate(
        {
            "data": {"input": {**spec["input"], "channels": 1}},
            "model": {"encoder": spec["encoder"], "width": 8},
            "train": {"batch_size": 4},
        }
    )
    torch.manual_seed(0)
    module = LearnerModule(cfg.to_plain(), (0.0, 30.0)).eval()
    probe = Probe(np.zeros(1), np.ones(1), [(np.zeros((1, 3)), np.zeros(3))])
    return Model(module=module, probe=probe, info={"band": 1.0}, folder=folder)


def input_tensors(kind: str, paths: list[Path]) -> list[torch.Tensor]:
    """The model input tensor of each file, as embedding builds it (no cache)."""
    spec = TINY[kind]["input"]
    frame = pd.DataFrame(
        {"patient_id": [f"p{i}" for i in range(len(paths))], "score": 0.0, "path": paths}
    )
    dataset = ScanDataset(
        frame,
        input=InputSpec(kind=kind, size=spec["size"], frames=spec.get("frames", 16), channels=1),
        train=False,
        cache=None,
        score_range=(0.0, 30.0),
        patient_codes={f"p{i}": i for i in range(len(paths))},
    )
    return [dataset[i]["x"] for i in range(len(paths))]


def assert_same_scan(from_file: Scan, from_memory: Scan, *, spacing: bool = True) -> None:
    assert from_memory.kind == from_file.kind
    assert from_memory.array.dtype == from_file.array.dtype
    assert np.array_equal(from_memory.array, from_file.array)
    if spacing:
        assert from_memory.spacing == from_file.spacing


def assert_file_equals_memory(
    kind: str, path: Path, items: list[Any], layout: str, tmp_path: Path
) -> None:
    """Same Scan, same input tensor, same embedding and score for the file and each item."""
    from_file = read_scan(path)
    written = []
    for i, item in enumerate(items):
        scan = scan_from_memory(item, layout)
        assert_same_scan(from_file, scan, spacing=kind == "volume")
        written.append(write_scan(scan, tmp_path, f"written{i}"))
        # What is written reads back to the very same array; a volume keeps its voxel size
        # (the models resample volumes by it; stills and clips ignore it).
        assert_same_scan(from_file, read_scan(written[-1]), spacing=kind == "volume")
    tensors = input_tensors(kind, [path, *written])
    for tensor in tensors[1:]:
        assert torch.equal(tensor, tensors[0])
    model = tiny_model(kind, tmp_path)
    u = model.embed([path, *items], layout=layout)
    scores = model.predict_scores([path, *items], layout=layout)
    assert np.abs(u).sum() > 0
    # Equal inputs; the rows of one batch may differ in the last float bit (batched BLAS).
    for row in range(1, len(u)):
        np.testing.assert_allclose(u[row], u[0], rtol=1e-5, atol=1e-6)
        assert scores[row] == pytest.approx(scores[0], rel=1e-5)


def smooth_field(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A float32 pattern without symmetry: any flip or transpose changes it."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    weights = rng.uniform(0.5, 2.0, len(shape))
    ramp = sum(w * (k + 1) * g for k, (w, g) in enumerate(zip(weights, grids, strict=True)))
    return (ramp + 0.1 * rng.random(shape)).astype(np.float32)


# --------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize(
    "affine",
    [np.diag([1.0, 1.0, 1.0, 1.0]), np.diag([-0.9, 1.2, 1.0, 1.0])],
    ids=["ras", "flipped-x"],
)
def test_2d_nifti_slice_file_equals_its_nibabel_array(affine: np.ndarray, tmp_path: Path) -> None:
    """The reported bug: a 2-D NIfTI read from file and ``get_fdata()`` of the same slice
    scored differently (the file was rotated, the array was not)."""
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(smooth_field((40, 30), seed=1), affine), path)
    image = nib.load(path)
    items: list[Any] = [image.get_fdata(), image]  # the array (with its affine) and the image
    if affine[0, 0] > 0:
        assert_file_equals_memory("image", path, items[:1], "nibabel", tmp_path)
    scan = scan_from_memory(image.get_fdata(), "nibabel", affine=image.affine)
    assert_same_scan(read_scan(path), scan)
    assert_file_equals_memory("image", path, items[1:], "nibabel", tmp_path)
    # The array in the reader's own layout is a different picture: the layout matters.
    assert read_scan(path).array.shape == (30, 40)
    assert scan_from_memory(image.get_fdata(), "scan").array.shape == (40, 30)


def test_3d_nifti_volume_file_equals_its_nibabel_array(tmp_path: Path) -> None:
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(smooth_field((14, 12, 10), seed=2), np.diag([1, 1, 1.5, 1])), path)
    image = nib.load(path)
    # Without an affine the voxel size is unknown: give the affine (or the image itself).
    data = image.get_fdata()
    assert_same_scan(read_scan(path), scan_from_memory(data, "nibabel", affine=image.affine))
    assert_file_equals_memory("volume", path, [image], "nibabel", tmp_path)
    # A volume stored LAS (x flipped, the FSL habit) reads the same as its RAS twin.
    las = tmp_path / "las.nii.gz"
    flipped = np.diag([-1.0, 1, 1.5, 1])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data[::-1]).astype(np.float32), flipped), las)
    assert_same_scan(read_scan(path), read_scan(las))
    assert_same_scan(
        read_scan(las), scan_from_memory(nib.load(las).get_fdata(), "nibabel", affine=flipped)
    )


def test_isotropic_nifti_volume_array_needs_no_affine(tmp_path: Path) -> None:
    path = tmp_path / "iso.nii"
    nib.save(nib.Nifti1Image(smooth_field((12, 10, 8), seed=3), np.eye(4)), path)
    assert_file_equals_memory("volume", path, [nib.load(path).get_fdata()], "nibabel", tmp_path)


# --------------------------------------------------------------------------- DICOM


def pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    if found is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    return Path(str(found))


def test_dicom_image_file_equals_its_pixel_array(tmp_path: Path) -> None:
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert_file_equals_memory("image", path, [ds.pixel_array, ds], "pydicom", tmp_path)


def test_dicom_cine_file_equals_its_pixel_array(tmp_path: Path) -> None:
    path = pydicom_file("examples_ybr_color.dcm")
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array[:6]  # six frames keep the test fast
    # The same six frames as a file: the cine with fewer frames.
    ds.NumberOfFrames = 6
    ds.PixelData = None
    ds.PhotometricInterpretation = "RGB"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.PlanarConfiguration = 0
    short = tmp_path / "short.dcm"
    ds.save_as(short, enforce_file_format=True)
    assert read_scan(short).array.shape == (6, 240, 320, 3)
    assert_file_equals_memory("video", short, [pixels, pydicom.dcmread(short)], "pydicom", tmp_path)


def test_monochrome1_needs_the_dataset_not_the_bare_array(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)
    from_file = read_scan(path)
    assert_same_scan(from_file, scan_from_memory(pydicom.dcmread(path), "pydicom"))
    # The bare array cannot know it is inverted: documented, and visibly so.
    assert not np.array_equal(from_file.array, scan_from_memory(ds.pixel_array, "pydicom").array)


# --------------------------------------------------------------------------- video


def write_clip(path: Path, frames: np.ndarray) -> Path:
    return write_video(path, frames)


def pyav_frames(path: Path) -> np.ndarray:
    """What a PyAV user gets: every frame as rgb24, stacked."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


FramesMaker = Callable[[], np.ndarray]


def colour_clip() -> np.ndarray:
    levels = (smooth_field((6, 32, 48), seed=4) / 6 * 255).clip(0, 255).astype(np.uint8)
    return np.stack([levels, 255 - levels, levels // 2], axis=-1)


def grey_clip() -> np.ndarray:
    levels = (smooth_field((6, 32, 48), seed=5) / 6 * 255).clip(0, 255).astype(np.uint8)
    return np.repeat(levels[..., None], 3, axis=-1)


@pytest.mark.parametrize("make", [colour_clip, grey_clip], ids=["colour", "grey"])
def test_video_file_equals_its_pyav_frames(make: FramesMaker, tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip.mp4", make())
    frames = pyav_frames(path)
    assert frames.shape == (6, 32, 48, 3)
    assert_file_equals_memory("video", path, [frames], "pyav", tmp_path)


# --------------------------------------------------------------------------- errors


def test_bad_items_and_layouts_name_the_item(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"item 2: layout 'dicom' is not one of scan, nibabel"):
        scan_from_memory(np.zeros((4, 4)), "dicom", name="item 2")
    with pytest.raises(DataError, match=r"array: a list is not a scan"):
        scan_from_memory([1, 2, 3])
    with pytest.raises(DataError, match=r"an affine only orients a layout 'nibabel' array"):
        scan_from_memory(np.zeros((4, 4)), "scan", affine=np.eye(4))
    with pytest.raises(DataError, match=r"stack frame\.to_ndarray\(format='rgb24'\)"):
        scan_from_memory(np.zeros((3, 8, 8, 3), np.float32), "pyav")
    with pytest.raises(DataError, match=r"nibabel array of shape \(4,\)"):
        scan_from_memory(np.zeros(4), "nibabel")
    model = tiny_model("image", tmp_path)
    with pytest.raises(DataError, match=r"item 0: layout 'nifti' is not one of"):
        model.embed([np.zeros((8, 8))], layout="nifti")
    with pytest.raises(DataError, match=r"item 1: a list is not a scan"):
        model.embed([np.zeros((8, 8)), [1.0, 2.0]])
