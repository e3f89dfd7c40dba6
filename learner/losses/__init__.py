"""Pretraining pair objectives (the pair term of the loss): pure functions and their thin
modules."""

from learner.losses.functional import (
    PairLoss,
    contrastive_loss,
    no_pair_loss,
    rnc_loss,
    score_weight,
    weighted_contrastive_loss,
    yaware_loss,
)
from learner.losses.modules import (
    OBJECTIVES,
    ContrastiveLoss,
    NoPairLoss,
    PairObjective,
    RnCLoss,
    WeightedContrastiveLoss,
    YAwareLoss,
    build_objective,
    objective_hparam_names,
)

__all__ = [
    "OBJECTIVES",
    "ContrastiveLoss",
    "NoPairLoss",
    "PairLoss",
    "PairObjective",
    "RnCLoss",
    "WeightedContrastiveLoss",
    "YAwareLoss",
    "build_objective",
    "contrastive_loss",
    "no_pair_loss",
    "objective_hparam_names",
    "rnc_loss",
    "score_weight",
    "weighted_contrastive_loss",
    "yaware_loss",
]
