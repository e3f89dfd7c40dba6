"""The top-level package: its lazy public API is visible to dir() and tab completion."""

from __future__ import annotations

import learner


def test_dir_lists_the_public_api_and_hides_helpers() -> None:
    names = dir(learner)
    for public in ("load_model", "synth", "losses", "CLASSES", "__version__"):
        assert public in names, names
    for helper in ("Any", "annotations", "importlib", "_API"):
        assert helper not in names, names
    # Every listed name resolves (dir must not advertise what getattr cannot give).
    for name in names:
        getattr(learner, name)
