"""benchmarks/loader_equivalence.py: the plan's arithmetic on made-up per-seed values."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="module")
def module(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("loader_equivalence.py")


def results(values: dict[str, list[float]]) -> dict[str, Any]:
    return {"objectives": {k: {"balanced_accuracy": {"per_seed": v}} for k, v in values.items()}}


def test_small_shifts_pass_and_the_untrained_check_reads_identity(module: ModuleType) -> None:
    spread = [0.40, 0.50, 0.45, 0.35, 0.55, 0.42, 0.48, 0.38, 0.52, 0.45]
    old = {k: spread for k in ("mse", "contrastive", "weighted", "head_delta", "untrained")}
    new = dict(old, mse=[0.41, 0.49, 0.46], untrained=spread[:3])
    out = module.compare(results(old), results(new), seeds=3)
    assert out["verdict"] == "no change beyond seed noise"
    assert out["checks_identical"] == {"untrained": True}
    mse = out["rows"]["mse"]
    assert mse["mean_difference"] == pytest.approx(0.01 / 3)
    sd = float(np.std(spread, ddof=1))
    assert mse["mdd80"] == pytest.approx(2.80 * sd * math.sqrt(2 / 3))


def test_a_shift_beyond_the_mdd_fails(module: ModuleType) -> None:
    spread = [0.40, 0.41, 0.39, 0.40, 0.42, 0.38, 0.40, 0.41, 0.39, 0.40]
    old = {k: spread for k in ("mse", "contrastive", "weighted", "head_delta", "untrained")}
    new = dict(old, weighted=[0.60, 0.62, 0.59])
    out = module.compare(results(old), results(new), seeds=3)
    assert out["verdict"] == "changed beyond seed noise"
    assert out["rows"]["weighted"]["mean_difference"] > out["rows"]["weighted"]["mdd80"]


def test_holm_is_step_down_and_monotone(module: ModuleType) -> None:
    adjusted = module.holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
