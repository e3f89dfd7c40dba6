"""The base class of the objective modules: hyperparameter validation and the gather across
ranks. An objective in a file of its own subclasses it from here (:mod:`learner.losses.modules`
imports that file for its registry, so the file must not import the registry's module).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from learner import dist
from learner.losses.functional import PairLoss
from learner.objective_hparams import check


class PairObjective(nn.Module):
    """Base class: validates and keeps the hyperparameters; gathers across ranks, then applies
    :meth:`pair_loss` to the global batch.

    Args:
        **hparams: the subclass's hyperparameters by name, each validated against
            :data:`learner.objective_hparams.HYPERPARAMETERS` and kept as :attr:`hparams`
            and as an attribute of the same name.

    Raises:
        ValueError: a hyperparameter out of its declared range (the message names it).
    """

    def __init__(self, **hparams: Any) -> None:
        super().__init__()
        self._hparams = {name: check(name, value) for name, value in hparams.items()}
        for name, value in self._hparams.items():
            setattr(self, name, value)

    def forward(self, embeddings: Tensor, scores: Tensor, patient_ids: Tensor) -> PairLoss:
        """Compute the objective on the (global) batch.

        Args:
            embeddings: (B, D) float, this rank's batch.
            scores: (B,) in [0, 1], NaN = unlabelled.
            patient_ids: (B,) int64, unique per patient across the whole data set.

        Returns:
            PairLoss of the global batch (identical on every rank).
        """
        if dist.world_size() > 1:
            embeddings = dist.gather_with_grad(embeddings)
            scores = dist.gather_no_grad(scores)
            patient_ids = dist.gather_no_grad(patient_ids)
        return self.pair_loss(embeddings, scores, patient_ids)

    def pair_loss(self, embeddings: Tensor, scores: Tensor, patient_ids: Tensor) -> PairLoss:
        """The objective on an already gathered batch; subclasses call their pure function
        with ``**self.hparams``, whose names are exactly its keyword arguments."""
        raise NotImplementedError

    @property
    def hparams(self) -> dict[str, Any]:
        """The validated hyperparameters, by name (for logs and reports)."""
        return dict(self._hparams)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
