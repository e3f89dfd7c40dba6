"""report.html is report.md rendered (markdown-it), with the figures embedded: the verdict, every
row of the comparison table and every figure of the run are on the page."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from learner.pipeline.report import _html, _markdown, comparison_rows, seeds_and_splits


def _text(page: str) -> str:
    """The page's text: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def _assert_rows(page: str, results: dict[str, Any]) -> None:
    rows = comparison_rows(results)
    assert page.count("<tr>") == len(rows) + 1  # the header, then one per row
    for row in rows:
        cells = "".join(f"<td>{html.escape(cell, quote=False)}</td>\n" for cell in row)
        assert f"<tr>\n{cells}</tr>" in page, row


def _results() -> dict[str, Any]:
    def entry(mean: float) -> dict[str, Any]:
        return {"mean": mean, "ci95": [mean - 0.1, mean + 0.1]}

    block = {m: entry(0.5) for m in ("accuracy", "balanced_accuracy", "macro_f1")}
    return {
        "verdict": ["`weighted` beats `mse` <b>by</b> 0.1 & more."],
        "warnings": ["3 < 4 patients_in_test"],
        "objectives": {"mse": block, "weighted (no pool)": {**block, "score_mae": entry(2.0)}},
        "comparisons": {"differences": {"weighted (no pool)": {"balanced_accuracy": entry(0.1)}}},
        "ceilings": {"chance": {"accuracy": 0.4, "balanced_accuracy": 1 / 3}},
        "dataset": {
            "manifest": "cohort/manifest.csv",
            "patients": 8,
            "visits": 20,
            "scans": 20,
            "stable_band": 1.0,
            "test_pairs_per_seed": 6,
            "test_patients_per_seed": 3,
            "class_counts_test": {"worse": 2, "stable": 2, "better": 2},
        },
        "config": {"run": {"seeds": [0]}, "eval": {"delta": "auto"}},
        "versions": {"learner": "0.1"},
    }


def test_html_is_the_markdown_with_figures_embedded(tmp_path: Path) -> None:
    results = _results()
    figures = {}
    for key, name in (("figure1", "figure1.png"), ("trajectories", "trajectories_a (b).png")):
        figures[key] = tmp_path / "figures" / name
        figures[key].parent.mkdir(exist_ok=True)
        figures[key].write_bytes(b"\x89PNG" + name.encode())
    md = _markdown(results, figures, tmp_path)
    page = _html(md, figures)
    assert "<title>learner run report</title>" in page and "<style>" in page
    assert "<h1>learner run report</h1>" in page
    assert "<strong>Verdict.</strong> <code>weighted</code> beats <code>mse</code>" in page
    assert "&lt;b&gt;by&lt;/b&gt; 0.1 &amp; more." in page  # text, never markup
    assert "<li>3 &lt; 4 patients_in_test</li>" in page
    _assert_rows(page, results)
    for key, path in figures.items():
        data = base64.b64encode(path.read_bytes()).decode()
        assert f'<img src="data:image/png;base64,{data}" alt="{key}" />' in page, key
    assert "figures/" not in page and "`" not in page


def test_the_report_names_its_seeds_and_folds(tmp_path: Path) -> None:
    results = _results()
    results["config"]["data"] = {"split": {"folds": 5}}
    md = _markdown(results, {}, tmp_path)
    assert "Seeds: 0; folds: 5 (patient-grouped: each patient is held out once per seed" in md
    assert "Seeds: [0]" not in md
    results["config"] = {"run": {"seeds": [0, 1, 2]}, "data": {"split": {"folds": None}}}
    results["dataset"]["splits"] = [{"cell": f"seed{s}", "split_hash": f"h{s}"} for s in range(3)]
    assert seeds_and_splits(results) == (
        "Seeds: 0, 1, 2; one patient-grouped train/val/test split per seed"
    )
    # A manifest split column (or data.split.seed) gives every seed the same split.
    results["dataset"]["splits"] = [{"cell": f"seed{s}", "split_hash": "h"} for s in range(3)]
    assert seeds_and_splits(results).endswith("split per seed, the same for every seed")


def test_the_runs_report_has_the_verdict_every_row_and_every_figure(
    trained: dict[str, Path],
) -> None:
    run = trained["run"]
    results = json.loads((run / "results.json").read_text())
    page = (run / "report.html").read_text()
    assert " ".join(results["verdict"]).replace("`", "") in _text(page)
    _assert_rows(page, results)
    pngs = sorted((run / "figures").glob("*.png"))
    assert len(pngs) >= 4, pngs  # Figure 1, confusions, training curves, trajectories, ...
    for png in pngs:
        assert base64.b64encode(png.read_bytes()).decode() in page, png.name
    assert page.count("data:image/png;base64,") == len(pngs)
