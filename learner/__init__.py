"""learner: fine-grained intra-patient progression from coarse inter-patient scores (LEARNER).

The public API (docs/api.md): ``learner.load_model``, ``learner.synth``, ``learner.losses``
and ``learner.CLASSES``. They are imported on first use, so that ``import learner`` stays
light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> (module, attribute)
_API = {
    "load_model": ("learner.api", "load_model"),
    # learner.synth(modality, out, *, patients, seed, preset, null, preview) -> CohortFiles
    "synth": ("learner.data.synthetic", "write_cohort"),
    "CLASSES": ("learner.data.pairs", "LABELS"),
}
_SUBPACKAGES = ("losses",)
__all__ = ["CLASSES", "__version__", "load_model", "losses", "synth"]


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attribute = _API[name]
        return getattr(importlib.import_module(module), attribute)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"learner.{name}")
    raise AttributeError(f"module 'learner' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (imported on first use) and the module's dunder names: what
    ``dir(learner)`` and tab completion show, without the helpers this module imports."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
