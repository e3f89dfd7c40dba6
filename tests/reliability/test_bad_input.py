"""The bad-input corpus of issue #7: every case through `learner validate`, `pretrain` and
`embed`, each with its documented outcome (docs/reliability.md): a one-line error naming the
manifest row and the fix with exit 3, or success with the problem counted in the summary.
Never a traceback, never a hang (the autouse ``no_hang`` fixture turns one into a failure).

The corpus is generated here; a file case replaces the scan of manifest row 2 (a training
patient's scan, read in the first epoch of `pretrain` and the first batch of `embed`).
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

COMMANDS = ("validate", "pretrain", "embed")


@dataclass(frozen=True)
class Outcome:
    """What a command does with a case: exit 0, or exit ``code`` with one error line that
    holds every fragment."""

    code: int = 0
    fragments: tuple[str, ...] = ()


OK = Outcome()


def error(*fragments: str) -> Outcome:
    return Outcome(3, fragments)


Writer = Callable[..., Path]
# build(folder, frame, write_dicom) -> the manifest frame to write, or a manifest path.
Builder = Callable[[Path, pd.DataFrame, Writer], "pd.DataFrame | Path"]


@dataclass(frozen=True)
class Case:
    """One corpus entry: ``build`` writes what the case needs into a folder; ``outcomes``
    maps each command to its documented outcome."""

    name: str
    build: Builder
    outcomes: dict[str, Outcome]


def same(outcome: Outcome) -> dict[str, Outcome]:
    return dict.fromkeys(COMMANDS, outcome)


# --------------------------------------------------------------------------- bad files

FileWriter = Callable[[Path, pd.DataFrame, Writer], None]


def on_row_2(name: str, write: FileWriter) -> Builder:
    """A builder putting the file (or folder, or link) written by ``write`` on row 2."""

    def build(folder: Path, frame: pd.DataFrame, write_dicom: Writer) -> pd.DataFrame:
        target = folder / name
        write(target, frame, write_dicom)
        frame.loc[0, "path"] = str(target)
        return frame

    return build


def truncated_mp4(target: Path, frame: pd.DataFrame, write_dicom: Writer) -> None:
    data = Path(frame.loc[0, "path"]).read_bytes()
    target.write_bytes(data[: len(data) // 2])


def corrupt_mp4(target: Path, frame: pd.DataFrame, write_dicom: Writer) -> None:
    """A real clip with its middle third overwritten by noise."""
    data = bytearray(Path(frame.loc[0, "path"]).read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = np.random.default_rng(0).bytes(third)
    target.write_bytes(bytes(data))


def zero_frame_video(target: Path, frame: pd.DataFrame, write_dicom: Writer) -> None:
    """An AVI with a video stream and not one frame in it."""
    with av.open(str(target), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
        for packet in stream.encode(None):
            container.mux(packet)


def one_frame_gif(target: Path, frame: pd.DataFrame, write_dicom: Writer) -> None:
    """A colour GIF of one 48 x 40 frame (other scans are grey 64 x 64 mp4 clips)."""
    with av.open(str(target), "w") as container:
        stream = container.add_stream("gif", rate=10)
        stream.width, stream.height, stream.pix_fmt = 40, 48, "rgb8"
        image = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def dicom_without_pixels(target: Path, frame: pd.DataFrame, write_dicom: Writer) -> None:
    write_dicom(target, np.zeros((2, 4, 4), np.uint8), pixels=False)


def huge_dicom_header(target: Path, frame: pd.DataFrame, write_dicom: Writer) -> None:
    """A cine whose header claims 1000 frames of 60000 x 60000 pixels over 32 bytes."""
    write_dicom(target, np.zeros((2, 4, 4), np.uint8), claimed_shape=(1000, 60000, 60000))


def truncated_nifti(target: Path, frame: pd.DataFrame, write_dicom: Writer) -> None:
    volume = nib.Nifti1Image(np.ones((16, 16, 16), dtype=np.float32), np.eye(4))
    data = gzip.compress(volume.to_bytes())
    target.write_bytes(data[: len(data) // 2])


def npy_wrong_rank(target: Path, frame: pd.DataFrame, write_dicom: Writer) -> None:
    np.save(target, np.zeros((2, 3, 4, 5), dtype=np.float32))


def npy_feature_vector(target: Path, frame: pd.DataFrame, write_dicom: Writer) -> None:
    """A (F,) feature vector: a valid scan of a table, not among video clips."""
    np.save(target, np.zeros(16, dtype=np.float32))


def huge_npy_header(target: Path, frame: pd.DataFrame, write_dicom: Writer) -> None:
    """A .npy whose header claims shape (100000, 10000, 10000) (100 TB) over 8 bytes."""
    buffer = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": (100000, 10000, 10000)}
    np.lib.format.write_array_header_1_0(buffer, header)
    target.write_bytes(buffer.getvalue() + bytes(8))


def folder_as_file(target: Path, frame: pd.DataFrame, write_dicom: Writer) -> None:
    """A folder named like a clip, holding a text file and no DICOM."""
    target.mkdir()
    (target / "notes.txt").write_text("not a scan")


def empty_folder(target: Path, frame: pd.DataFrame, write_dicom: Writer) -> None:
    target.mkdir()


def symlink_loop(target: Path, frame: pd.DataFrame, write_dicom: Writer) -> None:
    other = target.with_name("loop_b.mp4")
    os.symlink(other.name, target)
    os.symlink(target.name, other)


def nothing(target: Path, frame: pd.DataFrame, write_dicom: Writer) -> None:
    """The manifest names a file that does not exist."""


def on_row_2_error(name: str, *reason: str) -> Outcome:
    return error("row 2, column path", name, *reason)


FILE_CASES = [
    Case(
        "truncated_mp4",
        on_row_2("cut.mp4", truncated_mp4),
        same(on_row_2_error("cut.mp4", "cannot be decoded as video")),
    ),
    Case(
        "corrupt_mp4",
        on_row_2("noise.mp4", corrupt_mp4),
        same(on_row_2_error("noise.mp4", "cannot be decoded as video")),
    ),
    Case(
        "zero_decodable_frames",
        on_row_2("empty.avi", zero_frame_video),
        same(on_row_2_error("empty.avi", "no decodable frames")),
    ),
    Case("one_frame_gif", on_row_2("one.gif", one_frame_gif), same(OK)),
    Case(
        "dicom_without_pixels",
        on_row_2("header.dcm", dicom_without_pixels),
        same(on_row_2_error("header.dcm", "no pixel data")),
    ),
    Case(
        "huge_dicom_header",
        on_row_2("huge.dcm", huge_dicom_header),
        same(on_row_2_error("huge.dcm", "exceeds the", "limit")),
    ),
    Case(
        # Among mp4 clips a NIfTI file is first of all the wrong kind of scan; the reader's
        # own error for a truncated file is tested in tests/data/test_readers.py.
        "truncated_nii_gz",
        on_row_2("cut.nii.gz", truncated_nifti),
        same(error("mixes scan kinds", "row 2: NIfTI image among video clips")),
    ),
    Case(
        "npy_wrong_rank",
        on_row_2("flat.npy", npy_wrong_rank),
        same(on_row_2_error("flat.npy", "shape (2, 3, 4, 5) is not accepted")),
    ),
    Case(
        "feature_vector_among_clips",
        on_row_2("vector.npy", npy_feature_vector),
        same(error("mixes scan kinds", "row 2: feature vector (1-D .npy) among video clips")),
    ),
    Case(
        "huge_npy_header",
        on_row_2("huge.npy", huge_npy_header),
        same(on_row_2_error("huge.npy", "cannot be read as .npy")),
    ),
    Case(
        "folder_where_file_expected",
        on_row_2("clip.mp4", folder_as_file),
        same(on_row_2_error("clip.mp4", "folder without DICOM images")),
    ),
    Case(
        "empty_folder",
        on_row_2("nothing_here", empty_folder),
        same(on_row_2_error("nothing_here", "holds no files")),
    ),
    Case(
        "symlink_loop",
        on_row_2("loop_a.mp4", symlink_loop),
        same(on_row_2_error("loop_a.mp4", "not a regular file")),
    ),
    Case(
        "missing_file",
        on_row_2("gone.mp4", nothing),
        same(on_row_2_error("gone.mp4", "file not found")),
    ),
]


# --------------------------------------------------------------------------- bad manifests


def set_cell(row: int, column: str, value: str) -> Builder:
    """Set spreadsheet row ``row`` (header = 1) of ``column`` to ``value``."""

    def build(folder: Path, frame: pd.DataFrame, write_dicom: Writer) -> pd.DataFrame:
        frame.loc[row - 2, column] = value
        return frame

    return build


def duplicate_row(folder: Path, frame: pd.DataFrame, write_dicom: Writer) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[0]]], ignore_index=True)


def not_utf8(folder: Path, frame: pd.DataFrame, write_dicom: Writer) -> Path:
    frame.loc[0, "patient_id"] = "Ren\u00e9e"
    path = folder / "manifest.csv"
    path.write_bytes(frame.to_csv(index=False).encode("cp1252"))
    return path


def empty_manifest(folder: Path, frame: pd.DataFrame, write_dicom: Writer) -> Path:
    path = folder / "manifest.csv"
    path.write_bytes(b"")
    return path


def header_only(folder: Path, frame: pd.DataFrame, write_dicom: Writer) -> pd.DataFrame:
    return frame.iloc[:0]


def one_patient(folder: Path, frame: pd.DataFrame, write_dicom: Writer) -> pd.DataFrame:
    """One patient, no split column: the user's only patient."""
    first = frame[frame["patient_id"] == frame.loc[0, "patient_id"]]
    return first.drop(columns="split").reset_index(drop=True)


def equal_scores(folder: Path, frame: pd.DataFrame, write_dicom: Writer) -> pd.DataFrame:
    frame["score"] = "250"
    return frame


def manifest_is_folder(folder: Path, frame: pd.DataFrame, write_dicom: Writer) -> Path:
    path = folder / "manifest.csv"
    path.mkdir()
    return path


MANIFEST_CASES = [
    Case("nan_score", set_cell(3, "score", "NaN"), same(error("row 3, column score", "NaN"))),
    Case("inf_score", set_cell(3, "score", "inf"), same(error("row 3, column score", "infinite"))),
    Case(
        "non_numeric_score",
        set_cell(3, "score", "abc"),
        same(error("row 3, column score", "'abc' is not a number")),
    ),
    Case("empty_score", set_cell(3, "score", ""), same(OK)),
    Case("duplicate_row", duplicate_row, same(error("duplicate of row 2", "delete one"))),
    Case("empty_visit", set_cell(3, "visit", ""), same(error("row 3, column visit", "is empty"))),
    Case("non_utf8_csv", not_utf8, same(error("manifest.csv", "not UTF-8", "save it as CSV"))),
    Case("empty_manifest", empty_manifest, same(error("manifest.csv", "is empty"))),
    Case("header_only", header_only, same(error("manifest.csv", "no data rows"))),
    Case(
        "visit_cannot_be_ordered",
        set_cell(3, "visit", "baseline"),
        same(error("row 3, column visit", "neither a number nor an ISO date")),
    ),
    Case(
        "visit_kinds_mixed",
        set_cell(3, "visit", "2021-03-01"),
        same(error("row 3, column visit", "mixes numeric visits")),
    ),
    Case(
        "one_patient",
        one_patient,
        {
            "validate": OK,
            "pretrain": error("no training or no validation patients", "add patients"),
            "embed": OK,
        },
    ),
    Case(
        "all_scores_equal",
        equal_scores,
        {
            "validate": OK,
            "pretrain": error("every labelled training scan has score 250", "score column"),
            "embed": OK,
        },
    ),
    Case("manifest_is_folder", manifest_is_folder, same(error("is a folder", "manifest file"))),
]

CASES = FILE_CASES + MANIFEST_CASES
CASE = {case.name: case for case in CASES}


# --------------------------------------------------------------------------- the runs
# Fixture types (SmallCohort, Cli) live in conftest.py, which test modules cannot import.


@pytest.fixture(scope="module")
def checkpoint(
    small_cohort: Any, decode_cache: Path, cli: Any, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A checkpoint trained (1 epoch) on the good small cohort, for `learner embed`."""
    folder = tmp_path_factory.mktemp("good")
    manifest = small_cohort.write(folder)
    out = folder / "run"
    settings = cli.settings(manifest, decode_cache)
    cli.succeeds(cli.invoke(["pretrain", "--config", cli.config, *settings, "--out", out]))
    return Path(out / "checkpoints" / "best.ckpt")


def materialise(case: Case, folder: Path, small_cohort: Any, write_dicom: Writer) -> Path:
    """Write the case into ``folder``; returns its manifest path."""
    built = case.build(folder, small_cohort.frame.copy(), write_dicom)
    if isinstance(built, Path):
        return built
    return Path(small_cohort.write(folder, built))


def command_args(
    command: str, manifest: Path, folder: Path, cli: Any, cache: Path, ckpt: Path
) -> list[Any]:
    """`learner COMMAND` arguments on ``manifest``, writing into ``folder``."""
    if command == "validate":
        return ["validate", manifest]
    if command == "pretrain":
        settings = cli.settings(manifest, cache)
        return ["pretrain", "--config", cli.config, *settings, "--out", folder / "run"]
    return ["embed", "--checkpoint", ckpt, "--manifest", manifest, "--out", folder / "e.parquet"]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_corpus_case_has_its_documented_outcome(
    case: Case,
    tmp_path: Path,
    small_cohort: Any,
    decode_cache: Path,
    checkpoint: Path,
    cli: Any,
    dicom_writer: Writer,
) -> None:
    manifest = materialise(case, tmp_path, small_cohort, dicom_writer)
    for command in COMMANDS:
        expected = case.outcomes[command]
        args = command_args(command, manifest, tmp_path, cli, decode_cache, checkpoint)
        result = cli.invoke(args)
        if expected.code == 0:
            cli.succeeds(result)
        else:
            cli.fails(result, expected.code, *expected.fragments)
            assert len(cli.error_lines(result)) == 1, result.output[-2000:]


def test_skips_are_counted_in_the_summary_and_kept_in_embeddings(
    tmp_path: Path, small_cohort: Any, checkpoint: Path, cli: Any, dicom_writer: Writer
) -> None:
    """An empty score is an unlabelled scan: counted by `validate`, embedded with NaN."""
    frame = small_cohort.frame.copy()
    frame.loc[1, "score"] = ""
    manifest = small_cohort.write(tmp_path, frame)
    result = cli.invoke(["validate", manifest])
    cli.succeeds(result)
    n = len(frame)
    counted = [line for line in result.stdout.splitlines() if "labelled scans" in line]
    assert counted and f"{n - 1} of {n}" in counted[0], result.stdout
    assert f"scan files decoded: {frame['path'].nunique()}" in result.stdout

    out = tmp_path / "e.parquet"
    args = ["embed", "--checkpoint", checkpoint, "--manifest", manifest, "--out", out]
    cli.succeeds(cli.invoke(args))
    embedded = pd.read_parquet(out)
    assert len(embedded) == n and int(embedded["score"].isna().sum()) == 1


def test_validate_warns_about_one_patient_and_equal_scores(
    tmp_path: Path, small_cohort: Any, cli: Any
) -> None:
    """Both pass `validate` (exit 0) with a warning saying what pretraining will miss."""
    frame = small_cohort.frame.copy()
    frame["score"] = "250"
    result = cli.invoke(["validate", small_cohort.write(tmp_path / "equal", frame)])
    cli.succeeds(result)
    assert "warning: manifest.csv: every labelled scan has score 250" in result.stderr

    single = frame[frame["patient_id"] == frame.loc[0, "patient_id"]]
    result = cli.invoke(["validate", small_cohort.write(tmp_path / "single", single)])
    cli.succeeds(result)
    assert "warning: manifest.csv: only one patient" in result.stderr


def test_bad_scan_in_a_dataloader_worker_is_one_line(
    tmp_path: Path, small_cohort: Any, decode_cache: Path, cli: Any, dicom_writer: Writer
) -> None:
    """With num_workers > 0 torch re-raises the worker's error with its traceback as the
    message; the CLI must still print the one line the reader wrote."""
    manifest = materialise(CASE["truncated_mp4"], tmp_path, small_cohort, dicom_writer)
    settings = cli.settings(manifest, decode_cache, "data.num_workers=1")
    result = cli.invoke(["pretrain", "--config", cli.config, *settings, "--out", tmp_path / "r"])
    line = cli.fails(result, 3, "row 2, column path", "cut.mp4", "cannot be decoded as video")
    assert "worker" not in line and len(cli.error_lines(result)) == 1


def test_failed_embed_keeps_the_previous_output(
    tmp_path: Path, small_cohort: Any, checkpoint: Path, cli: Any, dicom_writer: Writer
) -> None:
    """A scan that fails late in `embed` leaves the earlier embeddings file as it was and no
    temporary file behind."""
    frame = small_cohort.frame.copy()
    last = len(frame) - 1
    broken = tmp_path / "late.mp4"
    truncated_mp4(broken, frame.iloc[[last]].reset_index(drop=True), dicom_writer)
    frame.loc[last, "path"] = str(broken)
    manifest = small_cohort.write(tmp_path, frame)
    out = tmp_path / "out" / "e.parquet"
    out.parent.mkdir()
    out.write_bytes(b"previous embeddings")
    args = ["embed", "--checkpoint", checkpoint, "--manifest", manifest, "--out", out]
    cli.fails(cli.invoke(args), 3, f"row {last + 2}, column path", "late.mp4")
    assert out.read_bytes() == b"previous embeddings"
    assert sorted(p.name for p in out.parent.iterdir()) == ["e.parquet"]


def test_real_cli_prints_one_line_and_exit_3(
    tmp_path: Path, small_cohort: Any, dicom_writer: Writer
) -> None:
    """The installed entry point (not the in-process runner): stderr is one line."""
    manifest = materialise(CASE["dicom_without_pixels"], tmp_path, small_cohort, dicom_writer)
    proc = subprocess.run(
        [sys.executable, "-m", "learner.cli", "validate", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: manifest.csv row 2, column path")
    assert "no pixel data" in lines[0]
