"""Fixtures for the reliability tests: a small cohort with a fixed split, CLI helpers, a
DICOM cine writer and a guard that turns a hang into a failure.

The cohort is the first patients of the session's tiny synthetic LUS cohort, referenced by
absolute path, with an explicit ``split`` column so that a bad file placed on row 2 belongs to
a training patient and is read in the first epoch of `learner pretrain`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import numpy as np
import pandas as pd
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid
from typer.testing import CliRunner, Result

from learner.cli import app

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "learner" / "configs" / "demo.yaml"
# Tiny and fast: 1 epoch of a width-8 TSM ResNet on 4 frames of 32 x 32.
FAST_SETTINGS = (
    "model.width=8",
    "data.input.size=32",
    "data.input.frames=4",
    "train.epochs=1",
    "train.batch_size=8",
    "train.lr=0.003",
    "eval.n_boot=50",
    "run.seeds=[0]",
    "run.objectives=[mse,weighted]",
)
# Patients of the small cohort by split; row 2 of its manifest is a training patient's scan.
SPLIT_SIZES = {"train": 5, "val": 2, "test": 1}
HANG_LIMIT_S = 120


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """Fail (instead of hanging the suite) when one test runs past HANG_LIMIT_S seconds."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"test still running after {HANG_LIMIT_S} s: a reader or loop hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(HANG_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """Environment of CLI subprocesses: one thread (as in-process runs), unbuffered output."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _one_thread_everywhere(one_thread: None) -> None:
    """Every reliability test runs with tests/conftest.py's ``one_thread``."""


@dataclass(frozen=True)
class SmallCohort:
    """Manifest rows (absolute paths, explicit split) over the tiny cohort's scan files."""

    frame: pd.DataFrame
    source: Path

    def write(self, folder: Path, frame: pd.DataFrame | None = None) -> Path:
        """Write ``frame`` (default: the cohort) as ``folder/manifest.csv``."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "manifest.csv"
        (self.frame if frame is None else frame).to_csv(path, index=False)
        return path


@pytest.fixture(scope="session")
def small_cohort(tiny_cohort: Path) -> SmallCohort:
    """The first 8 patients of the tiny cohort: 5 train, 2 val, 1 test."""
    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    patients = sorted(frame["patient_id"].unique())[: sum(SPLIT_SIZES.values())]
    split: dict[str, str] = {}
    for name, count in SPLIT_SIZES.items():
        for patient in patients[len(split) : len(split) + count]:
            split[patient] = name
    frame = frame[frame["patient_id"].isin(patients)].reset_index(drop=True)
    frame["path"] = [str((tiny_cohort.parent / p).resolve()) for p in frame["path"]]
    frame["split"] = frame["patient_id"].map(split)
    assert frame.loc[0, "split"] == "train"
    return SmallCohort(frame=frame, source=tiny_cohort)


@pytest.fixture(scope="session")
def decode_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decode cache for the session's tiny runs: good scans are decoded once."""
    return tmp_path_factory.mktemp("decode_cache")


class Cli:
    """In-process `learner` invocations and the checks every reliability test makes."""

    config = DEMO_CONFIG

    @staticmethod
    def settings(manifest: Path, cache: Path, *extra: str) -> list[str]:
        """``--set`` arguments of a tiny 1-epoch run on ``manifest`` with decode cache ``cache``."""
        items = [f"data.manifest={manifest}", f"data.cache_dir={cache}", *FAST_SETTINGS, *extra]
        return [arg for item in items for arg in ("--set", item)]

    @staticmethod
    def invoke(args: Sequence[str]) -> Result:
        """Run the CLI in-process, as `learner ARGS`."""
        return CliRunner().invoke(app, [str(a) for a in args])

    @staticmethod
    def error_lines(result: Result) -> list[str]:
        return [line for line in result.output.splitlines() if line.startswith("error: ")]

    def fails(self, result: Result, code: int, *fragments: str) -> str:
        """The command failed with ``code``, without a traceback, and one error line holds
        every fragment (case-insensitive). Returns that line."""
        output = result.output
        assert result.exit_code == code, (result.exit_code, output[-2000:], result.exception)
        assert "Traceback" not in output, output[-3000:]
        assert "unexpected error" not in output, output[-2000:]
        lines = self.error_lines(result)
        matching = [line for line in lines if all(f.lower() in line.lower() for f in fragments)]
        assert matching, (fragments, lines, output[-2000:])
        return matching[0]

    @staticmethod
    def succeeds(result: Result) -> None:
        assert result.exit_code == 0, (result.output[-3000:], result.exception)
        assert "Traceback" not in result.output


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli()


@pytest.fixture(scope="session")
def dicom_writer() -> Callable[..., Path]:
    """A function writing a multi-frame 8-bit grey ultrasound DICOM cine."""
    return write_dicom_cine


def write_dicom_cine(
    path: Path,
    frames: np.ndarray,
    *,
    tags: Mapping[str, str] | None = None,
    pixels: bool = True,
    claimed_shape: tuple[int, int, int] | None = None,
) -> Path:
    """Write uint8 ``frames`` (T, H, W) as an Ultrasound Multi-frame Image file.

    Args:
        path: target ``.dcm`` file.
        frames: the cine, uint8 (T, H, W).
        tags: extra top-level attributes (keyword -> value), e.g. patient tags.
        pixels: write PixelData; False gives a header-only file.
        claimed_shape: (frames, rows, columns) written in the header instead of the real
            shape (a header that lies about the size).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    n, rows, cols = claimed_shape or frames.shape
    ds.NumberOfFrames = n
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.FrameTime = 50.0
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)
    if pixels:
        ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def run_settings(manifest: Path, cache: Path) -> list[str]:
    """``--set`` arguments of the tiny `learner run` (2 objectives + baselines, 1 epoch)."""
    return Cli.settings(manifest, cache, "data.split.ratios=[0.5,0.2,0.3]")


@pytest.fixture(scope="session")
def run_command(tiny_cohort: Path) -> Callable[[Path, Path], list[str]]:
    """``run_command(out, cache)``: `learner run` arguments (without the program) of the tiny
    ablation on the tiny cohort, writing into ``out`` with decode cache ``cache``."""

    def command(out: Path, cache: Path) -> list[str]:
        return [
            "run",
            "--config",
            str(DEMO_CONFIG),
            *run_settings(tiny_cohort, cache),
            "--out",
            str(out),
        ]

    return command


@pytest.fixture(scope="session")
def reference_run(
    run_command: Callable[[Path, Path], list[str]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The output folder of one uninterrupted tiny `learner run` (in-process, fresh cache)."""
    root = tmp_path_factory.mktemp("reference_run")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # set up before the autouse one_thread fixture applies
    try:
        result = Cli.invoke(run_command(root / "out", root / "cache"))
    finally:
        torch.set_num_threads(before)
    Cli.succeeds(result)
    return root / "out"
