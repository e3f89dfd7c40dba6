"""Pair objectives as pure, typed, fully vectorised functions.

Every objective has the signature::

    f(embeddings (B, D) float, scores (B,) in [0, 1], patient_ids (B,) int, *, hparams) -> PairLoss

and follows the same rules:

- By default only inter-patient pairs count: ``(i, j)`` with ``patient_ids[i] != patient_ids[j]``
  (hence ``i != j``), as in the paper. ``pairs="intra"`` takes the pairs of one patient's
  scans instead and ``pairs="all"`` both (``contrastive``, ``weighted`` and ``yaware``; an
  ablation of the paper's central choice). A NaN score marks an unlabelled scan, which takes
  part in no pair.
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

Why one long module: every objective shares the pair masks, the partitions and the
zero-not-NaN rule above, and each function carries its maths in its docstring; kept on one
page, the objectives can be compared line by line (the tests check each against a loop over
pairs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# The choices are declared once, beside the hyperparameters' ranges.
from learner.objective_hparams import PAIR_SETS, WEIGHTINGS, PairSet, Partition, Weighting

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


def _pairs(
    scores: Tensor, patient_ids: Tensor, dtype: torch.dtype, pairs: PairSet = "inter"
) -> _Pairs:
    """Valid-pair mask and score gaps; NaN scores are zero-filled so nothing NaN propagates."""
    y = scores.to(dtype)
    labelled = ~torch.isnan(y)
    y = torch.where(labelled, y, torch.zeros_like(y))
    same = patient_ids[:, None] == patient_ids[None, :]
    if pairs == "inter":
        chosen = ~same
    elif pairs == "intra":
        chosen = same & ~torch.eye(same.shape[0], dtype=torch.bool, device=same.device)
    elif pairs == "all":
        chosen = ~torch.eye(same.shape[0], dtype=torch.bool, device=same.device)
    else:
        raise ValueError(f"pairs must be one of {', '.join(PAIR_SETS)}; got {pairs!r}")
    valid = chosen & labelled[:, None] & labelled[None, :]
    delta = torch.where(valid, (y[:, None] - y[None, :]).abs(), 0.0)
    return _Pairs(valid=valid, delta=delta)


def _cosine_distance(x: Tensor) -> Tensor:
    """(B, D) -> (B, B) matrix of ``1 - cos(x_i, x_j)`` with an eps-floored norm."""
    z = F.normalize(x, dim=1, eps=_NORM_EPS)
    return 1.0 - z @ z.T


def _count(mask: Tensor) -> Tensor:
    """Number of unordered pairs in a symmetric (B, B) bool mask with a False diagonal (int64)."""
    return mask.sum() // 2


def _partition_weights(
    chosen: _Pairs, tau: float, score_noise: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Membership of each pair in the positive and the negative term, as float weights.

    Without noise (``score_noise == 0``, the paper) a pair is a positive when its gap is at most
    ``tau`` and a negative otherwise: weights 1 / 0. With noise (beyond the paper), each score
    is read as its true value plus Gaussian noise of sd ``score_noise`` (normalised units), so
    an observed gap ``Delta`` is the true gap plus noise of sd ``s = score_noise * sqrt(2)``.
    Under a flat prior on the true gap, the pair is a positive with probability
    ``p = Phi((tau - Delta) / s) - Phi((-tau - Delta) / s)`` (its true gap within ``tau``) and a
    negative with ``1 - p``: a gap near the threshold, which noise could have pushed either
    way, weighs partly in each term instead of fully in one, and ``s -> 0`` gives back the
    hard partition.

    Returns:
        ``(positive weight, negative weight, observed positives, observed negatives)``; the
        last two are the hard partition's masks, whose sizes the logs report.
    """
    pos = chosen.valid & (chosen.delta <= tau)
    neg = chosen.valid & (chosen.delta > tau)
    if score_noise == 0:
        return pos.to(chosen.delta.dtype), neg.to(chosen.delta.dtype), pos, neg
    spread = score_noise * math.sqrt(2.0)
    p = torch.special.ndtr((tau - chosen.delta) / spread) - torch.special.ndtr(
        (-tau - chosen.delta) / spread
    )
    p_pos = torch.where(chosen.valid, p, 0.0)
    p_neg = torch.where(chosen.valid, 1.0 - p, 0.0)
    return p_pos, p_neg, pos, neg


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


def score_weight(
    delta: Tensor,
    weighting: Weighting = "linear",
    alpha: float = 3.0,
    valid: Tensor | None = None,
) -> Tensor:
    """Weight ``w(Delta)`` in [0, 1] of the weighted objective (negative weight; positive 1 - w).

    - ``linear``: ``w = Delta``.
    - ``exp``: ``w = (exp(alpha Delta) - 1) / (exp(alpha) - 1)``: small gaps weigh less.
    - ``log``: ``w = log(1 + alpha Delta) / log(1 + alpha)``: small gaps weigh more.
    - ``rank`` (beyond the paper, adaptive): the gap's rank among the batch's valid gaps,
      scaled to [0, 1] (ties share their mean rank), so the weights spread evenly over [0, 1]
      whatever the scores' distribution: a batch of close scores still has pairs to repel.

    The first three map 0 -> 0 and 1 -> 1. Gaps beyond 1 (scores outside the configured range)
    are clamped to weight 1 so that the positive weight ``1 - w`` never turns negative.

    Args:
        delta: score gaps, any shape, >= 0.
        weighting: one of ``linear``, ``exp``, ``log``, ``rank``.
        alpha: curvature of ``exp`` and ``log`` (> 0); ignored by the others.
        valid: ``rank`` only: the entries that are pairs (a symmetric mask of the shape of
            ``delta``, each unordered pair twice); the others get weight 0.

    Returns:
        Tensor of the shape of ``delta``.
    """
    if weighting == "rank":
        if valid is None:
            raise ValueError("weighting 'rank' needs the mask of valid pairs")
        gaps = delta[valid]
        w = torch.zeros_like(delta)
        # The symmetric mask lists each unordered pair twice, so a 0-based mean rank r in
        # this list is 2 r' + 1/2 for the pair's rank r' among the n' unordered pairs.
        n_pairs = gaps.numel() // 2
        if n_pairs > 1:
            ordered = torch.sort(gaps).values
            below = torch.searchsorted(ordered, gaps, right=False)
            upto = torch.searchsorted(ordered, gaps, right=True)
            mean_rank = (below + upto - 1).to(delta.dtype) / 2.0  # ties averaged
            w[valid] = (mean_rank - 0.5) / 2.0 / (n_pairs - 1)
        elif n_pairs == 1:
            w[valid] = 0.5
        return w
    if weighting == "linear":
        w = delta
    elif weighting == "exp":
        # expm1 keeps the digits of small alpha * Delta that exp(.) - 1 would cancel away.
        w = torch.expm1(alpha * delta) / math.expm1(alpha)
    elif weighting == "log":
        w = torch.log1p(alpha * delta) / math.log1p(alpha)
    else:
        raise ValueError(
            f"weighting must be one of {', '.join(map(repr, WEIGHTINGS))}, got {weighting!r}"
        )
    return w.clamp(0.0, 1.0)


def contrastive_loss(
    embeddings: Tensor,
    scores: Tensor,
    patient_ids: Tensor,
    *,
    tau: float = 0.1,
    margin: float = 0.5,
    pairs: PairSet = "inter",
    score_noise: float = 0.0,
) -> PairLoss:
    """Score-thresholded contrastive loss on the cosine distance.

    Positives ``Delta <= tau``, negatives ``Delta > tau``;
    ``L = mean_pos D^2 + mean_neg relu(margin - D)^2``. With ``score_noise > 0`` the partition
    is the noise-aware one of :func:`_partition_weights` (each mean then weighted by the
    probability of membership).

    Args:
        embeddings: (B, D) float.
        scores: (B,) in [0, 1]; NaN = unlabelled.
        patient_ids: (B,) integer.
        tau: score-gap threshold in [0, 1].
        margin: cosine-distance margin of the negatives, in (0, 2].
        pairs: which pairs count: ``inter`` (the paper), ``intra`` or ``all``.
        score_noise: sd of one score's noise in normalised units (0 = the paper's hard
            threshold); beyond the paper.

    Returns:
        PairLoss with the positive / negative pair counts (of the observed partition).
    """
    _check_inputs(embeddings, scores, patient_ids)
    with _full_precision(embeddings) as x:
        chosen = _pairs(scores, patient_ids, x.dtype, pairs)
        dist = _cosine_distance(x)
        p_pos, p_neg, pos, neg = _partition_weights(chosen, tau, score_noise)
        loss = _weighted_mean(dist.square(), p_pos) + _weighted_mean(
            F.relu(margin - dist).square(), p_neg
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
    pairs: PairSet = "inter",
    score_noise: float = 0.0,
) -> PairLoss:
    """LEARNER's weighted contrastive loss (our reconstruction of the paper's loss).

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
        weighting: ``linear``, ``exp``, ``log`` or ``rank`` (see :func:`score_weight`).
        alpha: curvature of the ``exp`` / ``log`` weightings (> 0).
        partition: ``threshold`` or ``soft``.
        pairs: which pairs count: ``inter`` (the paper), ``intra`` or ``all``.
        score_noise: ``threshold`` only, beyond the paper: sd of one score's noise in
            normalised units; a pair weighs ``(1 - w) p`` in the positive term and ``w (1 - p)``
            in the negative one, ``p`` the probability that its true gap is within ``tau``
            (:func:`_partition_weights`), so a gap that noise could explain is trusted less.
            0 = the paper.

    Returns:
        PairLoss; for ``soft`` both counts are the number of valid pairs.
    """
    _check_inputs(embeddings, scores, patient_ids)
    if partition not in ("threshold", "soft"):
        raise ValueError(f"partition must be one of 'threshold', 'soft', got {partition!r}")
    if score_noise != 0 and partition != "threshold":
        raise ValueError("score_noise needs partition 'threshold' (the soft partition has no tau)")
    with _full_precision(embeddings) as x:
        chosen = _pairs(scores, patient_ids, x.dtype, pairs)
        dist = _cosine_distance(x)
        w = score_weight(chosen.delta, weighting, alpha, chosen.valid)
        attract = dist.square()
        repel = F.relu(margin - dist).square()
        if partition == "threshold":
            p_pos, p_neg, pos, neg = _partition_weights(chosen, tau, score_noise)
            loss = _weighted_mean(attract, (1.0 - w) * p_pos) + _weighted_mean(repel, w * p_neg)
            return PairLoss(loss, _count(pos), _count(neg))
        per_pair = torch.where(chosen.valid, (1.0 - w) * attract + w * repel, 0.0)
        loss = _safe_div(per_pair.sum(), chosen.valid.sum())
        n_valid = _count(chosen.valid)
    return PairLoss(loss, n_valid, n_valid.clone())


def yaware_loss(
    embeddings: Tensor,
    scores: Tensor,
    patient_ids: Tensor,
    *,
    temperature: float = 0.1,
    sigma: float = 0.1,
    pairs: PairSet = "inter",
) -> PairLoss:
    """y-Aware InfoNCE (Dufumier et al. 2021) over inter-patient pairs (or ``pairs``).

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
        pairs: which pairs count: ``inter`` (the paper), ``intra`` or ``all``.

    Returns:
        PairLoss; both counts are the number of valid pairs (each pair attracts by its kernel
        weight and is a negative in the denominator).
    """
    _check_inputs(embeddings, scores, patient_ids)
    with _full_precision(embeddings) as x:
        chosen = _pairs(scores, patient_ids, x.dtype, pairs)
        fill = torch.finfo(x.dtype).min
        z = F.normalize(x, dim=1, eps=_NORM_EPS)
        logits = (z @ z.T / temperature).masked_fill(~chosen.valid, fill)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        log_kernel = (-chosen.delta.square() / (2.0 * sigma**2)).masked_fill(~chosen.valid, fill)
        # Rows without a valid pair get a uniform softmax here; they are dropped below.
        kernel = torch.softmax(log_kernel, dim=1)
        per_anchor = -torch.where(chosen.valid, kernel * log_prob, 0.0).sum(dim=1)
        anchors = chosen.valid.any(dim=1)
        loss = _safe_div(torch.where(anchors, per_anchor, 0.0).sum(), anchors.sum())
        n_valid = _count(chosen.valid)
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

    Vectorised without the (B, B, B) mask (1 GB at B = 1024), in O(B^2) memory: each anchor's
    candidates are sorted by ``Delta`` descending (:func:`_rnc_plan`), so the denominator of
    ``j`` is a prefix sum read at the last candidate whose ``Delta`` ties with ``Delta_ij``;
    :class:`_RankNContrast` computes it and its gradient in float64.

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
        plan = _rnc_plan(scores, patient_ids, x.dtype)
        loss: Tensor = _RankNContrast.apply(x.index_select(0, plan.rows), plan, temperature)
        n_valid = torch.tensor(plan.n_valid // 2, device=x.device)
    return PairLoss(loss, n_valid, n_valid.clone())


class _RncPlan(NamedTuple):
    """Which rnc terms enter which denominators: everything that depends on the scores only.

    Rows and columns are the labelled scans sorted by score; ``sorted`` below means each row's
    candidates in order of ``Delta`` descending, the invalid ones (same patient, the anchor
    itself) last. Flat positions index the (n, n) sorted layout row by row.

    Attributes:
        rows: (n,) int64, the labelled rows of the batch, by score.
        order: (n, n) int64, ``order[i, p]``: the candidate at sorted position ``p`` of row ``i``.
        ends: (G,) int64, flat positions that end a group of equal ``Delta`` (ties), ascending.
        size: (G,) float64, each group's number of valid terms (0 for the invalid group).
        invalid: flat positions of the invalid candidates.
        n_valid: the number of valid ordered pairs.
    """

    rows: Tensor
    order: Tensor
    ends: Tensor
    size: Tensor
    invalid: Tensor
    n_valid: int


def _rnc_plan(scores: Tensor, patient_ids: Tensor, dtype: torch.dtype) -> _RncPlan:
    """The sort and the tie groups of :func:`rnc_loss` (no gradient flows through scores).

    Sorting the rows by score first makes every row of ``Delta`` fall up to the anchor and
    rise after it, two sorted runs that a stable sort merges ~3x faster than a row in
    arbitrary order. Keys are sorted as the integers of the same bits: for floats >= 0 their
    order is the value's, the invalid key -1 sorts below them all (sign bit), ties stay ties.
    """
    y = scores.to(dtype)
    n = int((~torch.isnan(y)).sum())
    rows = y.argsort(stable=True)[:n]  # NaN sorts last
    y, pid = y[rows], patient_ids[rows]
    key = (y[:, None] - y[None, :]).abs_().masked_fill_(pid[:, None] == pid[None, :], -1.0)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    key_sorted, order = key.view(bits).sort(dim=1, descending=True, stable=True)
    is_end = torch.ones_like(key_sorted, dtype=torch.bool)
    torch.ne(key_sorted[:, 1:], key_sorted[:, :-1], out=is_end[:, :-1])
    ends = is_end.view(-1).nonzero().squeeze(1)
    size = torch.empty(ends.shape, dtype=torch.float64, device=ends.device)
    torch.sub(ends[1:], ends[:-1], out=size[1:])
    if n:
        size[0] = ends[0] + 1
        # A row's invalid candidates are its last group.
        last_group = is_end.sum(dim=1).cumsum(0) - 1
        size[last_group[key_sorted[:, -1] < 0]] = 0.0
    invalid = (key_sorted < 0).view(-1).nonzero().squeeze(1)
    return _RncPlan(rows, order, ends, size, invalid, n * n - invalid.numel())


# exp() of float64 is normal down to -708: with distances / temperature beyond this the
# denominators are summed as log-sum-exps instead (exact at any spread, 5x slower on a CPU).
_MAX_EXP_SPREAD = 700.0


class _RankNContrast(torch.autograd.Function):
    """Sum of the rnc terms over the valid pairs / their number, with an analytic backward.

    With the candidates of every row in sorted order and ``e = exp(s)``, the denominator of
    tie group ``G`` is the prefix sum ``P_G`` up to its end, so the loss is
    ``(sum_G c_G log P_G - sum_valid s) / N`` (``c_G`` valid terms in group ``G``). Its
    gradient in ``s_p`` is ``e_p sum_{G ending at or after p} c_G / P_G - [p valid]``: a
    suffix sum along the sorted rows, then scattered back to the pairs and through the
    distances, ``dL/dx_i = sum_j W_ij (x_i - x_j)`` with ``W = (dL/dd + dL/dd^T) / d``
    (0 where ``d == 0``, as ``torch.cdist``).

    Everything runs in float64 (sums of positive terms: relative rounding ~n * 1e-16). By
    hand rather than by autograd so that the backward needs no (B, B) passes through the
    sort's gather and the cumulative sum beyond these, and reuses its (B, B) buffers.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, plan: _RncPlan, temperature: float) -> Tensor:
        ctx.plan, ctx.temperature, ctx.dtype = plan, temperature, x.dtype
        if plan.n_valid == 0:
            ctx.shape = x.shape
            return x.new_zeros(())
        x64 = x.double()
        dist, zero_i, zero_j = _pairwise_distance(x64)
        dist_sorted = dist.gather(1, plan.order)
        # Invalid candidates are few (a patient's own other scans): subtract them.
        valid_sum = dist_sorted.sum() - dist_sorted.view(-1)[plan.invalid].sum()
        ctx.log_domain = not bool(dist.max() <= _MAX_EXP_SPREAD * temperature)
        sim_sorted = dist_sorted.mul_(-1.0 / temperature)
        ends = plan.ends
        if ctx.log_domain:
            terms = sim_sorted
            log_den = torch.logcumsumexp(terms, dim=1).view(-1).index_select(0, ends)
            total = torch.dot(plan.size, log_den)
            weights = plan.size.log().sub_(log_den)  # log(size_G / P_G)
        else:  # s <= 0: exp(s) in (exp(-700), 1]
            terms = sim_sorted.exp_()
            prefix = terms.cumsum(dim=1).view(-1)
            den = prefix.index_select(0, ends)
            total = torch.dot(plan.size, torch.log(den, out=prefix[: ends.numel()]))
            weights = den.reciprocal_().mul_(plan.size)  # size_G / P_G
        total = total + valid_sum / temperature
        ctx.save_for_backward(x64, dist, terms, weights, zero_i, zero_j)
        return (total / plan.n_valid).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        plan: _RncPlan = ctx.plan
        if plan.n_valid == 0:
            return grad.new_zeros(ctx.shape, dtype=ctx.dtype), None, None
        x64, dist, terms, weights, zero_i, zero_j = ctx.saved_tensors
        n = dist.shape[0]
        # The gradient in s_p: terms_p times the suffix sum of the group weights from p on,
        # a prefix sum along the reversed rows. Two (n, n) buffers take turns (fresh ones
        # cost page faults); gather with a reversed column index reverses a row.
        backwards = torch.arange(n - 1, -1, -1, device=dist.device).expand(n, n)
        a = torch.full_like(dist, -math.inf if ctx.log_domain else 0.0)
        b = torch.empty_like(dist)
        if ctx.log_domain:
            a.view(-1).index_copy_(0, plan.ends, weights)
            torch.logcumsumexp(torch.gather(a, 1, backwards, out=b), dim=1, out=a)
            grad_sorted = torch.gather(a, 1, backwards, out=b).add_(terms).exp_()
        else:
            a.view(-1).index_copy_(0, plan.ends, weights)
            torch.cumsum(torch.gather(a, 1, backwards, out=b), dim=1, out=a)
            grad_sorted = torch.gather(a, 1, backwards, out=b).mul_(terms)
        # -1 for the -s of each valid term; invalid candidates (suffix 0) get no gradient.
        grad_sorted.sub_(1.0).view(-1).index_fill_(0, plan.invalid, 0.0)
        grad_sim = a.scatter_(1, plan.order, grad_sorted)
        w = b.copy_(grad_sim.T).add_(grad_sim).div_(dist)
        del a, grad_sim
        w.diagonal().zero_()
        w[zero_i, zero_j] = 0.0
        out = (x64 * w.sum(dim=1, keepdim=True)).sub_(w @ x64)
        scale = grad.double() * (-1.0 / (ctx.temperature * plan.n_valid))
        return out.mul_(scale).to(ctx.dtype), None, None


# Pairs whose squared distance is below this fraction of |x_i|^2 + |x_j|^2 are recomputed
# from their difference: there the float64 matmul form's cancellation error (~1e-16 of the
# norms) would reach float32's resolution of the distance.
_CANCELLATION_GUARD = 1e-6
# Above this many such pairs per row (collapsed embeddings), the exact form for all pairs.
_MAX_CLOSE_PER_ROW = 8
# The Gram product in block rows of at least this many rows (see _pairwise_distance).
_GRAM_BLOCK_ROWS = 128


def _pairwise_distance(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(n, D) float64 -> (n, n) L2 distances, and the off-diagonal pairs at distance 0.

    ``|a|^2 + |b|^2 - 2 a.b`` with the Gram product in float64, so that its cancellation
    error stays near 1e-16 of the squared norms, far below a float32 distance except for
    near-coincident pairs, which are recomputed from ``x_i - x_j`` (the diagonal is 0). No
    (n, n, D) tensor. The product runs by block rows of the upper triangle, mirrored below:
    torch's matrix product does not use the symmetry, and this saves ~35% of its cost.
    """
    n = x.shape[0]
    sq = x.square().sum(dim=1)
    d2 = torch.empty(n, n, dtype=x.dtype, device=x.device)
    step = max(_GRAM_BLOCK_ROWS, -(-n // 4))
    for a in range(0, n, step):
        upper = d2[a : a + step, a:]
        torch.addmm(sq[a : a + step, None], x[a : a + step], x[a:].T, alpha=-2.0, out=upper)
        upper.add_(sq[a:])
        d2[a + step :, a : a + step] = upper[:, step:].T
    d2.diagonal().zero_()
    # A superset of the pairs below the guard, by rows, then the exact test on those.
    close = d2 <= (_CANCELLATION_GUARD * (sq + sq.max()))[:, None]
    close.diagonal().zero_()
    i, j = close.nonzero(as_tuple=True)
    keep = d2[i, j] <= _CANCELLATION_GUARD * (sq[i] + sq[j])
    i, j = i[keep], j[keep]
    if i.numel() <= _MAX_CLOSE_PER_ROW * n:
        d2[i, j] = (x[i] - x[j]).square().sum(dim=1)
        dist = d2.sqrt_()
    else:
        dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
        dist.diagonal().zero_()
        i, j = (dist == 0).nonzero(as_tuple=True)
    zero = (dist[i, j] == 0) & (i != j)
    return dist, i[zero], j[zero]


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
