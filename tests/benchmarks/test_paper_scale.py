"""benchmarks/paper_scale.py (issue 29): the seed-sizing arithmetic, reading a GPU check's
rates in both of its layouts, and the --smoke run end to end on a CPU.

The smoke test needs issue 29's core (``train.channels_last``, ``data.num_workers: auto``):
the run's settings name them. The sizing tests need nothing of it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ps(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("paper_scale.py")


def _case(ps: ModuleType) -> tuple[Any, Any, Any]:
    """Round numbers: training at min(100, 50) = 50 clips/s, embedding 10 scans/s.

    epoch = 500 / 50 + 20 / 10 = 12 s; trained cell = 0 + 2 x 12 + 100 / 10 + 5 = 39 s;
    baselines = 100 / 10 + 2 x 5 = 20 s; per seed = 3 x 39 + 20 = 137 s;
    fixed = 30 + 100 / 100 + 10 = 41 s.
    """
    rates = ps.Rates(
        train_clips_per_s=100.0, data_clips_per_s=50.0, cold_clips_per_s=100.0,
        embed_scans_per_s=10.0,
    )  # fmt: skip
    work = ps.Workload(
        train_scans=500, val_scans=20, embed_scans=100, epochs=2, objectives=3, baselines=True
    )
    costs = ps.Costs(startup_s=30.0, cell_s=0.0, eval_s=5.0, finish_s=10.0, margin=1.0)
    return rates, work, costs


def test_sizing_counts_the_seeds_that_fit(ps: ModuleType) -> None:
    rates, work, costs = _case(ps)
    sizing = ps.size_run(rates, work, costs, budget_s=41.0 + 4 * 137.0)
    assert sizing.train_clips_per_s == 50.0  # the data pipeline bounds it
    assert sizing.epoch_s == pytest.approx(12.0)
    assert sizing.trained_cell_s == pytest.approx(39.0)
    assert sizing.baselines_s == pytest.approx(20.0)
    assert sizing.per_seed_s == pytest.approx(137.0)
    assert sizing.fixed_s == pytest.approx(41.0)
    assert sizing.seeds == 4
    # A second short of four whole seeds: three.
    assert ps.size_run(rates, work, costs, budget_s=41.0 + 4 * 137.0 - 1.0).seeds == 3
    # The margin multiplies the per-seed cost; without baselines they cost nothing.
    wider = ps.size_run(rates, work, replace(costs, margin=2.0), 600.0)
    assert wider.per_seed_s == pytest.approx(274.0) and wider.seeds == 2
    alone = ps.size_run(rates, replace(work, baselines=False), costs, 600.0)
    assert alone.baselines_s == 0.0 and alone.per_seed_s == pytest.approx(117.0)
    # A model slower than the data bounds the training instead.
    slow = replace(rates, train_clips_per_s=25.0)
    assert ps.size_run(slow, work, costs, 600.0).epoch_s == pytest.approx(500 / 25 + 2)


def test_seeds_that_fit_prints_its_arithmetic(ps: ModuleType) -> None:
    rates, work, costs = _case(ps)
    lines: list[str] = []
    assert ps.seeds_that_fit(rates, work, costs, budget_s=600.0, log=lines.append) == 4
    text = "\n".join(lines)
    assert "min(model 100.0, data 50.0) = 50.0 (data-bound)" in text
    assert "3 objectives x 39.0 + 20.0) = 137.0 s" in text
    assert "seeds = floor((600 - 41.0) / 137.0) = 4" in text


def test_sizing_never_answers_less_than_one_seed(ps: ModuleType) -> None:
    rates, work, costs = _case(ps)
    with pytest.raises(ps.SizingError, match=r"not even one seed(.|\n)*= 0;"):
        ps.size_run(rates, work, costs, budget_s=41.0 + 136.0)
    assert ps.size_run(rates, work, costs, budget_s=41.0 + 137.0).seeds == 1
    with pytest.raises(ps.SizingError, match="embed_scans_per_s"):
        ps.size_run(replace(rates, embed_scans_per_s=0.0), work, costs)


def test_rates_from_both_check_layouts(ps: ModuleType, tmp_path: Path) -> None:
    # The committed check (2026-11-30, before the worker sweep): the encoder row.
    committed = json.loads((REPO / "benchmarks" / "results" / "gpu_check.json").read_text())
    old = ps.read_rates(REPO / "benchmarks" / "results" / "gpu_check.json")
    (row,) = (
        r
        for r in committed["encoders"]
        if r["case"] == "TSM-R18 8x224^2" and r["variant"] == "channels_last+bf16"
    )
    assert old.train_clips_per_s == row["items_per_s"]
    assert old.data_clips_per_s == committed["pipeline"]["data_warm_clips_per_s"]
    assert old.embed_scans_per_s == committed["embed"]["device_scans_per_s"]
    # A check with the sweep: the training steps' channels_last + bf16 rate, the largest
    # worker count's data rates.
    sweep = {
        "machine": {"gpu": "GPU", "date_utc": "today"},
        "pipeline": {
            "model_clips_per_s": {"fp32": 600.0, "channels_last+bf16": 1200.0},
            "sweep": [
                {"workers": 15, "data_cold_clips_per_s": 300.0, "data_warm_clips_per_s": 900.0},
                {"workers": 4, "data_cold_clips_per_s": 100.0, "data_warm_clips_per_s": 400.0},
            ],
        },
        "embed": {"workers": 15, "device_scans_per_s": 150.0},
    }
    path = tmp_path / "check.json"
    path.write_text(json.dumps(sweep))
    new = ps.read_rates(path)
    assert (new.train_clips_per_s, new.data_clips_per_s, new.cold_clips_per_s) == (
        1200.0,
        900.0,
        300.0,
    )
    assert new.embed_scans_per_s == 150.0 and "15 workers" in new.source
    # A smoke check's toy rates never size a GPU run.
    path.write_text(json.dumps({**sweep, "smoke": True}))
    with pytest.raises(ps.SizingError, match="smoke"):
        ps.read_rates(path)


@pytest.mark.usefixtures("one_thread")
def test_paper_scale_smoke_runs_the_grid(ps: ModuleType, tmp_path: Path) -> None:
    committed = REPO / "benchmarks" / "results" / "paper_scale.json"
    before = committed.read_bytes() if committed.is_file() else None
    out = tmp_path / "run"
    assert ps.main(["--smoke", "--out", str(out)]) == 0
    assert (committed.read_bytes() if committed.is_file() else None) == before

    result = json.loads((out / "paper_scale.json").read_text())
    assert set(result["objectives"]) == {
        "mse",
        "contrastive",
        "weighted",
        "untrained",
        "head_delta",
    }
    assert "weighted - contrastive" in result["extra_differences"]
    meta = result["paper_scale"]
    assert meta["smoke"] is True and meta["seeds"] == 1 and meta["epochs"] == 1
    assert "train.channels_last=true" in meta["settings"]
    assert meta["workload"]["objectives"] == 3 and meta["workload"]["epochs"] == 1
    # Sized from the committed check (informative on a CPU; the smoke runs one seed).
    assert meta["sizing"]["seeds"] >= 1 and meta["sizing"]["lines"][0].startswith("sizing:")
    # lus.yaml at toy sizes, with the recipe's flags.
    config = result["config"]
    assert config["model"]["encoder"] == "tsm_resnet18" and config["model"]["width"] == 8
    assert config["data"]["input"]["augment"] == 2.0 and config["data"]["input"]["channels"] == 3
    assert config["run"]["features"] == ["diff"] and config["run"]["seeds"] == [0]
    assert config["train"]["channels_last"] is True
    assert (out / "results.json").is_file() and (out / "report.md").is_file()
    assert (out / "paper_scale.md").read_text().startswith("| objective |")
