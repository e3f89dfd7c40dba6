"""A low-capacity change probe: visit embeddings projected onto their first k principal axes.

With about a hundred training pairs and 128 embedding dimensions, a full-rank probe can fit
noise; projecting every visit embedding onto the k leading principal axes of the *training
patients'* visit embeddings (each dimension standardised first) leaves the probe k inputs per
visit. The axes come from training patients only, so a test patient never shapes them.

The projection is affine, so a probe fitted on projected pair features folds back into one on
the raw features (:meth:`ScanProjection.feature_map`): a saved change model stays a plain
:class:`~learner.evaluate.probe.Probe` that reads raw embeddings.

Example:
    >>> rng = np.random.default_rng(0)
    >>> matrix = rng.normal(size=(40, 16))  # (V, D) visit embeddings
    >>> matrix[:, :4] += 3 * rng.normal(size=(40, 1))  # four dimensions share one signal
    >>> train_rows = np.arange(40) < 30  # the training patients' visits
    >>> projection = ScanProjection.fit(matrix[train_rows], k=8)
    >>> projection.transform(matrix).shape
    (40, 8)
    >>> round(float(projection.explained[0]), 2)  # the shared signal's axis
    0.26
    >>> ScanProjection.fit(matrix[:5], k=8).k  # at most N - 1 axes
    4
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from learner.errors import ConfigError, DataError


@dataclass(frozen=True)
class ScanProjection:
    """``z = ((u - mean) / scale) @ components``.

    Attributes:
        mean, scale: (D,) standardisation of the training visit embeddings (a constant
            dimension gets scale 1).
        components: (D, k) orthonormal principal axes, largest variance first.
        explained: (k,) fraction of the standardised variance along each axis.
    """

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    explained: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray, k: int) -> ScanProjection:
        """Principal axes of ``rows`` (N, D), at most ``min(k, N - 1, D)`` of them.

        Raises:
            ConfigError: ``k`` < 1.
            DataError: fewer than 2 rows (no variance to find axes in).
        """
        if k < 1:
            raise ConfigError(f"eval.pca={k}: use a number of components >= 1, or 0 for none")
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] < 2:
            raise DataError(
                f"eval.pca needs at least 2 training visit embeddings to find axes, got "
                f"{rows.shape[0] if rows.ndim == 2 else 0}"
            )
        mean = rows.mean(axis=0)
        scale = rows.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        centred = (rows - mean) / scale
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        keep = min(k, rows.shape[0] - 1, rows.shape[1])
        variance = singular**2
        total = variance.sum()
        explained = variance[:keep] / total if total > 0 else np.zeros(keep)
        return cls(mean=mean, scale=scale, components=vt[:keep].T.copy(), explained=explained)

    def truncated(self, k: int) -> ScanProjection:
        """The same projection onto its first ``k`` axes (the axes are nested)."""
        if not 1 <= k <= self.k:
            raise ConfigError(f"cannot keep {k} of {self.k} principal axes")
        return ScanProjection(
            mean=self.mean,
            scale=self.scale,
            components=self.components[:, :k].copy(),
            explained=self.explained[:k].copy(),
        )

    @property
    def k(self) -> int:
        return int(self.components.shape[1])

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        """(V, D) visit embeddings -> (V, k)."""
        return ((np.asarray(matrix, np.float64) - self.mean) / self.scale) @ self.components

    def feature_map(self, feature: str) -> tuple[np.ndarray, np.ndarray]:
        """``(A, c)`` with ``features(transform(U)) = features(U) @ A + c`` for one pair feature.

        ``diff`` (and ``rate``): the mean cancels, ``A = components / scale``; ``concat``:
        that map on each half, with the mean's offset; ``hybrid``: the head's column passes
        unchanged.
        """
        a = self.components / self.scale[:, None]
        offset = -(self.mean / self.scale) @ self.components
        d, k = a.shape
        if feature in ("diff", "rate"):  # rate: the same map, then one division per pair
            return a, np.zeros(k)
        if feature == "concat":
            block = np.zeros((2 * d, 2 * k))
            block[:d, :k], block[d:, k:] = a, a
            return block, np.concatenate([offset, offset])
        if feature == "hybrid":
            block = np.zeros((1 + d, 1 + k))
            block[0, 0] = 1.0
            block[1:, 1:] = a
            return block, np.zeros(1 + k)
        raise ConfigError(f"feature={feature!r} has no projection; use diff, concat or hybrid")
