"""Which device a command runs on: `--device` names, `train.accelerator`, and `learner run`
embedding and fine-tuning its cells where they trained, with the config's loader workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tabular_cohort import tabular_config, write_score_table
from typer.testing import CliRunner

import learner.pipeline.run as run_module
from learner.cli import app
from learner.config import Config
from learner.device import resolve_device, training_device
from learner.errors import ConfigError
from learner.evaluate.embeddings_io import embedding_matrix, read_embeddings
from learner.pipeline.run import run_ablation
from learner.provenance import digest, finetune_key, pretrain_key, transfer_key

CUDA = torch.cuda.is_available()


def _no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_device_names_resolve_or_fail_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_cuda(monkeypatch)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^--device gpu0: not a device; use cpu, cuda"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match=r"^--device mps: learner runs on cpu or cuda"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match=r"^--device cuda: no CUDA GPU here; use --device cpu"):
        resolve_device("cuda")
    _two_gpus(monkeypatch)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"has 2 CUDA GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_training_device_follows_the_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    _two_gpus(monkeypatch)
    assert [training_device(a).type for a in ("auto", "gpu", "cuda", "cpu")] == [
        "cuda",
        "cuda",
        "cuda",
        "cpu",
    ]
    _no_cuda(monkeypatch)
    assert {training_device(a).type for a in ("auto", "gpu", "cpu")} == {"cpu"}


def test_embed_refuses_a_device_this_machine_lacks_before_writing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_cuda(monkeypatch)
    out = tmp_path / "e.parquet"
    args = ["embed", "--checkpoint", str(tmp_path / "none.ckpt"), "--manifest", "m.csv"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "--device cuda: no CUDA GPU here" in result.output
    assert "Traceback" not in result.output and not out.exists()


def _spy_embeddings(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record where and with how many workers `learner run` embeds each cell."""
    calls: list[dict[str, Any]] = []
    original = run_module.embed_frame

    def spy(model: Any, data: Any, frame: Any, out: Path, **kwargs: Any) -> Path:
        device = next(model.parameters()).device
        calls.append({"cell": out.parent.parent.name, "device": device.type, **kwargs})
        return original(model, data, frame, out, **kwargs)

    monkeypatch.setattr(run_module, "embed_frame", spy)
    return calls


def test_run_embeds_every_cell_with_the_configs_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``data.num_workers`` reaches the embedding loader of every cell kind (trained,
    untrained, fine-tuned), and worker processes give the same embeddings as none."""
    manifest = write_score_table(tmp_path / "cohort", patients=16, visits=3)
    calls = _spy_embeddings(monkeypatch)
    matrices = {}
    for workers in (0, 2):
        cfg = tabular_config(
            manifest, f"data.num_workers={workers}", "eval.finetune=1", "train.accelerator=cpu"
        )
        out = tmp_path / f"w{workers}"
        run_ablation(cfg, out, progress=False, log=lambda _: None)
        matrices[workers] = {
            cell: embedding_matrix(
                read_embeddings(out / "cells" / cell / "seed0" / "embeddings.parquet")[0]
            )
            for cell in ("mse", "untrained", "mse-ft", "untrained-ft")
        }
    kinds = sorted((c["num_workers"], c["device"], c["cell"]) for c in calls)
    cells = sorted(["mse", "mse-ft", "untrained", "untrained-ft"])
    assert kinds == [(w, "cpu", cell) for w in (0, 2) for cell in cells]
    for cell, matrix in matrices[0].items():
        np.testing.assert_allclose(matrices[2][cell], matrix, rtol=1e-5, atol=1e-6, err_msg=cell)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (run on a GPU machine)")
def test_a_gpu_run_embeds_and_fine_tunes_on_the_gpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    manifest = write_score_table(tmp_path / "cohort", patients=16, visits=3)
    calls = _spy_embeddings(monkeypatch)
    cfg = tabular_config(manifest, "eval.finetune=1", "train.accelerator=gpu")
    run_ablation(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    assert sorted((c["device"], c["cell"]) for c in calls) == [
        ("cuda", cell) for cell in ("mse", "mse-ft", "untrained", "untrained-ft")
    ]


def test_cells_made_on_a_gpu_are_keyed_apart_from_cpu_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.accelerator: auto`` names no device: the key holds the one the cell ran on,
    left out on a CPU so that every cell cached before stays valid."""
    cfg = Config()  # accelerator auto

    def keys(config: Config) -> list[dict[str, Any]]:
        return [
            pretrain_key(config, "m", "s"),
            pretrain_key(config, "m", "s", untrained=True),
            transfer_key(config, "c", "m", "s"),
            finetune_key(config, "b"),
        ]

    _no_cuda(monkeypatch)
    on_cpu = keys(cfg)
    assert all("device" not in key for key in on_cpu)
    _two_gpus(monkeypatch)
    on_gpu = keys(cfg)
    assert all(key["device"] == "cuda" for key in on_gpu)
    assert all(digest(a) != digest(b) for a, b in zip(on_cpu, on_gpu, strict=True))
    # accelerator: cpu computes on the CPU on any machine, so its cells keep the CPU key.
    pinned = Config.model_validate({"train": {"accelerator": "cpu"}})
    assert all("device" not in key for key in keys(pinned))
