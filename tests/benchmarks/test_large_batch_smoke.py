"""benchmarks/large_batch.py on a tiny batch: every objective timed, one peak measured in its
own process, and the current rnc equal to the pre-#16 one kept as the baseline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType


def test_large_batch_smoke(load_benchmark: Callable[[str], ModuleType], tmp_path: Path) -> None:
    large_batch = load_benchmark("large_batch.py")
    out = tmp_path / "large_batch.json"
    args = ["--batches", "48", "--rounds", "1", "--no-peaks", "--out", str(out)]
    assert large_batch.main(args) == 0
    row = json.loads(out.read_text())["batches"]["48"]
    labels = {"contrastive", "weighted (threshold)", "weighted (soft)", "yaware", "rnc"}
    assert set(row["median_s"]) == labels | {large_batch.BEFORE}
    # One peak measurement (a process per objective in a full run).
    assert large_batch.peak_of(48, "rnc") >= 0
    assert all(t > 0 for t in row["median_s"].values())
    assert row["rnc_loss_rel_diff_vs_before"] < 1e-6
