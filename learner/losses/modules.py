"""Thin ``nn.Module`` wrappers of the pair objectives, the ``OBJECTIVES`` registry and its factory.

Each module validates its hyperparameters once in ``__init__`` (``ValueError`` naming the
hyperparameter and its allowed range) and, in ``forward``, gathers the batch across ranks when
``torch.distributed`` runs with more than one process, so that a global batch behaves exactly
like one large local batch (see :mod:`learner.dist`). The maths lives in
:mod:`learner.losses.functional`.

Example:
    >>> objective = build_objective("weighted", partition="soft")
    >>> out = objective(torch.randn(8, 16), torch.rand(8), torch.arange(8))
    >>> out.loss, out.n_pos, out.n_neg
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from torch import Tensor, nn

from learner import dist
from learner.errors import ConfigError
from learner.losses import functional as fn
from learner.losses.functional import PairLoss


def _check_number(name: str, value: object) -> float:
    """``value`` as a finite float, or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_interval(
    name: str, value: object, low: float, high: float, *, low_open: bool = False
) -> float:
    """``value`` in [low, high] (or (low, high] with ``low_open``), else ValueError."""
    x = _check_number(name, value)
    if x > high or x < low or (low_open and x == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return x


def _check_positive(name: str, value: object) -> float:
    """``value`` > 0, else ValueError."""
    x = _check_number(name, value)
    if x <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return x


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` one of ``choices``, else ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def _check_pairs(pairs: object) -> fn.PairSet:
    """``objective.pairs`` one of ``inter`` / ``intra`` / ``all``, else ValueError."""
    _check_choice("pairs", pairs, fn.PAIR_SETS)
    return pairs  # type: ignore[return-value]


class PairObjective(nn.Module):
    """Base class: gathers across ranks, then applies :meth:`pair_loss` to the global batch."""

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
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())


class NoPairLoss(PairObjective):
    """``mse``: the regression baseline, no pair term (loss 0, counts 0)."""

    def __init__(self) -> None:
        # Explicit so that the signature lists no hyperparameters (nn.Module's takes *args).
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
        tau: float = 0.1,
        margin: float = 0.5,
        pairs: fn.PairSet = "inter",
        score_noise: float = 0.0,
    ) -> None:
        super().__init__()
        self.tau = _check_interval("tau", tau, 0.0, 1.0)
        self.margin = _check_interval("margin", margin, 0.0, 2.0, low_open=True)
        self.pairs = _check_pairs(pairs)
        self.score_noise = _check_interval("score_noise", score_noise, 0.0, 1.0)

    @property
    def hparams(self) -> dict[str, Any]:
        return {
            "tau": self.tau,
            "margin": self.margin,
            "pairs": self.pairs,
            "score_noise": self.score_noise,
        }

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
        tau: float = 0.1,
        margin: float = 0.5,
        weighting: fn.Weighting = "linear",
        alpha: float = 3.0,
        partition: fn.Partition = "threshold",
        pairs: fn.PairSet = "inter",
        score_noise: float = 0.0,
    ) -> None:
        super().__init__()
        self.tau = _check_interval("tau", tau, 0.0, 1.0)
        self.margin = _check_interval("margin", margin, 0.0, 2.0, low_open=True)
        _check_choice("weighting", weighting, fn.WEIGHTINGS)
        _check_choice("partition", partition, ("threshold", "soft"))
        self.weighting: fn.Weighting = weighting
        self.alpha = _check_positive("alpha", alpha)
        self.partition: fn.Partition = partition
        self.pairs = _check_pairs(pairs)
        self.score_noise = _check_interval("score_noise", score_noise, 0.0, 1.0)
        if self.score_noise > 0 and partition != "threshold":
            raise ValueError(
                "score_noise needs partition threshold (the soft partition has no tau); "
                "set score_noise: 0 or partition: threshold"
            )

    @property
    def hparams(self) -> dict[str, Any]:
        return {
            "tau": self.tau,
            "margin": self.margin,
            "weighting": self.weighting,
            "alpha": self.alpha,
            "partition": self.partition,
            "pairs": self.pairs,
            "score_noise": self.score_noise,
        }

    def pair_loss(self, embeddings: Tensor, scores: Tensor, patient_ids: Tensor) -> PairLoss:
        return fn.weighted_contrastive_loss(embeddings, scores, patient_ids, **self.hparams)


class YAwareLoss(PairObjective):
    """y-Aware InfoNCE (see :func:`functional.yaware_loss`).

    Args:
        temperature: softmax temperature, > 0.
        sigma: RBF kernel bandwidth in normalised score units, > 0.
        pairs: ``inter`` (the paper), ``intra`` or ``all``.
    """

    def __init__(
        self, temperature: float = 0.1, sigma: float = 0.1, pairs: fn.PairSet = "inter"
    ) -> None:
        super().__init__()
        self.temperature = _check_positive("temperature", temperature)
        self.sigma = _check_positive("sigma", sigma)
        self.pairs = _check_pairs(pairs)

    @property
    def hparams(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "sigma": self.sigma, "pairs": self.pairs}

    def pair_loss(self, embeddings: Tensor, scores: Tensor, patient_ids: Tensor) -> PairLoss:
        return fn.yaware_loss(embeddings, scores, patient_ids, **self.hparams)


class RnCLoss(PairObjective):
    """Rank-N-Contrast (see :func:`functional.rnc_loss`).

    Args:
        temperature: similarity temperature, > 0.
    """

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        self.temperature = _check_positive("temperature", temperature)

    @property
    def hparams(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

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
