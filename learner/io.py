"""Atomic file writes: a temporary file in the target folder, then ``os.replace``.

A crash or Ctrl-C mid-write leaves the previous file (or nothing), never a half-written one.
This is the package's only atomic writer; every module that writes a file goes through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The suffix of atomic_path's temporary files, by which their leftovers are recognised.
_PARTIAL_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The folder is created if missing. The temporary file is ``.<name>.<random>.tmp``: it does
    not end in ``path``'s suffix, so a writer that picks its format from the file name must be
    told the format (``savefig(tmp, format="png")``, ``av.open(tmp, "w", format="mp4")``) or
    write to an open handle (``np.save`` appends ``.npy`` to a path that lacks it). The result
    gets the permissions a plain ``open()`` would give (``0o666`` less the umask). If the block
    raises, the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_PARTIAL_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_current_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def is_partial_write(path: Path) -> bool:
    """Whether ``path`` is the leftover of an :func:`atomic_path` write that was killed before
    its rename (SIGKILL runs no ``finally``): never an artefact, whatever it holds."""
    return path.name.startswith(".") and path.name.endswith(_PARTIAL_SUFFIX)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (NaN is written as null: JSON has no NaN)."""
    atomic_write_text(path, json.dumps(_nan_to_none(obj), indent=2, sort_keys=False) + "\n")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj
