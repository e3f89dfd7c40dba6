"""Optimise free embeddings (no network) under each objective and measure the Figure-1 Spearman.

With one scan per patient and nothing but the pair loss, an objective's optimum shows what it
asks of the geometry. The soft weighted partition asks for cosine distance proportional to the
score gap (D = m * Delta), so its free embeddings must rank pairs by score gap almost exactly.
Run ``pytest -s`` to see the figure of every objective.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from scipy.stats import spearmanr

from learner.losses import build_objective

N, DIM, STEPS, LR = 64, 16, 300, 0.05


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add scheduling stalls on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spearman_after_training(name: str, **hparams: Any) -> tuple[float, float]:
    """Spearman(cosine distance, |score gap|) over all pairs, before and after Adam."""
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(N, generator=g, dtype=torch.float64)
    patient_ids = torch.arange(N)
    embeddings = torch.nn.Parameter(torch.randn(N, DIM, generator=g, dtype=torch.float64))
    objective = build_objective(name, **hparams)
    optimiser = torch.optim.Adam([embeddings], lr=LR)

    def spearman() -> float:
        with torch.no_grad():
            z = torch.nn.functional.normalize(embeddings, dim=1)
            i, j = torch.triu_indices(N, N, offset=1)
            distance = (1.0 - z @ z.T)[i, j]
            gap = (scores[i] - scores[j]).abs()
        return float(spearmanr(distance.numpy(), gap.numpy()).statistic)

    before = spearman()
    for _ in range(STEPS):
        optimiser.zero_grad()
        objective(embeddings, scores, patient_ids).loss.backward()
        optimiser.step()
    return before, spearman()


def test_soft_weighted_orders_free_embeddings_by_score_gap() -> None:
    before, after = _spearman_after_training("weighted", partition="soft")
    print(f"\nfree embeddings, weighted/soft: Spearman {before:.3f} -> {after:.3f}")
    assert abs(before) < 0.2
    assert after >= 0.9


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("contrastive", {}),
        ("weighted", {"partition": "threshold"}),
        ("yaware", {}),
        ("rnc", {}),
    ],
)
def test_other_objectives_figure_for_information(name: str, hparams: dict[str, Any]) -> None:
    before, after = _spearman_after_training(name, **hparams)
    label = "/".join([name, *map(str, hparams.values())])
    print(f"\nfree embeddings, {label}: Spearman {before:.3f} -> {after:.3f}")
    # Every objective moves the geometry towards the score order, even if not all the way.
    assert after > before + 0.5
