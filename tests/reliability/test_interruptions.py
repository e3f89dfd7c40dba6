"""Interruptions (issue #7): Ctrl-C during `pretrain` leaves a loadable ``last.ckpt`` and a
one-line 'interrupted' (exit 130); a killed `learner run` continues where it stopped and ends
with the results.json of an uninterrupted run; every output is written to a temporary file and
renamed, so a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import ast
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from learner.io import write_json
from learner.train.pretrain import AtomicCheckpointIO

LEARNER = [sys.executable, "-m", "learner.cli"]
PACKAGE = Path(__file__).resolve().parents[2] / "learner"


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 100.0) -> None:
    """Poll until ``path`` exists (the process must still be running)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the process ended (exit {proc.returncode}) before {path}"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)


def test_ctrl_c_during_pretrain_leaves_a_loadable_last_ckpt(
    tmp_path: Path, small_cohort: Any, decode_cache: Path, cli: Any, subprocess_env: dict[str, str]
) -> None:
    manifest = small_cohort.write(tmp_path)
    out = tmp_path / "run"
    settings = cli.settings(manifest, decode_cache, "train.epochs=200")
    proc = subprocess.Popen(
        [*LEARNER, "pretrain", "--config", str(cli.config), *settings, "--out", str(out)],
        env=subprocess_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    last = out / "checkpoints" / "last.ckpt"
    try:
        wait_for(last, proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    text = stderr.decode("utf-8", errors="replace")
    assert proc.returncode == 130, text[-2000:]
    assert "Traceback" not in text
    assert text.strip().splitlines()[-1] == "interrupted"

    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["state_dict"] and ckpt["learner"]["seed"] == 0
    assert not [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")]

    # --resume continues from it (through the same weights_only loader).
    done = int(ckpt["epoch"])
    more = cli.settings(manifest, decode_cache, f"train.epochs={done + 2}")
    result = cli.invoke(["pretrain", "--config", cli.config, *more, "--out", out, "--resume"])
    cli.succeeds(result)
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == done + 1


def test_killed_run_continues_to_the_uninterrupted_results(
    tmp_path: Path,
    reference_run: Path,
    run_command: Callable[[Path, Path], list[str]],
    cli: Any,
    subprocess_env: dict[str, str],
) -> None:
    out = tmp_path / "out"
    args = run_command(out, tmp_path / "cache")
    proc = subprocess.Popen(
        [*LEARNER, *args], env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(out / "cells" / "mse" / "seed0" / "eval-diff" / "metrics.json", proc)
    finally:
        proc.kill()  # SIGKILL: no clean-up of any kind
        proc.wait()
    assert not (out / "results.json").exists(), "the run finished before it could be killed"
    weighted = out / "cells" / "weighted" / "seed0" / "eval-diff" / "metrics.json"
    assert not weighted.exists()

    result = cli.invoke(args)
    cli.succeeds(result)
    assert "mse: cached" in result.stdout and "weighted: running" in result.stdout
    resumed = json.loads((out / "results.json").read_text())
    reference = json.loads((reference_run / "results.json").read_text())
    assert resumed["objectives"] == reference["objectives"]
    assert resumed["comparisons"] == reference["comparisons"]


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


def test_a_shutdown_that_hangs_after_ctrl_c_is_ended(subprocess_env: dict[str, str]) -> None:
    """Lightning's graceful shutdown can block in a logger thread; the CLI's Ctrl-C handler
    ends the process with 130 once the grace period is over."""
    code = (
        "import signal, time\n"
        "from learner import cli\n"
        "cli.INTERRUPT_GRACE_S = 0.5\n"
        "signal.signal(signal.SIGINT, cli._on_interrupt)\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    time.sleep(60)  # a shutdown that never ends\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=subprocess_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert time.monotonic() - start < 20
    assert stderr.decode().strip() == "interrupted"
