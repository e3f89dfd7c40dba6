"""A change model's held-out record: how well it did on test patients it never trained on,
and the caveat every prediction made with it carries.

The record is built from what the run (or `learner evaluate`) already measured on its test
patients, never recomputed or invented: the probe's balanced accuracy with its 95% patient
bootstrap interval (the cell's ``eval-<feature>/metrics.json``), the chance level
(1 / number of classes), on the same test patients the ``untrained`` baseline (a random-init
encoder with the same probe, when the run measured it) and ``head_delta`` (the same
classifier on this model's own regression-head score change), the stable band, and the data
the model was trained on. It is stored in ``model.json`` under ``record`` and read by
`learner predict`.

A prediction is not to be trusted, and carries a caveat, when:

- the model has no record (saved by an older learner, or never tested on held-out patients);
- the record has no interval (``eval.n_boot: 0``): nothing shows it differs from chance;
- the test pairs miss a class (balanced accuracy then averages the classes present only,
  and a model that always answers ``stable`` scores 1 on stable-only pairs);
- the interval includes chance (its lower bound is at or below 1/3);
- its balanced accuracy is not above the ``untrained`` encoder's on the same test patients.

Example:
    >>> record = {"balanced_accuracy": 0.36, "ci95": [0.25, 0.47], "chance": 1 / 3}
    >>> record_caveat(record)
    'held-out test CI 0.25-0.47 includes chance (0.33)'
    >>> record_caveat({**record, "balanced_accuracy": 0.6, "ci95": [0.5, 0.7]})
    ''
    >>> record_caveat(None)
    'no held-out record: how well this model does on new patients is unknown'
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from learner.evaluate.probe import CLASSES

CHANCE = 1.0 / len(CLASSES)
METRIC = "balanced_accuracy"
NO_RECORD = "no held-out record"


def _number(value: Any) -> float:
    """A float, NaN for None / missing / non-numbers."""
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _interval(value: Any) -> list[float | None]:
    bounds = [*value, None, None][:2] if isinstance(value, list | tuple) else [None, None]
    return [_finite_or_none(bounds[0]), _finite_or_none(bounds[1])]


def _finite_or_none(value: Any) -> float | None:
    number = _number(value)
    return number if math.isfinite(number) else None


def _baseline(metrics: Mapping[str, Any], ci95: Mapping[str, Any]) -> dict[str, Any] | None:
    value = _finite_or_none(metrics.get(METRIC))
    if value is None:
        return None
    return {METRIC: value, "ci95": _interval(ci95.get(METRIC))}


def trained_on(
    split: Mapping[str, str] | None,
    *,
    manifest: str | None,
    manifest_fingerprint: str | None,
    split_hash: str | None,
) -> dict[str, Any]:
    """The data a model was trained on: manifest path and content digest, patients per split,
    the split's hash."""
    counts = Counter((split or {}).values())
    return {
        "manifest": manifest,
        "manifest_fingerprint": manifest_fingerprint,
        "patients": {name: int(counts.get(name, 0)) for name in ("train", "val", "test")},
        "split_hash": split_hash,
    }


def build_record(
    evaluation: Mapping[str, Any],
    *,
    untrained: Mapping[str, Any] | None,
    data: Mapping[str, Any],
    target: str = "observed",
    source: str | None = None,
) -> dict[str, Any]:
    """The record of a change model from its held-out evaluation.

    Args:
        evaluation: the model's test evaluation as
            :meth:`learner.evaluate.change.ChangeResult.to_json` writes it (a cell's
            ``metrics.json``): ``metrics``, ``ci95``, ``head_delta``, ``head_delta_ci95``,
            ``band``, ``delta``, sizes and class counts.
        untrained: the ``untrained`` baseline's evaluation on the same test patients (same
            form), or None when it was not measured.
        data: what the model was trained on (:func:`trained_on`).
        target: what the test labels were judged against (``eval.target``).
        source: where the numbers were read (a cell, an evaluation folder).

    Returns:
        A JSON-ready dict; absent numbers are None, never guessed.
    """
    metrics = evaluation.get("metrics", {}) or {}
    ci95 = evaluation.get("ci95", {}) or {}
    extra: dict[str, Any] = {}
    if evaluation.get("label_sources"):
        # With clinicians' change labels: how many test pairs were judged on them.
        extra["label_sources_test"] = dict(evaluation["label_sources"].get("test", {}))
    return {
        "on": "held-out test patients",
        "metric": METRIC,
        METRIC: _finite_or_none(metrics.get(METRIC)),
        "ci95": _interval(ci95.get(METRIC)),
        "chance": CHANCE,
        "untrained": _baseline(untrained.get("metrics", {}) or {}, untrained.get("ci95", {}) or {})
        if untrained is not None
        else None,
        "head_delta": _baseline(
            evaluation.get("head_delta", {}) or {}, evaluation.get("head_delta_ci95", {}) or {}
        ),
        "band": _finite_or_none(evaluation.get("band")),
        "delta": evaluation.get("delta"),
        "target": target,
        "n_test_patients": evaluation.get("n_test_patients"),
        "n_test_pairs": evaluation.get("n_test_pairs"),
        "class_counts_test": evaluation.get("class_counts_test"),
        "n_boot": evaluation.get("n_boot"),
        "trained_on": dict(data),
        "source": source,
        **extra,
    }


def record_caveat(record: Mapping[str, Any] | None) -> str:
    """Why not to trust this model's predictions, in one short line; ``""`` when its held-out
    record beats chance (the whole 95% interval above 1/3) and the ``untrained`` encoder."""
    if not record:
        return f"{NO_RECORD}: how well this model does on new patients is unknown"
    value = _number(record.get(METRIC))
    chance = _number(record.get("chance", CHANCE))
    if not math.isfinite(value):
        return f"{NO_RECORD}: the test patients gave no pair to measure it on"
    reasons = []
    counts = record.get("class_counts_test")
    if isinstance(counts, Mapping):
        missing = [c for c in CLASSES if not counts.get(c)]
        if missing:
            reasons.append(f"held-out test had no {'/'.join(missing)} pair: not comparable")
    lo, hi = _interval(record.get("ci95"))
    if lo is None or hi is None:
        reasons.append(
            f"held-out test balanced accuracy {value:.2f} has no CI: cannot tell it from "
            f"chance ({chance:.2f})"
        )
    elif lo <= chance:
        reasons.append(f"held-out test CI {lo:.2f}-{hi:.2f} includes chance ({chance:.2f})")
    untrained = _number((record.get("untrained") or {}).get(METRIC))
    if math.isfinite(untrained) and value <= untrained:
        reasons.append(f"not above an untrained encoder ({value:.2f} vs {untrained:.2f})")
    return "; ".join(reasons)


def _with_ci(block: Mapping[str, Any] | None) -> str:
    if not block or _finite_or_none(block.get(METRIC)) is None:
        return "not measured"
    lo, hi = _interval(block.get("ci95"))
    ci = f" (95% CI {lo:.2f}-{hi:.2f})" if lo is not None and hi is not None else " (no CI)"
    return f"{float(block[METRIC]):.2f}{ci}"


def record_line(record: Mapping[str, Any] | None) -> str:
    """The record in one line: the ``record`` column of every prediction row."""
    if not record:
        return NO_RECORD
    parts = [
        f"held-out test balanced accuracy {_with_ci(record)}",
        f"chance {_number(record.get('chance', CHANCE)):.2f}",
        f"untrained {_with_ci(record.get('untrained'))}",
        f"head_delta {_with_ci(record.get('head_delta'))}",
    ]
    if record.get("n_test_pairs") is not None and record.get("n_test_patients") is not None:
        parts.append(f"{record['n_test_pairs']} test pairs of {record['n_test_patients']} patients")
    return "; ".join(parts)


def record_lines(record: Mapping[str, Any] | None) -> list[str]:
    """The record as a few lines for a person (the `learner predict` summary)."""
    if not record:
        return [
            f"{NO_RECORD}: this model was saved without a test on held-out patients (an older "
            "learner, or no test split); how far to trust its predictions is unknown. Save it "
            "again with `learner run` or `learner evaluate` on data with test patients"
        ]
    lines = [record_line(record)]
    band = _finite_or_none(record.get("band"))
    if band is not None:
        target = record.get("target") or "observed"
        sources = record.get("label_sources_test") or {}
        clinician = int(sources.get("clinician", 0))
        labels = (
            f"clinicians' change_label for {clinician} of "
            f"{clinician + int(sources.get('score', 0))} test pairs, the {target} score for "
            "the rest"
            if clinician
            else f"the {target} score"
        )
        lines.append(
            f"stable band {band:g} score units (delta {record.get('delta')}); test labels from "
            f"{labels}"
        )
    data = record.get("trained_on") or {}
    if data:
        patients = data.get("patients") or {}
        counts = ", ".join(f"{patients[k]} {k}" for k in ("train", "val", "test") if k in patients)
        digest = str(data.get("manifest_fingerprint") or "")[:12] or "unknown"
        split = str(data.get("split_hash") or "")[:12] or "unknown"
        lines.append(
            f"trained on {data.get('manifest') or 'an unrecorded manifest'} (fingerprint "
            f"{digest}; patients: {counts or 'unknown'}; split {split})"
        )
    head = _number((record.get("head_delta") or {}).get(METRIC))
    value = _number(record.get(METRIC))
    if math.isfinite(head) and math.isfinite(value) and head > value:
        lines.append(
            f"on the same test patients the regression head's predicted change classified "
            f"better ({head:.2f}) than the probe ({value:.2f}): read predicted_change too"
        )
    return lines
