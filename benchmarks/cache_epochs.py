"""Epoch-1 versus epoch-2 wall time of `learner pretrain` with the decode cache.

Epoch 1 decodes every mp4 and fills the cache; from epoch 2 on, clips are read from the
memory-mapped cache. Usage:

    .venv/bin/python benchmarks/cache_epochs.py --cohort benchmarks/work/demo_lus --epochs 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import lightning as L

from learner.config import load_config
from learner.data.synthetic import write_cohort
from learner.train.pretrain import pretrain

CONFIG = Path(__file__).resolve().parents[1] / "learner" / "configs" / "demo.yaml"


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.times.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cohort", type=Path, default=Path("benchmarks/work/demo_lus"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/work/cache_epochs_run"))
    args = parser.parse_args()

    manifest = args.cohort / "manifest.csv"
    if not manifest.exists():
        write_cohort("lus", args.cohort, patients=None, seed=0, preset="demo")
    cache = args.cohort / ".learner-cache"
    shutil.rmtree(cache, ignore_errors=True)  # epoch 1 must decode
    shutil.rmtree(args.out, ignore_errors=True)
    cfg = load_config(
        CONFIG, [f"data.manifest={manifest}", f"train.epochs={args.epochs}", "objective.name=mse"]
    )
    timer = EpochTimer()
    pretrain(cfg, args.out, progress=False, callbacks=[timer])
    times = timer.times
    result = {
        "epoch_seconds": times,
        "epoch2_over_epoch1": times[1] / times[0] if len(times) > 1 else None,
        "clips": len(manifest.read_text().splitlines()) - 1,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
