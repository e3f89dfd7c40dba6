"""Bad rows in `predict` and `embed` (`--on-error skip|stop`): a missing file, a corrupt clip
and a scan of another kind among good clips are skipped and listed, or stop the job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from learner.cli import MAX_SKIPPED_SHOWN, app

runner = CliRunner()


def _bad_manifest(trained: dict[str, Path], folder: Path, *, extra_missing: int = 0) -> Path:
    """cohort-b's manifest with absolute paths; row 3's file missing, row 5's clip corrupt,
    row 7's scan a volume (this model reads video); ``extra_missing`` more rows of a new
    patient whose files are all missing."""
    second = trained["second"]
    frame = pd.read_csv(second)
    frame["path"] = [str(second.parent / p) for p in frame["path"]]
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(b"this is not a video" * 50)
    volume = folder / "volume.npy"
    np.save(volume, np.random.default_rng(0).random((8, 16, 16), dtype=np.float32))
    # Spreadsheet rows: the header is row 1, so frame index i is row i + 2.
    frame.loc[1, "path"] = str(folder / "gone.mp4")
    frame.loc[3, "path"] = str(corrupt)
    frame.loc[5, "path"] = str(volume)
    extra = pd.DataFrame(
        {
            "patient_id": "XMISS",
            "visit": range(extra_missing),
            "path": [str(folder / f"missing_{i}.mp4") for i in range(extra_missing)],
            "score": 300,
            "zone": "R1",
        }
    )
    manifest = folder / "bad.csv"
    pd.concat([frame, extra], ignore_index=True).to_csv(manifest, index=False)
    return manifest


def test_predict_skips_bad_rows_lists_them_and_exits_0(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    manifest = _bad_manifest(trained, tmp_path, extra_missing=MAX_SKIPPED_SHOWN)
    total = len(pd.read_csv(manifest))
    out = tmp_path / "predictions.csv"
    args = ["predict", "--model", str(trained["run"]), "--manifest", str(manifest)]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    n_skipped = 3 + MAX_SKIPPED_SHOWN
    assert f"{n_skipped} row(s) skipped" in result.stdout

    summary = json.loads(out.with_name("predictions_summary.json").read_text())
    assert summary["skipped_rows"] == n_skipped == len(summary["skipped"])
    by_row = {entry["row"]: entry for entry in summary["skipped"]}
    assert by_row[3]["path"] == str(tmp_path / "gone.mp4")
    assert "file not found" in by_row[3]["reason"]
    assert "cannot be decoded as video" in by_row[5]["reason"]
    assert "read as a volume" in by_row[7]["reason"] and "video" in by_row[7]["reason"]
    assert sorted(by_row)[:3] == [3, 5, 7]

    scans = pd.read_csv(out.with_name("predictions_scans.csv"))
    assert len(scans) == total - n_skipped and scans["pred_score"].notna().all()
    bad = {str(tmp_path / "gone.mp4"), str(tmp_path / "corrupt.mp4"), str(tmp_path / "volume.npy")}
    assert not set(scans["path"]) & bad and "XMISS" not in set(scans["patient_id"])
    assert len(pd.read_csv(out)) == summary["pairs"] > 0

    # stderr: one line per skipped row up to the cap, then a count naming the summary.
    lines = [line for line in result.stderr.splitlines() if line.startswith("skipped: row ")]
    assert len(lines) == MAX_SKIPPED_SHOWN
    assert lines[0].startswith("skipped: row 3: ") and "gone.mp4" in lines[0]
    more = f"skipped: ... and {n_skipped - MAX_SKIPPED_SHOWN} more row(s); all are listed in"
    assert more in result.stderr and "predictions_summary.json" in result.stderr
    assert f"warning: {n_skipped} of {total} manifest row(s) skipped" in result.stderr
    assert "Traceback" not in result.output


def test_predict_stop_and_nothing_left_exit_3_and_keep_earlier_output(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "predictions.csv"
    out.write_text("earlier,predictions\n1,2\n")
    args = ["predict", "--model", str(trained["run"]), "--out", str(out)]

    # --on-error stop: today's behaviour, the first bad file stops the job naming its row.
    manifest = _bad_manifest(trained, tmp_path)
    result = runner.invoke(app, [*args, "--manifest", str(manifest), "--on-error", "stop"])
    assert result.exit_code == 3, result.output
    assert "error: bad.csv row 3, column path: file not found" in result.stderr
    # Only the wrong-kind scan (row 7) bad: it stops the job when it is decoded.
    frame = pd.read_csv(trained["second"])
    frame["path"] = [str(trained["second"].parent / p) for p in frame["path"]]
    frame.loc[5, "path"] = str(tmp_path / "volume.npy")
    frame.to_csv(manifest, index=False)
    result = runner.invoke(app, [*args, "--manifest", str(manifest), "--on-error", "stop"])
    assert result.exit_code == 3, result.output
    assert "manifest row 7, column path:" in result.stderr and "read as a volume" in result.stderr

    # Every row bad: nothing could be predicted.
    frame = pd.read_csv(manifest).iloc[:4]
    frame["path"] = [str(tmp_path / f"none_{i}.mp4") for i in range(len(frame))]
    frame.to_csv(manifest, index=False)
    result = runner.invoke(app, [*args, "--manifest", str(manifest)])
    assert result.exit_code == 3, result.output
    assert "error: no scan could be read: all 4 row(s) were skipped" in result.stderr
    assert "error: row 2: file not found" in result.stderr
    assert out.read_text() == "earlier,predictions\n1,2\n"
    assert not out.with_name("predictions_summary.json").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_predict_change_api_skips_by_default_and_stops_on_request(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    from learner.api import load_model
    from learner.errors import DataError

    manifest = _bad_manifest(trained, tmp_path)
    frame = pd.read_csv(manifest).iloc[:12]
    frame.to_csv(manifest, index=False)
    model = load_model(trained["run"])
    result = model.predict_change(manifest)
    assert [s["row"] for s in result.summary["skipped"]] == [3, 5, 7]
    assert len(result.scans) == len(frame) - 3
    with pytest.raises(DataError, match="row 3, column path: file not found"):
        model.predict_change(manifest, on_error="stop")


@pytest.mark.parametrize("mode", ["default", "skip"])
def test_embed_on_error(trained: dict[str, Path], tmp_path: Path, mode: str) -> None:
    checkpoint = trained["run"] / "cells" / "mse" / "seed0" / "run" / "checkpoints" / "best.ckpt"
    manifest = _bad_manifest(trained, tmp_path)
    out = tmp_path / "e.parquet"
    args = ["embed", "--checkpoint", str(checkpoint), "--manifest", str(manifest)]
    args += ["--out", str(out)] + (["--on-error", "skip"] if mode == "skip" else [])
    result = runner.invoke(app, args)
    if mode == "default":  # embed stops at the first bad row by default
        assert result.exit_code == 3, result.output
        assert "row 3, column path: file not found" in result.stderr and not out.exists()
        return
    assert result.exit_code == 0, result.output
    embedded = pd.read_parquet(out)
    assert len(embedded) == len(pd.read_csv(manifest)) - 3
    assert "3 row(s) skipped" in result.stdout
    rows = [line for line in result.stderr.splitlines() if line.startswith("skipped: row ")]
    assert [line.split(":")[1].strip() for line in rows] == ["row 3", "row 5", "row 7"]
