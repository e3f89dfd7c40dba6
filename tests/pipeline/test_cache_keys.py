"""`learner run`'s cache is keyed by what produced each cell: a changed input re-runs what
depends on it, or the run stops naming the changed keys; results.json matches what ran."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tabular_cohort import tabular_config, write_score_table

import learner
from learner.config import Config
from learner.errors import ConfigError
from learner.pipeline.run import run_ablation
from learner.provenance import changed_keys, manifest_fingerprint


def _write_table(folder: Path, seed: int = 0) -> Path:
    """A tabular cohort: 18 patients x 3 visits, 4 features that follow the score."""
    return write_score_table(folder, patients=18, visits=3, seed=seed)


def _config(manifest: Path, *extra: str) -> Config:
    return tabular_config(manifest, *extra, ratios=(0.5, 0.2, 0.3), objectives=("mse", "weighted"))


def _stamps(out: Path) -> dict[str, int]:
    """mtime of every checkpoint, embeddings file and metrics file under out/cells."""
    files = [*out.glob("cells/*/*/run/checkpoints/*.ckpt"), *out.glob("cells/*/*/*.parquet")]
    files += list(out.glob("cells/*/*/eval-*/metrics.json"))
    return {str(f.relative_to(out)): f.stat().st_mtime_ns for f in files}


def _quiet(_: str) -> None:
    pass


def test_stale_cache_sequence(tmp_path: Path) -> None:
    manifest = _write_table(tmp_path / "data")
    out = tmp_path / "run"
    first = run_ablation(_config(manifest), out, progress=False, log=_quiet).results
    assert first["dataset"]["stable_band"] == 2.0
    keys = first["cells"]
    assert set(keys) == {"mse/seed0", "weighted/seed0", "untrained/seed0"}
    before = _stamps(out)
    assert any(k.endswith(".ckpt") for k in before) and any("metrics" in k for k in before)

    # An evaluation-only change re-evaluates from the cached embeddings.
    lines: list[str] = []
    second = run_ablation(
        _config(manifest, "eval.delta=5.0"), out, progress=False, log=lines.append
    ).results
    after = _stamps(out)
    for name, stamp in before.items():
        if name.endswith(".ckpt") or name.endswith(".parquet"):
            assert after[name] == stamp, f"{name} was recomputed for an evaluation change"
        else:
            assert after[name] != stamp, f"{name} was not re-evaluated"
    assert any("re-evaluating diff (eval.delta: 2.0 -> 5.0)" in line for line in lines)
    assert second["dataset"]["stable_band"] == 5.0
    assert second["config"]["eval"]["delta"] == 5.0
    assert second["cells"]["mse/seed0"]["pretrain"] == keys["mse/seed0"]["pretrain"]
    assert second["cells"]["mse/seed0"]["evaluation"] != keys["mse/seed0"]["evaluation"]

    # A pretraining change stops the run and names the key; nothing is touched.
    for setting, named in (
        ("train.epochs=3", "train.epochs: 2 -> 3"),
        ("model.mlp_embed_dim=12", "model.mlp_embed_dim: 8 -> 12"),
    ):
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")) as err:
            run_ablation(
                _config(manifest, "eval.delta=5.0", setting), out, progress=False, log=_quiet
            )
        assert "--replace-changed" in str(err.value)
        assert _stamps(out) == after

    # With replace_changed the changed cells retrain, and results.json says what ran.
    third = run_ablation(
        _config(manifest, "eval.delta=5.0", "model.mlp_embed_dim=12"),
        out,
        progress=False,
        log=_quiet,
        replace_changed=True,
    ).results
    assert third["config"]["model"]["mlp_embed_dim"] == 12
    assert third["cells"]["mse/seed0"]["pretrain"] != keys["mse/seed0"]["pretrain"]
    emb = pd.read_parquet(out / "cells" / "mse" / "seed0" / "embeddings.parquet")
    assert len(emb["embedding"].iloc[0]) == 12


def test_manifest_split_and_version_changes_are_detected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _write_table(tmp_path / "data")
    out = tmp_path / "run"
    cfg = _config(manifest, "run.objectives=[mse]", "run.baselines=false")
    run_ablation(cfg, out, progress=False, log=_quiet)

    # The manifest's content: one score edited.
    table = pd.read_csv(manifest)
    table.loc[3, "score"] += 7
    table.to_csv(manifest, index=False)
    with pytest.raises(ConfigError, match=r"manifest\.content"):
        run_ablation(cfg, out, progress=False, log=_quiet)
    _write_table(tmp_path / "data")  # the original rows again

    # The split.
    with pytest.raises(ConfigError, match=r"split\.hash"):
        run_ablation(
            _config(manifest, "run.objectives=[mse]", "run.baselines=false", "data.split.seed=7"),
            out,
            progress=False,
            log=_quiet,
        )

    # The package version.
    monkeypatch.setattr(learner, "__version__", "9.9.9")
    with pytest.raises(ConfigError, match=r"learner\.version"):
        run_ablation(cfg, out, progress=False, log=_quiet)


def test_cells_without_a_key_are_not_trusted(tmp_path: Path) -> None:
    manifest = _write_table(tmp_path / "data")
    out = tmp_path / "run"
    cfg = _config(manifest, "run.objectives=[mse]", "run.baselines=false")
    run_ablation(cfg, out, progress=False, log=_quiet)
    (out / "cells" / "mse" / "seed0" / "key.json").unlink()
    with pytest.raises(ConfigError, match="no key"):
        run_ablation(cfg, out, progress=False, log=_quiet)


def test_fingerprint_follows_rows_and_files(tmp_path: Path) -> None:
    scan = tmp_path / "a.npy"
    np.save(scan, np.zeros(3))
    frame = pd.DataFrame({"patient_id": ["a"], "visit": ["0"], "path": [str(scan)], "score": [1.0]})
    base = manifest_fingerprint(frame)
    assert manifest_fingerprint(frame.assign(score=[2.0])) != base
    np.save(scan, np.zeros(4))  # same path, new content
    assert manifest_fingerprint(frame) != base
    assert changed_keys({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0}) == [
        "b: 2 -> 3",
        "c: (absent) -> 0",
    ]


def test_saved_change_models_follow_the_evaluation_key(tmp_path: Path) -> None:
    from learner.pipeline.fit_change import save_run_change_models

    manifest = _write_table(tmp_path / "data")
    out = tmp_path / "run"
    for delta in (2.0, 5.0):
        cfg = _config(manifest, f"eval.delta={delta}", "run.objectives=[mse]")
        ablation = run_ablation(cfg, out, progress=False, log=_quiet)
        save_run_change_models(ablation, cfg, out, log=_quiet)
        for folder in (out / "cells" / "mse" / "seed0" / "change-model", out / "change-model"):
            info = json.loads((folder / "model.json").read_text())
            assert info["band"] == delta, folder
    # A cell model saved before calibration could be declined (no `kept`) is fitted again.
    cell_model = out / "cells" / "mse" / "seed0" / "change-model" / "model.json"
    info = json.loads(cell_model.read_text())
    del info["calibration"]["kept"]
    cell_model.write_text(json.dumps(info))
    save_run_change_models(ablation, cfg, out, log=_quiet)
    assert json.loads(cell_model.read_text())["calibration"]["kept"] in ("raw", "calibrated")


def test_claim_folder_refuses_artefacts_of_other_inputs(tmp_path: Path) -> None:
    from learner.provenance import claim_folder, key_changes

    folder = tmp_path / "cell"
    claim_folder(folder, {"train.epochs": 2})  # empty: claimed, key written
    (folder / "embeddings.parquet").write_bytes(b"x")
    claim_folder(folder, {"train.epochs": 2})  # same inputs: reused
    assert key_changes(folder, {"train.epochs": 3}) == ["train.epochs: 2 -> 3"]
    with pytest.raises(ConfigError, match=r"train\.epochs: 2 -> 3"):
        claim_folder(folder, {"train.epochs": 3})
    (folder / "key.json").unlink()
    with pytest.raises(ConfigError, match="no key"):
        claim_folder(folder, {"train.epochs": 2})


def test_a_killed_atomic_write_is_not_an_artefact(tmp_path: Path) -> None:
    """SIGKILL between the temporary file and its rename leaves ``.key.json.<x>.tmp`` alone in
    a fresh cell; resuming must claim that cell, not call it a keyless artefact."""
    from learner.provenance import claim_folder, key_changes

    folder = tmp_path / "cell"
    folder.mkdir()
    (folder / ".key.json.k1ll3d.tmp").write_text('{"digest": "')  # half of a key, never renamed
    assert key_changes(folder, {"train.epochs": 2}) == []
    claim_folder(folder, {"train.epochs": 2})
    assert key_changes(folder, {"train.epochs": 2}) == []
    # Beside a real artefact, a missing key is still refused.
    (folder / "key.json").unlink()
    (folder / "embeddings.parquet").write_bytes(b"x")
    assert key_changes(folder, {"train.epochs": 2}) == [
        "(no key: made by an older learner or by hand)"
    ]
