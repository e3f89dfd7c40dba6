"""The saved change model (change_model.py) knows nothing of prediction (predict.py): predict
imports change_model, never the other way round, so the two modules make no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[2] / "learner" / "pipeline"


def _imported_modules(source: Path) -> set[str]:
    """Every module ``source`` imports, anywhere (top level, functions, TYPE_CHECKING)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # Relative imports (`from . import predict`) resolve from learner.pipeline.
            package = ["learner", "pipeline"][: 3 - node.level] if node.level else []
            module = ".".join([*package, *([node.module] if node.module else [])])
            modules.add(module)
            # `from learner.pipeline import predict` imports the module as a name.
            modules.update(f"{module}.{alias.name}" for alias in node.names)
    return modules


def test_change_model_does_not_import_predict() -> None:
    imported = _imported_modules(PIPELINE / "change_model.py")
    assert "learner.pipeline.predict" not in imported, sorted(imported)
    assert "learner.pipeline.change_model" in _imported_modules(PIPELINE / "predict.py")
