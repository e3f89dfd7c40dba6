"""How unlike the training scans a new scan is: distance to the training embeddings, in
units calibrated on validation patients' scans.

A change model keeps an **OOD reference** (``ood.npz``): the embeddings of the scans its
encoder and probe were trained on (the ``train`` split and a pretraining pool; at most
:data:`MAX_REFERENCE` of them, a seeded subsample beyond that), their per-dimension mean and
scale, and the distances of the *validation* patients' scans to them. Test patients never
enter it.

For a scan with embedding ``u``:

- **distance**: the mean Euclidean distance from ``(u - mean) / scale`` to its ``k`` nearest
  reference embeddings (standardised the same way); ``k`` = :data:`K`, or the reference's
  size when smaller. Standardising keeps one wide embedding dimension from deciding alone;
  a mean over ``k`` neighbours keeps one stray training scan from vouching for a new one;
- ``ood_score`` = distance / the 95th percentile of the validation scans' distances: 1.0 is
  as far from the training scans as the 95th-percentile held-out in-distribution scan;
- ``ood_p`` = ``(1 + #validation distances >= distance) / (n_validation + 1)``, the
  conformal p-value of "this scan is as typical as a validation scan" (small = unusual);
- ``ood`` (the flag) = distance above the validation distances' 99th percentile (numpy
  method ``higher``, so with fewer than 100 validation scans it is their largest): about 1%
  of in-distribution scans are flagged by design.

A flag says the scan does not look like what the model learnt from (another view, modality,
scanner, preprocessing); its prediction is then an extrapolation, not a measured one.

Example:
    >>> rng = np.random.default_rng(0)
    >>> ref = OodReference.fit(rng.normal(size=(200, 4)), rng.normal(size=(50, 4)))
    >>> found = ref.score(np.array([[0.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]))
    >>> found.flag.tolist()
    [False, True]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from learner.errors import DataError
from learner.io import atomic_path

K = 5
MAX_REFERENCE = 5000
SCORE_QUANTILE = 0.95
FLAG_QUANTILE = 0.99
# The reference's subsample is the same for the same embeddings, run after run.
SUBSAMPLE_SEED = 0
# Distances are computed for this many query scans at a time (memory stays ~ CHUNK x 5000).
CHUNK = 1024
RULE = (
    "ood_score = mean Euclidean distance to the k nearest training-scan embeddings "
    "(standardised by the training scans' mean and scale) / the 95th percentile of the "
    "validation scans' distances; ood_p = (1 + #validation distances >= d) / (n_validation "
    "+ 1); flagged (ood) when the distance exceeds the validation distances' 99th percentile "
    "(the largest with fewer than 100 validation scans)"
)
_ARRAYS = ("reference", "mean", "scale", "validation")


@dataclass(frozen=True, eq=False)
class OodScores:
    """Per scan: ``distance`` (standardised units), ``score`` (``ood_score``), ``p``
    (``ood_p``) and ``flag`` (``ood``), each (N,)."""

    distance: np.ndarray
    score: np.ndarray
    p: np.ndarray
    flag: np.ndarray


@dataclass(frozen=True, eq=False)
class OodReference:
    """The training embeddings a new scan is compared with, and the validation calibration.

    Attributes:
        reference: (R, D) float32 training-scan embeddings, standardised.
        mean, scale: (D,) the standardisation (of the raw training embeddings).
        validation: (V,) float64 sorted distances of the validation scans.
        n_training_scans: training scans before the subsample (R when none was needed).
    """

    reference: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    validation: np.ndarray
    n_training_scans: int

    @classmethod
    def fit(
        cls, training: np.ndarray, validation: np.ndarray, *, max_reference: int = MAX_REFERENCE
    ) -> OodReference:
        """From raw (N, D) training and (V, D) validation embeddings.

        Raises:
            DataError: no training or no validation embedding (nothing to calibrate on).
        """
        train = np.asarray(training, dtype=np.float64)
        val = np.asarray(validation, dtype=np.float64)
        if train.ndim != 2 or len(train) == 0:
            raise DataError("no training scans to compare new scans with")
        if val.ndim != 2 or len(val) == 0:
            raise DataError("no validation scans to calibrate the OOD score on")
        n_training = len(train)
        if n_training > max_reference:
            keep = np.random.default_rng(SUBSAMPLE_SEED).choice(
                n_training, max_reference, replace=False
            )
            train = train[np.sort(keep)]
        mean = train.mean(axis=0)
        scale = train.std(axis=0)
        # A dimension constant over the training scans keeps raw units: any spread there is
        # new, and a tiny divisor would let rounding noise dominate every distance.
        scale = np.where(scale > 1e-8, scale, 1.0)
        reference = ((train - mean) / scale).astype(np.float32)
        partial = cls(reference, mean, scale, np.zeros(0), n_training)
        return cls(reference, mean, scale, np.sort(partial.distances(val)), n_training)

    @property
    def k(self) -> int:
        return min(K, len(self.reference))

    @property
    def score_unit(self) -> float:
        """The validation scans' 95th-percentile distance: ``ood_score`` 1.0."""
        return float(np.quantile(self.validation, SCORE_QUANTILE))

    @property
    def flag_distance(self) -> float:
        """A distance above this is flagged: the validation distances' 99th percentile
        (``higher``: an observed distance, the largest below 100 validation scans)."""
        return float(np.quantile(self.validation, FLAG_QUANTILE, method="higher"))

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """(N,) mean distance of each raw embedding to its k nearest reference embeddings."""
        query = np.asarray(embeddings, dtype=np.float64)
        if query.ndim != 2 or query.shape[1] != self.reference.shape[1]:
            raise DataError(
                f"embeddings of shape {query.shape} do not match the OOD reference's "
                f"{self.reference.shape[1]} dimensions; save the change model again"
            )
        ref = self.reference.astype(np.float64)
        ref_sq = np.einsum("ij,ij->i", ref, ref)
        out = np.empty(len(query), dtype=np.float64)
        for start in range(0, len(query), CHUNK):
            block = (query[start : start + CHUNK] - self.mean) / self.scale
            sq = np.einsum("ij,ij->i", block, block)[:, None] + ref_sq[None] - 2.0 * block @ ref.T
            nearest = np.partition(np.maximum(sq, 0.0), self.k - 1, axis=1)[:, : self.k]
            out[start : start + len(block)] = np.sqrt(nearest).mean(axis=1)
        return out

    def score(self, embeddings: np.ndarray) -> OodScores:
        """The OOD score, conformal p-value and flag of each raw (N, D) embedding."""
        distance = self.distances(embeddings)
        unit = self.score_unit
        with np.errstate(divide="ignore", invalid="ignore"):
            # Validation scans all at distance 0 (a degenerate encoder): any distance is new.
            score = distance / unit if unit > 0 else np.where(distance > 0, np.inf, 0.0)
        # Validation distances at or above each d: searchsorted on the sorted distances.
        at_least = len(self.validation) - np.searchsorted(self.validation, distance, side="left")
        p = (1.0 + at_least) / (len(self.validation) + 1.0)
        return OodScores(distance, score, p, distance > self.flag_distance)

    def describe(self) -> dict[str, object]:
        """What ``model.json``'s ``ood`` block records: sizes, thresholds and the rule."""
        return {
            "available": True,
            "k": self.k,
            "n_reference": len(self.reference),
            "n_training_scans": self.n_training_scans,
            "n_validation": len(self.validation),
            "score_unit_distance": self.score_unit,
            "flag_distance": self.flag_distance,
            "flag_score": self.flag_distance / self.score_unit if self.score_unit > 0 else None,
            "rule": RULE,
        }

    def save(self, path: Path) -> None:
        """Write as a plain numeric ``.npz`` (read back with ``allow_pickle=False``)."""
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays, n_training_scans=np.int64(self.n_training_scans))

    @classmethod
    def load(cls, path: Path) -> OodReference:
        """Read what :meth:`save` wrote; nothing is unpickled.

        Raises:
            DataError: not a plain numeric ``.npz`` of these arrays.
        """
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: np.array(npz[name]) for name in _ARRAYS}
                n_training = int(npz["n_training_scans"])
        except (OSError, ValueError, EOFError, KeyError) as exc:
            raise DataError(
                f"{path}: refusing to load the OOD reference: not the plain numeric .npz "
                f"learner writes ({exc}); save the change model again"
            ) from None
        return cls(
            reference=arrays["reference"].astype(np.float32),
            mean=arrays["mean"].astype(np.float64),
            scale=arrays["scale"].astype(np.float64),
            validation=np.sort(arrays["validation"].astype(np.float64)),
            n_training_scans=n_training,
        )
