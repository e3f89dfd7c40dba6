"""A small distributed toolbox: rank helpers and batch gathering across processes.

The pair objectives compare every scan with every other scan of the batch, so under data
parallelism each rank gathers the embeddings, scores and patient ids of all ranks and computes
the loss on the global batch, exactly as one process would on the concatenated batch.

Gradient scale (checked by ``tests/test_dist.py``): every rank computes the same global loss
``L``. ``torch.distributed.nn.functional.all_gather`` back-propagates by summing, over ranks,
the gradient each rank's loss sends to this rank's slice, so the local slice receives
``W * dL/du_local`` (W = world size). DDP then averages parameter gradients over ranks
(divides by W), which leaves ``sum_r dL/dtheta via u_r = dL/dtheta``: the single-process
gradient on the concatenated batch. No extra rescaling is needed or allowed.

Ranks may hold different batch sizes (an uneven last batch): tensors are padded to the largest
size for the collective and trimmed after it, so the result is the plain concatenation.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def _gather_sizes(t: Tensor) -> list[int]:
    """Leading-dimension size of ``t`` on every rank, in rank order."""
    local = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    sizes = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    """Zero-pad ``t`` along dim 0 to ``rows`` rows (differentiable)."""
    missing = rows - t.shape[0]
    if missing == 0:
        return t
    # F.pad's spec runs from the last dimension backwards: (0, 0) for every trailing dim.
    return F.pad(t, (0, 0) * (t.ndim - 1) + (0, missing))


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate ``t`` from all ranks along dim 0, keeping the autograd graph.

    Gradients flow back to the local slice (see the module docstring for their scale).

    Args:
        t: (B_r, ...) on this rank; trailing dims and dtype equal on every rank.

    Returns:
        (sum_r B_r, ...) in rank order; ``t`` itself when not distributed or world size is 1.
    """
    if world_size() == 1:
        return t
    from torch.distributed.nn import functional as dist_fn

    sizes = _gather_sizes(t)
    with warnings.catch_warnings():
        # Deprecated in favour of a private functional-collectives API; it is the documented
        # autograd-aware all_gather and still correct, so the per-call FutureWarning is muted.
        warnings.filterwarnings(
            "ignore", message=r".*all_gather is deprecated", category=FutureWarning
        )
        parts = dist_fn.all_gather(_pad_rows(t, max(sizes)))
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)], dim=0)


def gather_no_grad(t: Tensor) -> Tensor:
    """Concatenate ``t`` from all ranks along dim 0, without autograd (ids, scores, masks).

    Args:
        t: (B_r, ...) on this rank, any dtype the backend supports (int64 for patient ids).

    Returns:
        (sum_r B_r, ...) in rank order; ``t`` itself when not distributed or world size is 1.
    """
    if world_size() == 1:
        return t
    sizes = _gather_sizes(t)
    with torch.no_grad():
        padded = _pad_rows(t.detach(), max(sizes)).contiguous()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)], dim=0)
