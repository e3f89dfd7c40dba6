"""Pair objectives at gathered-batch sizes (benchmarks/reports/speed.md, section 6).

Under DDP the pair losses see the global batch: 1024 rows and more on a GPU node. For every
objective at B = 1024 and 4096 (embeddings (B, 512) fp32, as in speed.py's section 4):

- forward + backward time, the objectives interleaved in one process (each round times every
  objective once, so load changes hit all of them alike); the median over rounds;
- the peak RSS rise of one forward + backward, each objective in its own process (a clean
  peak: the allocator keeps freed pages);
- ``rnc (before)``: the ``rnc_loss`` this project shipped before issue #16 (``torch.cdist``'s
  exact per-pair form, ``torch.logcumsumexp``, ``searchsorted``), kept here as the baseline
  of the before/after ratio, checked to agree with the current one.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/large_batch.py            # ~5 min, 1 thread
    .venv/bin/python benchmarks/large_batch.py --batches 64 --rounds 1      # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed

from learner.io import write_json
from learner.losses import build_objective
from learner.losses import functional as fn

DIM = 512
BEFORE = "rnc (before)"


def rnc_before(embeddings: Tensor, scores: Tensor, patient_ids: Tensor) -> Tensor:
    """``rnc_loss`` as of commit 436fd96 (temperature 2), the baseline of the ratio."""
    x = embeddings.float()
    pairs = fn._pairs(scores, patient_ids, x.dtype)
    sim = -torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") / 2.0
    key = torch.where(pairs.valid, pairs.delta, -1.0)
    key_sorted, order = key.sort(dim=1, descending=True)
    sim_sorted = sim.gather(1, order)
    prefix_lse = torch.logcumsumexp(sim_sorted, dim=1)
    ascending = (-key_sorted).contiguous()
    n_ge = torch.searchsorted(ascending, ascending, right=True)
    denom = prefix_lse.gather(1, (n_ge - 1).clamp_min(0))
    valid_sorted = key_sorted >= 0
    per_pair = torch.where(valid_sorted, denom - sim_sorted, 0.0)
    return fn._safe_div(per_pair.sum(), valid_sorted.sum())


def losses() -> dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]]:
    cases: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
        label: (lambda o: lambda u, y, p: o(u, y, p).loss)(build_objective(name, **hp))
        for label, name, hp in speed.OBJECTIVE_CASES
        if name != "mse"
    }
    cases[BEFORE] = rnc_before
    return cases


def step(label: str, u: Tensor, y: Tensor, pid: Tensor) -> None:
    x = u.clone().requires_grad_(True)
    losses()[label](x, y, pid).backward()


def time_all(batch: int, rounds: int) -> dict[str, Any]:
    """Median forward + backward seconds per objective, interleaved; the rnc agreement."""
    u, y, pid = speed._objective_batch(batch, DIM)
    labels = list(losses())
    for label in labels:  # warm-up
        step(label, u, y, pid)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(rounds):
        for label in labels:
            start = time.perf_counter()
            step(label, u, y, pid)
            times[label].append(time.perf_counter() - start)
    now = fn.rnc_loss(u, y, pid).loss.item()
    before = rnc_before(u, y, pid).item()
    return {
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "spread": {k: (max(v) - min(v)) / statistics.median(v) for k, v in times.items()},
        "rnc_loss_rel_diff_vs_before": abs(now - before) / abs(before),
    }


def peak_of(batch: int, label: str) -> float:
    """RSS rise (MiB) of one forward + backward of ``label``, in a fresh process."""
    code = (
        "import sys; sys.argv = ['x']\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import large_batch as lb, speed\n"
        f"u, y, pid = speed._objective_batch({batch}, lb.DIM)\n"
        "before = speed.rss_mib(); speed.reset_peak_rss()\n"
        f"lb.step({label!r}, u, y, pid)\n"
        "print(speed.peak_rss_mib() - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return float(out.split()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per batch size")
    parser.add_argument(
        "--no-peaks", action="store_true", help="skip the peak RSS (one process per objective)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "large_batch.json"
    )
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "command": " ".join(["benchmarks/large_batch.py", *(argv or sys.argv[1:])]),
        "machine": speed.machine_info(),
        "load_average": speed.load_average(),
        "dim": DIM,
        "batches": {},
    }
    for batch in args.batches:
        row = time_all(batch, args.rounds)
        if not args.no_peaks:
            row["peak_rise_mib"] = {label: peak_of(batch, label) for label in losses()}
        t = row["median_s"]
        row["rnc_over_contrastive"] = t["rnc"] / t["contrastive"]
        row["before_over_contrastive"] = t[BEFORE] / t["contrastive"]
        row["speedup_rnc_vs_before"] = t[BEFORE] / t["rnc"]
        result["batches"][str(batch)] = row
        print(json.dumps({batch: row}, indent=1), flush=True)
    result["load_average_end"] = speed.load_average()
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
