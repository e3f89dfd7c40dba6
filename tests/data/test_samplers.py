"""PatientBatchSampler: coverage, distinct patients, score spread, determinism, len."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from learner.data.samplers import PatientBatchSampler


def cohort(
    patients: int, scans: int, seed: int = 0, nan_fraction: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Patient codes (patients x scans) and scores near a per-patient level."""
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(patients), scans)
    scores = np.repeat(rng.uniform(0, 1, patients), scans) + rng.normal(0, 0.05, codes.size)
    scores[rng.random(codes.size) < nan_fraction] = np.nan
    return codes, scores


def flatten(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


@pytest.mark.parametrize(("patients", "scans", "batch_size"), [(20, 3, 8), (7, 5, 4), (3, 1, 8)])
def test_every_scan_once_per_epoch(patients: int, scans: int, batch_size: int) -> None:
    codes, scores = cohort(patients, scans)
    sampler = PatientBatchSampler(codes, scores, batch_size, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(flatten(batches)) == list(range(codes.size))
        assert len(batches) == len(sampler)
        assert all(len(b) == batch_size for b in batches[:-1])


def test_no_patient_twice_in_a_batch_20x3_batch8() -> None:
    codes, scores = cohort(20, 3)
    sampler = PatientBatchSampler(codes, scores, 8, seed=0)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        for batch in sampler:
            assert len(set(codes[batch])) == len(batch)


def test_unequal_scan_counts_keep_patients_distinct_while_possible() -> None:
    # One patient with 10 scans and 10 patients with 1: batch 2 can always pair the big
    # patient with a new one; naive round-robin would end with [A, A] batches.
    codes = np.array([0] * 10 + list(range(1, 11)))
    scores = np.linspace(0, 1, codes.size)
    sampler = PatientBatchSampler(codes, scores, 2, seed=3)
    batches = list(sampler)
    assert sorted(flatten(batches)) == list(range(20))
    assert all(len(set(codes[b])) == len(b) for b in batches)


def test_repeats_only_when_too_few_patients_remain() -> None:
    # 3 patients x 4 scans, batch 5: at most 3 distinct patients fit; each batch must use
    # all patients that still have scans before repeating one.
    codes, scores = cohort(3, 4)
    sampler = PatientBatchSampler(codes, scores, 5, seed=0)
    remaining = {p: 4 for p in range(3)}
    for batch in sampler:
        available = sum(1 for n in remaining.values() if n > 0)
        assert len(set(codes[batch])) == min(len(batch), available)
        for p in codes[batch]:
            remaining[int(p)] -= 1
    assert all(n == 0 for n in remaining.values())


def test_batches_span_the_score_range() -> None:
    # 64 single-scan patients, batch 8: every batch takes one scan from each score octile.
    codes = np.arange(64)
    scores = np.random.default_rng(0).permutation(64).astype(float)
    sampler = PatientBatchSampler(codes, scores, 8, seed=5)
    octile = (scores // 8).astype(int)
    for batch in sampler:
        assert sorted(octile[batch]) == list(range(8))


def test_score_spread_beats_random_batches() -> None:
    codes, scores = cohort(40, 3, seed=2)
    sampler = PatientBatchSampler(codes, scores, 10, seed=0)
    spread = np.mean([np.ptp(scores[b]) for b in sampler if len(b) == 10])
    rng = np.random.default_rng(0)
    random_spread = np.mean(
        [np.ptp(scores[b]) for b in rng.permutation(codes.size).reshape(-1, 10)]
    )
    assert spread > random_spread


def test_reproducible_and_different_across_epochs() -> None:
    codes, scores = cohort(20, 3)
    a = PatientBatchSampler(codes, scores, 8, seed=7)
    b = PatientBatchSampler(codes, scores, 8, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    other_seed = PatientBatchSampler(codes, scores, 8, seed=8)
    other_seed.set_epoch(2)
    assert list(a) != list(other_seed)


def test_unlabelled_scans_are_included() -> None:
    codes, scores = cohort(12, 2, nan_fraction=0.4)
    assert np.isnan(scores).any()
    sampler = PatientBatchSampler(codes, scores, 5, seed=0)
    batches = list(sampler)
    assert sorted(flatten(batches)) == list(range(codes.size))
    assert all(len(set(codes[b])) == len(b) for b in batches)


@pytest.mark.parametrize(
    ("n", "batch_size", "drop_last", "expected"),
    [
        (60, 8, False, 8),
        (60, 8, True, 7),
        (64, 8, True, 8),
        (0, 4, False, 0),
        (3, 8, True, 0),
    ],
)
def test_len_matches_iteration(n: int, batch_size: int, drop_last: bool, expected: int) -> None:
    codes = np.arange(n) // 2
    sampler = PatientBatchSampler(codes, np.zeros(n), batch_size, seed=0, drop_last=drop_last)
    batches = list(sampler)
    assert len(sampler) == len(batches) == expected
    if drop_last:
        assert all(len(b) == batch_size for b in batches)


def test_works_as_dataloader_batch_sampler() -> None:
    codes, scores = cohort(6, 2)
    sampler = PatientBatchSampler(codes, scores, 4, seed=0)
    loader = DataLoader(list(range(codes.size)), batch_sampler=sampler)
    seen = [int(i) for batch in loader for i in batch]
    assert sorted(seen) == list(range(codes.size))


def test_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="one entry per scan"):
        PatientBatchSampler(np.arange(3), np.zeros(4), 2, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        PatientBatchSampler(np.arange(3), np.zeros(3), 0, seed=0)


def test_ddp_ranks_split_each_global_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under DDP every rank takes a disjoint share of the same global batch, with the same
    number of steps, and the global batch keeps at most one scan per patient."""
    from learner.data import samplers

    codes = np.repeat(np.arange(20), 3)
    scores = np.random.default_rng(0).random(codes.size)
    per_rank = {}
    for rank in (0, 1):
        monkeypatch.setattr(samplers, "_replicas", lambda rank=rank: (2, rank))
        sampler = PatientBatchSampler(codes, scores, 4, seed=3)
        sampler.set_epoch(1)
        per_rank[rank] = list(sampler)
        assert len(sampler) == len(per_rank[rank])
    assert len(per_rank[0]) == len(per_rank[1])
    seen: list[int] = []
    for b0, b1 in zip(per_rank[0], per_rank[1], strict=True):
        assert b0 and b1 and not set(b0) & set(b1)
        global_batch = b0 + b1
        assert len(set(codes[global_batch])) == len(global_batch)
        seen += global_batch
    assert len(seen) == len(set(seen))
    assert len(seen) >= codes.size - 1  # at most a too-small last global batch is dropped
