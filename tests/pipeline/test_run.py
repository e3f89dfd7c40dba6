"""`learner run` end to end on the tiny cohort: results.json contract, reports, resume."""

from __future__ import annotations

import html
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from learner.config import Config
from learner.pipeline.report import print_comparison, write_reports
from learner.pipeline.run import run_ablation

REQUIRED = ("accuracy", "balanced_accuracy", "macro_f1", "spearman_distance", "score_mae")


def _check_contract(results: dict) -> None:
    """results.json per DESIGN section 2 (names, keys, types)."""
    assert set(results) >= {"objectives", "dataset", "config", "versions"}
    objectives = results["objectives"]
    assert set(objectives) >= {"mse", "contrastive", "weighted", "head_delta", "untrained"}
    for name, block in objectives.items():
        for metric in REQUIRED:
            if name == "head_delta" and metric == "spearman_distance":
                continue
            entry = block[metric]
            if name == "untrained" and metric == "score_mae":
                # A random head's score error is meaningless: reported as null, shown as "-".
                assert entry["mean"] is None
                continue
            assert set(entry) >= {"mean", "std", "per_seed", "ci95"}, (name, metric)
            assert isinstance(entry["mean"], float) and math.isfinite(entry["mean"]), (name, metric)
            assert isinstance(entry["per_seed"], list) and entry["per_seed"]
            lo, hi = entry["ci95"]
            assert isinstance(lo, float) and isinstance(hi, float) and lo <= hi, (name, metric)


@pytest.fixture()
def run_config(tiny_config: Config) -> Config:
    tiny_config.data.split.ratios = (0.5, 0.2, 0.3)
    tiny_config.train.epochs = 1
    return tiny_config


def test_run_writes_contract_results_and_reports(run_config: Config, tmp_path: Path) -> None:
    out = tmp_path / "run"
    ablation = run_ablation(run_config, out, progress=False, log=lambda _: None)
    results = json.loads((out / "results.json").read_text())
    _check_contract(results)
    diffs = results["comparisons"]["differences"]
    assert set(diffs) >= {"contrastive", "weighted", "untrained", "head_delta"}
    for block in diffs.values():
        entry = block["balanced_accuracy"]
        lo, hi = entry["ci95"]
        # At 80% power (2.8 standard errors): tests/evaluate/test_target.py checks the size.
        assert entry["min_detectable_difference"] > 0 or lo == hi
    assert set(results["comparisons"]["differences_to_untrained"]) >= {"mse", "head_delta"}

    # The tiny cohort has a truth.csv: chance and both oracles, and every row's fraction.
    ceilings = results["ceilings"]
    assert ceilings["chance"]["balanced_accuracy"] == pytest.approx(1 / 3)
    assert 1 / 3 <= ceilings["chance"]["accuracy"] <= 1
    for oracle in ("oracle_truth", "oracle_clean_score"):
        assert 0 <= ceilings[oracle]["balanced_accuracy"]["mean"] <= 1
    oracle = ceilings["oracle_truth"]["balanced_accuracy"]["mean"]
    for name, block in results["objectives"].items():
        fraction = block["fraction_of_achievable"]["mean"]
        if oracle <= 1 / 3:  # 5 test patients: the oracle itself can land at chance
            assert fraction is None, name
            continue
        expected = (block["balanced_accuracy"]["mean"] - 1 / 3) / (oracle - 1 / 3)
        assert fraction == pytest.approx(expected, abs=1e-9), name
    # The regressor's floors from truth.csv: label noise <= a perfect reader of the scans.
    floors = ceilings["score_mae_floors"]
    assert floors["split"] == "val" and floors["mse_regressor"] > 0
    assert 0 < floors["label_noise"] <= floors["perfect_reader"]
    assert isinstance(results["warnings"], list) and results["verdict"]
    assert results["cells"]["weighted/seed0"]["pretrain"]

    md, page = write_reports(ablation, out)
    text = md.read_text()
    assert "| weighted |" in text and "head_delta" in text
    for png in ("figure1_distance_vs_change.png", "confusion_matrices.png", "training_curves.png"):
        assert (out / "figures" / png).stat().st_size > 2000
    html = page.read_text()
    assert html.count("data:image/png;base64,") >= 3 and "http" not in html.split("<body>")[1]
    assert "`" not in html and "<code>mse</code>" in html
    assert "Verdict." in text and "oracle_truth" in text
    assert "Score regressor (`mse`) on validation patients: MAE" in text

    # Printed to a log file (not a terminal), the table keeps every confidence interval.
    log = io.StringIO()
    print_comparison(results, Console(file=log))
    printed = log.getvalue()
    assert "\u2026" not in printed  # Rich's ellipsis marks a cut cell
    for name in ("mse", "weighted", "untrained"):
        entry = results["objectives"][name]["balanced_accuracy"]
        lo, hi = entry["ci95"]
        assert f"{entry['mean']:.3f} [{lo:.3f}, {hi:.3f}]" in printed, name

    # A rerun reuses every finished cell and gives the same results.
    first = (out / "results.json").read_text()
    marker = out / "cells" / "weighted" / "seed0" / "eval-diff" / "metrics.json"
    stamp = marker.stat().st_mtime_ns
    run_ablation(run_config, out, progress=False, log=lambda _: None)
    assert marker.stat().st_mtime_ns == stamp
    assert (
        json.loads((out / "results.json").read_text())["objectives"]
        == json.loads(first)["objectives"]
    )

    # More features on the same cells: only the new ones are evaluated (no retraining).
    run_config.run.features = ["diff", "hybrid", "concat"]
    run_ablation(run_config, out, progress=False, log=lambda _: None)
    assert marker.stat().st_mtime_ns == stamp
    more = json.loads((out / "results.json").read_text())
    assert {"mse+hybrid", "weighted+hybrid", "untrained+hybrid", "mse+concat"} <= set(
        more["objectives"]
    )
    assert more["objectives"]["mse"] == json.loads(first)["objectives"]["mse"]
    assert any("+concat rows are not a change measurement" in w for w in more["warnings"])

    # A low-capacity probe on the same cells: every evaluation is redone, nothing retrained.
    embeddings = out / "cells" / "weighted" / "seed0" / "embeddings.parquet"
    trained = embeddings.stat().st_mtime_ns
    run_config.run.features = ["diff"]
    run_config.eval.classifier, run_config.eval.pca = "logreg-cv", 2
    run_ablation(run_config, out, progress=False, log=lambda _: None)
    assert embeddings.stat().st_mtime_ns == trained and marker.stat().st_mtime_ns != stamp
    cell = json.loads(marker.read_text())
    assert (cell["classifier"], cell["pca"]) == ("logreg-cv", 2) and cell["chosen_c"] > 0


# Injected into a copy of report.html: once the page has loaded, record where the verdict,
# the comparison table and every figure were laid out (and whether each image decoded).
_LAYOUT_PROBE = """<script>
window.addEventListener('load', () => {
  const box = (e) => { const r = e.getBoundingClientRect();
    return [r.left, r.top + window.scrollY, r.width, r.height]; };
  const verdict = [...document.querySelectorAll('strong')]
    .find((e) => e.textContent.startsWith('Verdict'));
  const table = document.querySelector('table');
  const out = {
    verdict: verdict ? box(verdict.parentElement) : null,
    table: table ? box(table) : null,
    rows: table ? table.querySelectorAll('tbody tr').length : 0,
    images: [...document.images].map((i) => ({alt: i.alt, decoded: i.naturalWidth > 0,
                                              box: box(i)})),
    height: document.documentElement.scrollHeight,
  };
  document.body.setAttribute('data-layout', JSON.stringify(out));
});
</script></body>"""


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_renders_in_headless_browser(run_config: Config, tmp_path: Path) -> None:
    """report.html in a real browser: the verdict, the table and every figure are laid out
    on the page with a size, every figure decodes, and the screenshot shows content (not
    blank) where each of them is."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip(
            "chromium is not installed (apt-get install chromium; .ci/run installs it) - "
            "the browser check of report.html is skipped"
        )
    run_config.run.objectives = ["mse", "weighted"]
    out = tmp_path / "run"
    ablation = run_ablation(run_config, out, progress=False, log=lambda _: None)
    _, page = write_reports(ablation, out)
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", _LAYOUT_PROBE, 1))
    dom = _chromium(
        browser, tmp_path / "profile", "--window-size=1200,2400", "--dump-dom", probed.as_uri()
    ).stdout
    found = re.search(r"data-layout=\"([^\"]*)\"", dom)
    assert found, "the page never finished loading"
    layout = json.loads(html.unescape(found.group(1)))
    figures = [i for i in layout["images"] if i["alt"]]
    assert layout["verdict"] and layout["table"] and layout["rows"] >= 3
    assert len(figures) >= 2 and all(i["decoded"] for i in figures)

    height = int(layout["height"]) + 20
    shot = tmp_path / "report.png"
    _chromium(
        browser,
        tmp_path / "profile",
        f"--window-size=1200,{height}",
        f"--screenshot={shot}",
        page.as_uri(),
    )
    from PIL import Image

    image = Image.open(shot).convert("L")
    for name, (left, top, width, height_) in [
        ("verdict", layout["verdict"]),
        ("table", layout["table"]),
        *((f"figure {i['alt']}", i["box"]) for i in figures),
    ]:
        assert width > 50 and height_ > 10, f"{name} has no size on the page"
        assert top + height_ <= image.height + 1, f"{name} lies below the screenshot"
        crop = image.crop((int(left), int(top), int(left + width), int(top + height_)))
        assert len(set(crop.getdata())) > 5, f"{name} is blank in the screenshot"
