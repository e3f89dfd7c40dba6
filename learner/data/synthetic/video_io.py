"""Write grey clips as H.264 mp4 files (PyAV, libx264, yuv420p), atomically."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from learner.io import atomic_path


def write_mp4(path: Path, frames: np.ndarray, *, fps: int = 20, crf: int = 23) -> None:
    """Encode a grey clip as an H.264 mp4 that ordinary players and PyAV read.

    The file appears only when complete (written beside ``path``, then renamed). The encoder
    settings are chosen so that the same clip always gives the same bytes. Grey levels are
    stored as video-range luma, so decoders (PyAV ``to_ndarray(format="gray")``, OpenCV, players)
    give back the original levels up to compression error.

    Args:
        path: Target ``.mp4`` file; its folder must exist.
        frames: (T, H, W) uint8 clip with even H and W (4:2:0 chroma needs even sizes).
        fps: Frame rate written in the container.
        crf: x264 constant rate factor (lower = better quality, larger file).

    Raises:
        ValueError: ``frames`` is not (T, H, W) uint8 with T >= 1 and even H, W.
    """
    if frames.ndim != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise ValueError(
            f"frames must be (T, H, W) uint8 with T >= 1, got {frames.dtype} {frames.shape}"
        )
    _, height, width = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs even frame sizes, got {height}x{width}")
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            # One thread and no macroblock-tree rate control: otherwise x264 gave different
            # bytes (and decoded pixels) for the same clip from run to run.
            stream.options = {
                "crf": str(crf),
                "preset": "veryfast",
                "x264-params": "threads=1:lookahead-threads=1:no-mbtree=1",
            }
            # Build the yuv420p planes ourselves (grey -> luma, neutral chroma) rather than
            # have swscale convert "gray" frames, which also made the output vary. Luma is
            # "video range" (16-235), which is how decoders read untagged H.264.
            luma = np.round(16.0 + frames.astype(np.float32) * (219.0 / 255.0)).astype(np.uint8)
            chroma = np.full((height // 2, width), 128, dtype=np.uint8)
            for frame in luma:
                planes = np.concatenate([frame, chroma])
                container.mux(stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")))
            container.mux(stream.encode(None))
