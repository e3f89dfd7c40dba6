"""benchmarks/gpu_check.py --smoke: the GPU check runs end to end on a CPU in seconds and
writes every section of its JSON (issue #16), so it works the day a GPU is at hand; a smoke
run never touches the committed result (issue 29).

Needs issue 29's core (``make_dataset(..., batch_augment=True)``, ``train.channels_last``):
the pipeline section builds its dataset and its channels_last module with them."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _check_pipeline(pipeline: dict[str, Any], workers: list[int]) -> None:
    """The worker sweep: cold and warm rates per count, each against both model variants."""
    assert pipeline["scans"] > 0 and pipeline["batch_augment"] is True
    model = pipeline["model_clips_per_s"]
    assert set(model) == {"fp32", "channels_last+bf16"} and min(model.values()) > 0
    assert [row["workers"] for row in pipeline["sweep"]] == workers
    for row in pipeline["sweep"]:
        assert row["data_cold_clips_per_s"] > 0 and row["data_warm_clips_per_s"] > 0
        for variant, rate in model.items():
            assert row["data_over_model"][variant] == row["data_warm_clips_per_s"] / rate
            assert row["data_cold_over_model"][variant] == row["data_cold_clips_per_s"] / rate


@pytest.mark.usefixtures("one_thread")
def test_gpu_check_smoke_writes_every_section(
    load_benchmark: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    gpu_check = load_benchmark("gpu_check.py")
    out = tmp_path / "gpu_check.json"
    args = ["--smoke", "--device", "cpu", "--workdir", str(tmp_path / "w")]
    assert gpu_check.main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())

    assert result["smoke"] is True and result["machine"]["device"] == "cpu"
    assert result["matmul"]["bf16_tflops"] > 0 and result["matmul"]["fp32_tflops"] > 0
    variants = {(r["case"].split()[0], r["variant"]) for r in result["encoders"]}
    assert variants == {
        (case, variant)
        for case in ("TSM-R18", "3D")
        for variant in ("fp32", "bf16", "channels_last", "channels_last+bf16")
    }
    for row in result["encoders"]:
        assert row["items_per_s"] > 0 and 0 < row["fraction_of_bf16_matmul"] < math.inf
    # The smoke sweep: 0 and 1 workers, persistent workers where there are any, no pinning
    # on a CPU.
    pipeline = result["pipeline"]
    _check_pipeline(pipeline, [0, 1])
    assert pipeline["loader"] == {
        "persistent_workers": True,
        "pin_memory": False,
        "prefetch_factor": 2,
    }
    # The paper-size config (lus.yaml: 3 clips per scan at validation) trains and validates,
    # in channels_last with the largest worker count of the sweep.
    pretrain = result["pretrain"]
    assert len(pretrain["seconds_per_epoch"]) == pretrain["epochs"] == 1
    assert pretrain["channels_last"] is True and pretrain["num_workers"] == 1
    assert (tmp_path / "w" / "run" / "checkpoints" / "last.ckpt").is_file()
    # Embedding with the pretrained checkpoint: on the device with the loader workers, and
    # on one CPU process, the same scans.
    embed = result["embed"]
    assert embed["scans"] == 8 and embed["device_scans_per_s"] > 0 and embed["workers"] == 1
    assert embed["device_over_cpu"] == embed["device_scans_per_s"] / embed["cpu_scans_per_s"]


@pytest.mark.usefixtures("one_thread")
def test_gpu_check_smoke_never_writes_the_committed_result(
    load_benchmark: Callable[[str], ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu_check = load_benchmark("gpu_check.py")
    committed = REPO / "benchmarks" / "results" / "gpu_check.json"
    assert gpu_check.COMMITTED == committed and committed.is_file()
    # The smoke default is git-ignored scratch (benchmarks/work/); here a tmp file stands in
    # for it so that the test leaves the checkout as it was.
    assert gpu_check.SMOKE_OUT.parent == REPO / "benchmarks" / "work"
    assert "benchmarks/work/" in (REPO / ".gitignore").read_text().splitlines()
    scratch = tmp_path / "scratch" / "gpu_check_smoke.json"
    monkeypatch.setattr(gpu_check, "SMOKE_OUT", scratch)
    before = (committed.read_bytes(), committed.stat().st_mtime_ns)

    args = ["--smoke", "--device", "cpu", "--workers", "0", "--workdir", str(tmp_path / "w")]
    assert gpu_check.main(args) == 0  # no --out: the scratch file
    assert (committed.read_bytes(), committed.stat().st_mtime_ns) == before
    result = json.loads(scratch.read_text())
    assert result["smoke"] is True
    _check_pipeline(result["pipeline"], [0])
    # Even when asked, a smoke run does not overwrite the committed file.
    with pytest.raises(SystemExit):
        gpu_check.main([*args, "--out", str(committed)])
    assert (committed.read_bytes(), committed.stat().st_mtime_ns) == before
