"""A change model: everything needed to answer "worse, stable or better?" for new patients.

A change model is a folder of plain data, nothing executable:

- ``model.json``: format version, class order, stable band, score range and direction, the
  config (input spec, encoder), the training split, calibration, the metrics the model
  was selected on, which label answers (``answer``: probe or head, chosen on validation
  patients; :mod:`learner.evaluate.answer`), and its held-out ``record``
  (:mod:`learner.pipeline.record`; absent in models saved before records existed);
- ``probe.json``: the fitted probe as numbers (:class:`learner.evaluate.probe.Probe`): the
  standardisation (mean, scale) and the layers (weights, biases) of the logistic regression
  (one layer) or the MLP, with the logits' columns already in :data:`CLASSES` order;
- ``encoder.npz``: the encoder and regression-head weights (numpy arrays, read with
  ``allow_pickle=False``);
- ``ood.npz``: the OOD reference (:mod:`learner.evaluate.ood`): training scans' input
  descriptors and embeddings, their standardisation and the validation scans' distances
  (the embedding part alone for tabular input and older models), numpy arrays read with
  ``allow_pickle=False`` (absent in models saved before it existed, and where the model had
  no validation scans; ``model.json``'s ``ood`` block says which).

Loading parses JSON and numeric arrays only; a folder holding a pickle-like file (``.pkl``,
``.joblib``, ``.pt``, ...) is refused, so no file of a change model can run code.

Example (needs the change model of a `learner run` folder):
    >>> model = load_change_model("runs/demo/change-model")  # doctest: +SKIP
    >>> model.classes  # doctest: +SKIP
    ('worsen', 'stable', 'improve')
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from learner.device import resolve_device
from learner.errors import DataError
from learner.evaluate.answer import answer_source
from learner.evaluate.ood import OodCheck
from learner.evaluate.probe import CLASSES, Probe
from learner.io import atomic_path, atomic_write_text, write_json
from learner.pipeline.record import record_caveat
from learner.train.module import LearnerModule

FORMAT = "learner-change-model"
FORMAT_VERSION = 1
MODEL_FILE, PROBE_FILE, WEIGHTS_FILE = "model.json", "probe.json", "encoder.npz"
OOD_FILE = "ood.npz"
# Files that can carry code when loaded; a change model never holds one.
UNSAFE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt", ".bin", ".dill")


@dataclass
class ChangeModel:
    """A loaded change model: encoder + regression head + probe + what they mean.

    Predicting with it is :mod:`learner.pipeline.predict`'s (``embed_scans``,
    ``predict_scores``, ``predict_change``); :func:`learner.load_model` returns a
    :class:`learner.api.Model`, this with those as methods.

    Attributes:
        module: the encoder and regression head (eval mode).
        probe: the change classifier on pair features.
        info: the parsed ``model.json`` (band, feature, higher_is_better, metrics, record...).
        folder: where it was loaded from.
        classes: ``("worsen", "stable", "improve")``, the column order of every probability.
        ood_reference: what a new scan's OOD score is measured against
            (:class:`~learner.evaluate.ood.OodCheck`: its input and embedding parts), or None
            for a model saved without one.
    """

    module: LearnerModule
    probe: Probe
    info: dict[str, Any]
    folder: Path
    classes: tuple[str, str, str] = field(default=CLASSES)
    ood_reference: OodCheck | None = None

    @property
    def band(self) -> float:
        """The stable band in raw score units."""
        return float(self.info["band"])

    @property
    def record(self) -> dict[str, Any] | None:
        """The held-out test record (balanced accuracy with 95% CI, chance, ``untrained``,
        ``head_delta``, band, training data; :mod:`learner.pipeline.record`), or None when
        the model was saved without one."""
        record = self.info.get("record")
        return record if isinstance(record, dict) and record else None

    @property
    def caveat(self) -> str:
        """Why not to trust this model's predictions (``""`` when its record beats chance and
        the untrained encoder); every prediction row carries it."""
        return record_caveat(self.record)

    @property
    def answer_from(self) -> str:
        """Which label the ``answer`` column of a prediction reads: ``probe`` or ``head``, as
        chosen on validation patients when the model was fitted (``info["answer"]``), or
        ``probe (no validation choice recorded)`` for a model saved before the choice."""
        return answer_source(self.info)

    @property
    def feature(self) -> str:
        return str(self.info["feature"])

    @property
    def higher_is_better(self) -> bool:
        return bool(self.info["higher_is_better"])

    def to(self, device: str) -> Self:
        """Run the encoder on ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``auto``)."""
        self.module.to(resolve_device(device))
        return self


def save_change_model(
    folder: Path,
    module: LearnerModule,
    probe: Probe,
    info: dict[str, Any],
    ood: OodCheck | None = None,
) -> Path:
    """Write a change model folder (replacing one already there); returns ``folder``.

    Args:
        folder: destination.
        module: the trained encoder and head (its config and score range are recorded).
        probe: the fitted, calibrated probe.
        info: band, delta, feature, classifier, higher_is_better, metrics, calibration,
            split, feature_stats, record, source, ood: written into ``model.json`` as given.
        ood: the OOD reference, written as ``ood.npz`` (none without it).
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    with atomic_path(tmp / WEIGHTS_FILE) as tmp_path, open(tmp_path, "wb") as fh:
        np.savez(fh, **state)
    atomic_write_text(tmp / PROBE_FILE, json.dumps(probe.to_json()))
    if ood is not None:
        ood.save(tmp / OOD_FILE)
    write_json(
        tmp / MODEL_FILE,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "classes": list(CLASSES),
            "config": module.cfg.to_plain(),
            "score_range": list(module.score_range),
            **info,
        },
    )
    # Swap in whole: a reader never sees half a model.
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def is_change_model(folder: Path) -> bool:
    return (Path(folder) / MODEL_FILE).is_file()


def load_change_model(folder: str | Path) -> ChangeModel:
    """Load a change model folder; nothing in it is unpickled or executed.

    Raises:
        DataError: a missing or foreign file, a pickle-like file in the folder, or weights
            that do not fit the recorded config.
    """
    folder = Path(folder)
    if not is_change_model(folder):
        raise DataError(
            f"{folder}: no {MODEL_FILE}; pass a change-model folder or a `learner run` folder"
        )
    unsafe = sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(UNSAFE_SUFFIXES))
    if unsafe:
        raise DataError(
            f"{folder / unsafe[0]}: refusing to load a change model holding a pickle-like file "
            "(it could run code); a change model is JSON and .npz only: remove the file or "
            "save the model again"
        )
    info = _read_json(folder / MODEL_FILE)
    if info.get("format") != FORMAT or list(info.get("classes", [])) != list(CLASSES):
        raise DataError(
            f"{folder / MODEL_FILE}: not a learner change model (format {info.get('format')!r}); "
            "save it with `learner run` or `learner evaluate`"
        )
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise DataError(
            f"{folder / MODEL_FILE}: format version {info['format_version']} is newer than this "
            f"learner reads ({FORMAT_VERSION}); upgrade learner"
        )
    probe = Probe.from_json(_read_json(folder / PROBE_FILE), folder / PROBE_FILE)
    weights = folder / WEIGHTS_FILE
    try:
        with np.load(weights, allow_pickle=False) as npz:
            state = {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(
            f"{weights}: refusing to load: not a plain numeric .npz ({exc}); save the change "
            "model again"
        ) from None
    run_info: dict[str, Any] = {k: info[k] for k in ("seed", "split_hash") if k in info}
    module = LearnerModule(info["config"], tuple(info["score_range"]), run_info)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DataError(f"{weights}: weights do not fit the recorded config ({first})") from None
    module.eval()
    return ChangeModel(
        module=module, probe=probe, info=info, folder=folder, ood_reference=_load_ood(folder, info)
    )


def _load_ood(folder: Path, info: dict[str, Any]) -> OodCheck | None:
    """The model's OOD reference; None for a model saved without one (``model.json`` has no
    ``ood`` block, or one saying it is not available)."""
    path = folder / OOD_FILE
    if path.is_file():
        return OodCheck.load(path)
    if (info.get("ood") or {}).get("available"):
        raise DataError(f"{path}: missing; the change model is incomplete, save it again")
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing; the change model is incomplete, save it again") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); save the change model again") from None
    if not isinstance(tree, dict):
        raise DataError(f"{path}: expected a JSON object; save the change model again")
    return tree
