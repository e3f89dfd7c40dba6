"""The probe as arrays reproduces scikit-learn's probabilities, in worsen / stable / improve
order; calibration: ECE by hand, a temperature that undoes a known over-confidence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from learner.evaluate.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    softmax,
)
from learner.evaluate.classifier import build_classifier
from learner.evaluate.probe import CLASSES, Probe


def _data(classes: tuple[str, ...], n: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.asarray(classes)[np.arange(n) % len(classes)]
    x = rng.normal(size=(n, 4)) + np.searchsorted(sorted(classes), y)[:, None] * 0.8
    return x, y


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(
    ("classifier", "classes"),
    [("logreg", CLASSES), ("logreg", ("stable", "worsen")), ("mlp", CLASSES)],
)
def test_probe_matches_sklearn_in_documented_order(
    classifier: str, classes: tuple[str, ...], tmp_path: Path
) -> None:
    x, y = _data(classes)
    model = build_classifier(classifier, seed=0).fit(x, y)
    probe = Probe.from_pipeline(model)
    expected = np.zeros((len(x), 3))
    for column, name in enumerate(model.classes_):  # scikit-learn: alphabetical
        expected[:, CLASSES.index(name)] = model.predict_proba(x)[:, column]
    np.testing.assert_allclose(probe.predict_proba(x), expected, atol=1e-9)
    assert (probe.predict(x) == model.predict(x)).all()
    # A JSON round trip keeps every number (and -inf for a class never trained on).
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(probe.to_json()))
    again = Probe.from_json(json.loads(path.read_text()), path)
    np.testing.assert_allclose(again.predict_proba(x), expected, atol=1e-9)


def test_temperature_keeps_labels_and_flattens() -> None:
    x, y = _data(CLASSES)
    probe = Probe.from_pipeline(build_classifier("logreg").fit(x, y))
    labels = probe.predict(x)
    probe.temperature = 5.0
    assert (probe.predict(x) == labels).all()
    assert probe.predict_proba(x).max(axis=1).mean() < softmax(probe.logits(x)).max(axis=1).mean()


def test_ece_by_hand() -> None:
    # Two bins used: confidence 0.9 (2 of 2 right: gap 0.1), 0.6 (1 of 2 right: gap 0.1).
    probs = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    codes = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, codes) == pytest.approx(0.1)
    bins = reliability_bins(probs, codes)
    assert bins["count"].sum() == 4 and bins.loc[bins["count"] > 0, "accuracy"].tolist() == [
        0.5,
        1.0,
    ]


def test_fitted_temperature_undoes_overconfidence() -> None:
    rng = np.random.default_rng(1)
    true_logits = rng.normal(size=(4000, 3)) * 1.5
    codes = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    # Logits three times too sharp: the fitted temperature is close to 3.
    assert fit_temperature(true_logits * 3.0, codes) == pytest.approx(3.0, rel=0.15)
    raw = expected_calibration_error(softmax(true_logits * 3.0), codes)
    fixed = expected_calibration_error(softmax(true_logits * 3.0 / 3.0), codes)
    assert fixed < raw / 2
