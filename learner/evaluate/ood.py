"""How unlike the training scans a new scan is: distance to the training scans, at the
encoder's input and in its embedding, in units calibrated on validation patients' scans.

A change model keeps an **OOD reference** (``ood.npz``) of two parts, each a
:class:`OodReference` fitted and read the same way:

- ``input``: the scans' *input descriptors* (:mod:`learner.data.descriptor`: the tensor the
  encoder is given, pooled to a coarse grid, with its intensity quantiles and frame-to-frame
  change). An encoder trained for a score discards what does not predict the score, so
  another view or modality can look familiar in its embedding; at its input it cannot;
- ``embedding``: the encoder's embeddings of the scans: what the model itself makes of them.

Each part holds the vectors of the scans the encoder and probe were trained on (the
``train`` split and a pretraining pool; at most :data:`MAX_REFERENCE` of them, a seeded
subsample beyond that, the same scans for both parts), their per-dimension mean and scale,
and the distances of the *validation* patients' scans to them. Test patients never enter it.

For a scan with vector ``u`` (its embedding, or its input descriptor):

- **distance**: the mean Euclidean distance from ``(u - mean) / scale`` to its ``k`` nearest
  reference vectors (standardised the same way); ``k`` = :data:`K`, or the reference's
  size when smaller. Standardising keeps one wide dimension from deciding alone; a mean over
  ``k`` neighbours keeps one stray training scan from vouching for a new one;
- score = distance / the 95th percentile of the validation scans' distances: 1.0 is as far
  from the training scans as the 95th-percentile held-out in-distribution scan;
- p = ``(1 + #validation distances >= distance) / (n_validation + 1)``, the conformal
  p-value of "this scan is as typical as a validation scan" (small = unusual);
- flag = distance above the validation distances' 99th percentile (numpy method ``higher``,
  so with fewer than 100 validation scans it is their largest): about 1% of in-distribution
  scans are flagged by design.

Combined (:class:`OodCheck`): ``ood_score`` is the larger of the parts' scores, ``ood_p`` the
smaller of their p-values and ``ood`` is flagged by either part. The smaller of two p-values
is not itself a p-value: an in-distribution scan has it at or below ``a`` with probability at
most ``2a``, and up to about 2% of in-distribution scans are flagged. A model without input
descriptors (tabular input, or embeddings made before descriptors existed) has the embedding
part alone, and says why (``input_note``).

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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
    "score = mean Euclidean distance to the k nearest training scans' vectors (standardised "
    "by the training scans' mean and scale) / the 95th percentile of the validation scans' "
    "distances; p = (1 + #validation distances >= d) / (n_validation + 1); flagged when the "
    "distance exceeds the validation distances' 99th percentile (the largest with fewer than "
    "100 validation scans)"
)
COMBINED_RULE = (
    "two parts, input (each scan's input descriptor: the tensor the encoder is given, pooled, "
    "with intensity quantiles) and embedding (the encoder's output), each: " + RULE + "; "
    "ood_score = the larger of the parts' scores, ood_p = the smaller of their p (at most 2x "
    "a p-value), ood = flagged by either part"
)
PARTS = ("input", "embedding")
# The input part's arrays in ood.npz carry this prefix; the embedding part's none (as in the
# files written before the input part existed).
INPUT_PREFIX = "input_"
OLD_MODEL_NOTE = (
    "saved before input descriptors existed: the embedding part alone; fit the model again "
    "for the input part"
)
_ARRAYS = ("reference", "mean", "scale", "validation")
_T = TypeVar("_T")


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
    """One part's training vectors (embeddings or input descriptors) a new scan is compared
    with, and the validation calibration.

    Attributes:
        reference: (R, D) float32 training-scan vectors, standardised.
        mean, scale: (D,) the standardisation (of the raw training vectors).
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
        """From raw (N, D) training and (V, D) validation vectors.

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

    def distances(self, embeddings: np.ndarray, *, what: str = "embeddings") -> np.ndarray:
        """(N,) mean distance of each raw vector to its k nearest reference vectors."""
        query = np.asarray(embeddings, dtype=np.float64)
        if query.ndim != 2 or query.shape[1] != self.reference.shape[1]:
            raise DataError(
                f"{what} of shape {query.shape} do not match the OOD reference's "
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

    def score(self, embeddings: np.ndarray, *, what: str = "embeddings") -> OodScores:
        """The OOD score, conformal p-value and flag of each raw (N, D) vector."""
        distance = self.distances(embeddings, what=what)
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

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The plain arrays :meth:`from_arrays` reads back, their names after ``prefix``."""
        out = {prefix + name: np.asarray(getattr(self, name)) for name in _ARRAYS}
        out[prefix + "n_training_scans"] = np.asarray(np.int64(self.n_training_scans))
        return out

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str = "") -> OodReference:
        """From what :meth:`arrays` gave (a mapping, or an open ``.npz``).

        Raises:
            KeyError: an array is missing.
        """
        return cls(
            reference=np.array(arrays[prefix + "reference"]).astype(np.float32),
            mean=np.array(arrays[prefix + "mean"]).astype(np.float64),
            scale=np.array(arrays[prefix + "scale"]).astype(np.float64),
            validation=np.sort(np.array(arrays[prefix + "validation"]).astype(np.float64)),
            n_training_scans=int(arrays[prefix + "n_training_scans"]),
        )

    def save(self, path: Path) -> None:
        """Write as a plain numeric ``.npz`` (read back with ``allow_pickle=False``)."""
        _save_npz(path, self.arrays())

    @classmethod
    def load(cls, path: Path) -> OodReference:
        """Read what :meth:`save` wrote; nothing is unpickled.

        Raises:
            DataError: not a plain numeric ``.npz`` of these arrays.
        """
        return _load_npz(path, cls.from_arrays)


@dataclass(frozen=True, eq=False)
class OodFound:
    """Per scan, combined over the parts: ``score`` (``ood_score``, the larger), ``p``
    (``ood_p``, the smaller) and ``flag`` (``ood``, by either), each (N,); ``parts``: each
    part's own :class:`OodScores` (``input`` only where the model has that part)."""

    score: np.ndarray
    p: np.ndarray
    flag: np.ndarray
    parts: dict[str, OodScores]

    @property
    def by(self) -> list[str]:
        """Per scan: the parts that flag it (``input``, ``embedding``, ``input+embedding``),
        ``""`` when none does."""
        flags = [(name, self.parts[name].flag) for name in PARTS if name in self.parts]
        return ["+".join(name for name, flag in flags if flag[i]) for i in range(len(self.flag))]


@dataclass(frozen=True, eq=False)
class OodCheck:
    """The two-part OOD reference of a change model (see the module docstring).

    Attributes:
        embedding: the training scans' embeddings.
        input: the training scans' input descriptors; None for a model without them.
        input_note: why there is no input part ("" when there is one).
    """

    embedding: OodReference
    input: OodReference | None = None
    input_note: str = ""

    @classmethod
    def fit(
        cls,
        embeddings: tuple[np.ndarray, np.ndarray],
        descriptors: tuple[np.ndarray, np.ndarray] | None = None,
        *,
        input_note: str = "",
        max_reference: int = MAX_REFERENCE,
    ) -> OodCheck:
        """From (training, validation) raw embeddings and, when the scans have them, input
        descriptors of the same scans in the same order (``input_note`` says why not).

        Raises:
            DataError: no training or no validation scan.
        """
        embedding = OodReference.fit(*embeddings, max_reference=max_reference)
        if descriptors is None:
            return cls(embedding, None, input_note)
        return cls(embedding, OodReference.fit(*descriptors, max_reference=max_reference))

    @property
    def parts(self) -> dict[str, OodReference]:
        """The parts this check has, in :data:`PARTS` order."""
        both = {"input": self.input, "embedding": self.embedding}
        return {name: part for name, part in both.items() if part is not None}

    def score(self, embeddings: np.ndarray, descriptors: np.ndarray | None = None) -> OodFound:
        """Combined and per-part scores of raw (N, D) embeddings and (N, P) descriptors.

        Raises:
            DataError: the check has an input part but no descriptors were given, or the
                shapes do not match the reference.
        """
        found = {"embedding": self.embedding.score(embeddings)}
        if self.input is not None:
            if descriptors is None:
                raise DataError(
                    "these scans have no input descriptors to compare with the model's input "
                    "reference; embed them with this learner"
                )
            found["input"] = self.input.score(descriptors, what="input descriptors")
        ordered = {name: found[name] for name in PARTS if name in found}
        scores = list(ordered.values())
        return OodFound(
            score=np.max([f.score for f in scores], axis=0),
            p=np.min([f.p for f in scores], axis=0),
            flag=np.any([f.flag for f in scores], axis=0),
            parts=ordered,
        )

    def describe(self) -> dict[str, object]:
        """What ``model.json``'s ``ood`` block records: the rule, and each part's sizes and
        thresholds (the input part's ``reason`` where it is missing)."""
        block: dict[str, object] = {"available": True, "rule": COMBINED_RULE}
        for name in PARTS:
            part = self.parts.get(name)
            if part is None:
                block[name] = {"available": False, "reason": self.input_note}
            else:
                block[name] = {k: v for k, v in part.describe().items() if k != "rule"}
        return block

    def save(self, path: Path) -> None:
        """Both parts in one plain numeric ``.npz`` (the input part's names prefixed)."""
        arrays = self.embedding.arrays()
        if self.input is not None:
            arrays.update(self.input.arrays(INPUT_PREFIX))
        else:
            arrays["input_note"] = np.asarray(self.input_note)
        _save_npz(path, arrays)

    @classmethod
    def load(cls, path: Path) -> OodCheck:
        """Read what :meth:`save` wrote, or an embedding-only file of an older learner
        (:data:`OLD_MODEL_NOTE`); nothing is unpickled.

        Raises:
            DataError: not a plain numeric ``.npz`` of these arrays.
        """

        def parse(npz: Any) -> OodCheck:
            embedding = OodReference.from_arrays(npz)
            if INPUT_PREFIX + "reference" in npz.files:
                return cls(embedding, OodReference.from_arrays(npz, INPUT_PREFIX))
            note = str(npz["input_note"]) if "input_note" in npz.files else OLD_MODEL_NOTE
            return cls(embedding, None, note)

        return _load_npz(path, parse)


def _save_npz(path: Path, arrays: dict[str, Any]) -> None:
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _load_npz(path: Path, parse: Callable[[Any], _T]) -> _T:
    """``parse`` of the open ``.npz`` at ``path``, read with ``allow_pickle=False``.

    Raises:
        DataError: the file is not a plain numeric ``.npz`` holding what ``parse`` reads.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            return parse(npz)
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise DataError(
            f"{path}: refusing to load the OOD reference: not the plain numeric .npz "
            f"learner writes ({exc}); save the change model again"
        ) from None
