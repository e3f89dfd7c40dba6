"""Batches for pair losses: one scan per patient, scores spread across the batch.

The pair objectives compare scans of *different* patients; two scans of one patient in a
batch only waste a slot. :class:`PatientBatchSampler` therefore builds each epoch as follows
(deterministic from ``(seed, epoch)``):

1. Each patient's scans are shuffled and dealt into rounds aligned at the end: a patient with
   n scans appears in the last n rounds, once per round. Patients with many scans thus start
   early, and the pool of distinct patients lasts as long as possible.
2. Within a round, patients are ordered by a stratified interleave over score quantiles:
   ``batch_size`` strata, visited in turn, so any ``batch_size`` consecutive places take about
   one scan from each stratum and every batch spans the score range. Unlabelled scans (NaN)
   are placed in a random stratum.
3. Batches are cut greedily from this stream; a scan whose patient is already in the batch is
   deferred to the next batch. Only when every patient with scans left is already in the
   batch does a patient appear twice.

With ``group=k`` > 1 (for ``objective.pairs: intra | all``, whose pair term needs a patient's
own scans side by side) each patient's scans are dealt, alternating between its visits, into
units of up to k scans; units, not scans, are stratified by their mean score rank and packed
whole into batches, so a batch holds about ``batch_size / k`` patients, k scans each, from
different visits where the patient has them.

Example:
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> codes = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # the patient of each scan
    >>> scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    >>> sampler = PatientBatchSampler(codes, scores, batch_size=4, seed=0)
    >>> loader = DataLoader(TensorDataset(torch.as_tensor(scores)), batch_sampler=sampler)
    >>> sampler.set_epoch(1)  # each epoch, before iterating
    >>> [sorted(codes[batch].tolist()) for batch in sampler]  # four patients per batch
    [[0, 1, 2, 3], [0, 1, 2, 3]]
    >>> [len(y) for (y,) in loader]
    [4, 4]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class PatientBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices: each scan once per epoch, patients distinct per batch.

    Args:
        patient_codes: (N,) integer patient code of each scan.
        scores: (N,) score of each scan (any monotone scale), NaN = unlabelled.
        batch_size: scans per batch.
        seed: base seed; the epoch's order depends on (seed, epoch) only.
        drop_last: drop the final incomplete batch.
        group: scans of one patient kept together in a batch (1: patients distinct).
        visit_codes: (N,) visit of each scan; with ``group`` > 1 a unit alternates visits.

    Raises:
        ValueError: mismatched lengths or a batch size below 1.
    """

    def __init__(
        self,
        patient_codes: np.ndarray,
        scores: np.ndarray,
        batch_size: int,
        *,
        seed: int,
        drop_last: bool = False,
        group: int = 1,
        visit_codes: np.ndarray | None = None,
    ) -> None:
        self.patient_codes = np.asarray(patient_codes).astype(np.int64).ravel()
        self.scores = np.asarray(scores, dtype=np.float64).ravel()
        if self.patient_codes.shape != self.scores.shape:
            raise ValueError(
                f"patient_codes ({self.patient_codes.size}) and scores ({self.scores.size}) "
                "must have one entry per scan"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if group < 1 or group > batch_size:
            raise ValueError(f"group must be in [1, batch_size={batch_size}], got {group}")
        self.group = int(group)
        self.visit_codes = (
            np.zeros(self.scores.size, dtype=np.int64)
            if visit_codes is None
            else np.asarray(visit_codes).astype(np.int64).ravel()
        )
        if self.visit_codes.shape != self.scores.shape:
            raise ValueError("visit_codes must have one entry per scan")
        self.batch_size = int(batch_size)
        self._packed: tuple[int, int, list[list[int]]] | None = None
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        world, _ = _replicas()
        if world > 1:
            return len(self._rank_batches())
        if self.group > 1:
            batches = self.batches(self.epoch)
            short = bool(batches) and len(batches[-1]) < self.batch_size
            return len(batches) - int(self.drop_last and short)
        n = self.scores.size
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        world, _ = _replicas()
        if world > 1:
            yield from self._rank_batches()
            return
        batches = self.batches(self.epoch)
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        yield from batches

    def _rank_batches(self) -> list[list[int]]:
        """Under DDP: global batches of ``batch_size * world`` scans (one per patient where
        possible), each rank taking every world-th scan, so the pair losses, which gather
        across ranks, see exactly the global batch. The global batches are those one process
        with ``batch_size * world`` would cut (same stream, same strata), so a DDP run and a
        single-process run of the global batch size train on the same batches. Global
        batches too small to give every rank a scan are dropped so that all ranks run the
        same number of steps; ``drop_last`` drops a short last global batch."""
        world, rank = _replicas()
        size = self.batch_size * world
        batches = self.batches(self.epoch, size)
        if self.drop_last and batches and len(batches[-1]) < size:
            batches = batches[:-1]
        return [b[rank::world] for b in batches if len(b) >= world]

    def batches(self, epoch: int, batch_size: int | None = None) -> list[list[int]]:
        """Every batch of ``epoch`` (the last may be short; ``drop_last`` is not applied).

        ``batch_size`` defaults to the sampler's; the global batch size under DDP.
        """
        size = self.batch_size if batch_size is None else batch_size
        if self.group > 1:
            # __len__ needs the packed batches too: pack each epoch once.
            if self._packed is None or self._packed[:2] != (epoch, size):
                rng = np.random.default_rng([self.seed, epoch])
                self._packed = (epoch, size, self._grouped_batches(rng, size))
            return self._packed[2]
        rng = np.random.default_rng([self.seed, epoch])
        stream = self._stream(rng, size)
        return _cut_batches(stream, self.patient_codes, size)

    def _scans_by_patient(self) -> dict[int, np.ndarray]:
        """Each patient code's scan indices, ascending (one stable sort, not a scan of the
        whole cohort per patient)."""
        order = np.argsort(self.patient_codes, kind="stable")
        codes, starts = np.unique(self.patient_codes[order], return_index=True)
        return dict(zip(codes.tolist(), np.split(order, starts[1:]), strict=True))

    def _grouped_batches(self, rng: np.random.Generator, batch_size: int) -> list[list[int]]:
        """Units of up to ``group`` scans of one patient, alternating its visits, stratified
        by their mean score rank and packed whole into batches."""
        quantile = self._score_quantiles(rng)
        units: list[list[int]] = []
        scans_of = self._scans_by_patient()
        for code in rng.permutation(np.array(sorted(scans_of))):
            scans = rng.permutation(scans_of[int(code)])
            # Round-robin over visits: consecutive scans come from different visits.
            visits = self.visit_codes[scans]
            turn = np.empty(scans.size, dtype=np.int64)
            for v in np.unique(visits):
                turn[visits == v] = np.arange(int(np.sum(visits == v)))
            scans = scans[np.lexsort((visits, turn))]
            units.extend(
                scans[i : i + self.group].tolist() for i in range(0, scans.size, self.group)
            )
        unit_rank = np.array([quantile[u].mean() for u in units])
        order = _stratified_order(unit_rank, max(1, batch_size // self.group), rng)
        batches: list[list[int]] = []
        batch: list[int] = []
        for k in order:
            if batch and len(batch) + len(units[k]) > batch_size:
                batches.append(batch)
                batch = []
            batch.extend(units[k])
        if batch:
            batches.append(batch)
        return batches

    def _stream(self, rng: np.random.Generator, batch_size: int) -> list[int]:
        """All scan indices in round order, each round stratified by score."""
        n = self.scores.size
        if n == 0:
            return []
        codes = self.patient_codes
        # Each patient's scans in random order: position j among its n_p scans.
        order = rng.permutation(n)
        _, inverse, counts = np.unique(codes[order], return_inverse=True, return_counts=True)
        by_patient = np.argsort(inverse, kind="stable")
        position = np.empty(n, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        position[by_patient] = np.arange(n) - np.repeat(starts, counts)
        # Rounds aligned at the end: the last scan of every patient is in the last round.
        round_of = np.empty(n, dtype=np.int64)
        round_of[order] = position - counts[inverse]

        quantile = self._score_quantiles(rng)
        stream: list[int] = []
        for r in np.unique(round_of):
            members = np.flatnonzero(round_of == r)
            stream.extend(members[_stratified_order(quantile[members], batch_size, rng)])
        return stream

    def _score_quantiles(self, rng: np.random.Generator) -> np.ndarray:
        """Each scan's score rank in [0, 1) with random tie-breaks; NaN -> uniform random."""
        scores = self.scores
        labelled = np.isfinite(scores)
        quantile = rng.random(scores.size)
        n_lab = int(labelled.sum())
        if n_lab:
            idx = np.flatnonzero(labelled)
            # lexsort's last key is primary: by score, ties broken by a random key.
            ranked = idx[np.lexsort((rng.random(n_lab), scores[idx]))]
            quantile[ranked] = (np.arange(n_lab) + 0.5) / n_lab
        return quantile


def _replicas() -> tuple[int, int]:
    """(world size, rank) of the running process group, (1, 0) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _stratified_order(quantile: np.ndarray, n_strata: int, rng: np.random.Generator) -> np.ndarray:
    """Order of one round's scans: strata of score quantiles visited in turn.

    Args:
        quantile: (M,) rank of each scan in [0, 1).
        n_strata: number of quantile strata (the batch size).
        rng: randomness for the order inside strata and between them.

    Returns:
        A permutation of range(M).
    """
    m = quantile.size
    n_strata = max(1, min(n_strata, m))
    # Strata from the rank within this round, so each stratum holds about m / n_strata scans.
    rank = np.empty(m, dtype=np.int64)
    rank[np.argsort(quantile, kind="stable")] = np.arange(m)
    stratum = rank * n_strata // m
    # Random place inside its stratum, then visit strata round-robin in a random order.
    slot = np.empty(m, dtype=np.int64)
    shuffled = rng.permutation(m)
    by_stratum = shuffled[np.argsort(stratum[shuffled], kind="stable")]
    sizes = np.bincount(stratum, minlength=n_strata)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    slot[by_stratum] = np.arange(m) - np.repeat(starts, sizes)
    visit = rng.permutation(n_strata)
    return np.lexsort((visit[stratum], slot))


def _cut_batches(stream: list[int], codes: np.ndarray, batch_size: int) -> list[list[int]]:
    """Cut ``stream`` into batches, deferring a scan whose patient is already in the batch."""
    pending: deque[int] = deque(stream)
    # Scans left per patient: when every patient with scans left is in the batch, stop
    # looking for a new one instead of scanning the whole stream.
    left: dict[int, int] = {}
    for i in stream:
        left[int(codes[i])] = left.get(int(codes[i]), 0) + 1
    batches: list[list[int]] = []
    while pending:
        batch: list[int] = []
        seen: set[int] = set()
        deferred: list[int] = []
        while pending and len(batch) < batch_size and len(seen) < len(left):
            i = pending.popleft()
            code = int(codes[i])
            if code in seen:
                deferred.append(i)
                continue
            batch.append(i)
            seen.add(code)
        # No distinct patient left: fill with repeats, earliest deferred first.
        while len(batch) < batch_size and (deferred or pending):
            batch.append(deferred.pop(0) if deferred else pending.popleft())
        pending.extendleft(reversed(deferred))
        for i in batch:
            code = int(codes[i])
            left[code] -= 1
            if left[code] == 0:
                del left[code]
        batches.append(batch)
    return batches
