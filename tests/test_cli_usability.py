"""What a new user meets first: --version, shipped configs by name, --set typos, --columns,
and a file with thousands of bad rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import learner
from learner.cli import MAX_PROBLEMS_SHOWN, app
from learner.config import load_config
from learner.errors import ConfigError

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"learner {learner.__version__}"


def test_shipped_config_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the package's own are found
    assert load_config(Path("lus")).model.encoder == "tsm_resnet18"
    assert load_config(Path("tabular")).model.encoder == "mlp"
    with pytest.raises(ConfigError, match=r"shipped config by name \(demo, lus, mri, tabular\)"):
        load_config(Path("lsu"))


def test_unknown_set_key_suggests_the_closest_and_names_set() -> None:
    result = runner.invoke(app, ["pretrain", "--config", "demo", "--set", "train.epoch=3"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: --set train.epoch: unknown key; did you mean --set train.epochs=...?"
    )


def _tabular(folder: Path, rows: list[str], header: str) -> Path:
    path = folder / "table.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_columns_maps_a_users_table(tmp_path: Path) -> None:
    rows = [f"{p},{t},{10 + p + t},{p * t}" for p in range(3) for t in (0.5, 7.25, 30.0)]
    table = _tabular(tmp_path, rows, "subject#,test_time,total_UPDRS,Jitter")
    mapping = "patient_id=subject#,visit=test_time,score=total_UPDRS"
    result = runner.invoke(
        app, ["validate", str(table), "--features", "Jitter", "--columns", mapping]
    )
    assert result.exit_code == 0, result.output
    bad = runner.invoke(app, ["validate", str(table), "--columns", "subject=subject#"])
    assert bad.exit_code == 2 and "'subject' is not a manifest column" in bad.stderr


def test_thousands_of_bad_rows_print_twenty_and_a_count(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros(3, dtype=np.float32))
    rows = [f"p{i},1,a.npy,abc" for i in range(3000)]
    table = _tabular(tmp_path, rows, "patient_id,visit,path,score")
    result = runner.invoke(app, ["validate", str(table), "--no-decode"])
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == MAX_PROBLEMS_SHOWN + 1
    last = errors[-1]
    assert "and 2980 more of the same kind (in column score)" in last
    listed = Path(last.rsplit(" listed in ", 1)[1])
    assert len(listed.read_text().splitlines()) == 3000
    listed.unlink()
