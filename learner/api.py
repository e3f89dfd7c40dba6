"""The public Python API: one import, one ``load_model``, no internals (docs/api.md).

Example (needs a trained model: a `learner run` folder or a change-model folder):
    >>> import learner
    >>> model = learner.load_model("runs/demo")  # doctest: +SKIP
    >>> model.classes  # doctest: +SKIP
    ('worsen', 'stable', 'improve')
    >>> result = model.predict_change("new_patients/manifest.csv")  # doctest: +SKIP
    >>> result.pairs[["patient_id", "visit_from", "visit_to", "label"]]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from learner.errors import DataError
from learner.pipeline import predict
from learner.pipeline.change_model import ChangeModel, is_change_model, load_change_model
from learner.pipeline.fit_change import CHANGE_MODEL_DIR


class Model(ChangeModel):
    """What :func:`load_model` returns: a :class:`ChangeModel` (``info``, ``band``, ``probe``,
    ``classes``, ...) that also embeds scans and predicts, by :mod:`learner.pipeline.predict`."""

    def embed(self, items: Sequence[Any], *, layout: str = "scan") -> np.ndarray:
        """(N, D) float32 embeddings of scans given as file paths, numpy arrays, nibabel
        images or pydicom datasets.

        ``layout`` says how an array is laid out: ``scan`` (default: a reader's output, video
        (T, H, W) uint8, volume (D, H, W), image (H, W), vector (F,)), ``nibabel``
        (``img.get_fdata()``), ``pydicom`` (``ds.pixel_array``) or ``pyav`` (stacked
        ``frame.to_ndarray(format="rgb24")``). A file and the same scan in its library's
        layout give the same embedding (docs/api.md, "Arrays and files")."""
        return predict.embed_scans(self, items, layout=layout)

    def predict_scores(self, items: Sequence[Any], *, layout: str = "scan") -> np.ndarray:
        """The regression head's score (raw units) for scans given as in :meth:`embed`: (N,)."""
        return predict.predict_scores(self, items, layout=layout)

    def ood(self, items: Sequence[Any], *, layout: str = "scan") -> pd.DataFrame:
        """How unlike the model's training scans each item is (given as in :meth:`embed`):
        one row per item with ``ood_score`` (distance to the training scans' embeddings, 1.0
        = the validation scans' 95th percentile), ``ood_p`` (conformal p-value) and ``ood``
        (flagged: beyond the validation scans' 99th percentile); :mod:`learner.evaluate.ood`.
        Raises :class:`~learner.errors.DataError` for a model saved without an OOD
        reference."""
        return predict.ood_scores(self, items, layout=layout)

    def predict_change(
        self,
        manifest: str | Path | pd.DataFrame,
        *,
        columns: Mapping[str, str] | None = None,
        on_error: Literal["skip", "stop"] = "skip",
    ) -> predict.Predictions:
        """Per scan and per consecutive visit pair predictions for a manifest (path or frame);
        rows whose scans cannot be used are skipped and listed in ``summary["skipped"]``
        (``on_error="stop"`` raises at the first instead); see
        :func:`learner.pipeline.predict.predict_change`."""
        return predict.predict_change(self, manifest, columns=columns, on_error=on_error)


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """A change-model folder itself, or the one a `learner run` folder chose on validation
    patients (``RUN/change-model``)."""
    folder = Path(path)
    if is_change_model(folder):
        return folder
    if is_change_model(folder / CHANGE_MODEL_DIR):
        return folder / CHANGE_MODEL_DIR
    raise DataError(
        f"{folder}: neither a change model (model.json) nor a `learner run` folder with "
        f"{CHANGE_MODEL_DIR}/; pass the --out folder of `learner run`, or run it again with "
        "this version to save the change model"
    )


def load_model(path: str | os.PathLike[str], *, device: str = "cpu") -> Model:
    """Load a change model (or a run folder's validation-chosen one) to run on ``device``.

    Nothing in the folder is unpickled or executed: weights are a numeric ``.npz``, the rest
    is JSON.
    """
    loaded = load_change_model(resolve_model_dir(path))
    return Model(**{f.name: getattr(loaded, f.name) for f in fields(loaded)}).to(device)
