"""The pair objectives' hyperparameters, declared once.

``HYPERPARAMETERS`` holds every key of the config's ``objective:`` section but ``name``: its
allowed values (a finite number in an interval, or one of a few strings), its default and
its meaning. Two places derive from it and so cannot disagree:

- the objective modules of :mod:`learner.losses` take their defaults from :func:`default` and
  validate their keyword arguments with :func:`check` (``ValueError`` naming the
  hyperparameter and what is allowed);
- :class:`learner.config.ObjectiveConfig` builds each field's default, bounds and description
  from the same entry (:meth:`Hyperparameter.bounds`), so a bad value fails the config with
  the key's dotted name (``objective.tau``) before any training starts.

The objective names (``ObjectiveName``) and the choices (``Weighting``, ``Partition``,
``PairSet``) are ``Literal`` types, so that the config and the pure functions of
:mod:`learner.losses.functional` are typed by them too. This module imports nothing but the
standard library: the config reads it without importing torch. How to add an objective or a
hyperparameter: see :mod:`learner.losses.modules`.

Example:
    >>> check("tau", 0.2)
    0.2
    >>> check("margin", 0)
    Traceback (most recent call last):
    ValueError: margin must be in (0, 2], got 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

# The keys of learner.losses.OBJECTIVES (test_registry checks that both list the same names).
ObjectiveName = Literal["mse", "contrastive", "weighted", "yaware", "rnc"]
Weighting = Literal["linear", "exp", "log", "rank"]
Partition = Literal["threshold", "soft"]
PairSet = Literal["inter", "intra", "all"]
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)
PARTITIONS: tuple[str, ...] = get_args(Partition)
PAIR_SETS: tuple[str, ...] = get_args(PairSet)


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: a finite number in an interval, or one of ``choices``.

    Attributes:
        name: its keyword in the objective modules and its key under ``objective:``.
        default: its value where the config or the call omits it; None = each objective's
            own default (the one in its module's signature).
        description: what it does (the config field's description).
        low: the interval's lower end; None = unbounded below. Numbers only.
        high: the interval's upper end; None = unbounded above. Numbers only.
        low_open: the lower end itself is excluded.
        high_open: the upper end itself is excluded.
        choices: the allowed strings; empty for a number.
    """

    name: str
    default: Any
    description: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()

    def allowed(self) -> str:
        """What is allowed, as the error messages say it: ``in [0, 1]``, ``> 0``, ``one of ...``."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "a finite number"

    def bounds(self) -> dict[str, Any]:
        """The interval as pydantic's constraint keywords (``gt`` / ``ge``, ``lt`` / ``le``)."""
        out: dict[str, Any] = {}
        if self.low is not None:
            out["gt" if self.low_open else "ge"] = self.low
        if self.high is not None:
            out["lt" if self.high_open else "le"] = self.high
        return out

    def check(self, value: object) -> Any:
        """``value`` validated: a float for a number, the string for a choice.

        Raises:
            ValueError: naming the hyperparameter, what is allowed and ``value``.
        """
        if self.choices:
            if not isinstance(value, str) or value not in self.choices:
                raise ValueError(f"{self.name} must be {self.allowed()}; got {value!r}")
            return value
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{self.name} must be a finite number, got {value!r}")
        x = float(value)
        too_low = self.low is not None and (x < self.low or (self.low_open and x == self.low))
        too_high = self.high is not None and (x > self.high or (self.high_open and x == self.high))
        if too_low or too_high:
            raise ValueError(f"{self.name} must be {self.allowed()}, got {value!r}")
        return x


_NOISE = (
    "sd of one score's measurement noise in normalised units (score sd / score-range width), "
    "like tau; > 0 makes the threshold partition noise-aware: a gap that noise could explain "
    "weighs partly as a positive and partly as a negative (contrastive, weighted with "
    "partition threshold; beyond the paper). 0 = the paper."
)
_PAIRS = (
    "which pairs the pair term compares: inter-patient (the paper), a patient's own scans "
    "(intra), or both (all); contrastive, weighted and yaware."
)

HYPERPARAMETERS: dict[str, Hyperparameter] = {
    spec.name: spec
    for spec in (
        Hyperparameter("lam", 1.0, "lambda: weight of the pair term.", low=0.0),
        Hyperparameter(
            "tau",
            0.1,
            "score-gap threshold between positive and negative pairs, in normalised score "
            "units (threshold partition).",
            low=0.0,
            high=1.0,
        ),
        Hyperparameter(
            "margin",
            0.5,
            "cosine-distance margin of the negative pairs.",
            low=0.0,
            high=2.0,
            low_open=True,
        ),
        Hyperparameter(
            "partition",
            "threshold",
            "weighted: positives and negatives split at tau (threshold), or every pair in "
            "both terms (soft).",
            choices=PARTITIONS,
        ),
        Hyperparameter(
            "weighting",
            "linear",
            "weighted: the score-gap weighting (rank = adaptive).",
            choices=WEIGHTINGS,
        ),
        Hyperparameter(
            "alpha", 3.0, "weighted: curvature of the exp / log weightings.", low=0.0, low_open=True
        ),
        Hyperparameter(
            "temperature",
            None,
            "yaware / rnc: softmax / similarity temperature; null = the objective's default.",
            low=0.0,
            low_open=True,
        ),
        Hyperparameter(
            "sigma",
            0.1,
            "yaware: RBF kernel bandwidth in normalised score units.",
            low=0.0,
            low_open=True,
        ),
        Hyperparameter("score_noise", 0.0, _NOISE, low=0.0, high=1.0),
        Hyperparameter("pairs", "inter", _PAIRS, choices=PAIR_SETS),
    )
}


def check(name: str, value: object) -> Any:
    """``value`` of hyperparameter ``name`` validated (see :meth:`Hyperparameter.check`)."""
    return HYPERPARAMETERS[name].check(value)


def default(name: str) -> Any:
    """The declared default of hyperparameter ``name``."""
    return HYPERPARAMETERS[name].default
