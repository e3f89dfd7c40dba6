"""docs/api.md is executed: every ```python block, in order, in one namespace, in a folder
laid out as the page says (cohort-a, cohort-b, runs/a)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def test_api_doc_examples_run(trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = BLOCK.findall(API_DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 6, "docs/api.md lost its examples"
    monkeypatch.chdir(trained["root"])
    namespace: dict[str, object] = {"__name__": "api_doc"}
    for number, block in enumerate(blocks, start=1):
        code = compile(block, f"{API_DOC.name} python block {number}", "exec")
        exec(code, namespace)
