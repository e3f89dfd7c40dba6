"""Smoke test of benchmarks/speed.py: every section runs on tiny sizes and writes its JSON,
so that the benchmark code cannot rot between full runs."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def speed(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("speed.py")


@pytest.fixture(scope="module")
def quick_results(speed: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One quick run of every section (one timed repeat, no warm-up), read back from disk."""
    tmp = tmp_path_factory.mktemp("speed")
    out = tmp / "results" / "speed.json"
    threads = torch.get_num_threads()
    options = speed.RunOptions(quick=True, warmup=0, repeats=1, workdir=tmp / "work")
    try:
        speed.run(options, out, command="test")
    finally:
        torch.set_num_threads(threads)
    # Written atomically: no temporary file left beside the result.
    assert [p.name for p in out.parent.iterdir()] == ["speed.json"]
    return dict(json.loads(out.read_text()))


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_quick_run_records_machine_and_protocol(quick_results: dict[str, Any]) -> None:
    r = quick_results
    assert set(r) >= {"schema", "command", "date", "machine", "protocol", "load_average", "wall_s"}
    assert r["quick"] is True and r["command"] == "test"
    m = r["machine"]
    assert m["cpu_model"] and m["torch"] == str(torch.__version__)
    assert _positive(m["logical_cpus"]) and _positive(m["torch_threads"])
    assert len(r["load_average"]["start"]) == 3 and len(r["load_average"]["end"]) == 3
    assert r["protocol"]["repeats"] == 1


def test_quick_run_reference_and_encoders(quick_results: dict[str, Any]) -> None:
    ref = quick_results["reference"]
    assert {row["threads"] for row in ref["matmul_start"]} >= {1}
    assert all(_positive(row["gflops"]) for row in ref["matmul_start"] + ref["matmul_end"])
    rows = quick_results["encoders"]
    assert {r["encoder"] for r in rows} == {"tsm_resnet18", "resnet3d_18", "mlp"}
    ok = [r for r in rows if r["status"] == "ok"]
    # The fp32 baselines must run; the CPU variants may fail only with a recorded error line.
    assert {r["encoder"] for r in ok if r["variant"] == "fp32"} == {
        "tsm_resnet18",
        "resnet3d_18",
        "mlp",
    }
    for r in ok:
        keys = ("gflop_per_step", "step_s", "items_per_s", "gflops", "fraction_of_matmul")
        for key in (*keys, "peak_rss_mib"):
            assert _positive(r[key]), (r["case"], r["variant"], key)
        assert math.isfinite(r["peak_growth_mib"])
        if r["variant"] == "fp32":
            assert r["speedup_vs_fp32"] == pytest.approx(1.0)
    for r in rows:
        assert r["status"] == "ok" or r["status"].startswith(("error: ", "skipped"))


def test_quick_run_pipeline(quick_results: dict[str, Any]) -> None:
    p = quick_results["pipeline"]
    first, second = p["epochs"][0], p["epochs"][1]
    n = p["cohort"]["scans"]
    # Epoch 1 decodes every scan once (the in-memory copy then hits the cache); epoch 2
    # decodes nothing: the in-memory copy and the timed run both read the cache.
    assert first["cache_misses"] == n and first["cache_hits"] == n
    assert second["cache_misses"] == 0 and second["cache_hits"] == 2 * n
    for e in p["epochs"]:
        assert _positive(e["files_s"]) and _positive(e["memory_s"]) and e["steps"] >= 1
        assert _positive(e["files_worker_s"]) and _positive(e["files_per_item_s"])
        assert _positive(e["memory_finished_s"])
        assert e["ratio"] == pytest.approx(e["memory_s"] / e["files_s"])
        assert e["ratio_worker"] == pytest.approx(e["memory_s"] / e["files_worker_s"])
        assert e["ratio_finished"] == pytest.approx(e["memory_finished_s"] / e["files_s"])
        assert e["per_item_over_batched"] == pytest.approx(e["files_per_item_s"] / e["files_s"])
    for key in (
        "ratio_epoch1",
        "ratio_epoch2plus_median",
        "ratio_worker_epoch2plus_median",
        "ratio_finished_epoch2plus_median",
        "per_item_over_batched_epoch2plus_median",
    ):
        assert _positive(p[key]), key
    # The loader rows: both paths over the same clips, and the ratios they state.
    (row,) = p["loader"]
    assert row["clips"] == n
    assert row["sliced_over_per_item"] == pytest.approx(
        row["sliced_clips_per_s"] / row["per_item_clips_per_s"]
    )
    assert row["bytes_per_item"]["sliced"] * 4 == row["bytes_per_item"]["per_item"]


def test_quick_run_objectives(quick_results: dict[str, Any]) -> None:
    o = quick_results["objectives"]
    names = {r["objective"] for r in o["rows"]}
    assert names == {
        "mse",
        "contrastive",
        "weighted (threshold)",
        "weighted (soft)",
        "yaware",
        "rnc",
        "rnc naive loop",
    }
    assert all(_positive(r["time"]["median_s"]) for r in o["rows"])
    assert all(math.isfinite(r["peak_growth_mib"]) for r in o["rows"])
    assert set(o["rnc_speedup_over_naive"]) == {"16", "32"}
    assert all(_positive(v) for v in o["rnc_speedup_over_naive"].values())
    # The loop it is compared with computes the same loss and gradient.
    assert o["naive_check"]["loss_abs_diff"] < 1e-9
    assert o["naive_check"]["grad_max_abs_diff"] < 1e-9


def test_quick_run_embed(quick_results: dict[str, Any]) -> None:
    e = quick_results["embed"]
    assert [r["scans"] for r in e["runs"]] == [100, 300]
    for r in e["runs"]:
        assert r["rows_written"] == r["scans"]
        assert _positive(r["scans_per_s"]) and _positive(r["peak_rss_mib"])
        # The peak is taken over the embedding alone (VmHWM reset), so it starts at the RSS.
        assert r["peak_reset"] is True
        assert r["peak_rss_mib"] >= r["rss_before_mib"] - 1.0


def test_markdown_tables_cover_every_section(
    speed: ModuleType, quick_results: dict[str, Any]
) -> None:
    text = speed.markdown_tables(quick_results)
    for marker in ("GFLOP/s start", "speed-up vs fp32", "cache misses", "rnc speed-up", "scans/s"):
        assert marker in text


def test_naive_rnc_matches_vectorised_with_ties_and_unlabelled(speed: ModuleType) -> None:
    from learner.losses.functional import rnc_loss

    u = torch.randn(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0.1, 0.1, 0.5, 0.5, 0.9, float("nan"), 0.3, 0.1, 0.7, 0.5]).double()
    pid = torch.tensor([0, 0, 1, 2, 3, 4, 5, 5, 6, 7])
    expected = rnc_loss(u, y, pid, temperature=0.5).loss
    assert speed.naive_rnc_loss(u, y, pid, temperature=0.5).item() == pytest.approx(
        expected.item(), abs=1e-12
    )


def test_embed_worker_entry_point(speed: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "worker.json"
    threads = torch.get_num_threads()
    try:
        code = speed.main(
            ["--embed-worker", "40", "--worker-out", str(out), "--workdir", str(tmp_path)]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    result = json.loads(out.read_text())
    assert result["scans"] == 40 and result["rows_written"] == 40
    assert _positive(result["wall_s"])


def test_unknown_section_is_refused(speed: ModuleType) -> None:
    with pytest.raises(ValueError, match="unknown section"):
        speed.run(speed.RunOptions(quick=True, sections=("nope",)))
