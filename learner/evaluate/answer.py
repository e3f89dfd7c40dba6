"""One answer per visit pair: the probe's label or the regression head's, chosen on
validation patients.

A change model holds two readings of a visit pair: the **probe**'s label (the most probable
of ``p_worsen, p_stable, p_improve``) and the **head**'s label, the regression head's
predicted score change (``predicted_change``) classified with the model's own stable band
and direction (``|change| <= band`` is stable; a change towards better health is improve).
They can disagree. The rule for which to read (:data:`RULE`) is applied once, when the
change model is fitted, on the *validation* patients: whichever of the two had the higher
balanced accuracy on their pairs (the probe on a tie, or when the validation patients give
no number). ``model.json``'s ``answer`` holds the choice and both validation numbers; a model
saved before the choice existed answers with the probe (:data:`NO_CHOICE`).

Example (validation pairs where the head reads the change better than the probe):
    >>> truth = ["worsen", "stable", "improve", "stable"]
    >>> probe = ["stable", "stable", "stable", "stable"]
    >>> choice = choose_answer(truth, probe, [-5.0, 0.5, 4.0, -1.0], band=2.0,
    ...                        higher_is_better=True)
    >>> choice["chosen"], choice["balanced_accuracy_validation"]
    ('head', {'probe': 0.3333333333333333, 'head': 1.0})
    >>> head_labels([-5.0, 0.5, float("nan")], band=2.0, higher_is_better=False).tolist()
    ['improve', 'stable', None]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from learner.data.pairs import label_changes
from learner.evaluate.metrics import class_metrics, confusion_counts, label_codes

SOURCES = ("probe", "head")
NO_CHOICE = "probe (no validation choice recorded)"
RULE = (
    "the label of whichever of probe and head had the higher balanced accuracy on the "
    "validation patients' pairs (the probe on a tie or when validation gives no number)"
)


def head_labels(
    predicted_change: npt.ArrayLike, band: float, *, higher_is_better: bool
) -> np.ndarray:
    """The head's label of each pair: ``predicted_change`` (raw ``score_to - score_from``)
    classified with the stable ``band`` and the score's direction; None where the change is
    not finite (a visit without a predicted score)."""
    change = np.asarray(predicted_change, dtype=np.float64).ravel()
    out = np.full(change.shape, None, dtype=object)
    finite = np.isfinite(change)
    if finite.any():
        out[finite] = label_changes(change[finite], band, higher_is_better=higher_is_better)
    return out


def _balanced(truth: Sequence[str], predicted: Sequence[Any]) -> float | None:
    keep = [i for i, p in enumerate(predicted) if p is not None]
    if not keep:
        return None
    true = label_codes([truth[i] for i in keep])
    pred = label_codes([predicted[i] for i in keep])
    value = class_metrics(confusion_counts(true, pred))[1]
    return float(value) if math.isfinite(value) else None


def choose_answer(
    truth: Sequence[str],
    probe: Sequence[str],
    predicted_change: npt.ArrayLike,
    *,
    band: float,
    higher_is_better: bool,
) -> dict[str, Any]:
    """Which label to read, chosen on validation pairs by :data:`RULE`.

    Args:
        truth: the validation pairs' true labels (with the model's band).
        probe: the probe's labels of the same pairs (a probe fitted on training patients).
        predicted_change: the head's raw predicted score change of each pair.
        band, higher_is_better: the model's stable band and the score's direction.

    Returns:
        ``chosen`` (``probe`` or ``head``), ``rule``, ``on``, ``n_validation_pairs`` and
        ``balanced_accuracy_validation`` (``probe`` and ``head``; None where undefined).
    """
    truth = [str(t) for t in truth]
    head = head_labels(predicted_change, band, higher_is_better=higher_is_better).tolist()
    scores = {
        "probe": _balanced(truth, [str(p) for p in probe]) if truth else None,
        "head": _balanced(truth, head) if truth else None,
    }
    chosen = "probe"
    if scores["probe"] is not None and scores["head"] is not None:
        chosen = "head" if scores["head"] > scores["probe"] else "probe"
    elif scores["head"] is not None:
        chosen = "head"
    return {
        "chosen": chosen,
        "rule": RULE,
        "on": "validation patients",
        "n_validation_pairs": len(truth),
        "balanced_accuracy_validation": scores,
    }


def no_validation_answer(reason: str) -> dict[str, Any]:
    """The choice when the validation patients give no pairs: the probe, saying why."""
    return {
        "chosen": "probe",
        "rule": RULE,
        "on": "validation patients",
        "n_validation_pairs": 0,
        "balanced_accuracy_validation": {"probe": None, "head": None},
        "note": reason,
    }


def answer_source(info: Mapping[str, Any]) -> str:
    """What a model's ``answer`` column reads: ``probe``, ``head``, or :data:`NO_CHOICE` for
    a ``model.json`` without a recorded choice."""
    answer = info.get("answer")
    if isinstance(answer, Mapping) and answer.get("chosen") in SOURCES:
        return str(answer["chosen"])
    return NO_CHOICE
