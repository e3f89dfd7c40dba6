"""Interruptions (issue #7): every output is written to a temporary file and renamed, so a
crash mid-write leaves the previous file intact. Killed and signalled runs: test_signals.py.
"""

from __future__ import annotations

import ast
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from learner.io import atomic_path, is_partial_write, write_json
from learner.train.pretrain import AtomicCheckpointIO

LEARNER = [sys.executable, "-m", "learner.cli"]
PACKAGE = Path(__file__).resolve().parents[2] / "learner"


# --------------------------------------------------------------------------- atomic writes


def test_interrupted_checkpoint_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "last.ckpt"
    checkpoint_io = AtomicCheckpointIO()
    checkpoint_io.save_checkpoint({"epoch": 1, "weight": torch.ones(3)}, target)
    before = target.read_bytes()

    def half_then_interrupt(obj: Any, f: Any) -> None:
        Path(f).write_bytes(before[: len(before) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_io.save_checkpoint({"epoch": 2, "weight": torch.zeros(3)}, target)
    assert target.read_bytes() == before
    assert checkpoint_io.load_checkpoint(target)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_interrupted_json_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "results.json"
    write_json(target, {"objectives": {"mse": 1.0}})
    before = target.read_bytes()
    real_write_bytes = Path.write_bytes

    def half_then_interrupt(self: Path, data: bytes) -> int:  # type: ignore[override]
        real_write_bytes(self, data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_json(target, {"objectives": {"mse": 2.0, "weighted": 3.0}})
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_atomic_path_leaves_a_recognisable_leftover_and_follows_the_umask(tmp_path: Path) -> None:
    """The temporary file is one :func:`is_partial_write` recognises (what a SIGKILL before
    the rename leaves), the folder is created, and the result gets ``0o666`` less the umask,
    as a plain ``open()`` would give it."""
    target = tmp_path / "new" / "scan.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and is_partial_write(tmp), tmp.name
        tmp.write_bytes(b"x")
    assert [p.name for p in target.parent.iterdir()] == ["scan.nii.gz"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_only_learner_io_makes_atomic_temporary_files() -> None:
    """One atomic writer: a module that calls ``mkstemp`` or ``os.replace`` itself should use
    ``learner.io.atomic_path`` instead (its leftovers are what ``is_partial_write`` knows)."""
    offenders = []
    for source in sorted(PACKAGE.rglob("*.py")):
        if source == PACKAGE / "io.py":
            continue
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("mkstemp", "replace"):
                if isinstance(node.value, ast.Name) and node.value.id in ("os", "tempfile"):
                    offenders.append(f"{source.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders, offenders


# Calls that write a file, and which argument names the file (None: the receiver).
WRITERS: dict[str, int | None] = {
    "write_text": None,
    "write_bytes": None,
    "to_parquet": 0,
    "to_csv": 0,
    "to_json": 0,
    "savefig": 0,
    "savez": 0,
    "savez_compressed": 0,
    "ParquetWriter": 0,
    "write_table": 1,
    "to_filename": 0,
    "save_as": 0,
}
# Names the package gives to temporary files (atomic_path, mkstemp) and in-memory buffers.
TEMPORARY = {"tmp", "_tmp", "tmp_path", "tmp_name", "handle", "fh", "buffer"}


def _name(node: ast.expr) -> str | None:
    """The identifier a write targets: ``tmp``, ``self._tmp``, ``str(tmp)`` -> ``tmp``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
        return _name(node.args[0])  # str(tmp), Path(tmp)
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _write_target(call: ast.Call) -> ast.expr | None:
    """The expression naming the file ``call`` writes, or None when it writes no file."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name in ("save",) and isinstance(func, ast.Attribute):
        owner = _name(func.value)
        if owner == "torch" and len(call.args) > 1:
            return call.args[1]
        if owner == "np" and call.args:
            return call.args[0]
        return None
    if name == "open" and call.args:
        mode = call.args[1] if len(call.args) > 1 else None
        mode = next((k.value for k in call.keywords if k.arg == "mode"), mode)
        if isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax"):
            return call.args[0]
        return None
    if name in WRITERS:
        index = WRITERS[name]
        if index is None:
            return func.value if isinstance(func, ast.Attribute) else None
        return call.args[index] if len(call.args) > index else None
    return None


def test_every_output_is_written_to_a_temporary_file_then_renamed() -> None:
    """A static check of the package: every call that writes a file writes a temporary file
    (atomic_path / mkstemp, renamed by os.replace) or an in-memory buffer. A new writer that
    targets its final path directly fails here: wrap it in ``learner.io.atomic_path``."""
    offenders, checked = [], 0
    for source in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            target = _write_target(node)
            checked += target is not None
            if target is not None and _name(target) not in TEMPORARY:
                where = f"{source.relative_to(PACKAGE.parent)}:{node.lineno}"
                offenders.append(f"{where}: {ast.unparse(node)[:80]}")
    assert not offenders, "\n".join(offenders)
    assert checked >= 10, f"only {checked} write calls found: the scan misses the writers"
