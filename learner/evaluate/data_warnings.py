"""The warnings about the data behind a number, one function for every command.

`learner validate` (a manifest's pairs, and with ``--config`` its scores against
``data.score_range``, before any training), `learner evaluate` and `learner run` (the test
pairs of each seed or fold) and `learner predict` (the pairs that have scores, and those
scores against the range the model was trained on) all call :func:`data_warnings`. It checks:

- **scores outside the score range** (or a range far wider than the scores use);
- **missing classes**: a class with no pairs where the numbers are judged, or none among the
  training pairs of some seed;
- **few pairs**: no pairs at all, or a class with under :data:`MIN_CLASS_PAIRS` pairs;
- **class imbalance**: one class over :data:`MAX_CLASS_SHARE` of the pairs;
- **few patients**: under :data:`MIN_TEST_PATIENTS` patients with pairs.

Each warning is one line and names the fix.

Example (a test set of 2 worsen, 17 stable and no improve pairs, from 4 patients):
    >>> counts = {"class_counts_test": {"worsen": 2, "stable": 17, "improve": 0},
    ...           "n_test_patients": 4}
    >>> for line in data_warnings(delta=2, pair_counts=[counts]):
    ...     print(line[:60])
    class 'improve' has 0 test pairs: its recall is undefined an
    class 'worsen' has 2 test pairs: its recall is noise; add te
    'stable' is 89% of test pairs: accuracy mostly counts the ma
    only 4 test patients with change pairs: intervals are unreli
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from learner.data.pairs import LABELS

MIN_CLASS_PAIRS = 10
MAX_CLASS_SHARE = 0.8
MIN_TEST_PATIENTS = 5
# A score range this much wider than the scores makes every normalised gap tiny.
MIN_RANGE_USE = 0.1

Judged = Literal["test", "manifest", "scored"]
# Per kind of data judged: the pairs' name, and the fix for too few of them.
_WHERE: dict[str, tuple[str, str]] = {
    "test": ("test", "add test patients, use --set data.split.folds=5, or change eval.delta"),
    "manifest": (
        "manifest",
        "add patients with more visits, or change the stable band (--delta / eval.delta)",
    ),
    "scored": (
        "scored",
        "the metrics on these pairs are noise: score more patients' visits before reading them",
    ),
}


def data_warnings(
    *,
    delta: Any,
    pair_counts: Sequence[Mapping[str, Any]] = (),
    scores: npt.ArrayLike | None = None,
    score_range: Sequence[float] | None = None,
    judged_on: Judged = "test",
) -> list[str]:
    """Every warning about the data behind a command's numbers, one line each.

    Args:
        delta: the stable band as configured (for the fix text).
        pair_counts: per seed or fold (one entry for a manifest or a prediction):
            ``class_counts_test`` (label -> pairs where the numbers are judged), optionally
            ``class_counts_train`` (label -> training pairs), ``n_test_patients`` (patients
            with such pairs) and ``seed``. Empty: no class checks.
        scores: the raw scores to check against ``score_range`` (None: no score check).
        score_range: ``data.score_range`` (or the model's training range for ``scored``).
        judged_on: ``test`` (`run`, `evaluate`: the test pairs), ``manifest`` (`validate`:
            every pair of the manifest) or ``scored`` (`predict`: the pairs with scores).
    """
    out: list[str] = []
    if scores is not None and score_range is not None:
        values = np.asarray(scores, dtype=np.float64).ravel()
        if judged_on == "scored":
            out += _outside_model_range(values, score_range)
        else:
            out += score_range_warnings(values, score_range)
    if pair_counts:
        out += class_table_warnings(pair_counts, delta, judged_on=judged_on)
    return out


def score_range_warnings(scores: np.ndarray, score_range: Sequence[float] | None) -> list[str]:
    """Scores outside ``data.score_range``, or a range far wider than the scores use."""
    finite = scores[np.isfinite(scores)]
    if score_range is None or finite.size == 0:
        return []
    lo, hi = float(score_range[0]), float(score_range[1])
    smin, smax = float(finite.min()), float(finite.max())
    fix = f"--set data.score_range=[{smin:g},{smax:g}] (or the score's clinical range)"
    if smin < lo or smax > hi:
        return [
            f"scores span [{smin:g}, {smax:g}], outside data.score_range [{lo:g}, {hi:g}]: the "
            f"normalised scores leave [0, 1]; set {fix}"
        ]
    if (smax - smin) < MIN_RANGE_USE * (hi - lo):
        return [
            f"scores span [{smin:g}, {smax:g}], under {MIN_RANGE_USE:.0%} of data.score_range "
            f"[{lo:g}, {hi:g}]: every normalised score gap is tiny, so the pair objectives see "
            f"almost no negative pairs; set {fix}"
        ]
    return []


def _outside_model_range(scores: np.ndarray, score_range: Sequence[float]) -> list[str]:
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return []
    lo, hi = float(score_range[0]), float(score_range[1])
    smin, smax = float(finite.min()), float(finite.max())
    if smin >= lo and smax <= hi:
        return []
    return [
        f"scores span [{smin:g}, {smax:g}], outside the model's data.score_range [{lo:g}, "
        f"{hi:g}]: these patients lie beyond the scores it was trained on, so its predicted "
        "scores and changes for them are extrapolations; check the score column (or its "
        "units) against the training data's"
    ]


def class_table_warnings(
    summaries: Sequence[Mapping[str, Any]], delta: Any, *, judged_on: Judged = "test"
) -> list[str]:
    """Warnings about the change classes of one evaluated feature, over its seeds/folds.

    Args:
        summaries: per cell, the evaluation summary (``class_counts_test``, optionally
            ``class_counts_train``, ``n_test_patients``, ``seed``).
        delta: the configured stable band (for the fix text).
        judged_on: which pairs ``class_counts_test`` counts (see :func:`data_warnings`).
    """
    where, fix = _WHERE[judged_on]
    fix = f"{fix} (now {delta})" if judged_on != "scored" else fix
    several = len(summaries) > 1
    out: list[str] = []
    total = {label: 0 for label in LABELS}
    for s in summaries:
        for label in LABELS:
            total[label] += int(s["class_counts_test"].get(label, 0))
    for label in LABELS:
        if any(
            "class_counts_train" in s and int(s["class_counts_train"].get(label, 0)) == 0
            for s in summaries
        ):
            out.append(
                f"no '{label}' pairs among training patients in some seed: the probe never "
                f"predicts it; change eval.delta (now {delta}) or add patients"
            )
    all_pairs = sum(total.values())
    if all_pairs == 0:
        out.append(f"no {where} change pairs: no class can be measured; {fix}")
        return out
    over = " over all seeds" if several else ""
    missing = [label for label in LABELS if total[label] == 0]
    for label in missing:
        out.append(
            f"class '{label}' has 0 {where} pairs{over}: its recall is undefined and balanced "
            f"accuracy averages the other classes only; {fix}"
        )
    fewest = min(
        (
            (int(s["class_counts_test"].get(label, 0)), label, s.get("seed"))
            for s in summaries
            for label in LABELS
            if label not in missing
        ),
        default=None,
    )
    if fewest is not None and fewest[0] < MIN_CLASS_PAIRS:
        count, label, seed = fewest
        detail = f" (seed {seed}; {total[label]} over all seeds)" if several else ""
        out.append(f"class '{label}' has {count} {where} pairs{detail}: its recall is noise; {fix}")
    label = max(total, key=lambda k: total[k])
    share = total[label] / all_pairs
    if share > MAX_CLASS_SHARE:
        out.append(
            f"'{label}' is {share:.0%} of {where} pairs: accuracy mostly counts the majority "
            f"class; read balanced accuracy and macro-F1, or change eval.delta (now {delta})"
        )
    fewest_patients = min((int(s.get("n_test_patients", 0)) for s in summaries), default=0)
    if fewest_patients < MIN_TEST_PATIENTS:
        some = " in some seed" if several else ""
        out.append(
            f"only {fewest_patients} {where} patients with change pairs{some}: intervals "
            f"are unreliable; {fix}"
        )
    return out
