"""objective.score_noise: the noise-aware threshold partition (beyond the paper): a pair weighs
in the positive term with the probability that its true gap is within tau and in the negative
term with the rest, given Gaussian noise of known sd on each score."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import norm

from learner.config import Config
from learner.errors import ConfigError
from learner.losses import build_objective
from learner.losses import functional as fn
from learner.provenance import pretrain_key

PID = torch.tensor([0, 1, 2, 3, 4])
SCORES = torch.tensor([0.10, 0.18, 0.30, 0.62, 0.95], dtype=torch.float64)
U = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def cosine(i: int, j: int) -> float:
    return 1.0 - float(torch.nn.functional.cosine_similarity(U[i], U[j], dim=0))


def p_within(gap: float, tau: float, noise: float) -> float:
    """P(|true gap| <= tau) when the observed gap is the true one plus N(0, 2 noise^2)."""
    s = noise * math.sqrt(2)
    return float(norm.cdf((tau - gap) / s) - norm.cdf((-tau - gap) / s))


def test_weighted_loss_matches_a_loop_with_membership_probabilities() -> None:
    tau, margin, noise = 0.1, 0.5, 0.05
    attract, attract_w, repel, repel_w = 0.0, 0.0, 0.0, 0.0
    for i, j in itertools.combinations(range(5), 2):
        gap, d = float(abs(SCORES[i] - SCORES[j])), cosine(i, j)
        p = p_within(gap, tau, noise)
        attract += (1 - gap) * p * d**2
        attract_w += (1 - gap) * p
        repel += gap * (1 - p) * max(margin - d, 0.0) ** 2
        repel_w += gap * (1 - p)
    out = fn.weighted_contrastive_loss(U, SCORES, PID, tau=tau, margin=margin, score_noise=noise)
    assert float(out.loss) == pytest.approx(attract / attract_w + repel / repel_w, rel=1e-10)
    # The logs keep counting the observed partition: one gap (0.08) is within tau.
    assert (int(out.n_pos), int(out.n_neg)) == (1, 9)


def test_noise_moves_weight_across_the_threshold_and_vanishing_noise_is_the_paper() -> None:
    paper = fn.weighted_contrastive_loss(U, SCORES, PID)
    almost = fn.weighted_contrastive_loss(U, SCORES, PID, score_noise=1e-9)
    assert torch.equal(
        paper.loss, fn.weighted_contrastive_loss(U, SCORES, PID, score_noise=0.0).loss
    )
    assert float(almost.loss) == pytest.approx(float(paper.loss), rel=1e-9)
    noisy = fn.weighted_contrastive_loss(U, SCORES, PID, score_noise=0.1)
    assert abs(float(noisy.loss) - float(paper.loss)) > 1e-3
    # The gap 0.08 sits just inside tau = 0.1: with noise sd 0.05 it is a positive with
    # probability about 0.61, not 1; a gap of 0.85 stays a negative for certain.
    assert p_within(0.08, 0.1, 0.05) == pytest.approx(0.61, abs=0.01)
    assert p_within(0.85, 0.1, 0.05) < 1e-12
    c_paper = fn.contrastive_loss(U, SCORES, PID)
    c_noisy = fn.contrastive_loss(U, SCORES, PID, score_noise=0.05)
    assert (int(c_noisy.n_pos), int(c_noisy.n_neg)) == (int(c_paper.n_pos), int(c_paper.n_neg))
    assert float(c_noisy.loss) != pytest.approx(float(c_paper.loss), rel=1e-6)


def test_score_noise_is_validated_in_the_objective_and_the_config() -> None:
    assert build_objective("contrastive", score_noise=0.05).hparams["score_noise"] == 0.05
    with pytest.raises(ConfigError, match="score_noise"):
        build_objective("weighted", score_noise=0.05, partition="soft")
    with pytest.raises(ConfigError, match="score_noise"):
        build_objective("weighted", score_noise=1.5)
    with pytest.raises(ValueError, match="score_noise"):
        Config.model_validate({"objective": {"name": "rnc", "score_noise": 0.05}})
    with pytest.raises(ValueError, match="score_noise"):
        fn.weighted_contrastive_loss(U, SCORES, PID, partition="soft", score_noise=0.05)


def test_zero_noise_stays_out_of_the_cache_key_and_any_other_value_enters_it() -> None:
    """Cells cached before score_noise existed used the hard partition, exactly what
    score_noise 0 computes, so 0 leaves their key as it was."""
    paper = pretrain_key(Config(), "manifest", "split")
    assert "objective.score_noise" not in paper
    noisy = pretrain_key(Config.model_validate({"objective": {"score_noise": 0.05}}), "m", "s")
    assert noisy["objective.score_noise"] == 0.05
