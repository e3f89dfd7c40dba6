"""`learner run` with train.devices > 1 (issue #16): it says that it trains each cell on one
device and gives the results of a one-device run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def test_run_with_two_devices_says_so_and_trains_on_one(
    tmp_path: Path,
    reference_run: Path,
    run_command: Callable[[Path, Path], list[str]],
    cli: Any,
) -> None:
    out = tmp_path / "out"
    args = [*run_command(out, tmp_path / "cache"), "--set", "train.devices=2"]
    result = cli.invoke(args)
    cli.succeeds(result)
    assert "trains each cell in one process on one device (train.devices=2" in result.output
    resumed = json.loads((out / "results.json").read_text())
    reference = json.loads((reference_run / "results.json").read_text())
    assert resumed["objectives"] == reference["objectives"]
