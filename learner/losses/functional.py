"""Pair objectives as pure, typed, fully vectorised functions (DESIGN section 1).

Every objective has the signature::

    f(embeddings (B, D) float, scores (B,) in [0, 1], patient_ids (B,) int, *, hparams) -> PairLoss

and follows the same rules:

- Only inter-patient pairs count: ``(i, j)`` with ``patient_ids[i] != patient_ids[j]`` (hence
  ``i != j``). A NaN score marks an unlabelled scan, which takes part in no pair.
- ``Delta_ij = |y_i - y_j|`` is the score gap; ``D_ij = 1 - cos(u_i, u_j)`` the cosine distance.
- A term with no valid pair contributes exactly 0 (never NaN); ``PairLoss.n_pos`` /
  ``PairLoss.n_neg`` count the unordered pairs each term used, so the logs show it.
- The maths runs in at least float32 with autocast disabled: cosine distances of nearby
  embeddings, their squares and log-sum-exps lose almost all their digits in bfloat16 (its
  machine epsilon is 0.0078), so mixed-precision training gets a float32 loss.
- No Python loop over pairs or anchors; memory is O(B^2) for every objective (``rnc``
  included: it sorts instead of building a (B, B, B) mask).

Example:
    >>> u = torch.randn(6, 8, requires_grad=True)
    >>> y = torch.tensor([0.1, 0.2, 0.8, 0.9, float("nan"), 0.5])
    >>> pid = torch.tensor([0, 1, 2, 3, 4, 4])
    >>> out = contrastive_loss(u, y, pid, tau=0.1, margin=0.5)
    >>> out.loss.backward()
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

Weighting = Literal["linear", "exp", "log"]
Partition = Literal["threshold", "soft"]

# Norm floor of the cosine normalisation: a zero embedding maps to the zero direction (cosine
# 0 with everything) and the gradient through 1/||u|| stays bounded by 1/_NORM_EPS.
_NORM_EPS = 1e-6


class PairLoss(NamedTuple):
    """Result of a pair objective.

    Attributes:
        loss: scalar tensor, float32 or float64 (the promoted embedding dtype).
        n_pos: int64 scalar, unordered pairs used by the positive / attracting term.
        n_neg: int64 scalar, unordered pairs used by the negative / repelling term.
    """

    loss: Tensor
    n_pos: Tensor
    n_neg: Tensor

    @property
    def n_pos_pairs(self) -> Tensor:
        """Alias of ``n_pos`` (the name used in docs/architecture.md)."""
        return self.n_pos

    @property
    def n_neg_pairs(self) -> Tensor:
        """Alias of ``n_neg`` (the name used in docs/architecture.md)."""
        return self.n_neg


class _Pairs(NamedTuple):
    """Which ordered pairs are valid and their score gaps.

    Attributes:
        valid: (B, B) bool, inter-patient pairs of labelled scans (symmetric, False diagonal).
        delta: (B, B) float, ``|y_i - y_j|`` on valid pairs and 0 elsewhere (never NaN).
    """

    valid: Tensor
    delta: Tensor


def _check_inputs(embeddings: Tensor, scores: Tensor, patient_ids: Tensor) -> None:
    """Raise ValueError on shapes or dtypes that do not fit (B, D), (B,), (B,) integer."""
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (B, D), got shape {tuple(embeddings.shape)}")
    batch = embeddings.shape[0]
    if scores.shape != (batch,):
        raise ValueError(
            f"scores must be ({batch},) to match embeddings, got {tuple(scores.shape)}"
        )
    if patient_ids.shape != (batch,):
        raise ValueError(
            f"patient_ids must be ({batch},) to match embeddings, got {tuple(patient_ids.shape)}"
        )
    if patient_ids.is_floating_point() or patient_ids.is_complex():
        raise ValueError(f"patient_ids must be an integer tensor, got {patient_ids.dtype}")


@contextmanager
def _full_precision(embeddings: Tensor) -> Iterator[Tensor]:
    """Yield the embeddings in at least float32 with autocast off for their device."""
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    device_type = embeddings.device.type
    if torch.amp.is_autocast_available(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            yield embeddings.to(dtype)
    else:
        yield embeddings.to(dtype)


def _pairs(scores: Tensor, patient_ids: Tensor, dtype: torch.dtype) -> _Pairs:
    """Valid-pair mask and score gaps; NaN scores are zero-filled so nothing NaN propagates."""
    y = scores.to(dtype)
    labelled = ~torch.isnan(y)
    y = torch.where(labelled, y, torch.zeros_like(y))
    valid = (patient_ids[:, None] != patient_ids[None, :]) & labelled[:, None] & labelled[None, :]
    delta = torch.where(valid, (y[:, None] - y[None, :]).abs(), 0.0)
    return _Pairs(valid=valid, delta=delta)


def _cosine_distance(x: Tensor) -> Tensor:
    """(B, D) -> (B, B) matrix of ``1 - cos(x_i, x_j)`` with an eps-floored norm."""
    z = F.normalize(x, dim=1, eps=_NORM_EPS)
    return 1.0 - z @ z.T


def _euclidean_distance(x: Tensor) -> Tensor:
    """(B, D) -> (B, B) L2 distances, to the rounding of ``x``'s dtype, with a zero gradient
    at coincident points (the diagonal, duplicate embeddings).

    See :class:`_EuclideanDistance`: matrix products in float64 instead of ``torch.cdist``'s
    exact per-pair differences, which cost 10x more at B = 1024, D = 512 (rnc's bottleneck).
    """
    out: Tensor = _EuclideanDistance.apply(x)
    return out


# Pairs whose squared distance is below this fraction of |x_i|^2 + |x_j|^2 are recomputed
# from their difference: there the float64 matmul form's cancellation error (~1e-16 of the
# norms) would reach float32's resolution of the distance.
_CANCELLATION_GUARD = 1e-6
# Above this many such pairs per row (collapsed embeddings), the exact form for all pairs.
_MAX_CLOSE_PER_ROW = 8


class _EuclideanDistance(torch.autograd.Function):
    """L2 distances via ``|a|^2 + |b|^2 - 2 a.b`` in float64, with exact fix-ups.

    Forward: the Gram matrix in float64 keeps the cancellation error near 1e-16 of the
    squared norms, far below a float32 distance except for near-coincident pairs, which are
    recomputed from ``x_i - x_j`` (the diagonal at least). No (B, B, D) tensor: O(B^2)
    memory. Backward: ``grad_i = sum_j W_ij (x_i - x_j)`` with ``W = (G + G^T) / d`` (0 where
    ``d == 0``, as ``torch.cdist``), evaluated as ``x_i sum_j W_ij - (W x)_i`` in float64.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x64 = x.double()
        sq = x64.square().sum(dim=1)
        norms = sq[:, None] + sq[None, :]
        d2 = (norms - 2.0 * (x64 @ x64.T)).clamp_min_(0.0)
        close = d2 <= _CANCELLATION_GUARD * norms
        i, j = close.nonzero(as_tuple=True)
        if i.numel() <= _MAX_CLOSE_PER_ROW * x.shape[0]:
            d2[i, j] = (x64[i] - x64[j]).square().sum(dim=1)
            d64 = d2.sqrt_()
        else:
            d64 = torch.cdist(x64, x64, compute_mode="donot_use_mm_for_euclid_dist")
        ctx.save_for_backward(x, d64)
        return d64.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        x, d64 = ctx.saved_tensors
        w = torch.where(d64 > 0, grad.double() / torch.where(d64 > 0, d64, 1.0), 0.0)
        w = w + w.T
        x64 = x.double()
        return (x64 * w.sum(dim=1, keepdim=True) - w @ x64).to(x.dtype)


def _count(mask: Tensor) -> Tensor:
    """Number of unordered pairs in a symmetric (B, B) bool mask with a False diagonal (int64)."""
    return mask.sum() // 2


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den == 0`` (callers guarantee ``num == 0`` there).

    The denominator is replaced, not the quotient: ``where(den > 0, num / den, 0)`` would still
    back-propagate 0 / 0 = NaN through the unselected branch.
    """
    den = den.to(num.dtype)
    return num / torch.where(den > 0, den, torch.ones_like(den))


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """``sum(w * v) / sum(w)`` over all entries, 0 when every weight is 0."""
    return _safe_div((weights * values).sum(), weights.sum())


def score_weight(delta: Tensor, weighting: Weighting = "linear", alpha: float = 3.0) -> Tensor:
    """Weight ``w(Delta)`` in [0, 1] of the weighted objective (negative weight; positive 1 - w).

    - ``linear``: ``w = Delta``.
    - ``exp``: ``w = (exp(alpha Delta) - 1) / (exp(alpha) - 1)``: small gaps weigh less.
    - ``log``: ``w = log(1 + alpha Delta) / log(1 + alpha)``: small gaps weigh more.

    All three map 0 -> 0 and 1 -> 1. Gaps beyond 1 (scores outside the configured range) are
    clamped to weight 1 so that the positive weight ``1 - w`` never turns negative.

    Args:
        delta: score gaps, any shape, >= 0.
        weighting: one of ``linear``, ``exp``, ``log``.
        alpha: curvature of ``exp`` and ``log`` (> 0); ignored by ``linear``.

    Returns:
        Tensor of the shape of ``delta``.
    """
    if weighting == "linear":
        w = delta
    elif weighting == "exp":
        # expm1 keeps the digits of small alpha * Delta that exp(.) - 1 would cancel away.
        w = torch.expm1(alpha * delta) / math.expm1(alpha)
    elif weighting == "log":
        w = torch.log1p(alpha * delta) / math.log1p(alpha)
    else:
        raise ValueError(f"weighting must be one of 'linear', 'exp', 'log', got {weighting!r}")
    return w.clamp(0.0, 1.0)


def contrastive_loss(
    embeddings: Tensor,
    scores: Tensor,
    patient_ids: Tensor,
    *,
    tau: float = 0.1,
    margin: float = 0.5,
) -> PairLoss:
    """Score-thresholded contrastive loss on the cosine distance.

    Positives ``Delta <= tau``, negatives ``Delta > tau``;
    ``L = mean_pos D^2 + mean_neg relu(margin - D)^2``.

    Args:
        embeddings: (B, D) float.
        scores: (B,) in [0, 1]; NaN = unlabelled.
        patient_ids: (B,) integer.
        tau: score-gap threshold in [0, 1].
        margin: cosine-distance margin of the negatives, in (0, 2].

    Returns:
        PairLoss with the positive / negative pair counts.
    """
    _check_inputs(embeddings, scores, patient_ids)
    with _full_precision(embeddings) as x:
        pairs = _pairs(scores, patient_ids, x.dtype)
        dist = _cosine_distance(x)
        pos = pairs.valid & (pairs.delta <= tau)
        neg = pairs.valid & (pairs.delta > tau)
        loss = _weighted_mean(dist.square(), pos.to(x.dtype)) + _weighted_mean(
            F.relu(margin - dist).square(), neg.to(x.dtype)
        )
    return PairLoss(loss, _count(pos), _count(neg))


def weighted_contrastive_loss(
    embeddings: Tensor,
    scores: Tensor,
    patient_ids: Tensor,
    *,
    tau: float = 0.1,
    margin: float = 0.5,
    weighting: Weighting = "linear",
    alpha: float = 3.0,
    partition: Partition = "threshold",
) -> PairLoss:
    """LEARNER's weighted contrastive loss (our reconstruction, DESIGN section 1).

    With ``w = score_weight(Delta)`` (positive weight ``1 - w``, negative weight ``w``):

    - ``partition="threshold"``: positives / negatives as in :func:`contrastive_loss`;
      ``L = sum_pos (1-w) D^2 / sum_pos (1-w) + sum_neg w relu(m-D)^2 / sum_neg w``, each term
      normalised by its own weight sum (a zero weight sum gives 0).
    - ``partition="soft"``: every valid pair is in both terms, and both terms are divided by
      the same number N of valid pairs:
      ``L = (1/N) sum_valid [(1-w) D^2 + w relu(m-D)^2]``. Each pair's term is minimised at
      ``D = m * w(Delta)`` (set the derivative ``2(1-w)D - 2w(m-D)`` to 0), so the optimum puts
      embedding distance proportional to score difference. Normalising the two terms by their
      own weight sums would rescale them by batch-dependent factors and move that optimum.

    Args:
        embeddings: (B, D) float.
        scores: (B,) in [0, 1]; NaN = unlabelled.
        patient_ids: (B,) integer.
        tau: score-gap threshold in [0, 1] (``threshold`` partition only).
        margin: cosine-distance margin ``m`` in (0, 2].
        weighting: ``linear``, ``exp`` or ``log`` (see :func:`score_weight`).
        alpha: curvature of the ``exp`` / ``log`` weightings (> 0).
        partition: ``threshold`` or ``soft``.

    Returns:
        PairLoss; for ``soft`` both counts are the number of valid pairs.
    """
    _check_inputs(embeddings, scores, patient_ids)
    if partition not in ("threshold", "soft"):
        raise ValueError(f"partition must be one of 'threshold', 'soft', got {partition!r}")
    with _full_precision(embeddings) as x:
        pairs = _pairs(scores, patient_ids, x.dtype)
        dist = _cosine_distance(x)
        w = score_weight(pairs.delta, weighting, alpha)
        attract = dist.square()
        repel = F.relu(margin - dist).square()
        if partition == "threshold":
            pos = pairs.valid & (pairs.delta <= tau)
            neg = pairs.valid & (pairs.delta > tau)
            loss = _weighted_mean(attract, torch.where(pos, 1.0 - w, 0.0)) + _weighted_mean(
                repel, torch.where(neg, w, 0.0)
            )
            return PairLoss(loss, _count(pos), _count(neg))
        per_pair = torch.where(pairs.valid, (1.0 - w) * attract + w * repel, 0.0)
        loss = _safe_div(per_pair.sum(), pairs.valid.sum())
        n_valid = _count(pairs.valid)
    return PairLoss(loss, n_valid, n_valid.clone())


def yaware_loss(
    embeddings: Tensor,
    scores: Tensor,
    patient_ids: Tensor,
    *,
    temperature: float = 0.1,
    sigma: float = 0.1,
) -> PairLoss:
    """y-Aware InfoNCE (Dufumier et al. 2021) over inter-patient pairs.

    With ``s_ij = cos(u_i, u_j) / temperature`` and the RBF kernel
    ``K_ij = exp(-Delta_ij^2 / (2 sigma^2))``, for every anchor ``i`` with a valid partner:
    ``loss_i = - sum_j (K_ij / sum_k K_ik) log softmax_j(s_ij)``, sums and softmax over valid
    ``j``, ``k``; the loss is the mean over those anchors. The kernel is normalised as a softmax
    of ``-Delta^2 / (2 sigma^2)`` (identical maths) so that it cannot underflow to 0 / 0 for
    small ``sigma``.

    Args:
        embeddings: (B, D) float.
        scores: (B,) in [0, 1]; NaN = unlabelled.
        patient_ids: (B,) integer.
        temperature: softmax temperature (> 0).
        sigma: kernel bandwidth in score units (> 0).

    Returns:
        PairLoss; both counts are the number of valid pairs (each pair attracts by its kernel
        weight and is a negative in the denominator).
    """
    _check_inputs(embeddings, scores, patient_ids)
    with _full_precision(embeddings) as x:
        pairs = _pairs(scores, patient_ids, x.dtype)
        fill = torch.finfo(x.dtype).min
        z = F.normalize(x, dim=1, eps=_NORM_EPS)
        logits = (z @ z.T / temperature).masked_fill(~pairs.valid, fill)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        log_kernel = (-pairs.delta.square() / (2.0 * sigma**2)).masked_fill(~pairs.valid, fill)
        # Rows without a valid pair get a uniform softmax here; they are dropped below.
        kernel = torch.softmax(log_kernel, dim=1)
        per_anchor = -torch.where(pairs.valid, kernel * log_prob, 0.0).sum(dim=1)
        anchors = pairs.valid.any(dim=1)
        loss = _safe_div(torch.where(anchors, per_anchor, 0.0).sum(), anchors.sum())
        n_valid = _count(pairs.valid)
    return PairLoss(loss, n_valid, n_valid.clone())


def rnc_loss(
    embeddings: Tensor,
    scores: Tensor,
    patient_ids: Tensor,
    *,
    temperature: float = 2.0,
) -> PairLoss:
    """Rank-N-Contrast (Zha et al. 2023) over inter-patient pairs.

    Similarity ``s_ij = -||u_i - u_j||_2 / temperature`` on the raw (not normalised)
    embeddings, as in the paper. For each anchor ``i`` and valid ``j``:
    ``l_ij = -log(exp(s_ij) / sum_{k valid, Delta_ik >= Delta_ij} exp(s_ik))``, ties included;
    the loss is the mean over all valid ordered pairs.

    Vectorised without the (B, B, B) mask (1 GB at B = 1024): each anchor's candidates are
    sorted by ``Delta`` descending, so the denominator of ``j`` is a prefix log-sum-exp
    (:func:`_prefix_logsumexp`) read at the last position whose ``Delta`` ties with
    ``Delta_ij`` (:func:`_last_of_tie`). Invalid candidates get ``Delta = -1`` and sort
    after every valid one, so no valid prefix contains them.

    Args:
        embeddings: (B, D) float.
        scores: (B,) in [0, 1]; NaN = unlabelled.
        patient_ids: (B,) integer.
        temperature: similarity temperature (> 0).

    Returns:
        PairLoss; both counts are the number of valid pairs.
    """
    _check_inputs(embeddings, scores, patient_ids)
    with _full_precision(embeddings) as x:
        pairs = _pairs(scores, patient_ids, x.dtype)
        sim = -_euclidean_distance(x) / temperature
        key = torch.where(pairs.valid, pairs.delta, -1.0)
        # Sorted as the integers of the same bits: for floats >= 0 their order is the value's,
        # -1 sorts below them all (sign bit), ties stay ties, and integer sorts are ~1.5x faster.
        bits = torch.int32 if key.dtype == torch.float32 else torch.int64
        key_sorted, order = key.view(bits).sort(dim=1, descending=True)
        sim_sorted = sim.gather(1, order)
        prefix_lse = _prefix_logsumexp(sim_sorted)
        denom = prefix_lse.gather(1, _last_of_tie(key_sorted))
        valid_sorted = key_sorted >= 0
        per_pair = torch.where(valid_sorted, denom - sim_sorted, 0.0)
        loss = _safe_div(per_pair.sum(), valid_sorted.sum())
        n_valid = _count(pairs.valid)
    return PairLoss(loss, n_valid, n_valid.clone())


# exp() of float64 is normal down to -708: rows whose similarities spread wider than this
# fall back to torch.logcumsumexp (exact at any spread, 5x slower on a CPU).
_MAX_EXP_SPREAD = 700.0


def _prefix_logsumexp(values: Tensor) -> Tensor:
    """Row-wise ``log(cumsum(exp(values)))`` of a (B, N) tensor, in ``values``' dtype.

    ``log(cumsum(exp(v - max)))`` in float64: the terms are positive (no cancellation) and
    their sum's relative rounding is ~N * 1e-16, far below float32's; used unless a row's
    values spread beyond :data:`_MAX_EXP_SPREAD`, where a term could underflow.
    """
    if values.numel() == 0:
        return values
    top = values.detach().amax(dim=1, keepdim=True)
    if (top - values.detach().amin(dim=1, keepdim=True)).max() > _MAX_EXP_SPREAD:
        return torch.logcumsumexp(values, dim=1)
    v64 = values.double() - top.double()
    return (v64.exp().cumsum(dim=1).log() + top.double()).to(values.dtype)


def _last_of_tie(sorted_rows: Tensor) -> Tensor:
    """For rows sorted (either way), the index of the last entry equal to each entry.

    Args:
        sorted_rows: (B, N), each row sorted.

    Returns:
        (B, N) int64: ``last[i, p] = max{q : sorted_rows[i, q] == sorted_rows[i, p]}``.
    """
    n = sorted_rows.shape[1]
    positions = torch.arange(n, device=sorted_rows.device).expand_as(sorted_rows)
    ends = torch.ones_like(sorted_rows, dtype=torch.bool)
    ends[:, :-1] = sorted_rows[:, 1:] != sorted_rows[:, :-1]
    marked = torch.where(ends, positions, n)
    return marked.flip(1).cummin(dim=1).values.flip(1)


def no_pair_loss(embeddings: Tensor, scores: Tensor, patient_ids: Tensor) -> PairLoss:
    """The ``mse`` objective's pair term: none. Loss 0 (no graph) and counts 0.

    Args:
        embeddings: (B, D) float.
        scores: (B,).
        patient_ids: (B,) integer.

    Returns:
        PairLoss(0, 0, 0).
    """
    _check_inputs(embeddings, scores, patient_ids)
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    zero = torch.zeros((), dtype=torch.int64, device=embeddings.device)
    return PairLoss(embeddings.new_zeros((), dtype=dtype), zero, zero.clone())
