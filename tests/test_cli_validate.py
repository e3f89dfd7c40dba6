"""`learner validate`: summary on success, one line per problem and exit 3 on bad data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from learner.cli import app

runner = CliRunner()

HEADER = "patient_id,visit,path,score\n"
GOOD = (
    "patient_id,visit,path,score,zone\n"
    "p1,1,a.npy,10,L\n"
    "p1,2,a.npy,14,L\n"  # +4
    "p1,3,a.npy,13,L\n"  # -1
    "p2,1,b.npy,20,L\n"
    "p2,2,b.npy,,L\n"  # unlabelled: both pairs around it dropped
    "p2,3,b.npy,5,L\n"
    "p3,1,b.npy,7,L\n"
    "p3,2,b.npy,2,L\n"  # -5
    "p4,1,a.npy,1,L\n"  # single visit
)


def _write(folder: Path, text: str, files: tuple[str, ...] = ("a.npy", "b.npy")) -> Path:
    for name in files:
        np.save(folder / name, np.zeros(2, dtype=np.float32))
    path = folder / "manifest.csv"
    path.write_text(text, encoding="utf-8")
    return path


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


def test_valid_manifest_prints_summary(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(_write(tmp_path, GOOD)), "--delta", "2"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for item, value in [
        ("patients", "4"),
        ("visits", "9"),
        ("scans", "9"),
        ("labelled scans", "8 of 9"),
        ("pairs worsen", "1"),
        ("pairs stable", "1"),
        ("pairs improve", "1"),
        ("pairs total", "3"),
    ]:
        assert any(item in line and line.rstrip(" │").endswith(value) for line in out.splitlines())
    assert "|change| <= 2" in out
    assert "warning: manifest.csv: 1 patient(s) have a single visit" in result.stderr
    assert "'p4'" in result.stderr


def test_lower_is_better_swaps_worsen_and_improve(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    result = runner.invoke(app, ["validate", str(path), "--delta", "0.5", "--lower-is-better"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("pairs worsen" in line and line.rstrip(" │").endswith("1") for line in lines)
    assert any("pairs improve" in line and line.rstrip(" │").endswith("2") for line in lines)


def test_tabular_features(tmp_path: Path) -> None:
    path = _write(tmp_path, "patient_id,visit,score,f1,f2\np,1,1,0.1,2\np,2,3,0.2,1\n", ())
    result = runner.invoke(app, ["validate", str(path), "--features", "f1, f2"])
    assert result.exit_code == 0, result.output
    assert "feature columns" in result.stdout
    bad = runner.invoke(app, ["validate", str(path), "--features", "f1,f3"])
    assert bad.exit_code == 3
    assert _errors(bad.stderr)[0].startswith("error: manifest.csv row 1, column f3:")


@pytest.mark.parametrize(
    ("rows", "where"),
    [
        ("p,1,a.npy,1\np,2,missing.npy,2\n", "row 3, column path: file not found"),
        ("p,1,a.npy,1\np,2,a.npy,nan\n", "row 3, column score: 'nan' is a NaN literal"),
        ("p,1,a.npy,1\np,2,b.npy,2\np,1,a.npy,1\n", "row 4, column path: duplicate of row 2"),
        ("p,1,a.npy,1\np,second,b.npy,2\n", "row 3, column visit: 'second' is neither"),
    ],
)
def test_bad_manifest_exits_3_with_one_line(tmp_path: Path, rows: str, where: str) -> None:
    result = runner.invoke(app, ["validate", str(_write(tmp_path, HEADER + rows))])
    assert result.exit_code == 3
    errors = _errors(result.stderr)
    assert len(errors) == 1
    assert errors[0].startswith(f"error: manifest.csv {where}")
    assert "Traceback" not in result.output
    assert result.stdout == ""  # no summary for a broken manifest


def test_bad_delta_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(_write(tmp_path, GOOD)), "--delta", "big"])
    assert result.exit_code == 2
    assert _errors(result.stderr)[0].startswith("error: delta='big' is not valid")


def test_console_script_exits_3_without_traceback(tmp_path: Path) -> None:
    learner = Path(sys.executable).parent / "learner"
    if not learner.exists():
        pytest.skip(f"console script not installed beside {sys.executable}")
    path = _write(tmp_path, HEADER + "p,1,a.npy,1\np,2,a.npy,abc\np,3,gone.npy,1\n")
    done = subprocess.run(
        [str(learner), "validate", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    errors = _errors(done.stderr)
    assert len(errors) == 2
    assert errors[0].startswith("error: manifest.csv row 3, column score: 'abc' is not a number")
    assert errors[1].startswith("error: manifest.csv row 4, column path: file not found")


def test_validate_reports_scan_kinds_and_shapes(tmp_path: Path) -> None:
    import nibabel as nib

    for name in ("s1.nii.gz", "s2.nii.gz"):
        nib.save(nib.Nifti1Image(np.ones((6, 4), np.float32), np.eye(4)), tmp_path / name)
    np.save(tmp_path / "v.npy", np.zeros((3, 5, 7), np.float32))
    text = HEADER + "p1,1,s1.nii.gz,20\np1,2,s2.nii.gz,24\np2,1,v.npy,10\np2,2,v.npy,12\n"
    result = runner.invoke(app, ["validate", str(_write(tmp_path, text, ())), "--delta", "2"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "image" in line or "volume" in line]
    assert any("image" in r and "2" in r and "4x6 (2)" in r for r in rows), result.stdout
    assert any("volume" in r and "3x5x7 (1)" in r for r in rows), result.stdout
