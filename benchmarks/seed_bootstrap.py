"""Intervals over seeds instead of patients, from a ``benchmarks/probes.py`` results file.

The quality and probe tables bootstrap test patients (resample b averaged over seeds); this
resamples the per-seed values themselves, so it also carries the spread that training
(initialisation, split) adds between seeds. For every row: the mean over seeds and a 95%
percentile interval of 20000 seed resamples (generator seed 0), of the balanced accuracy
(``--metric balanced_accuracy``, e.g. on a null control against 1/3) or of the paired
difference to ``head_delta`` (``--metric minus_head_delta``).

Usage:
    .venv/bin/python benchmarks/seed_bootstrap.py benchmarks/results/probes_<tag>.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESAMPLES = 20000


def seed_interval(values: list[float], seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile of the mean over resampled seeds)."""
    v = np.asarray(values, dtype=np.float64)
    means = np.random.default_rng(seed).choice(v, size=(RESAMPLES, len(v))).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), float(low), float(high)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a probes_<tag>.json")
    parser.add_argument(
        "--metric", choices=("balanced_accuracy", "minus_head_delta"), default="minus_head_delta"
    )
    args = parser.parse_args(argv)
    for run in json.loads(args.results.read_text())["runs"]:
        print(f"{run['run']} (seeds {run['seeds']}), {args.metric} over seeds:")
        for name, row in run["rows"].items():
            mean, low, high = seed_interval(row[args.metric]["per_seed"])
            print(f"  {name:24s} {mean:+.3f} [{low:+.3f}, {high:+.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
