"""Figures of a run: Figure 1, confusion matrices, training curves, patient trajectories.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas (no pyplot,
no display, no global state) and written as PNG atomically.

Example (a :class:`~learner.evaluate.change.ChangeResult` per objective, or its Figure 1
frame, one row per test pair, and Spearman rho):

    >>> mse = pd.DataFrame({"abs_change": [0.0, 1.0, 3.0], "distance": [0.10, 0.12, 0.15]})
    >>> weighted = pd.DataFrame({"abs_change": [0.0, 1.0, 3.0], "distance": [0.05, 0.2, 0.6]})
    >>> path = plot_figure1({"mse": (mse, 1.0), "weighted": (weighted, 1.0)}, "figure1.png")
    >>> path.is_file()
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from learner.data.pairs import LABELS
from learner.errors import DataError
from learner.evaluate.change import ChangeResult
from learner.evaluate.features import cosine_distance, visit_embeddings
from learner.io import atomic_path

# Lightning CSVLogger columns worth a panel, in panel order. A metric logged both per step
# and per epoch appears as `<name>_step` / `<name>_epoch`; the epoch value is preferred.
TRAINING_CURVES = ("train/loss", "val/loss", "val/score_mae", "val/spearman")

Figure1Data = ChangeResult | tuple[pd.DataFrame, float]


def _new_figure(n_panels: int, panel_size: tuple[float, float] = (4.0, 3.5)) -> Figure:
    fig = Figure(figsize=(panel_size[0] * n_panels, panel_size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return target


def _title_value(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.2f}"


def plot_figure1(results: Mapping[str, Figure1Data], path: str | Path) -> Path:
    """The paper's Figure 1, one panel per objective: cosine distance against |score change|.

    Args:
        results: objective name -> a :class:`ChangeResult`, or ``(figure1, rho)`` with
            ``figure1`` a frame with columns ``distance`` and ``abs_change`` (one row per test
            pair) and ``rho`` its Spearman correlation.
        path: PNG file to write.

    Returns:
        The path written.
    """
    if not results:
        raise ValueError("plot_figure1 needs at least one objective")
    fig = _new_figure(len(results))
    axes = fig.subplots(1, len(results), squeeze=False, sharey=True)[0]
    for ax, (name, data) in zip(axes, results.items(), strict=True):
        if isinstance(data, ChangeResult):
            frame, rho = data.figure1, data.metrics["spearman_distance"]
        else:
            frame, rho = data
        ax.scatter(frame["abs_change"], frame["distance"], s=14, alpha=0.6, edgecolors="none")
        ax.set_title(f"{name}: Spearman ρ = {_title_value(float(rho))}")
        ax.set_xlabel("|score change| between visits")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cosine distance of visit embeddings")
    return _save(fig, path)


def plot_confusions(confusions: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Confusion matrices side by side (colour: share of the true class; text: counts).

    Args:
        confusions: name -> (3, 3) counts, rows true, columns predicted, order
            :data:`~learner.data.pairs.LABELS`.
        path: PNG file to write.

    Returns:
        The path written.
    """
    if not confusions:
        raise ValueError("plot_confusions needs at least one matrix")
    fig = _new_figure(len(confusions), (3.6, 3.4))
    axes = fig.subplots(1, len(confusions), squeeze=False)[0]
    for ax, (name, matrix) in zip(axes, confusions.items(), strict=True):
        counts = np.asarray(matrix, dtype=np.float64)
        if counts.shape != (3, 3):
            raise ValueError(f"confusion matrix of {name!r} has shape {counts.shape}, not (3, 3)")
        totals = counts.sum(axis=1, keepdims=True)
        shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        ax.imshow(shares, vmin=0.0, vmax=1.0, cmap="Blues")
        for i in range(3):
            for j in range(3):
                ax.text(
                    j,
                    i,
                    f"{int(counts[i, j])}",
                    ha="center",
                    va="center",
                    color="white" if shares[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(3), LABELS)
        ax.set_yticks(range(3), LABELS)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
    return _save(fig, path)


def _curve_column(frame: pd.DataFrame, metric: str) -> str | None:
    for candidate in (f"{metric}_epoch", metric):
        if candidate in frame.columns and frame[candidate].notna().any():
            return candidate
    return None


def plot_training_curves(metrics_csv_paths: Mapping[str, str | Path], path: str | Path) -> Path:
    """Training curves from Lightning ``CSVLogger`` files, one panel per metric.

    Panels are the :data:`TRAINING_CURVES` that any file has; one line per run. Values are
    averaged per epoch (per-step training losses become one point per epoch).

    Args:
        metrics_csv_paths: run name -> ``metrics.csv`` (columns such as ``epoch``,
            ``train/loss``, ``val/loss``, ``val/score_mae``, ``val/spearman``).
        path: PNG file to write.

    Returns:
        The path written.

    Raises:
        DataError: a file is missing or unreadable, or no file has any of the metrics.
    """
    logs: dict[str, pd.DataFrame] = {}
    for name, csv in metrics_csv_paths.items():
        try:
            logs[name] = pd.read_csv(csv)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise DataError(
                f"{csv}: cannot read training log ({err}); pass the CSVLogger metrics.csv"
            ) from err
    panels = [m for m in TRAINING_CURVES if any(_curve_column(f, m) for f in logs.values())]
    if not panels:
        raise DataError(
            f"none of {list(TRAINING_CURVES)} is in "
            f"{[str(p) for p in metrics_csv_paths.values()]}; pass Lightning CSVLogger metrics.csv"
        )
    fig = _new_figure(len(panels))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, metric in zip(axes, panels, strict=True):
        for name, log in logs.items():
            column = _curve_column(log, metric)
            if column is None:
                continue
            x_name = (
                "epoch" if "epoch" in log.columns else "step" if "step" in log.columns else None
            )
            values = log[[column]].assign(x=log[x_name] if x_name else np.arange(len(log)))
            per_x = values.dropna(subset=[column]).groupby("x")[column].mean()
            ax.plot(per_x.index.to_numpy(), per_x.to_numpy(), marker="o", ms=3, label=name)
            ax.set_xlabel(x_name or "row")
        ax.set_title(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def _pick_patients(visits: pd.DataFrame, n_patients: int, seed: int) -> list[str]:
    """The patients with most visits; ties broken by a seeded shuffle."""
    counts = visits.groupby("patient_id")["visit_order"].nunique()
    rng = np.random.default_rng(seed)
    shuffled = counts.iloc[rng.permutation(len(counts))]
    ranked = shuffled.sort_values(ascending=False, kind="stable")
    return [str(p) for p in ranked.index[:n_patients]]


def plot_trajectories(
    frame: pd.DataFrame, path: str | Path, n_patients: int = 4, seed: int = 0
) -> Path:
    """Per-patient trajectories over visits for a few test patients with the most visits.

    Each panel: predicted score per visit (line), true score (markers) and, on the right
    axis, the cosine distance of each visit's embedding from the first visit's (per zone
    when zones exist, then averaged over zones).

    Args:
        frame: embeddings frame (one row per scan); patients of split ``test`` are used when
            there are any, otherwise all.
        path: PNG file to write.
        n_patients: panels to draw (fewer when fewer patients exist).
        seed: breaks ties between patients with as many visits.

    Returns:
        The path written.
    """
    if len(frame) == 0:
        raise DataError("no scans to plot trajectories for; the embeddings frame is empty")
    if "split" in frame.columns and (frame["split"] == "test").any():
        frame = frame[frame["split"] == "test"]
    visits, matrix = visit_embeddings(frame)
    zone = ["zone"] if "zone" in visits.columns else []
    # Distance from the first visit of the same (patient, zone).
    first = visits.groupby(["patient_id", *zone], dropna=False)["visit_order"].transform("idxmin")
    visits = visits.assign(distance=cosine_distance(matrix, matrix[first.to_numpy(dtype=np.int64)]))
    chosen = _pick_patients(visits, n_patients, seed)
    fig = _new_figure(len(chosen), (3.8, 3.2))
    axes = fig.subplots(1, len(chosen), squeeze=False)[0]
    handles: list = []
    for ax, patient in zip(axes, chosen, strict=True):
        rows = visits[visits["patient_id"].astype(str) == patient]
        per_visit = rows.groupby("visit_order")[["score", "pred_score", "distance"]].mean()
        order = per_visit.index.to_numpy()
        ax.plot(order, per_visit["pred_score"], marker=".", label="predicted score")
        ax.scatter(order, per_visit["score"], marker="x", color="black", label="true score")
        ax.set_xlabel("visit")
        ax.set_title(f"patient {patient}")
        right = ax.twinx()
        right.plot(order, per_visit["distance"], "--", color="tab:red", label="cosine distance")
        if ax is axes[-1]:  # one right-hand label: between panels it would overlap the next
            right.set_ylabel("cosine distance from first visit", color="tab:red")
        right.tick_params(axis="y", labelcolor="tab:red", labelsize="small")
        ax.set_xticks(order)
        if not handles:
            handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    axes[0].set_ylabel("score")
    axes[0].legend(handles=handles, fontsize="small", loc="best")
    return _save(fig, path)


def plot_reliability(bins: Mapping[str, pd.DataFrame], path: str | Path) -> Path:
    """Reliability diagram: accuracy against confidence per bin, one line per probability set.

    Args:
        bins: name (e.g. ``raw``, ``calibrated``) -> :func:`learner.evaluate.calibration.
            reliability_bins` output (columns ``confidence``, ``accuracy``, ``count``).
        path: PNG file to write.

    Returns:
        The path written.
    """
    fig = _new_figure(1, (4.5, 4.0))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfectly calibrated")
    for name, table in bins.items():
        used = table[table["count"] > 0]
        ax.plot(used["confidence"], used["accuracy"], marker="o", label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (largest class probability)")
    ax.set_ylabel("accuracy on held-out pairs")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)
