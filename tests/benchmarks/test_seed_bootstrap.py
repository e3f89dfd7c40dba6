"""The seed bootstrap brackets the mean and narrows as seeds agree."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType


def test_seed_interval(load_benchmark: Callable[[str], ModuleType]) -> None:
    boot = load_benchmark("seed_bootstrap.py")
    mean, low, high = boot.seed_interval([0.1, 0.3, 0.2, 0.4])
    assert abs(mean - 0.25) < 1e-12 and 0.1 <= low < mean < high <= 0.4
    assert all(abs(x - 0.2) < 1e-12 for x in boot.seed_interval([0.2, 0.2, 0.2]))
    wide = boot.seed_interval([-0.4, 0.4, -0.3, 0.3])
    narrow = boot.seed_interval([-0.04, 0.04, -0.03, 0.03])
    assert wide[2] - wide[1] > 5 * (narrow[2] - narrow[1])
