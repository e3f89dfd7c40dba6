"""Synthetic cohorts: files, manifest contract, determinism, latent model, null control."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import cast

import av
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from learner.cli import app
from learner.data.synthetic import CohortFiles, lus, mri, write_cohort
from learner.data.synthetic.common import (
    PRESETS,
    STREAM_ACQUISITION,
    STREAM_NUISANCE,
    STREAM_ZONE,
    cohort_table,
    consecutive_changes,
    keyed_rng,
)
from learner.data.synthetic.video_io import write_mp4
from learner.errors import ConfigError

TINY = PRESETS["tiny"]


def decode(path: Path) -> np.ndarray:
    """All frames of an mp4 as (T, H, W) uint8."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="gray") for f in container.decode(video=0)])


def labels(changes: np.ndarray, band: float) -> set[str]:
    """Change classes present (higher score is better)."""
    out = np.where(changes > band, "improve", np.where(changes < -band, "worsen", "stable"))
    return set(out.tolist())


@pytest.fixture(scope="module")
def lus_cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortFiles:
    return write_cohort(
        "lus", tmp_path_factory.mktemp("lus"), patients=None, seed=0, preset="tiny", preview=True
    )


@pytest.fixture(scope="module")
def mri_cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortFiles:
    return write_cohort("mri", tmp_path_factory.mktemp("mri"), patients=None, seed=0, preset="tiny")


def test_lus_files_decode_with_contract_columns(lus_cohort: CohortFiles) -> None:
    manifest = pd.read_csv(lus_cohort.manifest)
    assert list(manifest.columns) == ["patient_id", "visit", "path", "score", "zone"]
    assert lus_cohort.patients == manifest["patient_id"].nunique() == TINY.patients
    assert lus_cohort.scans == len(manifest)
    root = lus_cohort.manifest.parent
    for rel in manifest["path"]:
        assert not Path(rel).is_absolute()
        clip = decode(root / rel)
        assert clip.shape == (TINY.frames, TINY.frame_size, TINY.frame_size)
    # Every visit has every zone; S/F in [0, 500] in steps of 5.
    assert (manifest.groupby(["patient_id", "visit"])["zone"].nunique() == TINY.zones).all()
    assert manifest["score"].between(0, 500).all()
    assert (manifest["score"] % 5 == 0).all()
    # The whole clip is a real B-mode-like picture: dark outside the sector, bright structure.
    clip = decode(root / manifest["path"].iloc[0])
    assert clip[:, 0, 0].max() < 20 and clip.max() > 150


def test_mri_files_decode_with_contract_columns(mri_cohort: CohortFiles) -> None:
    manifest = pd.read_csv(mri_cohort.manifest)
    assert list(manifest.columns) == ["patient_id", "visit", "path", "score"]
    root = mri_cohort.manifest.parent
    for rel in manifest["path"]:
        image = cast(nib.Nifti1Image, nib.load(root / rel))
        assert image.shape == (TINY.volume_size,) * 3
        assert np.allclose(image.header.get_zooms(), TINY.voxel_mm)
    assert manifest["score"].between(0, 30).all()
    assert (manifest["score"] == manifest["score"].round()).all()


def test_truth_is_separate_and_aligned(lus_cohort: CohortFiles) -> None:
    manifest = pd.read_csv(lus_cohort.manifest)
    truth = pd.read_csv(lus_cohort.truth)
    assert truth["path"].tolist() == manifest["path"].tolist()
    assert truth["score"].tolist() == manifest["score"].tolist()
    assert truth["severity"].between(0, 1).all()
    assert "severity" not in manifest.columns


@pytest.mark.parametrize("cohort", ["lus_cohort", "mri_cohort"])
def test_one_to_four_consecutive_visits_per_patient(
    cohort: str, request: pytest.FixtureRequest
) -> None:
    files: CohortFiles = request.getfixturevalue(cohort)
    manifest = pd.read_csv(files.manifest)
    for _, visits in manifest.groupby("patient_id")["visit"]:
        numbers = sorted(set(visits))
        assert 1 <= len(numbers) <= 4
        assert numbers == list(range(len(numbers)))


def test_preview_and_no_temp_files_left(lus_cohort: CohortFiles) -> None:
    assert lus_cohort.preview is not None and lus_cohort.preview.stat().st_size > 1000
    root = lus_cohort.manifest.parent
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]


def test_same_seed_identical_and_other_seed_differs(tmp_path: Path) -> None:
    a = write_cohort("lus", tmp_path / "a", patients=3, seed=7, preset="tiny")
    b = write_cohort("lus", tmp_path / "b", patients=3, seed=7, preset="tiny")
    c = write_cohort("lus", tmp_path / "c", patients=3, seed=8, preset="tiny")
    assert a.manifest.read_bytes() == b.manifest.read_bytes()
    assert a.truth.read_bytes() == b.truth.read_bytes()
    first = pd.read_csv(a.manifest)["path"].iloc[0]
    assert np.array_equal(decode(tmp_path / "a" / first), decode(tmp_path / "b" / first))
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()
    assert a.manifest.read_bytes() != c.manifest.read_bytes()
    assert not np.array_equal(decode(tmp_path / "a" / first), decode(tmp_path / "c" / first))

    m1 = write_cohort("mri", tmp_path / "m1", patients=2, seed=7, preset="tiny")
    write_cohort("mri", tmp_path / "m2", patients=2, seed=7, preset="tiny")
    vol = pd.read_csv(m1.manifest)["path"].iloc[0]
    # The gzip header carries no timestamp, so even the bytes repeat.
    assert (tmp_path / "m1" / vol).read_bytes() == (tmp_path / "m2" / vol).read_bytes()


def test_rewrite_keeps_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    write_cohort("mri", tmp_path, patients=2, seed=0, preset="tiny")
    write_cohort("mri", tmp_path, patients=2, seed=0, preset="tiny")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_larger_cohort_extends_smaller_one() -> None:
    small = cohort_table("lus", patients=5, seed=3, preset="demo")
    large = cohort_table("lus", patients=9, seed=3, preset="demo")
    pd.testing.assert_frame_equal(small, large[large["patient_index"] < 5].reset_index(drop=True))


def test_preset_patient_counts() -> None:
    for name, spec in PRESETS.items():
        assert cohort_table("mri", seed=0, preset=name)["patient_id"].nunique() == spec.patients


@pytest.mark.parametrize("modality", ["lus", "mri"])
def test_demo_trajectories_have_all_change_classes(modality: str) -> None:
    table = cohort_table(modality, seed=0, preset="demo")
    severity = consecutive_changes(table, "severity")
    assert (severity > 0.02).any() and (severity < -0.02).any() and (np.abs(severity) < 0.02).any()
    scores = consecutive_changes(table, "score")
    bands = [2.0] if modality == "mri" else [float(np.quantile(np.abs(scores), 1 / 3)), 25.0]
    for band in bands:
        assert labels(scores, band) == {"worsen", "stable", "improve"}


@pytest.mark.parametrize("modality", ["lus", "mri"])
def test_within_patient_change_small_next_to_between_patient_spread(modality: str) -> None:
    table = cohort_table(modality, seed=1, preset="bench")
    per_patient = table.groupby("patient_id")["severity"].mean()
    ratio = consecutive_changes(table, "severity").std() / per_patient.std()
    assert 0.2 < ratio < 0.45


def test_null_cohort_keeps_scores_and_freezes_image_severity() -> None:
    real = cohort_table("lus", seed=2, preset="tiny")
    null = cohort_table("lus", seed=2, preset="tiny", null=True)
    assert real["score"].tolist() == null["score"].tolist()
    assert real["severity"].tolist() == null["severity"].tolist()
    spread = null.groupby(["patient_id", "zone"])["render_severity"].agg(np.ptp)
    assert (spread == 0).all()
    assert (real.groupby(["patient_id", "zone"])["render_severity"].agg(np.ptp) > 0).any()


def _within_patient_diffs(table: pd.DataFrame, *, same_acquisition: bool) -> list[float]:
    """Mean |pixel difference| of zone 0 between consecutive visits of each patient."""
    rows = table[table["zone_index"] == 0]
    diffs = []
    for p in sorted(set(rows["patient_index"].tolist())):
        visits = rows[rows["patient_index"] == p]
        patient = lus.draw_patient(keyed_rng(2, "lus", p, STREAM_NUISANCE))
        zone = lus.draw_zone(keyed_rng(2, "lus", p, STREAM_ZONE, 0), patient)
        clips = []
        for row in visits.to_dict("records"):
            # Same acquisition: every visit re-uses visit 0's draws (jitter, speckle).
            visit = 0 if same_acquisition else int(row["visit"])
            rng = keyed_rng(2, "lus", p, STREAM_ACQUISITION, visit, 0)
            clip = lus.render_clip(
                float(row["render_severity"]),
                patient,
                zone,
                frames=TINY.frames,
                size=TINY.frame_size,
                rng=rng,
            )
            clips.append(clip.astype(np.float32))
        diffs += [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(clips)]
    return diffs


def test_null_images_carry_no_within_patient_change() -> None:
    real = cohort_table("lus", seed=2, preset="tiny", patients=6)
    null = cohort_table("lus", seed=2, preset="tiny", patients=6, null=True)
    # Same nuisance and acquisition at every visit: only the severity can differ.
    real_signal = _within_patient_diffs(real, same_acquisition=True)
    null_signal = _within_patient_diffs(null, same_acquisition=True)
    assert max(null_signal) == 0.0 and np.mean(real_signal) > 0.5
    # As written (fresh acquisition per visit), null differences are smaller, pair by pair
    # on average, since both cohorts share every nuisance and acquisition draw.
    assert np.mean(_within_patient_diffs(null, same_acquisition=False)) < np.mean(
        _within_patient_diffs(real, same_acquisition=False)
    )


def test_lus_severity_brightens_deep_lung() -> None:
    # B-lines run from the pleura to the bottom and grow with severity; A-lines fade.
    for p in range(4):
        means = []
        for s in (0.05, 0.35, 0.65, 0.95):
            clip = lus.render_scan(
                seed=0, patient_index=p, visit=0, zone_index=0, severity=s, preset=TINY
            ).astype(float)
            means.append(clip[:, 2 * TINY.frame_size // 3 :, :].mean())
        assert np.all(np.diff(means) > 0), means


def test_mri_severity_enlarges_central_csf() -> None:
    # Ventricles grow with atrophy: the dark (CSF) share of the brain's centre rises.
    n = TINY.volume_size
    centre = (slice(n // 4, 3 * n // 4),) * 3
    for p in range(4):
        fractions = []
        for s in (0.05, 0.5, 0.95):
            volume = mri.render_scan(seed=0, patient_index=p, visit=0, severity=s, preset=TINY)
            fractions.append(float(volume[centre].mean() / np.percentile(volume, 99)))
        assert np.all(np.diff(fractions) < 0), fractions


def test_bad_arguments_raise_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 2 patients"):
        cohort_table("lus", patients=1, preset="tiny")
    with pytest.raises(ConfigError, match="preset"):
        cohort_table("lus", preset="huge")
    with pytest.raises(ConfigError, match="modality"):
        cohort_table("ct", preset="tiny")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        write_cohort("lus", tmp_path / "file", patients=2, seed=0, preset="tiny")


def test_write_mp4_repeats_bytes_and_round_trips(tmp_path: Path) -> None:
    clip = lus.render_scan(
        seed=7, patient_index=1, visit=0, zone_index=0, severity=0.7, preset=PRESETS["bench"]
    )
    paths = [tmp_path / f"{i}.mp4" for i in range(4)]
    for path in paths:
        write_mp4(path, clip)
    assert len({path.read_bytes() for path in paths}) == 1
    decoded = decode(paths[0])
    assert decoded.shape == clip.shape
    # Lossy but faithful: grey levels come back unshifted.
    assert abs(float(decoded.mean()) - float(clip.mean())) < 1.0


def test_write_mp4_rejects_odd_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 63, 64), np.uint8))
    assert not list(tmp_path.iterdir())


def test_cli_synth_writes_cohort_and_validates_patients(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cohort"
    result = runner.invoke(
        app,
        [
            "synth",
            "mri",
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--patients",
            "2",
            "--null",
            "--preview",
        ],
    )
    assert result.exit_code == 0, result.output
    assert str(out / "manifest.csv") in result.output and "2 patients" in result.output
    assert (out / "preview.png").exists()
    truth = pd.read_csv(out / "truth.csv")
    assert truth["null"].all()
    bad = runner.invoke(app, ["synth", "lus", "--out", str(tmp_path / "x"), "--patients", "1"])
    assert bad.exit_code == 2
