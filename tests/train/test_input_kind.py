"""The scans' kind is checked against data.input.kind and model.encoder before any model is
built (`run`, `pretrain`, `validate --config`), naming both settings that fit the scans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from learner.cli import app
from learner.config import load_config
from learner.data.dataset import InputSpec, ScanDataset
from learner.data.manifest import load_manifest
from learner.data.synthetic.video_io import write_mp4
from learner.errors import ConfigError, DataError
from learner.train.prepared import check_input_kind, probe_scan_kinds

runner = CliRunner()


def _cohort(folder: Path, write: Any, suffix: str, patients: int = 6) -> Path:
    """``patients`` patients x 2 visits, one scan each written by ``write(path, rng)``."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(patients):
        for visit in range(2):
            name = f"p{p}_v{visit}{suffix}"
            write(folder / name, rng)
            rows.append({"patient_id": f"p{p}", "visit": visit, "path": name, "score": 20 + p})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _slice(path: Path, rng: np.random.Generator) -> None:  # a 2-D NIfTI slice
    nib.save(nib.Nifti1Image(rng.random((16, 16), dtype=np.float32), np.eye(4)), path)


def _volume(path: Path, rng: np.random.Generator) -> None:  # a (D, H, W) float volume
    np.save(path, rng.random((8, 12, 12), dtype=np.float32))


def _clip(path: Path, rng: np.random.Generator) -> None:
    write_mp4(path, rng.integers(0, 255, (6, 16, 16), dtype=np.uint8), fps=10)


def _png(path: Path, rng: np.random.Generator) -> None:
    import matplotlib.image

    matplotlib.image.imsave(path, rng.random((16, 16)), cmap="gray")


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a model is built."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was built before the input kind was checked")

    monkeypatch.setattr("learner.train.module.LearnerModule.__init__", refuse)


def test_mri_config_on_2d_slices_fails_before_any_model(tmp_path: Path, no_model: None) -> None:
    manifest = _cohort(tmp_path, _slice, ".nii.gz")
    sets = ["--set", f"data.manifest={manifest}"]
    expected = (
        "manifest.csv row 2: ",
        "p0_v0.nii.gz is read as an image, but the config has data.input.kind=volume and "
        "model.encoder=resnet3d_18; for these scans set data.input.kind=image and "
        "model.encoder=resnet2d_18 (a 2-D encoder) (e.g. --set data.input.kind=image "
        "--set model.encoder=resnet2d_18)",
    )
    commands = {
        "pretrain": ["pretrain", "--config", "mri", *sets, "--out", str(tmp_path / "p")],
        "run": ["run", "--config", "mri", *sets, "--out", str(tmp_path / "r")],
        "validate": ["validate", str(manifest), "--config", "mri"],
    }
    for name, args in commands.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (name, result.output)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and all(part in line for part in expected), line
    assert not (tmp_path / "p").exists() and not (tmp_path / "r" / "cells").exists()

    # With the settings the message names, the same data validate.
    config = tmp_path / "slices.yaml"
    config.write_text("data:\n  input:\n    kind: image\nmodel:\n  encoder: resnet2d_18\n")
    result = runner.invoke(app, ["validate", str(manifest), "--config", str(config)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("write", "suffix", "config", "settings", "fix"),
    [
        (_volume, ".npy", "demo", [], "data.input.kind=volume and model.encoder=resnet3d_18"),
        (_volume, ".npy", "demo", [], "or data.input.kind=slices and model.encoder=tsm_slices"),
        (_clip, ".mp4", "mri", [], "data.input.kind=video and model.encoder=tsm_resnet18"),
        (_png, ".png", "demo", [], "data.input.kind=image and model.encoder=resnet2d_18"),
        (
            _clip,
            ".mp4",
            "demo",
            ["data.input.kind=image", "model.encoder=resnet2d_18"],
            "data.input.kind=video and model.encoder=tsm_resnet18",
        ),
    ],
)
def test_each_mismatch_names_the_settings_that_fit(
    tmp_path: Path, write: Any, suffix: str, config: str, settings: list[str], fix: str
) -> None:
    manifest = load_manifest(_cohort(tmp_path, write, suffix, patients=2))
    cfg = load_config(config, settings)
    with pytest.raises(ConfigError, match="row 2: ") as info:
        check_input_kind(cfg, manifest)
    assert fix in str(info.value)
    assert f"data.input.kind={cfg.data.input.kind} and model.encoder" in str(info.value)


def test_matching_and_tolerated_kinds_pass(tmp_path: Path) -> None:
    clips = load_manifest(_cohort(tmp_path, _clip, ".mp4", patients=2))
    check_input_kind(load_config("demo", None), clips)  # video under a video config
    # A still among clips is read as a one-frame clip.
    _png(tmp_path / "still.png", np.random.default_rng(1))
    frame = pd.read_csv(tmp_path / "manifest.csv")
    frame.loc[len(frame)] = ["p9", 0, "still.png", 20]
    frame.to_csv(tmp_path / "mixed.csv", index=False)
    mixed = load_manifest(tmp_path / "mixed.csv", skip_bad_files=True)
    assert set(probe_scan_kinds(mixed.frame)) == {"video", "image"}
    check_input_kind(load_config("demo", None), mixed)
    # Volumes under either volume config.
    (tmp_path / "v").mkdir()
    volumes = load_manifest(_cohort(tmp_path / "v", _volume, ".npy", patients=2))
    check_input_kind(load_config("mri", None), volumes)
    check_input_kind(
        load_config("mri", ["data.input.kind=slices", "model.encoder=tsm_slices"]), volumes
    )


def test_unreadable_files_are_left_to_the_decoder(tmp_path: Path) -> None:
    manifest = load_manifest(_cohort(tmp_path, _clip, ".mp4", patients=2))
    for path in manifest.frame["path"]:
        Path(path).write_bytes(b"not a clip")
    assert probe_scan_kinds(manifest.frame) == {}
    check_input_kind(load_config("mri", None), manifest)  # nothing readable: no verdict here


def test_late_error_names_both_settings(tmp_path: Path) -> None:
    _volume(tmp_path / "vol.npy", np.random.default_rng(0))
    frame = pd.DataFrame({"patient_id": ["P"], "path": [str(tmp_path / "vol.npy")], "score": [1.0]})
    spec = InputSpec(kind="image", size=8)
    dataset = ScanDataset(
        frame, input=spec, train=False, cache=None, score_range=(0, 2), patient_codes={"P": 0}
    )
    with pytest.raises(DataError) as info:
        dataset[0]
    assert str(info.value) == (
        f"manifest row 2, column path: {tmp_path / 'vol.npy'}: read as a volume but "
        "data.input.kind is 'image'; fix the manifest row, or for such scans set "
        "data.input.kind=volume and model.encoder=resnet3d_18 (a 3-D encoder), or "
        "data.input.kind=slices and model.encoder=tsm_slices (slices as frames)"
    )
