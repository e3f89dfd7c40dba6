"""`learner run` on a cohort with a pretraining pool: the pool trains every encoder and never
enters a change pair, a validation score or a test split."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from learner.config import build_config
from learner.data.synthetic import write_cohort
from learner.pipeline.run import run_ablation

TINY = [
    "model.width=8",
    "data.input.size=32",
    "data.input.frames=4",
    "train.epochs=1",
    "train.batch_size=8",
    "eval.n_boot=20",
    "run.seeds=[0]",
    "run.objectives=[mse,weighted]",
    "data.split.ratios=[0.5,0.2,0.3]",
]


def test_pool_only_pretrains(tmp_path: Path) -> None:
    files = write_cohort("lus", tmp_path / "cohort", patients=12, pool=6, seed=0, preset="tiny")
    manifest = pd.read_csv(files.manifest, dtype=str, keep_default_na=False)
    assert set(manifest["split"]) == {"", "pretrain"}
    demo = Path(__file__).resolve().parents[2] / "learner" / "configs" / "demo.yaml"
    cfg = build_config(yaml.safe_load(demo.read_text()), [f"data.manifest={files.manifest}", *TINY])
    out = tmp_path / "run"
    results = run_ablation(cfg, out, progress=False, log=lambda _: None).results

    split = json.loads((out / "cells" / "mse" / "seed0" / "run" / "split.json").read_text())
    pool = {p for p, s in split["assignment"].items() if s == "pretrain"}
    assert pool == {f"Q{i:03d}" for i in range(6)}
    assert {s for p, s in split["assignment"].items() if p not in pool} == {"train", "val", "test"}
    emb = pd.read_parquet(out / "cells" / "mse" / "seed0" / "embeddings.parquet")
    assert set(emb.loc[emb["patient_id"].isin(pool), "split"]) == {"pretrain"}
    pairs = pd.read_parquet(out / "cells" / "mse" / "seed0" / "eval-diff" / "test_pairs.parquet")
    assert not set(pairs["patient_id"]) & pool
    assert results["dataset"]["patients"] == 18
