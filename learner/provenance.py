"""What produced an artefact: the keys that tie every cached result of `learner run` to its inputs.

A cell of `learner run` caches a checkpoint, embeddings and evaluation metrics. Each is valid
only for the inputs that produced it, so each carries a *key*: a flat mapping of dotted names
to values (the resolved config keys that affect it, a fingerprint of the manifest's content,
the split's hash, the package version) and its SHA-256 digest. Reading a cache compares keys;
:func:`changed_keys` names what differs so that a refusal can say exactly what changed.

Two stages have keys: pretraining (checkpoint and embeddings) and evaluation (metrics). The
evaluation key includes the pretraining digest, so an evaluation-only change (``eval.delta``)
re-evaluates cached embeddings while a pretraining change invalidates both.

Example:
    >>> from learner.config import build_config
    >>> frame = pd.DataFrame({"patient_id": ["a", "a"], "visit": ["v0", "v1"], "score": [3, 5]})
    >>> content = manifest_fingerprint(frame)  # a manifest frame, as load_manifest gives it
    >>> old_key = pretrain_key(build_config({}, ["train.epochs=12"]), content, split_hash="ab12")
    >>> key = pretrain_key(build_config({}), content, split_hash="ab12")  # epochs: 20
    >>> changed_keys(old_key, key)
    ['train.epochs: 12 -> 20']
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

import learner
from learner.config import Config
from learner.device import training_device

# Config keys that never change what a cell computes: where files are read from or written
# to, and how many loader processes read them. Every other key is part of the key.
_NEUTRAL = (
    "data.manifest",
    "data.cache_dir",
    "data.num_workers",
    "data.prefetch_factor",
    "train.out",
)
# Sections that belong to other stages: `run` is the grid itself, `eval` the evaluation key.
_PRETRAIN_SECTIONS = ("data", "model", "objective", "train")
# An untrained encoder depends on its architecture, the data and the seed, not on training.
_UNTRAINED_SECTIONS = ("data", "model")
# Keys added after cells were cached whose default computes exactly what every earlier
# learner computed: at that default they are left out of the key, so the cells made before
# them stay valid; set to anything else, they enter it. (Adding a key to this list is only
# honest when the default reproduces the earlier training bit for bit: `inter` is the mask
# and the sampler every earlier learner used; `score_noise: 0` is the hard threshold partition,
# the same floats; `drop_last: false` keeps the last batch, as every earlier learner did;
# `channels_last: false` is the memory layout every earlier learner trained in.
# tests/losses/test_pair_sets.py, test_score_noise.py, tests/train/test_drop_last.py and
# tests/train/test_channels_last.py check the key.)
_SILENT_DEFAULTS: dict[str, Any] = {
    "objective.pairs": "inter",
    "objective.score_noise": 0.0,
    "train.drop_last": False,
    "train.channels_last": False,
}

# eval keys that configure fine-tuning: part of a fine-tuned cell's key, not of evaluations.
FINETUNE_KEYS = ("eval.finetune", "eval.finetune_lr")
_FINETUNE_TRAIN_KEYS = ("train.seed", "train.batch_size", "train.weight_decay", "train.grad_clip")

# The key of what a folder holds (a run cell, an evaluation, a change model).
KEY_FILE = "key.json"

# Manifest columns whose values shape training and evaluation (``row`` is only the position).
_MANIFEST_COLUMNS = ("patient_id", "visit", "visit_order", "path", "score", "zone", "split")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def digest(parts: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of ``parts`` as canonical JSON (sorted keys)."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def manifest_fingerprint(frame: pd.DataFrame, feature_columns: list[str] | None = None) -> str:
    """A digest of a manifest's content: its rows and the identity of every scan file.

    The rows are the contract columns present (and tabular feature columns), in order. A
    scan file's identity is its path, size and modification time: rewriting a scan (a new
    synthetic cohort in the same folder, a re-exported clip) changes the fingerprint without
    reading the file's bytes, which would cost minutes on a large video cohort.

    Args:
        frame: a manifest frame (:class:`learner.data.manifest.Manifest` ``.frame``).
        feature_columns: tabular feature columns, included in the rows.

    Returns:
        SHA-256 hex digest.
    """
    columns = [c for c in _MANIFEST_COLUMNS if c in frame.columns]
    columns += [c for c in feature_columns or [] if c in frame.columns and c not in columns]
    hasher = hashlib.sha256()
    hasher.update(frame[columns].to_csv(index=False, na_rep="").encode("utf-8"))
    if "path" in frame.columns:
        for path in frame["path"].astype(str):
            hasher.update(_file_identity(path).encode("utf-8"))
    return hasher.hexdigest()


def change_label_content(frame: pd.DataFrame) -> str | None:
    """A digest of a manifest's clinician change labels (``change_label`` per patient and
    visit), or None without the column. The labels decide which label each pair trains and is
    judged on, but no pretraining: they key the evaluations and fine-tuned encoders, not the
    pretrained cells (:func:`manifest_fingerprint` leaves the column out)."""
    if "change_label" not in frame.columns:
        return None
    table = frame[["patient_id", "visit_order", "change_label"]].drop_duplicates()
    return digest({"change_label": table.to_csv(index=False, na_rep="")})


def digest_file(path: Path) -> str:
    """SHA-256 of a small file's bytes (a side table, not a scan)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _file_identity(path: str) -> str:
    try:
        stat = os.stat(path)
    except OSError:
        return f"{path}|missing"
    if os.path.isdir(path):  # a DICOM series folder: its files make the scan
        entries = sorted(Path(path).iterdir())
        return f"{path}|dir|" + "|".join(_file_identity(str(e)) for e in entries)
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def _config_parts(cfg: Config, sections: tuple[str, ...]) -> dict[str, Any]:
    plain = cfg.to_plain()
    flat = flatten({name: plain[name] for name in sections})
    return {
        k: v
        for k, v in flat.items()
        if k not in _NEUTRAL and not (k in _SILENT_DEFAULTS and _SILENT_DEFAULTS[k] == v)
    }


def _device_part(cfg: Config) -> dict[str, str]:
    """The device a cell computes on, where it is not the CPU. ``train.accelerator: auto``
    names no device, and a GPU's arithmetic (TF32 convolutions, bf16) is not the CPU's, so
    a cell made on a GPU must not be taken for one made on a CPU, or the reverse. Every cell
    cached before the device entered the key was made on a CPU: left out there, they stay
    valid."""
    device = training_device(cfg.train.accelerator).type
    return {} if device == "cpu" else {"device": device}


def pretrain_key(
    cfg: Config, manifest_digest: str, split_hash: str, *, untrained: bool = False
) -> dict[str, Any]:
    """The key of a cell's pretraining (checkpoint and embeddings).

    Args:
        cfg: the cell's resolved config (objective and seed set).
        manifest_digest: :func:`manifest_fingerprint` of the manifest.
        split_hash: the patient split's hash.
        untrained: the ``untrained`` baseline, which depends on data, model and seed only.

    Returns:
        Flat mapping of dotted names to values.
    """
    sections = _UNTRAINED_SECTIONS if untrained else _PRETRAIN_SECTIONS
    parts = _config_parts(cfg, sections)
    if untrained:
        parts["train.seed"] = cfg.train.seed
    parts["manifest.content"] = manifest_digest
    parts["split.hash"] = split_hash
    parts["learner.version"] = learner.__version__
    return parts | _device_part(cfg)


def evaluation_key(cfg: Config, pretrain_digest: str, feature: str) -> dict[str, Any]:
    """The key of one evaluation: the ``eval`` section, the feature and the pretraining digest."""
    parts = _config_parts(cfg, ("eval",))
    parts.pop("eval.feature", None)  # `run.features` decides, one evaluation per feature
    for name in FINETUNE_KEYS:  # they make other cells (finetune_key), not this evaluation
        parts.pop(name, None)
    parts["feature"] = feature
    parts["pretrain.digest"] = pretrain_digest
    parts["train.seed"] = cfg.train.seed  # seeds the bootstrap and the MLP probe
    parts["learner.version"] = learner.__version__
    return parts


def transfer_key(
    cfg: Config, checkpoint_digest: str, manifest_digest: str, split_hash: str
) -> dict[str, Any]:
    """The key of a transferred encoder's cell (``run.transfer``): the checkpoint's bytes
    (:func:`digest_file`), how this data set's scans are read, the manifest and the split.
    Nothing trains, so no seed: the split (which the embeddings file records) is what a seed
    changes."""
    parts = _config_parts(cfg, ("data",))
    parts["transfer.checkpoint"] = checkpoint_digest
    parts["manifest.content"] = manifest_digest
    parts["split.hash"] = split_hash
    parts["learner.version"] = learner.__version__
    return parts | _device_part(cfg)


def finetune_key(cfg: Config, base_digest: str) -> dict[str, Any]:
    """The key of a fine-tuned encoder (``eval.finetune``): the encoder it started from
    (its pretraining digest, which holds the data and split), every setting the fine-tuning
    reads (the labels' stable band among them), and the seed."""
    flat = flatten(cfg.to_plain())
    names = (*FINETUNE_KEYS, "eval.delta", "data.higher_is_better", *_FINETUNE_TRAIN_KEYS)
    parts = {name: flat[name] for name in names}
    parts["finetune.from"] = base_digest
    parts["learner.version"] = learner.__version__
    return parts | _device_part(cfg)


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One ``name: old -> new`` line per key that differs (added or removed keys included)."""
    lines = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name, "(absent)"), new.get(name, "(absent)")
        if before != after:
            lines.append(f"{name}: {_short(before)} -> {_short(after)}")
    return lines


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 20 else text[:12] + "..."


def write_key(path: Path, parts: Mapping[str, Any]) -> None:
    """Write ``{"digest": ..., "parts": ...}`` atomically."""
    from learner.io import write_json

    write_json(path, {"digest": digest(parts), "parts": dict(parts)})


def read_key(path: Path) -> dict[str, Any] | None:
    """The ``parts`` of a key file, or None when there is none (or it is unreadable)."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    parts = loaded.get("parts") if isinstance(loaded, dict) else None
    return parts if isinstance(parts, dict) else None


def normalised(parts: Mapping[str, Any]) -> dict[str, Any]:
    """``parts`` as they read back from JSON, so that stored and fresh keys compare equal."""
    return dict(json.loads(json.dumps(parts, default=str)))


def key_changes(folder: Path, parts: Mapping[str, Any]) -> list[str]:
    """Why ``folder``'s artefacts are not what ``parts`` would make: [] when the folder is
    empty or missing, or was made under ``parts``; else one line per changed key. A folder
    with artefacts but no key file (an older learner, or by hand) is never trusted. The
    leftover of a killed atomic write (the key's own, say) is not an artefact."""
    from learner.io import is_partial_write

    if not (folder.is_dir() and any(not is_partial_write(p) for p in folder.iterdir())):
        return []
    stored = read_key(folder / KEY_FILE)
    if stored is None:
        return ["(no key: made by an older learner or by hand)"]
    return changed_keys(stored, normalised(parts))


def claim_folder(folder: Path, parts: Mapping[str, Any]) -> None:
    """Use ``folder`` as the cache of what ``parts`` describes: refuse when it holds
    artefacts made from other inputs, else write the key (before any artefact).

    Raises:
        ConfigError: naming the folder and the changed keys.
    """
    from learner.errors import ConfigError

    changes = key_changes(folder, parts)
    if changes:
        raise ConfigError(
            f"{folder} was made with other settings ({'; '.join(changes)}); delete it or "
            "write to another folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    write_key(folder / KEY_FILE, parts)


# The distributions whose version can move a number in results.json or a checkpoint: the
# model and loop (torch, lightning, monai), the video decoder (av), and the probe, its
# statistics and the tables it reads (scikit-learn, scipy, numpy, pandas).
RUNTIME_DISTRIBUTIONS = (
    "torch",
    "lightning",
    "monai",
    "av",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
)


def package_versions() -> dict[str, str]:
    """The versions of learner, Python and every distribution in ``RUNTIME_DISTRIBUTIONS``
    (``"absent"`` for one that is not installed), as plain strings."""
    versions = {"learner": learner.__version__, "python": platform.python_version()}
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def git_commit() -> str | None:
    """The commit of the learner source tree, when it is a git checkout."""
    root = Path(learner.__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
