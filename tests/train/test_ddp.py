"""DDP pretraining end to end (issue #16): `learner pretrain` with 2 CPU processes (gloo) and a
per-device batch of B/2 trains exactly as 1 process with batch B: the same batches, disjoint on
the two ranks, a pair loss over all B embeddings, the same loss curve and final weights.

The encoder is the tabular MLP (LayerNorm: no batch statistics) with its dropout switched off
by the driver below: dropout masks are drawn per rank, so with dropout the two runs are
equal in distribution only. Image encoders use BatchNorm, synchronised across ranks on GPUs
only (torch has no CPU SyncBatchNorm).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

TABULAR = Path(__file__).resolve().parents[2] / "learner" / "configs" / "tabular.yaml"
FEATURES = ["f0", "f1", "f2", "f3"]
BATCH = 8
# A driver that spies on what each rank trains on, then runs the CLI. Lightning's DDP
# launcher starts rank 1 as `python driver.py ARGS`, so rank 1 runs the same driver.
DRIVER = """
import json, os, sys
from learner import cli
from learner.models import encoders
from learner.train.module import LearnerModule

encoders.FeatureMLP.__init__.__defaults__ = tuple(
    0.0 if isinstance(d, float) else d for d in encoders.FeatureMLP.__init__.__defaults__
)
real = LearnerModule._losses

def spy(self, batch, *, gather):
    out = real(self, batch, gather=gather)
    if gather:
        rank = int(os.environ.get("LOCAL_RANK", 0))
        with open(os.path.join(os.environ["SPY_DIR"], f"rank{rank}.jsonl"), "a") as f:
            row = {"index": batch["index"].tolist(), "n": int(out["n"])}
            f.write(json.dumps(row) + "\\n")
    return out

LearnerModule._losses = spy
cli.main()
"""


def _cohort(folder: Path) -> Path:
    """30 patients of 4 noisy features driven by the score: 20 training patients with 43
    scans (2 or 3 visits), so the last global batch of 8 has 3 scans, split 2 + 1."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(30):
        split = "train" if p < 20 else "val" if p < 26 else "test"
        base = rng.uniform(0, 30)
        for visit in range(3 if p < 3 else 2):
            score = base + rng.normal(0, 2)
            features = score / 30 + rng.normal(0, 0.3, len(FEATURES))
            row = {"patient_id": f"p{p:02d}", "visit": visit, "score": round(score, 3)}
            rows.append(
                {**row, "split": split, **dict(zip(FEATURES, features.round(4), strict=True))}
            )
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _pretrain(folder: Path, manifest: Path, name: str, *settings: str) -> Path:
    spy = folder / f"{name}-spy"
    spy.mkdir()
    driver = folder / "driver.py"
    driver.write_text(DRIVER)
    items = [
        f"data.manifest={manifest}",
        f"data.feature_columns=[{','.join(FEATURES)}]",
        "train.epochs=2",
        "train.accelerator=cpu",
        "train.lr=0.01",
        "objective.name=weighted",
        *settings,
    ]
    out = folder / name
    args = [arg for item in items for arg in ("--set", item)]
    env = {**os.environ, "SPY_DIR": str(spy), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(driver),
            "pretrain",
            "--config",
            str(TABULAR),
            *args,
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _steps(spy: Path, rank: int) -> list[dict[str, object]]:
    return [json.loads(line) for line in (spy / f"rank{rank}.jsonl").read_text().splitlines()]


def _epoch_losses(run: Path) -> pd.DataFrame:
    metrics = pd.read_csv(run / "logs" / "csv" / "metrics.csv")
    columns = ["train/loss", "train/mse", "train/pair", "val/loss"]
    return metrics.groupby("epoch")[columns].first()


def test_two_processes_train_exactly_as_one_with_the_global_batch(tmp_path: Path) -> None:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    manifest = _cohort(tmp_path)
    one = _pretrain(tmp_path, manifest, "one", f"train.batch_size={BATCH}")
    two = _pretrain(tmp_path, manifest, "two", f"train.batch_size={BATCH // 2}", "train.devices=2")

    # The same global batches, split into disjoint halves, and the pair loss over all rows.
    single = _steps(tmp_path / "one-spy", 0)
    rank0, rank1 = _steps(tmp_path / "two-spy", 0), _steps(tmp_path / "two-spy", 1)
    assert len(single) == len(rank0) == len(rank1) > 3
    for step, (s, a, b) in enumerate(zip(single, rank0, rank1, strict=True)):
        ia, ib = set(a["index"]), set(b["index"])  # type: ignore[arg-type]
        assert not ia & ib, f"step {step}: the ranks share scans"
        assert ia | ib == set(s["index"]), f"step {step}: not the single process's batch"  # type: ignore[arg-type]
        assert a["n"] == b["n"] == s["n"] == len(ia | ib)
    assert len(rank0[-1]["index"]) != len(rank1[-1]["index"]), "no uneven step was tested"  # type: ignore[arg-type]

    # The same loss curve (epoch means) and the same final weights, to float tolerance.
    curve_one, curve_two = _epoch_losses(one), _epoch_losses(two)
    assert len(curve_one) == 2
    np.testing.assert_allclose(curve_two.to_numpy(), curve_one.to_numpy(), rtol=1e-5, atol=1e-6)
    a = torch.load(one / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(two / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        # Summation order differs (2 x 4 rows vs 8): ~1e-7 per step, amplified where Adam
        # divides a near-zero gradient by its small running scale (2e-6 seen after 10 steps).
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
