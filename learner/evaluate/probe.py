"""The change probe as plain arrays, its outputs in the documented class order.

scikit-learn orders a classifier's ``classes_`` alphabetically (improve, stable, worsen);
:class:`Probe` holds the same fitted standardisation and layers with the logits' columns in
:data:`CLASSES` order (worsen, stable, improve), computes them in numpy, and reads / writes
them as JSON (never pickle), so that a saved change model is data, not code.

Example:
    >>> from learner.evaluate.classifier import build_classifier
    >>> x = np.array([[-2.0], [-1.5], [-0.2], [0.2], [1.5], [2.0]])  # pair features
    >>> y = np.array(["worsen", "worsen", "stable", "stable", "improve", "improve"])
    >>> pipeline = build_classifier("logreg").fit(x, y)  # as evaluate_change fits it
    >>> pipeline.classes_.tolist()
    ['improve', 'stable', 'worsen']
    >>> probe = Probe.from_pipeline(pipeline)
    >>> probe.predict_proba(np.array([[-3.0], [3.0]])).round(2)  # worsen, stable, improve
    array([[0.83, 0.16, 0.01],
           [0.01, 0.16, 0.83]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline

from learner.data.pairs import LABELS
from learner.errors import DataError
from learner.evaluate.calibration import softmax

CLASSES: tuple[str, str, str] = LABELS


@dataclass
class Probe:
    """The change classifier on frozen pair features, as plain arrays.

    Attributes:
        mean, scale: (F,) standardisation of the pair feature.
        layers: (weight (in, out), bias (out,)) per layer; ReLU between layers; the last
            layer's outputs are the logits of :data:`CLASSES` (a class the training pairs
            lacked has logit -inf: probability 0).
        temperature: logits are divided by it before the softmax (1 = uncalibrated).
    """

    mean: np.ndarray
    scale: np.ndarray
    layers: list[tuple[np.ndarray, np.ndarray]]
    temperature: float = 1.0

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> Probe:
        """Read a fitted ``Pipeline(scale, clf)`` (see ``build_classifier``)."""
        scaler, clf = pipeline.named_steps["scale"], pipeline.named_steps["clf"]
        fitted = [str(c) for c in clf.classes_]
        layers: list[tuple[np.ndarray, np.ndarray]]
        if isinstance(clf, LogisticRegression):
            layers = [(np.asarray(clf.coef_, np.float64).T, np.asarray(clf.intercept_, np.float64))]
        elif isinstance(clf, MLPClassifier):
            layers = [
                (np.asarray(w, np.float64), np.asarray(b, np.float64))
                for w, b in zip(clf.coefs_, clf.intercepts_, strict=True)
            ]
        else:
            raise TypeError(f"unsupported classifier {type(clf).__name__}")
        weight, bias = layers[-1]
        if len(fitted) == 2:
            # A binary fit scores only the second class (sigmoid); softmax([0, z]) equals it.
            weight = np.concatenate([np.zeros_like(weight), weight], axis=1)
            bias = np.concatenate([np.zeros(1), bias])
        # Columns in CLASSES order; a class absent from training never wins.
        out_w = np.zeros((weight.shape[0], len(CLASSES)))
        out_b = np.full(len(CLASSES), -np.inf)
        for column, name in enumerate(fitted):
            k = CLASSES.index(name)
            out_w[:, k], out_b[k] = weight[:, column], bias[column]
        layers[-1] = (out_w, out_b)
        return cls(
            mean=np.asarray(scaler.mean_, np.float64),
            scale=np.asarray(scaler.scale_, np.float64),
            layers=layers,
        )

    def composed(self, a: np.ndarray, c: np.ndarray) -> Probe:
        """The same probe on raw features ``x`` when it was fitted on ``x @ a + c``.

        The affine map and the standardisation fold into the first layer (the new probe's
        own standardisation is the identity), so a probe fitted after a projection (e.g.
        :class:`~learner.evaluate.reduce.ScanProjection`) is saved and applied as any other.
        """
        a = np.asarray(a, np.float64)
        weight, bias = self.layers[0]
        scaled = weight / self.scale[:, None]
        first = (a @ scaled, (np.asarray(c, np.float64) - self.mean) @ scaled + bias)
        return Probe(
            mean=np.zeros(a.shape[0]),
            scale=np.ones(a.shape[0]),
            layers=[first, *self.layers[1:]],
            temperature=self.temperature,
        )

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, F) pair features -> (N, 3) uncalibrated logits in :data:`CLASSES` order."""
        h = (np.asarray(x, np.float64) - self.mean) / self.scale
        for i, (weight, bias) in enumerate(self.layers):
            h = h @ weight + bias
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, F) -> (N, 3) calibrated probabilities, columns :data:`CLASSES`."""
        return softmax(self.logits(x) / self.temperature)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, F) -> (N,) labels from :data:`CLASSES` (the temperature never changes them)."""
        return np.asarray(CLASSES)[np.argmax(self.logits(x), axis=1)]

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": list(CLASSES),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "layers": [
                {"weight": w.tolist(), "bias": [None if math.isinf(v) else v for v in b.tolist()]}
                for w, b in self.layers
            ],
            "activation": "relu",
            "temperature": self.temperature,
        }

    @classmethod
    def from_json(cls, tree: dict[str, Any], source: Path) -> Probe:
        try:
            if list(tree["classes"]) != list(CLASSES):
                raise ValueError(f"classes {tree['classes']} are not {list(CLASSES)}")
            layers = [
                (
                    np.asarray(layer["weight"], np.float64),
                    np.array([-np.inf if v is None else v for v in layer["bias"]], np.float64),
                )
                for layer in tree["layers"]
            ]
            return cls(
                mean=np.asarray(tree["mean"], np.float64),
                scale=np.asarray(tree["scale"], np.float64),
                layers=layers,
                temperature=float(tree["temperature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"{source}: not a learner probe ({exc}); save the change model again with "
                "`learner run` or `learner evaluate`"
            ) from None
