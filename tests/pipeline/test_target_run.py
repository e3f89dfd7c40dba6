"""`learner run` with eval.target truth: the target block beside the observed rows, reusing
the cached cells (only the evaluation is redone), and a clear refusal without truth.csv."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from learner.cli import app
from tests.pipeline.conftest import DEMO, RUN_SETTINGS


def _run(manifest: Path, out: Path, *extra: str) -> tuple[int, str]:
    settings = [f"data.manifest={manifest}", *RUN_SETTINGS, "eval.n_boot=50", *extra]
    args = [arg for s in settings for arg in ("--set", s)]
    result = CliRunner().invoke(app, ["run", "--config", str(DEMO), *args, "--out", str(out)])
    return result.exit_code, result.output


def test_run_with_the_truth_target_reports_it_apart(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained["run"], out)
    code, output = _run(trained["first"], out, "eval.target=truth")
    assert code == 0, output
    assert "running" not in output and "re-evaluating diff" in output  # nothing retrained
    assert "Against the true change" in output and "Finer than the score?" in output
    results = json.loads((out / "results.json").read_text())

    # The observed rows keep their contract; the target rows live apart, named as such.
    # Against a finer target every row is also read by the low-capacity probe (run.probes
    # defaults to [auto] there), beside the full-rank one.
    assert set(results["objectives"]) == {"mse", "weighted", "mse+pca-auto", "weighted+pca-auto"}
    block = results["target"]
    assert block["name"] == "truth" and "severity" in block["source"]
    # One seed: nothing crossed; its interval is that seed's patient bootstrap.
    assert block["design"] == "nested" and block["intervals"].startswith("two-stage")
    assert list(block["rows"]) == [
        "score_delta",
        "mse:head_delta",
        "mse",
        "mse+pca-auto",
        "weighted",
        "weighted:head_delta",
        "weighted+pca-auto",
        "oracle_truth",
        "oracle_clean_score",
    ]
    for row in block["rows"].values():
        assert set(row) == {
            "spearman_visit",
            "spearman_pair",
            "accuracy",
            "balanced_accuracy",
            "macro_f1",
        }
        assert -1 <= row["spearman_visit"]["mean"] <= 1
    # The oracle reads the true change itself.
    assert block["rows"]["oracle_truth"]["spearman_visit"]["mean"] > 0.9
    assert [(c["a"], c["b"]) for c in block["primary"]] == [
        ("weighted:head_delta", "score_delta"),
        ("weighted:head_delta", "mse:head_delta"),
    ]
    for comparison in block["primary"]:
        # 4 test patients: a resampled rho can be constant, so the MDD may be 0 here.
        assert comparison["p_holm"] >= comparison["p"] and not comparison["mdd80"] < 0
    assert isinstance(block["answer"]["finer"], bool)
    report = (out / "report.md").read_text()
    assert "## Against the true change" in report and "score_delta" in report

    # An edited truth.csv is a changed input: the cached evaluations are redone, not reused.
    truth_csv = trained["first"].parent / "truth.csv"
    original = truth_csv.read_text()
    try:
        lines = original.splitlines(keepends=True)
        header = lines[0].rstrip("\n").split(",")
        cells = lines[1].rstrip("\n").split(",")
        column = header.index("severity")
        cells[column] = str(float(cells[column]) + 0.25)
        truth_csv.write_text("".join([lines[0], ",".join(cells) + "\n", *lines[2:]]))
        code, output = _run(trained["first"], out, "eval.target=truth")
        assert code == 0, output
        assert "re-evaluating diff (target.content:" in output and "running" not in output
    finally:
        truth_csv.write_text(original)

    # The observed target alone: no block, and the same observed numbers.
    plain = json.loads((trained["run"] / "results.json").read_text())
    assert "target" not in plain
    for name in ("mse", "weighted"):
        for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
            assert math.isclose(
                results["objectives"][name][metric]["mean"],
                plain["objectives"][name][metric]["mean"],
            )


def test_the_truth_target_without_truth_csv_is_refused(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    cohort = tmp_path / "cohort"
    shutil.copytree(trained["first"].parent, cohort, ignore=shutil.ignore_patterns("truth.csv"))
    code, output = _run(cohort / "manifest.csv", tmp_path / "run", "eval.target=truth")
    assert code == 2
    assert "eval.target truth needs the truth.csv" in output and "eval.target: observed" in output


def test_evaluate_refuses_a_target_it_cannot_read(tmp_path: Path) -> None:
    """`learner evaluate` reads an embeddings file, which does not name its manifest: a
    target there is an error, not a setting silently ignored."""
    config = tmp_path / "config.yaml"
    config.write_text("eval:\n  target: truth\n")
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--embeddings",
            str(tmp_path / "e.parquet"),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "eval"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "eval.target truth" in result.output and "learner run" in result.output


def test_run_probes_add_low_capacity_rows_beside_the_full_rank_ones(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained["run"], out)
    before = json.loads((out / "results.json").read_text())
    embeddings = out / "cells" / "weighted" / "seed0" / "embeddings.parquet"
    written = embeddings.stat().st_mtime_ns
    code, output = _run(trained["first"], out, "eval.n_boot=0", "run.probes=[auto]")
    assert code == 0, output
    # The probe reads cached embeddings: nothing retrains, the eval.pca rows are reused.
    assert "re-evaluating" not in output and embeddings.stat().st_mtime_ns == written
    results = json.loads((out / "results.json").read_text())
    assert set(results["objectives"]) == {"mse", "weighted", "mse+pca-auto", "weighted+pca-auto"}
    for name in ("mse", "weighted"):
        assert results["objectives"][name] == before["objectives"][name]
    assert "weighted+pca-auto" in results["comparisons"]["differences"]
    cell = out / "cells" / "weighted" / "seed0"
    metrics = json.loads((cell / "eval-diff-pca-auto" / "metrics.json").read_text())
    # auto chose k in 2..32 on training patients; the full-rank row read every dimension.
    assert metrics["pca"] in (2, 4, 8, 16, 32)
    assert json.loads((cell / "eval-diff" / "metrics.json").read_text())["pca"] == 0
    assert set(results["cells"]["weighted/seed0"]["evaluation"]) == {"diff", "diff-pca-auto"}
    # The auto probe's choice is a record in the cell's metrics.json, not a run warning.
    assert any(n.startswith("eval.pca auto:") for n in metrics["warnings"])
    assert not any(w.startswith("eval.pca auto:") for w in results["warnings"])

    # Against the truth, the low-capacity rows stand beside the full-rank ones.
    code, output = _run(trained["first"], out, "run.probes=[auto]", "eval.target=truth")
    assert code == 0, output
    rows = json.loads((out / "results.json").read_text())["target"]["rows"]
    assert {"mse", "mse+pca-auto", "weighted", "weighted+pca-auto"} <= set(rows)
    assert "weighted+pca-auto:head_delta" not in rows  # the head does not depend on the probe


def test_a_truth_target_run_with_baselines_meets_the_results_contract(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    # The truth target adds the low-capacity rows by default, the untrained one too; every
    # row must still meet ../shared's results contract.
    checker_path = Path(__file__).resolve().parents[3] / "shared" / "tools" / "check_results.py"
    if not checker_path.is_file():
        pytest.skip(f"{checker_path} is absent (../shared not checked out)")
    out = tmp_path / "run"
    shutil.copytree(trained["run"], out)
    code, output = _run(trained["first"], out, "eval.target=truth", "run.baselines=true")
    assert code == 0, output
    results = json.loads((out / "results.json").read_text())
    assert {"untrained", "untrained+pca-auto", "weighted+pca-auto"} <= set(results["objectives"])
    spec = importlib.util.spec_from_file_location("check_results", checker_path)
    assert spec is not None and spec.loader is not None
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    assert checker.problems(results) == []
