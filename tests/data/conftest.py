"""Fixtures for the manifest, split and pair tests: tiny manifests with placeholder scans."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ManifestWriter = Callable[..., Path]


@pytest.fixture
def write_manifest(tmp_path: Path) -> ManifestWriter:
    """Write ``text`` as ``name`` in tmp_path and create the listed scan files.

    Scan files hold a tiny ``.npy`` payload: the loader checks files, it does not decode them.
    """

    def write(text: str, *, files: tuple[str, ...] = (), name: str = "manifest.csv") -> Path:
        for file in files:
            target = tmp_path / file
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                np.save(handle, np.zeros(3, dtype=np.float32))
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write
