"""docs/scale.md: the single-node commands between its ``scale-test`` markers run as written
(2 CPU processes with gloo), in a fresh folder beside the repository's ``configs/``."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "scale.md"


def documented_commands() -> list[list[str]]:
    """The shell commands of the tested block, continuation lines joined."""
    block = re.search(
        r"<!-- scale-test: begin -->\n```bash\n(.*?)```\n<!-- scale-test: end -->",
        DOC.read_text(),
        re.DOTALL,
    )
    assert block, f"{DOC}: no scale-test block"
    text = block.group(1).replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.strip()]


def test_the_block_holds_the_ddp_rehearsal() -> None:
    commands = documented_commands()
    assert [c[:2] for c in commands] == [
        ["learner", "synth"],
        ["learner", "pretrain"],
        ["learner", "pretrain"],
        ["learner", "embed"],
    ]
    assert "train.devices=2" in commands[1] and "--resume" in commands[2]


def test_single_node_commands_run_as_written(tmp_path: Path) -> None:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for command in documented_commands():
        result = subprocess.run(
            [sys.executable, "-m", "learner.cli", *command[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, (command, result.stderr[-3000:])
    run = tmp_path / "runs" / "ddp-cpu"
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1  # resumed after epoch 0 for the second epoch
    assert (run / "embeddings.parquet").is_file()
