"""Read one scan file (video, still image, DICOM, NIfTI or ``.npy``) into a numpy array.

:func:`read_scan` is the single entry point: it dispatches on the file extension (or on a
folder, read as one DICOM series) and returns a :class:`Scan`:

- ``video``: uint8 ``(T, H, W)`` for grey clips, ``(T, H, W, 3)`` RGB otherwise. A clip whose
  three channels are equal everywhere keeps one channel, which saves two thirds of the memory.
- ``volume``: float32 ``(D, H, W)``. D runs inferior to superior (axial slices along D), each
  slice in radiological display order (rows anterior to posterior, columns patient right to
  left), for NIfTI and DICOM series alike, so one model sees both in the same orientation.
- ``image``: a 2-D still, uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB: a PNG / JPEG, a
  single-frame DICOM, a 2-D NIfTI slice (one slice of an MRI, for example) or a 2-D ``.npy``.
  Rescaled to uint8 like video frames (min-max over the image when stored wider).
- ``vector``: float32 ``(F,)`` features.

**Orientation rule** (one rule for files and in-memory scans): a NIfTI is turned to RAS+
voxel axes by its affine (``nib.as_closest_canonical``; a 2-D slice has its two axes flipped
to +x / +y), then shown as a radiological axial view: a volume ``(x, y, z)`` becomes
``(z, -y, -x)`` (D inferior to superior, rows anterior to posterior, columns patient right to
left), a 2-D slice ``(x, y)`` becomes ``(-y, -x)`` (rows along y, columns along x, both
reversed: the array ``get_fdata()`` gives, transposed and turned 180 degrees). DICOM pixels,
video frames, stills and ``.npy`` arrays keep their stored ``(rows, columns)`` order. A scan
given in memory (:func:`scan_from_memory`: a nibabel image, a pydicom dataset, or an array in
a named layout, e.g. ``get_fdata()``'s) goes through the same code as its file, so file and
array give the same :class:`Scan`.

Every problem a user can fix (missing file, corrupt clip, wrong shape, a DICOM without
pixels) raises :class:`~learner.errors.DataError` naming the file and the fix. Messages and
metadata never carry DICOM patient tags.

Example:
    >>> from learner.data.synthetic.video_io import write_mp4
    >>> write_mp4(Path("patient_01_L1.mp4"), np.full((30, 48, 64), 128, np.uint8), fps=25)
    >>> scan = read_scan("patient_01_L1.mp4")
    >>> scan.kind, scan.array.shape, scan.fps  # a grey clip keeps one channel
    ('video', (30, 48, 64), 25.0)

Why one long module: one reader per container (video through PyAV, DICOM single and multi-frame
and series, NIfTI 2-D and 3-D, ``.npy``, stills), each short, sharing the orientation and
rescaling rules above; the dispatch and those rules are easiest to check on one page.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from learner.errors import DataError
from learner.io import atomic_path

ScanKind = Literal["video", "volume", "image", "vector"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mpeg", ".mpg", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm",)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NPY_SUFFIXES = (".npy",)
ACCEPTED = " ".join(
    (*VIDEO_SUFFIXES, *IMAGE_SUFFIXES, *DICOM_SUFFIXES, *NIFTI_SUFFIXES, *NPY_SUFFIXES)
)

MAX_FRAMES = 2000
MAX_BYTES = 2 * 1024**3
# Container frame rates above this are header garbage (e.g. a time base taken as a rate).
_MAX_PLAUSIBLE_FPS = 1000.0
# 8-bit planar YUV layouts whose chroma planes can be checked for a grey frame.
_PLANAR_YUV = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"})
_GREY_LUTS: dict[str, np.ndarray] = {}
_NPY_SHAPES = (
    "(F,) features, (H, W) image, (T, H, W) uint8 video, (D, H, W) volume, (T, H, W, 3) RGB video"
)


@dataclass(frozen=True)
class Scan:
    """One decoded scan.

    Attributes:
        array: video uint8 ``(T, H, W)`` or ``(T, H, W, 3)``; volume float32 ``(D, H, W)``;
            image uint8 ``(H, W)`` or ``(H, W, 3)``; vector float32 ``(F,)``.
        kind: ``"video"``, ``"volume"``, ``"image"`` or ``"vector"``.
        fps: frames per second of a video when the file says so, else None.
        spacing: voxel size in mm per array axis (``(D, H, W)`` for volumes, ``(H, W)`` for
            images) when known, else None.
        original_shape: the data's shape as stored in the file, before reorientation,
            squeezing or the grey-channel collapse (videos are counted as decoded RGB).
    """

    array: np.ndarray
    kind: ScanKind
    fps: float | None
    spacing: tuple[float, ...] | None
    original_shape: tuple[int, ...]


def read_scan(
    path: str | Path, *, max_frames: int = MAX_FRAMES, max_bytes: int = MAX_BYTES
) -> Scan:
    """Read a scan file, or a folder holding one DICOM series.

    Args:
        path: ``.mp4 .avi .mov .mpeg .mpg .gif`` video, ``.png .jpg .jpeg`` still, ``.dcm``
            DICOM (single-frame image or multi-frame cine), ``.nii``/``.nii.gz`` NIfTI (3-D
            volume or 2-D slice), ``.npy`` array, or a folder of the slices of one DICOM series.
        max_frames: a video or cine with more frames is refused (memory guard).
        max_bytes: a decoded array larger than this is refused before it is allocated, so a
            header claiming a huge size cannot exhaust memory.

    Returns:
        The decoded :class:`Scan`.

    Raises:
        DataError: the path is missing, unreadable, of an unknown type, corrupt, too large, or
            holds an array of a shape no model accepts. The message names the file and the fix.

    Example:
        >>> voxels = np.zeros((4, 5, 6), np.float32)  # stored (x, y, z), 2 mm slices along z
        >>> nib.save(nib.Nifti1Image(voxels, np.diag([1.0, 1.0, 2.0, 1.0])), "t1.nii.gz")
        >>> scan = read_scan("t1.nii.gz")
        >>> scan.kind, scan.array.shape, scan.array.dtype.name, scan.spacing  # (D, H, W)
        ('volume', (6, 5, 4), 'float32', (2.0, 1.0, 1.0))
    """
    path = Path(path)
    try:
        is_dir = path.is_dir()
        exists = is_dir or path.exists()
        if exists and not os.access(path, os.R_OK):
            raise PermissionError
    except PermissionError:
        raise DataError(
            f"{path}: permission denied; make the scan file readable by this user"
        ) from None
    if not exists:
        raise DataError(
            f"{path}: scan file not found; check the manifest's path column "
            "(relative paths are resolved against the manifest's folder)"
        )
    if is_dir:
        return _read_dicom_series(path, max_bytes)
    suffix = _suffix(path)
    if suffix in VIDEO_SUFFIXES:
        return _read_video(path, max_frames, max_bytes)
    if suffix in IMAGE_SUFFIXES:
        return _read_image_file(path, max_bytes)
    if suffix in DICOM_SUFFIXES:
        return _read_dicom_file(path, max_frames, max_bytes)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path, max_bytes)
    if suffix in NPY_SUFFIXES:
        return _read_npy(path, max_frames, max_bytes)
    raise DataError(
        f"{path}: unsupported scan type '{suffix or '(no extension)'}'; use one of {ACCEPTED} "
        "or a folder holding one DICOM series"
    )


def _suffix(path: Path) -> str:
    """Lower-case extension, treating ``.nii.gz`` as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _reason(exc: BaseException) -> str:
    """First line of an exception's message, for a one-line DataError."""
    strerror = getattr(exc, "strerror", None)
    if strerror:
        # FFmpeg and OS errors: the bare cause, without errno and file name (already named).
        return str(strerror)
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _is_grey(rgb: np.ndarray) -> bool:
    """Whether an ``(..., 3)`` array has three equal channels."""
    return bool(
        np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    )


def _collapse_grey(video: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` with equal channels -> ``(T, H, W)``; anything else unchanged."""
    if video.ndim == 4 and _is_grey(video):
        return np.ascontiguousarray(video[..., 0])
    return video


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Min-max rescale of a whole scan to uint8 (a constant scan becomes zeros).

    Works frame by frame so a long 16-bit cine never needs a float copy of itself.
    """
    if array.dtype == np.uint8:
        return array
    lo, hi = float(array.min()), float(array.max())
    out = np.zeros(array.shape, dtype=np.uint8)
    if hi > lo:
        scale = 255.0 / (hi - lo)
        for i in range(array.shape[0]):
            frame = (array[i].astype(np.float32) - lo) * scale
            out[i] = np.clip(np.rint(frame), 0, 255)
    return out


def _check_finite(path: Path | str, array: np.ndarray) -> None:
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise DataError(
            f"{path}: {bad} values are NaN or infinite; replace them (e.g. with 0) and re-save"
        )


def _check_bytes(path: Path | str, shape: tuple[int, ...], itemsize: int, max_bytes: int) -> None:
    """Refuse, before allocating, an array of ``shape`` larger than ``max_bytes``."""
    nbytes = math.prod(shape) * itemsize
    if nbytes > max_bytes:
        raise DataError(
            f"{path}: decoded size {nbytes / 2**30:.1f} GiB (shape {shape}) exceeds the "
            f"{max_bytes / 2**30:.1f} GiB limit; downsample or trim the scan, or raise max_bytes"
        )


# --------------------------------------------------------------------------- video


def _video_error(path: Path, reason: str) -> DataError:
    return DataError(
        f"{path}: cannot be decoded as video: {reason}; re-export the clip or remove the row"
    )


def _stream_fps(stream: Any) -> float | None:
    """The stream's frame rate, or None when the container gives no plausible one."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate is not None and 0 < float(rate) <= _MAX_PLAUSIBLE_FPS:
            return float(rate)
    return None


def _read_image_file(path: Path, max_bytes: int) -> Scan:
    """A PNG / JPEG still, decoded by FFmpeg's image demuxer (PyAV: no extra dependency)."""
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0), None) if container.streams.video else None
            if frame is None:
                raise DataError(
                    f"{path}: holds no decodable image; re-export it as PNG or JPEG "
                    "or remove the row"
                )
            _check_bytes(path, (frame.height, frame.width, 3), 1, max_bytes)
            pixels = _frame_pixels(frame)
    except (av.FFmpegError, OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(
            f"{path}: cannot be decoded as an image ({_reason(exc)}); re-export it as PNG or "
            "JPEG or remove the row"
        ) from None
    return _as_image(pixels, None, (*pixels.shape[:2], 3))


def _as_image(
    pixels: np.ndarray, spacing: tuple[float, ...] | None, original: tuple[int, ...]
) -> Scan:
    """uint8 ``(H, W)`` / ``(H, W, 3)`` (equal channels collapsed to grey) as an image Scan."""
    image = _collapse_grey(_to_uint8(pixels[None]))[0]
    return Scan(array=image, kind="image", fps=None, spacing=spacing, original_shape=original)


def _read_video(path: Path, max_frames: int, max_bytes: int) -> Scan:
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise _video_error(path, _reason(exc)) from None
    # Stream attributes must be read while the container is open: PyAV returns garbage after.
    with container:
        if not container.streams.video:
            raise _video_error(path, "the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width, height = stream.codec_context.width, stream.codec_context.height
        fps = _stream_fps(stream)
        claimed = stream.frames  # 0 when the container does not say
        if claimed > max_frames:
            raise DataError(
                f"{path}: {claimed} frames exceed the {max_frames}-frame limit; "
                "trim the clip or raise max_frames"
            )
        _check_bytes(path, (max(claimed, 1), height, width, 3), 1, max_bytes)
        video = _decode_frames(path, container.decode(stream), max_frames, max_bytes)
    if video is None:
        raise _video_error(path, "no decodable frames")
    # A file cut short can still decode its first frames; the header's count gives it away
    # (the 10 % slack tolerates containers whose count is slightly off).
    if len(video) < 0.9 * claimed:
        raise _video_error(
            path, f"only {len(video)} of the {claimed} frames it lists decode (truncated file?)"
        )
    original = (*video.shape[:3], 3)
    return Scan(array=video, kind="video", fps=fps, spacing=None, original_shape=original)


def _plane(frame: av.VideoFrame, index: int) -> np.ndarray:
    """One 8-bit plane of a decoded frame as ``(height, width)``, without its row padding."""
    plane = frame.planes[index]
    rows = np.frombuffer(memoryview(plane), dtype=np.uint8, count=plane.height * plane.line_size)
    return rows.reshape(plane.height, plane.line_size)[:, : plane.width]


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB. One swscale thread: frame decoding is already threaded, and
    swscale's own threads cost more CPU than they save on ultrasound-sized frames."""
    return frame.to_ndarray(format="rgb24", threads=1)


def _grey_lut(format_name: str) -> np.ndarray:
    """Luma -> grey level exactly as PyAV's rgb24 conversion maps a chroma-neutral pixel.

    Derived once per pixel format by converting a probe frame holding every luma value, so
    the fast grey path agrees bit for bit with the rgb24 path whatever swscale's rounding.
    """
    lut = _GREY_LUTS.get(format_name)
    if lut is None:
        probe = av.VideoFrame(256, 2, format_name)
        for index, plane in enumerate(probe.planes):
            fill = np.full((plane.height, plane.line_size), 128, dtype=np.uint8)
            if index == 0:
                fill[:, :256] = np.arange(256, dtype=np.uint8)
            plane.update(fill.tobytes())
        lut = np.ascontiguousarray(_to_rgb(probe)[0, :, 0])
        _GREY_LUTS[format_name] = lut
    return lut


def _frame_pixels(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as uint8 ``(H, W)`` when grey, else ``(H, W, 3)`` RGB.

    Most ultrasound clips are grey: for planar YUV with neutral chroma the grey image is a
    table look-up on the luma plane, several times cheaper than a full RGB conversion.
    """
    if frame.format.name in _PLANAR_YUV and all(
        not np.any(_plane(frame, index) != 128) for index in (1, 2)
    ):
        return _grey_lut(frame.format.name)[_plane(frame, 0)]
    rgb = _to_rgb(frame)
    return np.ascontiguousarray(rgb[..., 0]) if _is_grey(rgb) else rgb


def _decode_frames(
    path: Path, decoded: Iterator[av.VideoFrame], max_frames: int, max_bytes: int
) -> np.ndarray | None:
    """Decode all frames into uint8 ``(T, H, W)`` when every frame is grey, else ``(T, H, W, 3)``.

    Grey frames keep one channel as they arrive (most ultrasound clips are grey), so a grey
    clip never exists in three channels; the frames are assembled once at the end.

    Returns:
        The frames, or None when none decoded.
    """
    frames: list[np.ndarray] = []
    all_grey = True
    first_shape: tuple[int, int] | None = None
    try:
        for frame in decoded:
            if len(frames) >= max_frames:
                raise DataError(
                    f"{path}: more than {max_frames} frames; trim the clip or raise max_frames"
                )
            _check_bytes(path, (len(frames) + 1, frame.height, frame.width, 3), 1, max_bytes)
            image = _frame_pixels(frame)
            if first_shape is None:
                first_shape = image.shape[:2]
            elif image.shape[:2] != first_shape:
                raise _video_error(
                    path, f"frame size changes from {first_shape} to {image.shape[:2]}"
                )
            frames.append(image)
            all_grey = all_grey and image.ndim == 2
    except (av.FFmpegError, OSError, EOFError) as exc:
        raise _video_error(path, _reason(exc)) from None
    if not frames:
        return None
    if all_grey:
        return np.stack(frames)
    video = np.empty((len(frames), *frames[0].shape[:2], 3), dtype=np.uint8)
    for i, image in enumerate(frames):
        if image.ndim == 3:
            video[i] = image
        else:  # per-channel copies are several times faster than a broadcast to (H, W, 3)
            for channel in range(3):
                video[i, ..., channel] = image
    return video


# --------------------------------------------------------------------------- DICOM


def _has_pixels(ds: pydicom.Dataset) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _dicom_fps(ds: pydicom.Dataset) -> float | None:
    """Frame rate from FrameTime (ms per frame), CineRate or RecommendedDisplayFrameRate."""
    frame_time = ds.get("FrameTime")
    if frame_time is not None and float(frame_time) > 0:
        return 1000.0 / float(frame_time)
    for key in ("CineRate", "RecommendedDisplayFrameRate"):
        value = ds.get(key)
        if value is not None and float(value) > 0:
            return float(value)
    return None


def _dicom_pixels(path: Path | str, ds: pydicom.Dataset) -> np.ndarray:
    """Decoded pixels with MONOCHROME1 inverted and palettes applied."""
    try:
        array = np.asarray(ds.pixel_array)
        photometric = str(ds.get("PhotometricInterpretation", ""))
        if photometric == "PALETTE COLOR":
            array = np.asarray(pydicom.pixels.apply_color_lut(array, ds))
        elif photometric == "MONOCHROME1":
            # MONOCHROME1 shows low values as white; flip so bright means high signal everywhere.
            array = array.max() - array
    except Exception as exc:  # pixel codecs raise many types; all mean "cannot decode"
        raise DataError(
            f"{path}: cannot decode the DICOM pixel data ({type(exc).__name__}: {_reason(exc)}); "
            "re-export it uncompressed or install the matching pydicom decoder plugin"
        ) from None
    return array


def _dicom_read(path: Path, *, defer: bool = False) -> pydicom.Dataset:
    try:
        # Deferring large values reads the pixel bytes only when they are decoded.
        return pydicom.dcmread(path, defer_size="64 KB" if defer else None)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as exc:
        raise DataError(
            f"{path}: cannot be read as DICOM ({_reason(exc)}); "
            "re-export the file or remove the row"
        ) from None


def _read_dicom_file(path: Path, max_frames: int, max_bytes: int) -> Scan:
    return _dicom_scan(_dicom_read(path, defer=True), path, max_frames, max_bytes)


def _dicom_scan(ds: pydicom.Dataset, path: Path | str, max_frames: int, max_bytes: int) -> Scan:
    """A single-frame image or a multi-frame cine from a DICOM dataset (read from a file or
    given in memory: :func:`scan_from_memory`)."""
    if not _has_pixels(ds):
        raise DataError(
            f"{path}: the DICOM file holds no pixel data (a report or header only); "
            "point the row at an image or cine file"
        )
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > max_frames:
        raise DataError(
            f"{path}: {n_frames} frames exceed the {max_frames}-frame limit; "
            "trim the cine or raise max_frames"
        )
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    samples = int(ds.get("SamplesPerPixel", 1))
    itemsize = max(1, int(ds.get("BitsAllocated", 8)) // 8)
    _check_bytes(path, (n_frames, rows, cols, samples), itemsize, max_bytes)
    array = _dicom_pixels(path, ds)
    return _dicom_frames(
        array, path, single=n_frames == 1, spacing=_pixel_spacing(ds), fps=_dicom_fps(ds)
    )


def _dicom_frames(
    array: np.ndarray,
    path: Path | str,
    *,
    single: bool,
    spacing: tuple[float, ...] | None,
    fps: float | None,
) -> Scan:
    """Decoded DICOM pixels (``pixel_array``'s layout) as a Scan: one frame ``(H, W)`` /
    ``(H, W, 3)`` is an image, frames ``(T, H, W)`` / ``(T, H, W, 3)`` a cine."""
    if single:
        array = array[None]  # pydicom drops the frame axis of a single-frame image
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] != 3):
        raise DataError(
            f"{path}: DICOM pixel data of shape {array.shape} is not a 2D image or cine; "
            "use a folder of slices for a 3D volume"
        )
    original = tuple(int(s) for s in array.shape)
    if single:
        return _as_image(array[0], spacing, original[1:])
    video = _collapse_grey(_to_uint8(array))
    return Scan(array=video, kind="video", fps=fps, spacing=None, original_shape=original)


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[float, ...] | None:
    """(between rows, between columns) in mm, i.e. along H then W, when the file says."""
    spacing = ds.get("PixelSpacing")
    if spacing is None or len(spacing) != 2:
        return None
    return (float(spacing[0]), float(spacing[1]))


def _slice_normal(ds: pydicom.Dataset) -> np.ndarray | None:
    orientation = ds.get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        return None
    cosines = np.asarray([float(v) for v in orientation], dtype=np.float64)
    return np.cross(cosines[:3], cosines[3:])


def _series_files(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    """The DICOM images in a folder; non-DICOM files and DICOMDIR indexes are skipped."""
    found: list[tuple[Path, pydicom.Dataset]] = []
    for member in sorted(folder.iterdir()):
        if not member.is_file() or member.name.startswith(".") or member.name == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(member, defer_size="64 KB")
        except (InvalidDicomError, EOFError, ValueError, KeyError):
            continue
        except OSError as exc:
            raise DataError(
                f"{member}: cannot be read ({_reason(exc)}); fix the file's permissions"
            ) from None
        if _has_pixels(ds):
            found.append((member, ds))
    return found


def _read_dicom_series(folder: Path, max_bytes: int) -> Scan:
    found = _series_files(folder)
    if not found:
        raise DataError(
            f"{folder}: is a folder without DICOM images; point the path at a scan file "
            "or at a folder holding one DICOM series"
        )
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in found}
    if len(series) > 1:
        raise DataError(f"{folder}: holds {len(series)} DICOM series; keep one series per folder")
    shapes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for _, ds in found}
    if len(shapes) > 1:
        raise DataError(
            f"{folder}: slices of different sizes {sorted(shapes)}; keep one series per folder"
        )
    for member, ds in found:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
            raise DataError(
                f"{member}: a series folder must hold single-frame grey slices; "
                "move multi-frame or colour files out of it"
            )
    rows, cols = shapes.pop()
    _check_bytes(folder, (len(found), rows, cols), 4, max_bytes)
    found, slice_step = _sort_slices(folder, found)

    volume = np.empty((len(found), rows, cols), dtype=np.float32)
    for i, (member, ds) in enumerate(found):
        pixels = _dicom_pixels(member, ds).astype(np.float32)
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        volume[i] = pixels * slope + intercept

    first = found[0][1]
    spacing: tuple[float, ...] | None = None
    pixel_spacing = _pixel_spacing(first)
    if slice_step is None:
        for key in ("SpacingBetweenSlices", "SliceThickness"):
            if first.get(key) is not None and float(first.get(key)) > 0:
                slice_step = float(first.get(key))
                break
    if pixel_spacing is not None and slice_step is not None:
        spacing = (slice_step, *pixel_spacing)
    return Scan(
        array=volume,
        kind="volume",
        fps=None,
        spacing=spacing,
        original_shape=(len(found), rows, cols),
    )


def _sort_slices(
    folder: Path, found: list[tuple[Path, pydicom.Dataset]]
) -> tuple[list[tuple[Path, pydicom.Dataset]], float | None]:
    """Order slices along the slice normal (fallback InstanceNumber).

    Returns:
        The sorted slices and the median distance between neighbours in mm (None when the
        order came from InstanceNumber).
    """
    if len(found) == 1:
        return found, None
    normal = _slice_normal(found[0][1])
    if normal is not None and all(ds.get("ImagePositionPatient") is not None for _, ds in found):
        # Distance along the normal orders any orientation, not only axial acquisitions.
        keys = [
            float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for _, ds in found
        ]
        order = np.argsort(keys, kind="stable")
        steps = np.diff(np.asarray(keys)[order])
        if np.any(np.abs(steps) < 1e-6):
            raise DataError(
                f"{folder}: two slices share one ImagePositionPatient; "
                "keep one series (one echo, one acquisition) per folder"
            )
        return [found[i] for i in order], float(np.median(steps))
    if all(ds.get("InstanceNumber") is not None for _, ds in found):
        return sorted(found, key=lambda item: int(item[1].InstanceNumber)), None
    raise DataError(
        f"{folder}: cannot order the slices (no ImagePositionPatient or InstanceNumber); "
        "re-export the series with position tags"
    )


# --------------------------------------------------------------------------- NIfTI


def _read_nifti(path: Path, max_bytes: int) -> Scan:
    try:
        image = nib.load(path)
        if not isinstance(image, nib.spatialimages.SpatialImage):
            raise DataError(f"{path}: is not a NIfTI image; save the volume as NIfTI")
        return _nifti_scan(image, path, max_bytes)
    except DataError:
        raise
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(
            f"{path}: cannot be read as NIfTI ({_reason(exc)}); re-export the volume or "
            "remove the row"
        ) from None


def _nifti_scan(image: nib.spatialimages.SpatialImage, path: Path | str, max_bytes: int) -> Scan:
    """A NIfTI image (from a file or given in memory: :func:`scan_from_memory`) as a volume
    or, when 2-D, an image: the one orientation rule of the module docstring."""
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 2:
        return _nifti_slice(path, image, shape, max_bytes)
    if len(shape) < 2:
        raise DataError(
            f"{path}: NIfTI of shape {shape} is neither a 2-D slice nor a 3-D volume; "
            "save an image or a volume"
        )
    if any(s != 1 for s in shape[3:]):
        raise DataError(
            f"{path}: NIfTI of shape {shape} holds {math.prod(shape[3:])} volumes; "
            "save the one 3D volume to use per row"
        )
    _check_bytes(path, shape[:3], 4, max_bytes)
    if len(shape) > 3:
        image = nib.funcs.squeeze_image(image)
    # Closest canonical = RAS+ axes, so every file has the same voxel orientation.
    image = nib.as_closest_canonical(image)
    data = np.asarray(image.get_fdata(dtype=np.float32))
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    _check_finite(path, data)
    # RAS (x, y, z) -> (z, y, x) with y and x flipped: D inferior->superior, rows
    # anterior->posterior, columns right->left, the order DICOM series slices come in.
    volume = np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])
    return Scan(
        array=volume,
        kind="volume",
        fps=None,
        spacing=(zooms[2], zooms[1], zooms[0]),
        original_shape=shape,
    )


def _nifti_slice(
    path: Path | str, image: nib.spatialimages.SpatialImage, shape: tuple[int, ...], max_bytes: int
) -> Scan:
    """A 2-D NIfTI (one slice) as an image, in the display order of a volume's slices.

    A slice has no third axis to reorient along, so only its two in-plane axes are flipped
    to point along +x / +y (as ``as_closest_canonical`` would), then shown like an axial slice
    of :func:`_read_nifti` (rows along -y, columns along -x): every slice of one data set
    comes out in one orientation.
    """
    _check_bytes(path, shape, 4, max_bytes)
    data = np.asarray(image.get_fdata(dtype=np.float32))
    _check_finite(path, data)
    for axis in (0, 1):
        if image.affine[axis, axis] < 0:
            data = np.flip(data, axis)
    zooms = tuple(float(z) for z in image.header.get_zooms()[:2])
    pixels = np.ascontiguousarray(data.T[::-1, ::-1])
    return _as_image(pixels, (zooms[1], zooms[0]), shape)


# --------------------------------------------------------------------------- numpy


def _read_npy(path: Path, max_frames: int, max_bytes: int) -> Scan:
    try:
        stored = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(
            f"{path}: cannot be read as .npy ({_reason(exc)}); save it with numpy.save "
            "as a plain numeric array"
        ) from None
    return _npy_scan(stored, path, max_frames, max_bytes)


def _npy_scan(stored: np.ndarray, path: Path | str, max_frames: int, max_bytes: int) -> Scan:
    """An array in the layout ``read_scan`` returns (a ``.npy`` file's or one given in memory:
    :func:`scan_from_memory`), told apart by shape and dtype."""
    shape = tuple(int(s) for s in stored.shape)
    if stored.dtype.kind not in "biuf":
        raise DataError(
            f"{path}: .npy of dtype {stored.dtype} is not numeric; save a numeric array"
        )
    if 0 in shape:
        raise DataError(f"{path}: .npy of shape {shape} is empty; save a non-empty array")
    # float32 is the largest array this reader makes from a .npy.
    _check_bytes(path, shape, 4, max_bytes)
    ndim = len(shape)
    if ndim == 2:
        if stored.dtype != np.uint8:
            _check_finite(path, stored)
        return _as_image(np.array(stored), None, shape)
    if ndim == 1:
        vector = np.array(stored, dtype=np.float32)
        _check_finite(path, vector)
        return Scan(array=vector, kind="vector", fps=None, spacing=None, original_shape=shape)
    is_rgb = ndim == 4 and shape[-1] == 3
    if (ndim == 3 and stored.dtype == np.uint8) or is_rgb:
        if shape[0] > max_frames:
            raise DataError(
                f"{path}: {shape[0]} frames exceed the {max_frames}-frame limit; "
                "trim the clip or raise max_frames"
            )
        if stored.dtype != np.uint8:
            _check_finite(path, stored)
        video = _collapse_grey(_to_uint8(np.array(stored)))
        return Scan(array=video, kind="video", fps=None, spacing=None, original_shape=shape)
    if ndim == 3:
        volume = np.array(stored, dtype=np.float32)
        _check_finite(path, volume)
        return Scan(array=volume, kind="volume", fps=None, spacing=None, original_shape=shape)
    raise DataError(
        f"{path}: .npy of shape {shape} is not accepted; accepted shapes: {_NPY_SHAPES}"
    )


# --------------------------------------------------------------------------- in memory

Layout = Literal["scan", "nibabel", "pydicom", "pyav"]
LAYOUTS: tuple[str, ...] = ("scan", "nibabel", "pydicom", "pyav")


def scan_from_memory(
    item: Any,
    layout: str = "scan",
    *,
    affine: np.ndarray | None = None,
    name: str = "array",
    max_frames: int = MAX_FRAMES,
    max_bytes: int = MAX_BYTES,
) -> Scan:
    """A scan held in memory as the :class:`Scan` :func:`read_scan` gives for its file.

    The same code as the file readers runs, so a scan gives the same array whether it comes
    as a file or from memory (the orientation rule of the module docstring applies to both).

    Args:
        item: a nibabel image (``nib.load(path)``: its affine and voxel sizes are used), a
            pydicom dataset (``pydicom.dcmread(path)``: its photometric interpretation,
            palette, pixel spacing and frame rate are used), or a numpy array in ``layout``.
        layout: how a bare array is laid out (objects carry their own layout):

            - ``scan``: as :func:`read_scan` returns it (and as a ``.npy`` file is read):
              ``(F,)`` features, ``(H, W)`` image, uint8 ``(T, H, W)`` / ``(T, H, W, 3)``
              video, float ``(D, H, W)`` volume.
            - ``nibabel``: as ``img.get_fdata()`` (or ``np.asarray(img.dataobj)``) returns
              it: voxel axes ``(x, y)`` for a 2-D slice, ``(x, y, z)`` for a volume. Oriented
              by ``affine`` as a file with that affine would be; without one, the axes are
              taken as RAS+ with 1 mm voxels (the identity affine).
            - ``pydicom``: as ``ds.pixel_array`` returns it: ``(H, W)`` or ``(H, W, 3)`` one
              frame (an image), ``(T, H, W)`` or ``(T, H, W, 3)`` a cine (a video); taken as
              MONOCHROME2 (a MONOCHROME1 or palette file needs the dataset itself).
            - ``pyav``: frames stacked as ``np.stack([f.to_ndarray(format="rgb24") for f in
              container.decode(video=0)])``: uint8 ``(T, H, W, 3)``; ``(T, H, W)`` is taken as
              grey frames already.
        affine: the 4x4 voxel-to-world affine of a ``nibabel`` array (``img.affine``).
        name: how messages name the item (e.g. ``item 3``).
        max_frames, max_bytes: as for :func:`read_scan`.

    Returns:
        The :class:`Scan`.

    Raises:
        DataError: an object or shape no reader accepts, named by ``name``.

    Example:
        >>> voxels = np.arange(24, dtype=np.float32).reshape(6, 4)  # a slice, (x, y)
        >>> nib.save(nib.Nifti1Image(voxels, np.eye(4)), "slice.nii.gz")
        >>> from_file = read_scan("slice.nii.gz").array
        >>> from_array = scan_from_memory(voxels, "nibabel").array
        >>> from_file.shape, np.array_equal(from_file, from_array)  # (H, W) = (y, x)
        ((4, 6), True)
    """
    if isinstance(item, nib.spatialimages.SpatialImage):
        return _nifti_scan(item, name, max_bytes)
    if isinstance(item, pydicom.Dataset):
        return _dicom_scan(item, name, max_frames, max_bytes)
    if not isinstance(item, np.ndarray):
        raise DataError(
            f"{name}: a {type(item).__name__} is not a scan; give a file path, a numpy array, "
            "a nibabel image or a pydicom dataset"
        )
    if layout not in LAYOUTS:
        raise DataError(f"{name}: layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if layout != "nibabel" and affine is not None:
        raise DataError(f"{name}: an affine only orients a layout 'nibabel' array")
    if item.dtype.kind not in "biuf" or item.size == 0:
        raise DataError(
            f"{name}: an array of dtype {item.dtype} and shape {item.shape}; give a non-empty "
            "numeric array"
        )
    if layout == "scan":
        return _npy_scan(item, name, max_frames, max_bytes)
    if layout == "nibabel":
        if item.ndim not in (2, 3):
            raise DataError(
                f"{name}: a nibabel array of shape {item.shape}; give (x, y) for a slice or "
                "(x, y, z) for a volume"
            )
        matrix = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise DataError(f"{name}: affine of shape {matrix.shape}; give img.affine (4, 4)")
        _check_bytes(name, item.shape, 4, max_bytes)
        return _nifti_scan(nib.Nifti1Image(np.asarray(item), matrix), name, max_bytes)
    if layout == "pydicom":
        single = item.ndim == 2 or (item.ndim == 3 and item.shape[-1] == 3)
        if not single and item.shape[0] > max_frames:
            raise DataError(
                f"{name}: {item.shape[0]} frames exceed the {max_frames}-frame limit; "
                "trim the cine or raise max_frames"
            )
        _check_bytes(name, item.shape, item.dtype.itemsize, max_bytes)
        return _dicom_frames(item, name, single=single, spacing=None, fps=None)
    # pyav
    if item.dtype != np.uint8 or not (item.ndim == 3 or (item.ndim == 4 and item.shape[-1] == 3)):
        raise DataError(
            f"{name}: PyAV frames of dtype {item.dtype} and shape {item.shape}; stack "
            "frame.to_ndarray(format='rgb24') into uint8 (T, H, W, 3)"
        )
    if item.shape[0] > max_frames:
        raise DataError(
            f"{name}: {item.shape[0]} frames exceed the {max_frames}-frame limit; "
            "trim the clip or raise max_frames"
        )
    _check_bytes(name, item.shape, 1, max_bytes)
    video = _collapse_grey(np.ascontiguousarray(item))
    original = (*item.shape[:3], 3)
    return Scan(array=video, kind="video", fps=None, spacing=None, original_shape=original)


def write_scan(scan: Scan, folder: str | Path, stem: str) -> Path:
    """Write ``scan`` as a file that :func:`read_scan` reads back to the same array (and, for
    a volume, the same voxel size): the way an in-memory scan reaches the model through
    exactly the files' path.

    Videos, grey images and vectors go to ``.npy``, colour images to a lossless ``.png``,
    volumes to a float32 ``.nii`` whose axes read back as ``(D, H, W)``. A still's pixel
    spacing and a clip's frame rate are not kept (no model uses them).

    Returns:
        The file written, ``folder/stem.<suffix>``.
    """
    folder = Path(folder)
    if scan.kind == "volume":
        spacing = scan.spacing if scan.spacing is not None else (1.0, 1.0, 1.0)
        # The inverse of _nifti_scan's reordering: (D, H, W) -> (x, y, z) with H and W flipped.
        data = np.ascontiguousarray(
            np.asarray(scan.array, np.float32)[:, ::-1, ::-1].transpose(2, 1, 0)
        )
        affine = np.diag([float(spacing[2]), float(spacing[1]), float(spacing[0]), 1.0])
        path = folder / f"{stem}.nii"
        nib.save(nib.Nifti1Image(data, affine), path)
        return path
    if scan.kind == "image" and scan.array.ndim == 3:
        path = folder / f"{stem}.png"
        height, width = scan.array.shape[:2]
        with atomic_path(path) as tmp, av.open(str(tmp), "w", format="image2") as container:
            stream = container.add_stream("png")
            stream.height, stream.width, stream.pix_fmt = height, width, "rgb24"
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(scan.array), format="rgb24")
            for packet in [*stream.encode(frame), *stream.encode()]:
                container.mux(packet)
        return path
    path = folder / f"{stem}.npy"
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, scan.array)
    return path
