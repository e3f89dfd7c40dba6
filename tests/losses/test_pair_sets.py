"""objective.pairs: which pairs the pair term compares (inter-patient as in the paper, a
patient's own scans, or both), in the losses, the config, the cache key and the sampler."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from learner.config import Config
from learner.data.samplers import PatientBatchSampler
from learner.errors import ConfigError
from learner.evaluate.verdict import pair_batch_counts
from learner.losses import build_objective
from learner.losses import functional as fn
from learner.provenance import pretrain_key

NAN = float("nan")
# Three patients, two of them with three scans; one unlabelled scan (in no pair).
PID = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
SCORES = torch.tensor([0.10, 0.40, 0.45, 0.80, 0.20, NAN, 0.55, 0.60], dtype=torch.float64)


def embeddings(seed: int = 0) -> torch.Tensor:
    return torch.randn(8, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def chosen_pairs(pairs: str) -> list[tuple[int, int]]:
    keep = []
    for i, j in itertools.combinations(range(8), 2):
        if math.isnan(SCORES[i]) or math.isnan(SCORES[j]):
            continue
        same = bool(PID[i] == PID[j])
        if pairs == "all" or (pairs == "intra") == same:
            keep.append((i, j))
    return keep


def cosine(u: torch.Tensor, i: int, j: int) -> float:
    return 1.0 - float(torch.nn.functional.cosine_similarity(u[i], u[j], dim=0))


@pytest.mark.parametrize("pairs", ["inter", "intra", "all"])
def test_contrastive_and_soft_weighted_match_a_loop_over_the_chosen_pairs(pairs: str) -> None:
    u, tau, margin = embeddings(), 0.12, 0.5
    keep = chosen_pairs(pairs)
    pos = [(i, j) for i, j in keep if abs(SCORES[i] - SCORES[j]) <= tau]
    neg = [(i, j) for i, j in keep if abs(SCORES[i] - SCORES[j]) > tau]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    expected = mean([cosine(u, i, j) ** 2 for i, j in pos]) + mean(
        [max(margin - cosine(u, i, j), 0.0) ** 2 for i, j in neg]
    )
    out = fn.contrastive_loss(u, SCORES, PID, tau=tau, margin=margin, pairs=pairs)
    assert (int(out.n_pos), int(out.n_neg)) == (len(pos), len(neg))
    assert float(out.loss) == pytest.approx(expected, rel=1e-10)

    soft = []
    for i, j in keep:
        w, d = float(abs(SCORES[i] - SCORES[j])), cosine(u, i, j)
        soft.append((1 - w) * d**2 + w * max(margin - d, 0.0) ** 2)
    out = fn.weighted_contrastive_loss(u, SCORES, PID, margin=margin, partition="soft", pairs=pairs)
    assert int(out.n_pos) == len(keep)
    assert float(out.loss) == pytest.approx(mean(soft), rel=1e-10)


def test_pair_sets_partition_the_pairs_and_inter_is_the_default() -> None:
    u = embeddings(1)
    counts = {p: int(fn.yaware_loss(u, SCORES, PID, pairs=p).n_pos) for p in fn.PAIR_SETS}
    assert counts["inter"] + counts["intra"] == counts["all"] == len(chosen_pairs("all"))
    assert counts["intra"] == 5  # (0,1) (0,2) (1,2) (3,4) (6,7); scan 5 is unlabelled
    for loss in (fn.contrastive_loss, fn.weighted_contrastive_loss, fn.yaware_loss):
        default, inter = loss(u, SCORES, PID), loss(u, SCORES, PID, pairs="inter")
        assert torch.equal(default.loss, inter.loss)
    with pytest.raises(ValueError, match="pairs"):
        fn.contrastive_loss(u, SCORES, PID, pairs="within")


def test_objectives_and_config_validate_pairs() -> None:
    assert build_objective("weighted", pairs="all").hparams["pairs"] == "all"
    with pytest.raises(ConfigError, match="pairs"):
        build_objective("contrastive", pairs="within")
    with pytest.raises(ValueError, match="rnc ranks inter-patient pairs only"):
        Config.model_validate({"objective": {"name": "rnc", "pairs": "intra"}})


def test_the_default_stays_out_of_the_cache_key_and_any_other_value_enters_it() -> None:
    """Cells cached before objective.pairs existed were trained with inter-patient pairs
    exactly as the default trains now, so the default leaves their key as it was."""
    inter = pretrain_key(Config(), "manifest", "split")
    assert not any(k.startswith("objective.pairs") for k in inter)
    every = pretrain_key(Config.model_validate({"objective": {"pairs": "all"}}), "m", "s")
    assert every["objective.pairs"] == "all"


def test_grouped_sampler_keeps_two_visits_of_a_patient_together() -> None:
    rng = np.random.default_rng(0)
    codes = np.repeat(np.arange(12), 4)  # 12 patients x 2 visits x 2 zones
    visits = np.tile([0, 0, 1, 1], 12)
    scores = np.repeat(rng.uniform(0, 1, 12), 4) + rng.normal(0, 0.05, 48)
    sampler = PatientBatchSampler(codes, scores, 8, seed=3, group=2, visit_codes=visits)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(48))
        assert all(len(b) <= 8 for b in batches)
        for batch in batches:
            for a, b in zip(batch[::2], batch[1::2], strict=False):
                assert codes[a] == codes[b] and visits[a] != visits[b]
    again = PatientBatchSampler(codes, scores, 8, seed=3, group=2, visit_codes=visits)
    again.set_epoch(1)
    assert list(again) == batches
    with pytest.raises(ValueError, match="group"):
        PatientBatchSampler(codes, scores, 8, seed=0, group=9)


def test_pretraining_with_intra_pairs_puts_a_patients_scans_together(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the paper's sampler (patients distinct per batch) an intra-patient pair term
    sees hardly any pair; with pairs: intra the sampler gives it pairs in every batch."""
    from learner.train import pretrain as pretrain_module

    tiny_config.train.epochs = 1
    tiny_config.objective.pairs = "intra"
    pretrain_module.pretrain(tiny_config, tmp_path / "grouped", progress=False)
    grouped = pair_batch_counts(tmp_path / "grouped")

    class Distinct(PatientBatchSampler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "group": 1})

    monkeypatch.setattr(pretrain_module, "PatientBatchSampler", Distinct)
    pretrain_module.pretrain(tiny_config, tmp_path / "distinct", progress=False)
    distinct = pair_batch_counts(tmp_path / "distinct")
    assert grouped is not None and distinct is not None
    batches, no_pos, _ = grouped
    assert batches > 0 and no_pos == 0  # a patient's two scans in every batch
    batches, no_pos, no_neg = distinct
    assert no_neg == batches and no_pos >= batches - 1  # at most the last batch repeats


def test_rank_weights_are_the_gaps_ranks_among_the_batchs_pairs() -> None:
    """weighting: rank (adaptive): w = rank of the gap among the unordered valid pairs,
    ties averaged, scaled to [0, 1]; the soft weighted loss then matches a loop with it."""
    from scipy.stats import rankdata

    u, margin = embeddings(2), 0.5
    keep = chosen_pairs("inter")
    gaps = [abs(float(SCORES[i] - SCORES[j])) for i, j in keep]
    ranks = (rankdata(gaps, method="average") - 1) / (len(gaps) - 1)
    valid = torch.zeros(8, 8, dtype=torch.bool)
    delta = torch.zeros(8, 8, dtype=torch.float64)
    for (i, j), g in zip(keep, gaps, strict=True):
        valid[i, j] = valid[j, i] = True
        delta[i, j] = delta[j, i] = g
    w = fn.score_weight(delta, "rank", valid=valid)
    for (i, j), r in zip(keep, ranks, strict=True):
        assert float(w[i, j]) == pytest.approx(r) and float(w[j, i]) == pytest.approx(r)
    assert float(w[~valid].abs().sum()) == 0.0
    expected = sum(
        (1 - r) * cosine(u, i, j) ** 2 + r * max(margin - cosine(u, i, j), 0.0) ** 2
        for (i, j), r in zip(keep, ranks, strict=True)
    ) / len(keep)
    out = fn.weighted_contrastive_loss(
        u, SCORES, PID, margin=margin, partition="soft", weighting="rank"
    )
    assert float(out.loss) == pytest.approx(expected, rel=1e-10)
    # The same weights whatever the scale of the gaps (halving is exact in binary): only
    # their order matters.
    halved = fn.weighted_contrastive_loss(
        u, 0.5 * SCORES, PID, margin=margin, partition="soft", weighting="rank"
    )
    assert float(halved.loss) == pytest.approx(float(out.loss), rel=1e-12)
    with pytest.raises(ValueError, match="valid pairs"):
        fn.score_weight(delta, "rank")
    assert build_objective("weighted", weighting="rank").hparams["weighting"] == "rank"
