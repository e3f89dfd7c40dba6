"""DataLoader settings for training and embedding: how many workers, and how they run.

``data.num_workers: auto`` resolves here: on a GPU the usable CPUs minus one (one core stays
with the process that drives the GPU), at most :data:`AUTO_WORKERS_CAP`; on a CPU none, since
workers would take the cores the training threads use (on the 2-core machine of
benchmarks/reports/speed.md one worker ran the demo-size pipeline at 0.72 of in-memory
speed against 0.90 without). Workers persist across epochs (their start-up is paid once; the
dataset's epoch lives in shared memory, so they still see :meth:`ScanDataset.set_epoch`), and
batches land in pinned memory when a GPU trains, so the copy to the device can overlap.
"""

from __future__ import annotations

import os
from typing import Any

from learner.config import Config

# More workers than this rarely pays: each holds its own decode-cache maps and a batch in
# flight, and a 16-core machine (the H100/H200 hosts here) has 15 to give.
AUTO_WORKERS_CAP = 16


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_num_workers(setting: int | str, gpu: bool) -> int:
    """``data.num_workers`` as a number: an int as it is; ``auto`` as the module docstring says.

    Example:
        >>> resolve_num_workers(3, gpu=False), resolve_num_workers("auto", gpu=False)
        (3, 0)
    """
    if setting != "auto":
        return int(setting)
    return min(AUTO_WORKERS_CAP, max(usable_cpus() - 1, 0)) if gpu else 0


def loader_kwargs(cfg: Config, gpu: bool, workers: int | str | None = None) -> dict[str, Any]:
    """DataLoader keyword arguments for ``cfg``'s data on a GPU (``gpu``) or a CPU.

    Args:
        cfg: the resolved config (``data.num_workers``, ``data.prefetch_factor``).
        gpu: whether the batches go to a CUDA device (pinned memory).
        workers: overrides ``data.num_workers`` (an int or ``auto``).

    Returns:
        ``num_workers``, ``persistent_workers``, ``pin_memory`` and ``prefetch_factor``.
    """
    n = resolve_num_workers(cfg.data.num_workers if workers is None else workers, gpu)
    return {
        "num_workers": n,
        "persistent_workers": n > 0,
        "pin_memory": gpu,
        # torch accepts a prefetch factor only with worker processes.
        "prefetch_factor": cfg.data.prefetch_factor if n > 0 else None,
    }
