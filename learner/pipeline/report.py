"""Reports of a `learner run`: the comparison table, ``report.md`` and a self-contained
``report.html`` (figures embedded as base64 PNG, no network needed to view it)."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from markdown_it import MarkdownIt
from rich.console import Console
from rich.table import Table

from learner.evaluate.embeddings_io import read_embeddings
from learner.evaluate.plots import (
    plot_confusions,
    plot_figure1,
    plot_training_curves,
    plot_trajectories,
)
from learner.io import atomic_write_text
from learner.pipeline.grid import HEAD_DELTA, REFERENCE
from learner.pipeline.run import AblationResult

TABLE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "spearman_distance", "score_mae")
HEADERS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "bal. acc.",
    "macro_f1": "macro-F1",
    "spearman_distance": "Fig.1 rho",
    "score_mae": "score MAE",
}


def _fmt(entry: dict[str, Any] | None, digits: int = 3, ci: bool = True, spec: str = "") -> str:
    """``mean [lo, hi]`` of a metric entry (``spec`` overrides the number format), or "-"."""
    if not entry or entry.get("mean") is None or not math.isfinite(entry["mean"]):
        return "-"
    spec = spec or f".{digits}f"
    text = format(entry["mean"], spec)
    lo, hi = entry.get("ci95", [None, None])
    if ci and lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        text += f" [{format(lo, spec)}, {format(hi, spec)}]"
    return text


LAST_COLUMNS = ("of achievable", "paired diff. to mse")


def _primary(results: dict[str, Any]) -> str:
    """The metric compared to mse: balanced accuracy, or rho for one-visit data."""
    return "spearman_distance" if results.get("task") == "interpatient" else "balanced_accuracy"


def _percent(entry: dict[str, Any] | None, ci: bool = True) -> str:
    return _fmt(entry, ci=ci, spec=".0%")


def comparison_rows(results: dict[str, Any], compact: bool = False) -> list[list[str]]:
    """One row per objective: metrics (mean [CI]), the fraction of the achievable and the
    paired difference to mse; then the ceilings (chance, oracles) as yardsticks.

    ``compact`` (the terminal) keeps intervals only for balanced accuracy and the difference.
    """
    diffs = results.get("comparisons", {}).get("differences", {})
    rows = []

    def cell(block: dict[str, Any], metric: str) -> str:
        if compact and metric == "score_mae":  # raw score units: 3 decimals are noise
            return _fmt(block.get(metric), digits=1, ci=False)
        return _fmt(block.get(metric), ci=not compact or metric == "balanced_accuracy")

    for name, block in results["objectives"].items():
        row = [name] + [cell(block, m) for m in TABLE_METRICS]
        row.append(_percent(block.get("fraction_of_achievable"), ci=not compact))
        d = diffs.get(name, {}).get(_primary(results))
        row.append("(reference)" if name == REFERENCE else _fmt(d) if d else "-")
        rows.append(row)
    ceilings = results.get("ceilings", {})
    chance = ceilings.get("chance")
    if chance:
        values = {"accuracy": chance["accuracy"], "balanced_accuracy": chance["balanced_accuracy"]}
        rows.append(
            ["chance"]
            + [f"{values[m]:.3f}" if m in values else "-" for m in TABLE_METRICS]
            + ["0%", "-"]
        )
    for name in ("oracle_truth", "oracle_clean_score"):
        if name in ceilings:
            block = ceilings[name]
            top = "100%" if ceilings.get("fraction_reference") == name else "-"
            rows.append([name] + [cell(block, m) for m in TABLE_METRICS] + [top, "-"])
    return rows


def comparison_table(results: dict[str, Any]) -> Table:
    """The comparison as a rich table for the terminal (ceilings below a line)."""
    table = Table(title="Change classification on held-out patients (mean [95% CI])")
    table.add_column("objective", style="bold", no_wrap=True)
    short = {"accuracy": "acc.", "macro_f1": "F1", "spearman_distance": "rho", "score_mae": "MAE"}
    for m in TABLE_METRICS:
        table.add_column(short.get(m, HEADERS[m]), justify="right")
    for column in ("achiev.", "diff. to mse"):
        table.add_column(column, justify="right")
    n_objectives = len(results["objectives"])
    for i, row in enumerate(comparison_rows(results, compact=True)):
        table.add_row(*row, end_section=i == n_objectives - 1)
    return table


# Off a terminal (a log file, a pipe, CI) Rich falls back to 80 columns and cuts the table's
# confidence intervals to "0.32…"; the whole table fits in 120.
WIDTH_OFF_TERMINAL = 120


def print_comparison(results: dict[str, Any], console: Console) -> None:
    """Print :func:`comparison_table`, whole even where the output is not a terminal."""
    if not console.is_terminal and console.width < WIDTH_OFF_TERMINAL:
        # print(width=...) cannot exceed the console's own width: print through a wider one.
        console = Console(file=console.file, width=WIDTH_OFF_TERMINAL)
    console.print(comparison_table(results))


TARGET_HEADERS = {
    "spearman_visit": "rho, visit pairs",
    "spearman_pair": "rho, zone pairs",
    "balanced_accuracy": "bal. acc.",
}


def target_rows(results: dict[str, Any]) -> list[list[str]]:
    """The ``target`` block's rows: each predicted change against the true change (mean
    [95% CI] over seeds and patients); empty without a target block."""
    block = results.get("target")
    if not block:
        return []
    rows = [
        [name] + [_fmt(stats.get(m)) for m in TARGET_HEADERS]
        for name, stats in block["rows"].items()
    ]
    # No relation at all: rho 0, a third of each class right.
    return [*rows, ["chance", "0.000", "0.000", f"{1 / 3:.3f}"]]


def target_comparisons(results: dict[str, Any]) -> list[list[str]]:
    """The primary comparisons: difference [CI], Holm-adjusted p and the minimum detectable
    difference at 80% power."""
    block = results.get("target") or {}
    return [
        [
            f"{c['a']} - {c['b']}",
            _fmt(c),
            "-" if not math.isfinite(c.get("p_holm", math.nan)) else f"{c['p_holm']:.3f}",
            "-" if not math.isfinite(c.get("mdd80", math.nan)) else f"{c['mdd80']:.3f}",
        ]
        for c in block.get("primary", [])
    ]


def target_answer(results: dict[str, Any]) -> str | None:
    """One sentence: is some model's own head finer than the score, on this run?"""
    block = results.get("target")
    if not block:
        return None
    answer = block["answer"]
    seeds = block.get("seeds")
    if answer["finer"]:
        return (
            f"Finer than the score? Yes on this run ({seeds} seed(s)): "
            + ", ".join(answer["rows"])
            + " track the target better than score_delta and the mse head "
            f"(Holm-adjusted p < {answer['alpha']})."
        )
    return (
        f"Finer than the score? Not shown on this run ({seeds} seed(s)): no model's own head "
        f"beats both score_delta and the mse head on rho over visit pairs (Holm-adjusted p < "
        f"{answer['alpha']}); see the minimum detectable differences."
    )


def print_target(results: dict[str, Any], console: Console) -> None:
    """The truth-target table and its primary comparisons, when the run has a target."""
    rows = target_rows(results)
    if not rows:
        return
    if not console.is_terminal and console.width < WIDTH_OFF_TERMINAL:
        console = Console(file=console.file, width=WIDTH_OFF_TERMINAL)
    block = results["target"]
    table = Table(
        title=f"{_target_title(block)} ({block['source']}; probes fitted on observed labels)"
    )
    table.add_column("row", style="bold", no_wrap=True)
    for header in TARGET_HEADERS.values():
        table.add_column(header, justify="right")
    yardsticks = sum(row[0] == "chance" or row[0].startswith("oracle") for row in rows)
    for i, row in enumerate(rows):
        table.add_row(*row, end_section=i == len(rows) - yardsticks - 1)
    console.print(table)
    comparisons = Table(title="Primary comparisons (rho over visit pairs)")
    for header in ("difference", "mean [95% CI]", "Holm p", "MDD (80%)"):
        comparisons.add_column(header, justify="right" if header != "difference" else "left")
    for row in target_comparisons(results):
        comparisons.add_row(*row)
    console.print(comparisons)
    answer = target_answer(results)
    if answer:
        console.print(answer, markup=False, highlight=False)


def _target_title(block: dict[str, Any]) -> str:
    return "Against the true change" if block["name"] == "truth" else "Against the target"


def _target_markdown(results: dict[str, Any]) -> list[str]:
    rows = target_rows(results)
    if not rows:
        return []
    block = results["target"]
    lines = [
        f"## {_target_title(block)}",
        "",
        f"Each row's predicted change (oriented so that higher = better) against the "
        f"{block['source']}. The probes are fitted on {block['probes_fitted_on']}; intervals: "
        f"{block['intervals']}. These rows never share a table with the observed-score rows.",
        "",
        "| row | " + " | ".join(TARGET_HEADERS.values()) + " |",
        "|---" * (len(TARGET_HEADERS) + 1) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        "| primary comparison | difference [95% CI] | Holm p | MDD (80% power) |",
        "|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in target_comparisons(results)),
        "",
    ]
    answer = target_answer(results)
    return [*lines, f"**{answer}**", ""] if answer else lines


def verdict_text(results: dict[str, Any]) -> list[str]:
    """The verdict paragraph and the warnings, as lines for the terminal (no markdown)."""
    lines = ["Verdict: " + " ".join(results.get("verdict", [])).replace("`", "")]
    lines += [f"warning: {w}" for w in results.get("warnings", [])]
    return lines


def make_figures(ablation: AblationResult, out: Path) -> dict[str, Path]:
    """Figure 1, confusion matrices, training curves and trajectories for the first seed."""
    fig_dir = out / "figures"
    figures: dict[str, Path] = {}
    first = {name: units[0][0] for name, units in ablation.cells.items()}
    fig1 = {
        name: (cell.figure1, cell.metrics.get("spearman_distance", math.nan))
        for name, cell in first.items()
        if not cell.figure1.empty
    }
    if fig1:
        figures["figure1"] = plot_figure1(fig1, fig_dir / "figure1_distance_vs_change.png")
    confusions = {
        name: np.asarray(cell.summary["confusion"], dtype=np.int64) for name, cell in first.items()
    }
    if REFERENCE in first:
        confusions[HEAD_DELTA] = np.asarray(
            first[REFERENCE].summary["head_delta_confusion"], dtype=np.int64
        )
    figures["confusions"] = plot_confusions(confusions, fig_dir / "confusion_matrices.png")
    curves = {
        label: dirs[0] / "logs" / "csv" / "metrics.csv"
        for label, dirs in ablation.run_dirs.items()
        if (dirs[0] / "logs" / "csv" / "metrics.csv").exists()
    }
    if curves:
        figures["training"] = plot_training_curves(curves, fig_dir / "training_curves.png")
    traj_label = "weighted" if "weighted" in ablation.run_dirs else next(iter(ablation.run_dirs))
    emb = ablation.run_dirs[traj_label][0].parent / "embeddings.parquet"
    if emb.exists():
        frame, _ = read_embeddings(emb)
        figures["trajectories"] = plot_trajectories(
            frame, fig_dir / f"trajectories_{traj_label}.png"
        )
    chosen = ablation.results.get("change_model")
    if chosen and (out / chosen["figure"]).exists():
        figures["reliability"] = out / chosen["figure"]
    return figures


CAPTIONS = {
    "figure1": "Figure 1: cosine distance between the two visits' embeddings against |score "
    "change|, held-out pairs, first seed (Spearman rho in each title).",
    "confusions": "Confusion matrices on held-out pairs (rows: true; columns: predicted), "
    "first seed.",
    "training": "Training curves (validation patients), first seed.",
    "trajectories": "Held-out patients across visits: predicted score and embedding distance "
    "from the first visit.",
    "reliability": "Reliability of the saved change model on held-out pairs: accuracy against "
    "confidence, raw probe and after temperature scaling fitted on validation patients (the "
    "one the model applies is marked kept: scaling only where it lowered the validation ECE).",
}


def seeds_and_splits(results: dict[str, Any]) -> str:
    """What the report's means are over: ``Seeds: 0; folds: 5 (patient-grouped, ...)`` or
    ``Seeds: 0, 1, 2; one patient-grouped train/val/test split per seed``, and whether every
    seed had the same split (a manifest ``split`` column, or ``data.split.seed``)."""
    cfg = results["config"]
    seeds = cfg.get("run", {}).get("seeds", [])
    folds = cfg.get("data", {}).get("split", {}).get("folds")
    if folds:
        how = (
            f"folds: {folds} (patient-grouped: each patient is held out once per seed, the "
            "folds' held-out pairs pooled)"
        )
    else:
        how = "one patient-grouped train/val/test split per seed"
        hashes = {s.get("split_hash") for s in results["dataset"].get("splits") or []}
        if len(seeds) > 1 and len(hashes) == 1:
            how += ", the same for every seed"
    return f"Seeds: {', '.join(str(seed) for seed in seeds)}; {how}"


def _intro(results: dict[str, Any]) -> list[str]:
    """The report's opening paragraphs (data set, then how to read the table)."""
    ds = results["dataset"]
    cfg = results["config"]
    if results.get("task") == "interpatient":
        return [
            f"Manifest `{ds['manifest']}`: {ds['patients']} patients, {ds['visits']} visits, "
            f"{ds['scans']} scans. {seeds_and_splits(results)}. One labelled visit per "
            "patient, so there is no change to classify: the table measures, on held-out "
            f"patients ({ds['held_out_patients_per_seed']} per seed), whether the embedding "
            f"orders {ds['unit']}s of different patients by their score gap (`Fig.1 rho`) and "
            "the head's score MAE. The last column is the paired difference in rho to `mse`."
        ]
    return [
        f"Manifest `{ds['manifest']}`: {ds['patients']} patients, {ds['visits']} visits, "
        f"{ds['scans']} scans. {seeds_and_splits(results)}. Stable band: {ds['stable_band']} "
        f"(raw score units; `{cfg['eval']['delta']}`). Held-out pairs per seed: "
        f"{ds['test_pairs_per_seed']} from {ds['test_patients_per_seed']} patients, classes "
        f"{ds['class_counts_test']}.",
        *_labels_line(ds.get("label_sources")),
        "Values are means over seeds with a 95% patient-bootstrap interval on the held-out "
        "patients. `head_delta` classifies the mse model's predicted score change (one feature); "
        "`untrained` is a random-init encoder (its random head has no score MAE). "
        "`of achievable` is (balanced accuracy - 1/3) / (oracle - 1/3), where an oracle "
        "(the same probe on the true change, from truth.csv) exists. The last column is the "
        "paired difference in balanced accuracy to `mse` on the same pairs.",
        *_floors_paragraph(results.get("ceilings", {}).get("score_mae_floors")),
        *_change_model_paragraph(results.get("change_model")),
    ]


def _labels_line(labels: dict[str, Any] | None) -> list[str]:
    """One line on where the change labels came from, where the manifest has clinicians'."""
    if not labels:
        return []
    first = labels["per_seed"][0]
    train, test = first["train"], first["test"]
    return [
        f"Change labels: clinicians' `change_label` where given, the score elsewhere "
        f"(`{labels['source']}`): the first seed's probe trained on {train['clinician']} "
        f"clinician and {train['score']} score labels and was judged on {test['clinician']} "
        f"clinician and {test['score']} score labels."
    ]


def _floors_paragraph(floors: dict[str, Any] | None) -> list[str]:
    """How far the score regressor is from what the labels allow (truth.csv only)."""
    if not floors or floors.get("mse_regressor") is None:
        return []

    def num(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3g}"

    return [
        f"Score regressor (`mse`) on validation patients: MAE {num(floors['mse_regressor'])}. "
        f"What the labels allow (truth.csv): {num(floors['perfect_reader'])} for a perfect "
        "reader of each scan (a line from the severity it was rendered with to the score), "
        f"{num(floors['label_noise'])} for the label noise alone (score against its "
        "noise-free value)."
    ]


def _change_model_paragraph(chosen: dict[str, Any] | None) -> list[str]:
    """Which change model `learner predict` uses, and how well calibrated it is."""
    if not chosen:
        return []

    def num(value: Any) -> str:
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"

    fitted = chosen.get("fitted_temperature", chosen["temperature"])
    kept = chosen.get("calibration_kept", "calibrated")
    if kept == "raw":
        decision = (
            "Temperature scaling did not lower the validation ECE "
            f"({num(chosen.get('ece_validation_raw'))} raw, "
            f"{num(chosen.get('ece_validation_calibrated'))} scaled), so the model keeps its "
            "raw probabilities."
        )
    else:
        decision = (
            "Temperature scaling lowered the validation ECE "
            f"({num(chosen.get('ece_validation_raw'))} raw, "
            f"{num(chosen.get('ece_validation_calibrated'))} scaled), so the model applies it."
        )
    return [
        f"Change model for `learner predict`: `{chosen['folder']}/`, the cell "
        f"`{chosen['cell']}`, chosen by {chosen['metric']} on validation patients "
        f"({num(chosen['validation'])}). Its calibration on the held-out pairs: ECE "
        f"{num(chosen['ece_test_raw'])} raw, {num(chosen['ece_test_calibrated'])} after "
        f"temperature scaling (T = {num(fitted)}, fitted on validation patients; labels "
        f"unchanged). {decision}"
    ]


def _markdown(results: dict[str, Any], figures: dict[str, Path], out: Path) -> str:
    lines = ["# learner run report", "", "**Verdict.** " + " ".join(results.get("verdict", [])), ""]
    warnings = results.get("warnings", [])
    if warnings:
        lines += ["**Warnings.**", "", *(f"- {w}" for w in warnings), ""]
    for paragraph in _intro(results):
        lines += [paragraph, ""]
    header = [*(HEADERS[m] for m in TABLE_METRICS), *LAST_COLUMNS]
    lines += [
        "| objective | " + " | ".join(header) + " |",
        "|---" * (len(header) + 1) + "|",
    ]
    for row in comparison_rows(results):
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines += _target_markdown(results)
    for key, path in figures.items():
        # Percent-encoded, so a label with a space or a bracket still makes an image link.
        link = quote(path.relative_to(out).as_posix())
        lines += [f"![{key}]({link})", "", CAPTIONS[key], ""]
    lines += [
        "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
        "",
    ]
    return "\n".join(lines)


# What report.html adds to report.md: a page title and a style (markdown has neither).
_STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:right}td:first-child,th:first-child{text-align:left}"
    "td:first-child{font-weight:bold}img{max-width:100%}"
    "p:has(>img){margin:1.5em 0 0.3em}p:has(>img)+p{color:#555}"
)


def _html(markdown: str, figures: dict[str, Path]) -> str:
    """``report.md`` rendered as a self-contained page: each figure (the image whose alt text
    is its key) embedded as base64 PNG, raw HTML in the text shown as text."""
    renderer = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = renderer.parse(markdown)
    for token in tokens:
        for child in token.children or []:
            if child.type == "image" and child.content in figures:
                png = figures[child.content].read_bytes()
                child.attrSet("src", "data:image/png;base64," + base64.b64encode(png).decode())
    body = renderer.renderer.render(tokens, renderer.options, {})
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>learner run report</title>"
        f"<style>{_STYLE}</style></head><body>\n{body}</body></html>\n"
    )


def write_reports(ablation: AblationResult, out: Path) -> tuple[Path, Path]:
    """Write figures, ``report.md`` and a self-contained ``report.html``; return both paths."""
    figures = make_figures(ablation, out) if ablation.cells else {}
    md = _markdown(ablation.results, figures, out)
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, md)
    atomic_write_text(html_path, _html(md, figures))
    return md_path, html_path
