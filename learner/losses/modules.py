"""Thin ``nn.Module`` wrappers of the pair objectives, the ``OBJECTIVES`` registry and its factory.

Each module validates its hyperparameters once in ``__init__`` against their single declaration
in :mod:`learner.objective_hparams` (``ValueError`` naming the hyperparameter and its allowed
range; the config derives its checks from the same declaration) and, in ``forward``, gathers
the batch across ranks when ``torch.distributed`` runs with more than one process, so that a
global batch behaves exactly like one large local batch (see :mod:`learner.dist`). The maths
lives in :mod:`learner.losses.functional`.

Adding an objective:

1. One file, e.g. ``learner/losses/<name>.py``: its pure function (the signature of
   :mod:`learner.losses.functional`) and a subclass of
   :class:`learner.losses.base.PairObjective`. Its ``__init__`` takes each hyperparameter as
   a keyword argument defaulting to ``default("<hparam>")`` (or to its own value where the
   declared default is None, as for ``temperature``) and passes them all to
   ``super().__init__(**...)``, which validates and keeps them; its ``pair_loss`` calls the
   function with ``**self.hparams``.
2. One line in ``OBJECTIVES`` below (importing the class), and its name in
   :data:`learner.objective_hparams.ObjectiveName` (the config checks names without importing
   torch; ``tests/losses/test_registry.py`` fails if the two differ).

``tests/losses/test_registry.py`` then builds it from its defaults, checks that its loss is
finite, and that every out-of-range value of each of its hyperparameters fails both the
module and the config. A hyperparameter that no objective has yet also needs an entry in
:data:`learner.objective_hparams.HYPERPARAMETERS` and a field in
:class:`learner.config.ObjectiveConfig` (typed, with ``_hparam("<name>")``); the registry
test fails if either is missing.

Example:
    >>> import torch
    >>> objective = build_objective("weighted", partition="soft")
    >>> scores = torch.linspace(0.0, 1.0, 8)  # normalised scores of 8 scans, 8 patients
    >>> out = objective(torch.randn(8, 16), scores, torch.arange(8))
    >>> out.loss.shape, int(out.n_pos), int(out.n_neg)  # soft: all 28 pairs in both terms
    (torch.Size([]), 28, 28)
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor

from learner.errors import ConfigError
from learner.losses import functional as fn
from learner.losses.base import PairObjective
from learner.losses.functional import PairLoss
from learner.objective_hparams import PairSet, Partition, Weighting, default


class NoPairLoss(PairObjective):
    """``mse``: the regression baseline, no pair term (loss 0, counts 0)."""

    def __init__(self) -> None:
        # Explicit so that the signature lists, and the module accepts, no hyperparameters.
        super().__init__()

    def forward(self, embeddings: Tensor, scores: Tensor, patient_ids: Tensor) -> PairLoss:
        # Nothing to compare, so nothing to gather.
        return self.pair_loss(embeddings, scores, patient_ids)

    def pair_loss(self, embeddings: Tensor, scores: Tensor, patient_ids: Tensor) -> PairLoss:
        return fn.no_pair_loss(embeddings, scores, patient_ids)


class ContrastiveLoss(PairObjective):
    """Score-thresholded contrastive loss (see :func:`functional.contrastive_loss`).

    Args:
        tau: score-gap threshold between positives and negatives, in [0, 1].
        margin: cosine-distance margin of the negatives, in (0, 2].
        pairs: ``inter`` (the paper), ``intra`` or ``all``.
        score_noise: sd of one score's noise in normalised units, in [0, 1]; > 0 makes the
            partition noise-aware (beyond the paper; 0 = the paper's hard threshold).
    """

    def __init__(
        self,
        tau: float = default("tau"),
        margin: float = default("margin"),
        pairs: PairSet = default("pairs"),
        score_noise: float = default("score_noise"),
    ) -> None:
        super().__init__(tau=tau, margin=margin, pairs=pairs, score_noise=score_noise)

    def pair_loss(self, embeddings: Tensor, scores: Tensor, patient_ids: Tensor) -> PairLoss:
        return fn.contrastive_loss(embeddings, scores, patient_ids, **self.hparams)


class WeightedContrastiveLoss(PairObjective):
    """LEARNER's weighted contrastive loss (see :func:`functional.weighted_contrastive_loss`).

    Args:
        tau: score-gap threshold in [0, 1] (``threshold`` partition).
        margin: cosine-distance margin in (0, 2].
        weighting: ``linear``, ``exp``, ``log`` or ``rank`` (adaptive).
        alpha: curvature of ``exp`` / ``log`` weighting, > 0.
        partition: ``threshold`` or ``soft``.
        pairs: ``inter`` (the paper), ``intra`` or ``all``.
        score_noise: sd of one score's noise in normalised units, in [0, 1]; > 0 makes the
            threshold partition noise-aware (beyond the paper; 0 = the paper).
    """

    def __init__(
        self,
        tau: float = default("tau"),
        margin: float = default("margin"),
        weighting: Weighting = default("weighting"),
        alpha: float = default("alpha"),
        partition: Partition = default("partition"),
        pairs: PairSet = default("pairs"),
        score_noise: float = default("score_noise"),
    ) -> None:
        shape = {"weighting": weighting, "alpha": alpha, "partition": partition}
        super().__init__(tau=tau, margin=margin, pairs=pairs, score_noise=score_noise, **shape)
        if self._hparams["score_noise"] > 0 and partition != "threshold":
            raise ValueError(
                "score_noise needs partition threshold (the soft partition has no tau); "
                "set score_noise: 0 or partition: threshold"
            )

    def pair_loss(self, embeddings: Tensor, scores: Tensor, patient_ids: Tensor) -> PairLoss:
        return fn.weighted_contrastive_loss(embeddings, scores, patient_ids, **self.hparams)


class YAwareLoss(PairObjective):
    """y-Aware InfoNCE (see :func:`functional.yaware_loss`).

    Args:
        temperature: softmax temperature, > 0 (its own default: 0.1).
        sigma: RBF kernel bandwidth in normalised score units, > 0.
        pairs: ``inter`` (the paper), ``intra`` or ``all``.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        sigma: float = default("sigma"),
        pairs: PairSet = default("pairs"),
    ) -> None:
        super().__init__(temperature=temperature, sigma=sigma, pairs=pairs)

    def pair_loss(self, embeddings: Tensor, scores: Tensor, patient_ids: Tensor) -> PairLoss:
        return fn.yaware_loss(embeddings, scores, patient_ids, **self.hparams)


class RnCLoss(PairObjective):
    """Rank-N-Contrast (see :func:`functional.rnc_loss`).

    Args:
        temperature: similarity temperature, > 0 (its own default: 2.0).
    """

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__(temperature=temperature)

    def pair_loss(self, embeddings: Tensor, scores: Tensor, patient_ids: Tensor) -> PairLoss:
        return fn.rnc_loss(embeddings, scores, patient_ids, **self.hparams)


OBJECTIVES: dict[str, type[PairObjective]] = {
    "mse": NoPairLoss,
    "contrastive": ContrastiveLoss,
    "weighted": WeightedContrastiveLoss,
    "yaware": YAwareLoss,
    "rnc": RnCLoss,
}


def objective_hparam_names(name: str) -> list[str]:
    """The hyperparameters objective ``name`` accepts, in signature order."""
    params = inspect.signature(OBJECTIVES[name].__init__).parameters.values()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.name != "self" and p.kind in named]


def build_objective(name: str, **hparams: Any) -> PairObjective:
    """Build the objective ``name`` with validated hyperparameters.

    Args:
        name: a key of ``OBJECTIVES``.
        **hparams: hyperparameters of that objective; omitted ones take their defaults.

    Returns:
        The objective module.

    Raises:
        ConfigError: unknown name, unknown hyperparameter, or a value out of range (one line
            naming the ``objective.*`` key and what is allowed).
    """
    if name not in OBJECTIVES:
        raise ConfigError(
            f"objective.name: unknown objective {name!r}; use one of: {', '.join(OBJECTIVES)}"
        )
    allowed = objective_hparam_names(name)
    unknown = [key for key in hparams if key not in allowed]
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        raise ConfigError(
            f"objective.{unknown[0]}: not a hyperparameter of objective {name!r}; "
            f"its hyperparameters are: {valid}"
        )
    try:
        return OBJECTIVES[name](**hparams)
    except ValueError as exc:
        raise ConfigError(
            f"objective {name!r}: {exc}; fix it under objective: in the config"
        ) from exc
