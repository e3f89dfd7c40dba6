"""Distributed gathering: 2 CPU processes (gloo) give the single-process loss and gradients.

Each rank encodes its own slice of the batch with a small ``nn.Linear``, the objective gathers
the global batch, and DDP's gradient averaging is simulated explicitly (all_reduce SUM, then
divide by the world size). The result must equal one process on the concatenated batch.
"""

from __future__ import annotations

import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from learner import dist
from learner.losses import build_objective

WORLD = 2
# Uneven on purpose: an uneven last batch must still gather to the plain concatenation.
SIZES = (5, 4)
OBJECTIVES: list[tuple[str, dict[str, Any]]] = [
    ("contrastive", {"tau": 0.15}),
    ("weighted", {"tau": 0.15, "weighting": "exp"}),
    ("weighted", {"partition": "soft", "weighting": "log"}),
    ("yaware", {"sigma": 0.2}),
    ("rnc", {}),
    ("mse", {}),
]


def _global_batch() -> tuple[Tensor, Tensor, Tensor]:
    """Inputs (9, 4), scores (9,) with a NaN and ties, patient ids shared across the two ranks."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(sum(SIZES), 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0.1, 0.5, 0.5, float("nan"), 0.9, 0.3, 0.5, 0.75, 0.2], dtype=torch.float64)
    # Patient 2 has a scan on each rank: that pair must be excluded after gathering.
    pid = torch.tensor([0, 1, 2, 3, 4, 2, 5, 6, 6])
    return x, y, pid


def _encoder() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 6, dtype=torch.float64)


def _close(a: Tensor, b: Tensor, what: str) -> str | None:
    """None when a == b to 1e-9 relative (scaled by the largest entry of b), else a message."""
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    return None if err <= 1e-9 * scale else f"{what}: max error {err:.3e} (scale {scale:.3e})"


def _worker(rank: int, init_file: str, result_dir: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    problems: list[str] = []
    try:
        x, y, pid = _global_batch()
        start = sum(SIZES[:rank])
        local = slice(start, start + SIZES[rank])

        # The raw helpers: ranks, and both gathers give the concatenation in rank order.
        if (dist.is_distributed(), dist.world_size(), dist.rank()) != (True, WORLD, rank):
            problems.append("rank helpers disagree with torch.distributed")
        if not torch.equal(dist.gather_no_grad(pid[local]), pid):
            problems.append("gather_no_grad(patient ids) is not the concatenation")
        gathered = dist.gather_with_grad(x[local].clone().requires_grad_(True))
        if not torch.equal(gathered.detach(), x):
            problems.append("gather_with_grad is not the concatenation")

        for name, hparams in OBJECTIVES:
            # This rank: local slice through the encoder, gathered by the objective.
            encoder = _encoder()
            objective = build_objective(name, **hparams)
            out = objective(encoder(x[local]), y[local], pid[local])
            if out.loss.requires_grad:
                out.loss.backward()
            grads = []
            for p in encoder.parameters():
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                torch_dist.all_reduce(g, op=torch_dist.ReduceOp.SUM)  # what DDP does ...
                grads.append(g / WORLD)  # ... then it averages

            # One process, the whole batch, no gathering (pair_loss skips the collective).
            ref_encoder = _encoder()
            ref = objective.pair_loss(ref_encoder(x), y, pid)
            if ref.loss.requires_grad:
                ref.loss.backward()
            label = f"rank {rank} {name} {hparams}"
            if (out.n_pos.item(), out.n_neg.item()) != (ref.n_pos.item(), ref.n_neg.item()):
                problems.append(f"{label}: pair counts differ")
            problems.append(_close(out.loss.detach(), ref.loss.detach(), f"{label} loss") or "")
            # All parameters at once: the scale is that of the whole gradient (rnc's bias
            # gradient is 0 up to rounding, as L2 distances ignore a shared shift).
            expected = [
                p.grad if p.grad is not None else torch.zeros_like(p)
                for p in ref_encoder.parameters()
            ]
            flat = torch.cat([g.flatten() for g in grads])
            flat_expected = torch.cat([g.flatten() for g in expected])
            problems.append(_close(flat, flat_expected, f"{label} gradients") or "")
            if name != "mse" and flat.abs().max() == 0:
                problems.append(f"{label}: no gradient reached the encoder")
    except Exception:
        problems.append(traceback.format_exc())
    # The verdict is on disk before teardown: gloo's teardown can abort a process
    # ("terminate called without an active exception") after every check has passed.
    text = "\n".join(p for p in problems if p)
    Path(result_dir, f"rank{rank}.txt").write_text(text or "ok")
    torch_dist.barrier()  # no rank tears down while the other is still in a collective
    torch_dist.destroy_process_group()


def test_two_process_gather_equals_single_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not torch_dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    # Spawned children unpickle _worker by its module name (``tests.test_dist`` or
    # ``test_dist``, depending on pytest's import mode): put the folder that name starts
    # from on the path they inherit.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[__name__.count(".")]))
    try:
        mp.spawn(
            _worker,
            args=(str(tmp_path / "init"), str(tmp_path)),
            nprocs=WORLD,
            join=True,
        )
    except mp.ProcessExitedException:
        # A crash before a rank wrote its verdict still fails below (missing file); a
        # crash in gloo's teardown after both verdicts are written is not what this tests.
        pass
    for rank in range(WORLD):
        verdict = tmp_path / f"rank{rank}.txt"
        assert verdict.is_file(), f"rank {rank} died before finishing its checks"
        assert verdict.read_text() == "ok"


def test_helpers_without_a_process_group() -> None:
    assert not dist.is_distributed()
    assert (dist.world_size(), dist.rank()) == (1, 0)
    t = torch.randn(3, 2, requires_grad=True)
    assert dist.gather_with_grad(t) is t
    ids = torch.arange(3)
    assert dist.gather_no_grad(ids) is ids


def test_objective_does_not_gather_without_a_process_group() -> None:
    u = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=torch.float64)
    pid = torch.arange(4)
    objective = build_objective("contrastive")
    assert objective(u, y, pid).loss.item() == objective.pair_loss(u, y, pid).loss.item()
