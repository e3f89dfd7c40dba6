"""The public Python API: one import, one ``load_model``, no internals (docs/api.md).

Example:
    >>> import learner
    >>> model = learner.load_model("runs/demo")  # a run folder or a change-model folder
    >>> model.classes
    ('worsen', 'stable', 'improve')
    >>> result = model.predict_change("new_patients/manifest.csv")
    >>> result.pairs[["patient_id", "visit_from", "visit_to", "label"]]
"""

from __future__ import annotations

import os
from pathlib import Path

from learner.errors import DataError
from learner.pipeline.change_model import ChangeModel, is_change_model, load_change_model
from learner.pipeline.fit_change import CHANGE_MODEL_DIR


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


def load_model(path: str | os.PathLike[str], *, device: str = "cpu") -> ChangeModel:
    """Load a change model (or a run folder's validation-chosen one) to run on ``device``.

    Nothing in the folder is unpickled or executed: weights are a numeric ``.npz``, the rest
    is JSON.
    """
    return load_change_model(resolve_model_dir(path)).to(device)
