"""The import rules of docs/architecture.md ("Layers"), checked on the source.

``evaluate`` reads embeddings and tables only: it imports neither torch nor the layers that
train (so the statistics can be used, and tested, without a deep-learning stack); ``train``
does not import ``evaluate`` or ``pipeline``; only ``pipeline`` (and the CLI above it) puts
training and evaluation together.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "learner"

# Layer -> the imports it must never make (a name and every module below it).
FORBIDDEN = {
    "evaluate": (
        "torch",
        "lightning",
        "monai",
        "learner.train",
        "learner.pipeline",
        "learner.models",
        "learner.losses",
        "learner.config",
        "learner.cli",
    ),
    "train": ("learner.evaluate", "learner.pipeline", "learner.cli"),
    "data": ("learner.evaluate", "learner.train", "learner.pipeline", "learner.cli"),
    "models": ("learner.evaluate", "learner.train", "learner.pipeline", "learner.cli"),
    "losses": ("learner.evaluate", "learner.train", "learner.pipeline", "learner.cli"),
    "pipeline": ("learner.cli",),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, at any depth (function bodies too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def violations(layer: str) -> list[str]:
    bad = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, module in imported_modules(path):
            for banned in FORBIDDEN[layer]:
                if module == banned or module.startswith(banned + "."):
                    bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    assert violations(layer) == []


def test_the_rule_catches_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself sees an import inside a function body."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from learner.train.module import LearnerModule\n")
    assert imported_modules(source) == [(2, "learner.train.module")]


def test_evaluate_loads_without_torch() -> None:
    """Importing every evaluate module, in a fresh interpreter, loads no torch at all (not
    even through a module it imports in turn)."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import learner.evaluate as e\n"
        "for m in pkgutil.iter_modules(e.__path__):\n"
        "    importlib.import_module('learner.evaluate.' + m.name)\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'lightning')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    )
    assert out.stdout.strip() == "[]"
