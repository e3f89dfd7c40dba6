"""read_scan: videos, DICOM, NIfTI and .npy, their guards, and the real public clips."""

from __future__ import annotations

import gzip
import os
import random
from pathlib import Path

import av
import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, MRImageStorage, generate_uid

from learner.data.readers import Scan, read_scan
from learner.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-4711"


# --------------------------------------------------------------------------- helpers


def colour_frames(n: int = 12, height: int = 48, width: int = 64) -> np.ndarray:
    """(T, H, W, 3): left half red, right half green, brightness rising with t."""
    frames = np.zeros((n, height, width, 3), dtype=np.uint8)
    for t in range(n):
        frames[t, :, : width // 2, 0] = 60 + 9 * t
        frames[t, :, width // 2 :, 1] = 60 + 9 * t
    return frames


def grey_frames(n: int = 12, height: int = 48, width: int = 64) -> np.ndarray:
    """(T, H, W, 3) with equal channels: a flat grey level of 40 + 15 t."""
    levels = (40 + 15 * np.arange(n)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()


def write_video(
    path: Path,
    frames: np.ndarray,
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fps: int = 10,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode (T, H, W, 3) uint8 frames with PyAV."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_dicom_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    series_uid: str,
    position: float | None = None,
    instance: int | None = None,
    with_pixels: bool = True,
) -> Path:
    """Write one uint16 MR slice (H, W) as an implicit-VR little-endian DICOM file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "MR"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.5, 0.75]
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -5
    if position is not None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, position]
    if instance is not None:
        ds.InstanceNumber = instance
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def assert_names(error: pytest.ExceptionInfo[DataError], path: Path, *words: str) -> None:
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message
    for word in words:
        assert word in message


# --------------------------------------------------------------------------- video


def test_colour_mp4_reads_back_rgb(tmp_path: Path) -> None:
    frames = colour_frames()
    scan = read_scan(write_video(tmp_path / "clip.mp4", frames))
    assert isinstance(scan, Scan)
    assert scan.kind == "video"
    assert scan.array.shape == (12, 48, 64, 3)
    assert scan.array.dtype == np.uint8
    assert scan.original_shape == (12, 48, 64, 3)
    assert scan.fps == pytest.approx(10.0)
    # Flat colour blocks survive lossy coding within a few levels (away from the edge).
    decoded = scan.array[:, 8:-8, 4:24].astype(int).mean(axis=(1, 2))
    expected = frames[:, 8:-8, 4:24].astype(int).mean(axis=(1, 2))
    np.testing.assert_allclose(decoded, expected, atol=12)


def test_grey_mp4_keeps_one_channel(tmp_path: Path) -> None:
    frames = grey_frames()
    scan = read_scan(write_video(tmp_path / "grey.mp4", frames))
    assert scan.array.shape == (12, 48, 64)
    assert scan.original_shape == (12, 48, 64, 3)
    np.testing.assert_allclose(
        scan.array.mean(axis=(1, 2)), frames[..., 0].mean(axis=(1, 2)), atol=4
    )


@pytest.mark.parametrize(
    ("name", "codec", "pix_fmt"),
    [
        ("g.mp4", "libx264", "yuv420p"),
        ("g.avi", "libx264", "yuv422p"),
        ("g.mov", "libx264", "yuv444p"),
    ],
)
def test_grey_fast_path_matches_rgb_conversion(
    tmp_path: Path, name: str, codec: str, pix_fmt: str
) -> None:
    # Grey frames skip the RGB conversion (a luma look-up): it must give the same pixels.
    ramp = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, None, :, None], (3, 16, 256, 3))
    path = write_video(tmp_path / name, ramp.copy(), codec=codec, pix_fmt=pix_fmt)
    with av.open(str(path)) as container:
        reference = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert np.array_equal(reference[..., 0], reference[..., 1])  # the codec kept it grey
    scan = read_scan(path)
    assert scan.array.shape == (3, 16, 256)
    np.testing.assert_array_equal(scan.array, reference[..., 0])
    assert len(np.unique(scan.array)) > 150  # many luma levels exercised


def test_uppercase_extension_and_mov(tmp_path: Path) -> None:
    upper = write_video(tmp_path / "clip.MP4", colour_frames(4))
    mov = write_video(tmp_path / "clip.mov", colour_frames(5))
    assert read_scan(upper).array.shape[0] == 4
    assert read_scan(str(mov)).array.shape[0] == 5


def test_gif_reads_back(tmp_path: Path) -> None:
    frames = colour_frames(6, 40, 40)
    frames[..., 0] = np.where(frames[..., 0] > 0, 255, 0)  # saturated colours survive rgb8
    frames[..., 1] = np.where(frames[..., 1] > 0, 255, 0)
    scan = read_scan(write_video(tmp_path / "clip.gif", frames, codec="gif", pix_fmt="rgb8"))
    assert scan.array.shape == (6, 40, 40, 3)
    assert scan.fps == pytest.approx(10.0)
    # rgb8 keeps 3 bits of red and green: 255 comes back as 252.
    np.testing.assert_allclose(scan.array[:, 5, 5], [[255, 0, 0]] * 6, atol=4)
    np.testing.assert_allclose(scan.array[:, 5, 35], [[0, 255, 0]] * 6, atol=4)


def test_grey_gif_is_one_channel(tmp_path: Path) -> None:
    scan = read_scan(
        write_video(tmp_path / "g.gif", grey_frames(5, 32, 32), codec="gif", pix_fmt="gray")
    )
    assert scan.array.shape == (5, 32, 32)
    np.testing.assert_array_equal(scan.array[:, 0, 0], 40 + 15 * np.arange(5))


def test_avi_mpeg4_reads_back(tmp_path: Path) -> None:
    scan = read_scan(write_video(tmp_path / "clip.avi", colour_frames(8), codec="mpeg4"))
    assert scan.array.shape == (8, 48, 64, 3)
    assert scan.fps == pytest.approx(10.0)


def test_frame_and_byte_limits(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4", colour_frames(12))
    with pytest.raises(DataError) as err:
        read_scan(path, max_frames=5)
    assert_names(err, path, "12 frames", "max_frames")
    with pytest.raises(DataError) as err:
        read_scan(path, max_bytes=48 * 64 * 3 * 4)
    assert_names(err, path, "limit")


def test_frame_limit_holds_when_the_container_gives_no_count(tmp_path: Path) -> None:
    # MPEG program streams carry no frame count: the limit must hold while decoding.
    path = write_video(tmp_path / "clip.mpeg", colour_frames(12), codec="mpeg2video", fps=25)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    scan = read_scan(path)
    assert scan.array.shape == (12, 48, 64, 3)
    assert scan.fps == pytest.approx(25.0)
    with pytest.raises(DataError) as err:
        read_scan(path, max_frames=5)
    assert_names(err, path, "more than 5 frames")
    with pytest.raises(DataError) as err:
        read_scan(path, max_bytes=48 * 64 * 3 * 4)
    assert_names(err, path, "limit")


def test_truncated_mp4_is_a_data_error(tmp_path: Path) -> None:
    whole = write_video(tmp_path / "whole.mp4", colour_frames(20)).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as err:
        read_scan(cut)
    assert_names(err, cut, "cannot be decoded as video", "re-export the clip")


def test_truncated_faststart_mp4_is_caught_by_frame_count(tmp_path: Path) -> None:
    # With the index first, a cut file still decodes its first frames: only the count tells.
    source = write_video(
        tmp_path / "fs.mp4", colour_frames(20), options={"movflags": "faststart"}
    ).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(source[: int(len(source) * 0.8)])
    with pytest.raises(DataError) as err:
        read_scan(cut)
    assert_names(err, cut, "truncated")


@pytest.mark.parametrize("payload", [b"", random.Random(0).randbytes(4096)])
def test_garbage_mp4_is_a_data_error(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "noise.mp4"
    path.write_bytes(payload)
    with pytest.raises(DataError) as err:
        read_scan(path)
    assert_names(err, path, "cannot be decoded as video")


# --------------------------------------------------------------------------- npy


@pytest.mark.parametrize(
    ("array", "kind", "shape", "dtype"),
    [
        (np.arange(5, dtype=np.float64), "vector", (5,), np.float32),
        (np.zeros((4, 6, 7), dtype=np.uint8), "video", (4, 6, 7), np.uint8),
        (np.ones((4, 6, 7), dtype=np.int16), "volume", (4, 6, 7), np.float32),
        (
            np.arange(4 * 6 * 7 * 3, dtype=np.uint8).reshape(4, 6, 7, 3),
            "video",
            (4, 6, 7, 3),
            np.uint8,
        ),
    ],
)
def test_npy_accepted_shapes(
    tmp_path: Path, array: np.ndarray, kind: str, shape: tuple[int, ...], dtype: type
) -> None:
    np.save(tmp_path / "x.npy", array)
    scan = read_scan(tmp_path / "x.npy")
    assert scan.kind == kind
    assert scan.array.shape == shape
    assert scan.array.dtype == dtype
    assert scan.original_shape == array.shape
    np.testing.assert_array_equal(scan.array, array.astype(dtype))
    assert scan.array.flags.writeable  # a private copy, not the read-only memory map


def test_npy_grey_rgb_collapses_and_float_rgb_rescales(tmp_path: Path) -> None:
    grey = np.repeat(np.arange(24, dtype=np.uint8).reshape(2, 3, 4, 1), 3, axis=-1)
    np.save(tmp_path / "grey.npy", grey)
    np.testing.assert_array_equal(read_scan(tmp_path / "grey.npy").array, grey[..., 0])
    rgb = np.zeros((2, 3, 4, 3), dtype=np.float32)
    rgb[0, 0, 0, 0], rgb[1, 2, 3, 2] = -1.0, 3.0
    np.save(tmp_path / "rgb.npy", rgb)
    video = read_scan(tmp_path / "rgb.npy").array
    assert video.dtype == np.uint8
    assert (video[0, 0, 0, 0], video[1, 2, 3, 2], video[0, 1, 1, 1]) == (0, 255, 64)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (2, 2, 2, 2, 2), ()])
def test_npy_wrong_shape_names_shape_and_accepted(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros(shape, dtype=np.float32))
    with pytest.raises(DataError) as err:
        read_scan(path)
    assert_names(err, path, str(shape), "accepted shapes", "(T, H, W)")


def test_npy_object_empty_and_nan_are_data_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "empty.npy", np.zeros((0, 4, 4), dtype=np.float32))
    np.save(tmp_path / "nan.npy", np.array([[[1.0, np.nan]]], dtype=np.float32))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    for name, word in [("obj", ".npy"), ("empty", "empty"), ("nan", "NaN"), ("junk", ".npy")]:
        with pytest.raises(DataError) as err:
            read_scan(tmp_path / f"{name}.npy")
        assert_names(err, tmp_path / f"{name}.npy", word)


# --------------------------------------------------------------------------- NIfTI


def test_nifti_reorients_to_one_voxel_order(tmp_path: Path) -> None:
    # A marker at the left-posterior-superior corner, stored RAS and stored LAS (x flipped):
    # both must come out identical, with D inferior->superior, H anterior->posterior,
    # W right->left.
    ras = np.zeros((4, 5, 6), dtype=np.float32)
    ras[0, 0, 5] = 7.0  # x=0 is leftmost in RAS, y=0 posterior, z=5 superior
    nib.save(nib.Nifti1Image(ras, np.diag([2.0, 3.0, 4.0, 1.0])), tmp_path / "ras.nii")
    las_affine = np.diag([-2.0, 3.0, 4.0, 1.0])
    las_affine[0, 3] = 6.0
    nib.save(nib.Nifti1Image(ras[::-1].copy(), las_affine), tmp_path / "las.nii.gz")
    a, b = read_scan(tmp_path / "ras.nii"), read_scan(tmp_path / "las.nii.gz")
    for scan in (a, b):
        assert scan.kind == "volume"
        assert scan.array.dtype == np.float32
        assert scan.array.shape == (6, 5, 4)
        assert scan.spacing == (4.0, 3.0, 2.0)
        assert scan.original_shape == (4, 5, 6)
        assert np.argwhere(scan.array == 7.0).tolist() == [[5, 4, 3]]
    np.testing.assert_array_equal(a.array, b.array)


def test_nifti_4d_singleton_squeezes_and_real_4d_refused(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    nib.save(nib.Nifti1Image(data[..., None], np.eye(4)), tmp_path / "one.nii.gz")
    scan = read_scan(tmp_path / "one.nii.gz")
    assert scan.array.shape == (4, 3, 2)
    assert scan.original_shape == (2, 3, 4, 1)
    nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), np.eye(4)), tmp_path / "two.nii")
    with pytest.raises(DataError) as err:
        read_scan(tmp_path / "two.nii")
    assert_names(err, tmp_path / "two.nii", "2 volumes", "3D volume")


def test_truncated_nifti_gz_is_a_data_error(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "whole.nii.gz")
    whole = (tmp_path / "whole.nii.gz").read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as err:
        read_scan(cut)
    assert_names(err, cut, "NIfTI")
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"hello"))
    with pytest.raises(DataError):
        read_scan(tmp_path / "text.nii.gz")


def test_nibabel_bundled_anatomical_reads_as_volume() -> None:
    path = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    if not path.exists():
        pytest.skip(f"nibabel's test data is not installed ({path})")
    scan = read_scan(path)
    assert scan.kind == "volume"
    assert scan.array.dtype == np.float32
    assert scan.array.ndim == 3 and min(scan.array.shape) > 1
    assert scan.spacing is not None and all(s > 0 for s in scan.spacing)
    assert np.isfinite(scan.array).all() and scan.array.std() > 0


# --------------------------------------------------------------------------- DICOM


def test_pydicom_ybr_cine_reads_as_rgb_video() -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("examples_ybr_color.dcm")
    if path is None:
        pytest.skip("pydicom's test file examples_ybr_color.dcm is not installed")
    scan = read_scan(path)
    assert scan.kind == "video"
    assert scan.array.shape == (30, 240, 320, 3)
    assert scan.array.dtype == np.uint8
    assert scan.fps == pytest.approx(1000 / 33.333, rel=1e-3)  # FrameTime is 33.333 ms


def test_single_frame_16bit_dicom_is_a_uint8_image(tmp_path: Path) -> None:
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    path = write_dicom_slice(tmp_path / "one.dcm", pixels, series_uid=generate_uid())
    scan = read_scan(path)
    assert scan.kind == "image"
    assert scan.array.shape == (3, 4)
    assert scan.array.dtype == np.uint8
    assert (scan.array.min(), scan.array.max()) == (0, 255)
    assert np.all(np.diff(scan.array.ravel().astype(int)) > 0)  # order kept


def test_dicom_series_folder_reads_sorted_and_rescaled(tmp_path: Path) -> None:
    series = tmp_path / "series"
    series.mkdir()
    uid = generate_uid()
    positions = [10.0, 12.5, 15.0, 17.5, 20.0]
    order = [3, 0, 4, 1, 2]  # written shuffled, with file names that sort wrongly too
    for rank, index in enumerate(order):
        pixels = np.full((6, 5), index * 10, dtype=np.uint16)
        write_dicom_slice(
            series / f"s{rank}.dcm", pixels, series_uid=uid, position=positions[index]
        )
    (series / "notes.txt").write_text("not a DICOM file")
    scan = read_scan(series)
    assert scan.kind == "volume"
    assert scan.array.dtype == np.float32
    assert scan.array.shape == (5, 6, 5)
    # Stored value index*10, slope 2, intercept -5.
    np.testing.assert_array_equal(scan.array[:, 0, 0], [index * 20 - 5 for index in range(5)])
    assert scan.spacing == pytest.approx((2.5, 0.5, 0.75))


def test_dicom_series_falls_back_to_instance_number(tmp_path: Path) -> None:
    uid = generate_uid()
    for rank, instance in enumerate([2, 3, 1]):
        write_dicom_slice(
            tmp_path / f"{rank}.dcm",
            np.full((2, 2), instance, dtype=np.uint16),
            series_uid=uid,
            instance=instance,
        )
    scan = read_scan(tmp_path)
    np.testing.assert_array_equal(scan.array[:, 0, 0], [2 * i - 5 for i in (1, 2, 3)])


def test_folder_with_two_series_or_no_dicom_is_refused(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i in range(2):
        write_dicom_slice(
            mixed / f"{i}.dcm",
            np.zeros((2, 2), np.uint16),
            series_uid=generate_uid(),
            position=float(i),
        )
    with pytest.raises(DataError) as err:
        read_scan(mixed)
    assert_names(err, mixed, "2 DICOM series", "one series per folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        read_scan(empty)
    assert_names(err, empty, "folder", "DICOM")


def test_dicom_without_pixels_is_a_data_error_without_patient_tags(tmp_path: Path) -> None:
    path = write_dicom_slice(
        tmp_path / "header.dcm",
        np.zeros((2, 2), np.uint16),
        series_uid=generate_uid(),
        with_pixels=False,
    )
    with pytest.raises(DataError) as err:
        read_scan(path)
    assert_names(err, path, "no pixel data")
    assert "Doe" not in str(err.value) and PATIENT_ID not in str(err.value)
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError) as err:
        read_scan(tmp_path / "junk.dcm")
    assert_names(err, tmp_path / "junk.dcm", "DICOM")


# --------------------------------------------------------------------------- paths


def test_missing_unknown_and_unreadable_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DataError) as err:
        read_scan(tmp_path / "absent.mp4")
    assert_names(err, tmp_path / "absent.mp4", "not found")
    (tmp_path / "scan.bmp").write_bytes(b"png")
    with pytest.raises(DataError) as err:
        read_scan(tmp_path / "scan.bmp")
    assert_names(err, tmp_path / "scan.bmp", "'.bmp'", ".mp4", ".nii.gz", ".npy")
    np.save(tmp_path / "locked.npy", np.zeros(3))
    # Root ignores permission bits, so simulate the denial the way read_scan checks it.
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(DataError) as err:
        read_scan(tmp_path / "locked.npy")
    assert_names(err, tmp_path / "locked.npy", "permission")


# --------------------------------------------------------------------------- real data


def _real_folder(*parts: str) -> Path:
    folder = SHARED_DATA.joinpath(*parts)
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent (only in the project's shared data)")
    return folder


def _assert_real_clip(path: Path) -> None:
    scan = read_scan(path)
    assert scan.kind == "video", path
    assert scan.array.dtype == np.uint8, path
    assert scan.array.ndim in (3, 4) and scan.array.shape[0] >= 1, path
    assert scan.array.ndim == 3 or scan.array.shape[-1] == 3, path
    assert scan.fps is None or 1 <= scan.fps <= 120, path


@pytest.mark.slow
def test_every_pocus_clip_reads() -> None:
    folder = _real_folder("pocus", "videos")
    clips = sorted(p for p in folder.iterdir() if p.is_file())
    assert len(clips) >= 60
    # All ~14,000 frames of 69 clips in six containers / four codecs: ~30 s on 2 cores.
    for path in clips:
        _assert_real_clip(path)


def test_covid_blues_sample_reads() -> None:
    folder = _real_folder("covid-blues", "lus_videos")
    clips = sorted(folder.glob("*.mp4"))
    assert clips, f"no .mp4 clips in {folder}"
    for path in clips[:: max(1, len(clips) // 10)][:10]:
        _assert_real_clip(path)


# --------------------------------------------------------------------------- stills


def write_png(path: Path, rgb: np.ndarray, codec: str = "png") -> Path:
    """One (H, W, 3) uint8 still through FFmpeg's image muxer."""
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream(codec)
        stream.height, stream.width = rgb.shape[:2]
        stream.pix_fmt = "rgb24" if codec == "png" else "yuvj444p"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return path


def test_png_stills_are_images_grey_collapsed(tmp_path: Path) -> None:
    colour = colour_frames(1, 20, 30)[0]
    scan = read_scan(write_png(tmp_path / "c.png", colour))
    assert scan.kind == "image" and scan.fps is None
    assert np.array_equal(scan.array, colour)  # PNG is lossless
    assert scan.original_shape == (20, 30, 3)
    grey = np.repeat(np.arange(600, dtype=np.uint8).reshape(20, 30)[..., None] % 251, 3, -1)
    scan = read_scan(write_png(tmp_path / "g.png", grey))
    assert scan.array.shape == (20, 30) and np.array_equal(scan.array, grey[..., 0])


def test_jpeg_still_is_an_image(tmp_path: Path) -> None:
    image = colour_frames(1, 32, 48)[0]
    scan = read_scan(write_png(tmp_path / "c.jpg", image, codec="mjpeg"))
    assert scan.kind == "image" and scan.array.shape == (32, 48, 3)
    assert np.abs(scan.array.astype(int) - image).mean() < 8  # lossy, but the same picture


def test_corrupt_png_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match=r"bad\.png.*(image|decod)"):
        read_scan(path)


def test_2d_nifti_slice_is_an_image_in_volume_display_order(tmp_path: Path) -> None:
    data = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)  # (x, y)
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 3.0, 1.0, 1.0])), path)
    scan = read_scan(path)
    assert scan.kind == "image" and scan.array.dtype == np.uint8
    assert scan.array.shape == (4, 6)  # rows along y, columns along x
    assert scan.spacing == (3.0, 2.0) and scan.original_shape == (6, 4)
    # Same display order as an axial slice of a volume: rows and columns both reversed.
    expected = np.rint(data.T[::-1, ::-1] * 255 / data.max()).astype(np.uint8)
    assert np.array_equal(scan.array, expected)
    # A flipped x axis in the affine is undone, so both files show the same picture.
    flipped = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(data[::-1].copy(), np.diag([-2.0, 3.0, 1.0, 1.0])), flipped)
    assert np.array_equal(read_scan(flipped).array, scan.array)


def test_2d_npy_is_an_image(tmp_path: Path) -> None:
    path = tmp_path / "still.npy"
    np.save(path, np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))
    scan = read_scan(path)
    assert scan.kind == "image" and scan.array.shape == (3, 4)
    assert (scan.array.min(), scan.array.max()) == (0, 255)


def test_real_oasis2_slices_are_images() -> None:
    folder = SHARED_DATA / "oasis2-slices"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: real 2-D NIfTI slices need ../shared/data")
    shapes = {}
    for view in ("axl", "cor", "sag"):
        scan = read_scan(sorted((folder / view).iterdir())[0])
        assert scan.kind == "image" and scan.array.dtype == np.uint8
        assert scan.spacing == (1.0, 1.0)
        shapes[view] = scan.array.shape
    assert shapes == {"axl": (256, 207), "cor": (215, 207), "sag": (215, 256)}
