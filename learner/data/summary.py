"""A manifest at a glance: counts, score range and downstream change pairs per class.

Used by ``learner validate``; the band for ``"tertiles"`` is taken over all the manifest's
pairs here (evaluation takes it over training pairs only).

Example (tabular data: a feature column instead of scan files):
    >>> import pandas as pd
    >>> from learner.data.manifest import load_manifest
    >>> pd.DataFrame({"patient_id": ["A", "A", "A", "B", "B"], "visit": [1, 2, 3, 1, 2],
    ...               "fev1": [2.1, 2.0, 1.7, 3.0, 3.3], "score": [30, 28, 22, 40, 44]}
    ...              ).to_csv("lung.csv", index=False)
    >>> manifest = load_manifest("lung.csv", feature_columns=["fev1"])
    >>> summary = summarize_manifest(manifest, delta=2, higher_is_better=True)
    >>> summary.patients, summary.visits, summary.pairs
    (2, 5, {'worsen': 1, 'stable': 1, 'improve': 1})
    >>> console = Console(width=80, color_system=None)
    >>> render_summary(summary, console)  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    manifest lung.csv
    ...
    ... stable band ... |change| <= 2 (2, higher is better) ...
    ... pairs total ... 3 ...
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

from learner.data.manifest import Manifest
from learner.data.pairs import (
    CHANGE_LABEL,
    LABELS,
    clinician_given,
    consecutive_pairs,
    pair_labels,
    resolve_stable_band,
    visit_table,
)
from learner.errors import DataError


@dataclass(frozen=True)
class ManifestSummary:
    """Counts describing a manifest.

    Attributes:
        source: the manifest file name.
        patients: distinct patients.
        visits: distinct (patient, visit) pairs.
        scans: rows.
        labelled_scans: rows with a score.
        score_min, score_max, score_mean: over labelled scans; None when none is labelled.
        zones: distinct zones, sorted; empty without a zone column.
        splits: patients per split (train / val / test, and pretrain for a pretraining pool;
            "drawn from the seed" counts the patients left empty beside a pool), empty without
            a split column.
        single_visit_patients: patients with one visit (no change pairs).
        features: number of feature columns (tabular), or None.
        pairs: change pairs per label of ``LABELS``, zone-matched when zones exist (the
            clinician's change_label where a pair has one, else the score's).
        clinician_pairs: pairs carrying a clinician's change_label; None without the column.
        pair_patients: patients with at least one change pair.
        band: the stable band used, in score units; None when ``delta`` is ``"tertiles"`` and
            there are no pairs.
        delta: the stable band as asked (a number or ``"tertiles"``).
        higher_is_better: direction used for labels.
    """

    source: str
    patients: int
    visits: int
    scans: int
    labelled_scans: int
    score_min: float | None
    score_max: float | None
    score_mean: float | None
    zones: tuple[str, ...]
    splits: dict[str, int]
    single_visit_patients: int
    features: int | None
    pairs: dict[str, int]
    band: float | None
    delta: str
    higher_is_better: bool
    pair_patients: int = 0
    clinician_pairs: int | None = None


def summarize_manifest(
    manifest: Manifest, *, delta: float | str, higher_is_better: bool
) -> ManifestSummary:
    """Count patients, visits, scans and change pairs per class of a loaded manifest.

    Args:
        manifest: from :func:`learner.data.manifest.load_manifest`.
        delta: stable band, a number >= 0 or ``"tertiles"`` (of all the manifest's pairs).
        higher_is_better: whether a higher score means better health.

    Returns:
        The :class:`ManifestSummary`.

    Raises:
        ConfigError: ``delta`` is not valid.
    """
    frame = manifest.frame
    scores = frame["score"].to_numpy(dtype=np.float64)
    labelled = scores[~np.isnan(scores)]
    visits_per_patient = frame.groupby("patient_id")["visit_order"].nunique()
    pairs = consecutive_pairs(visit_table(frame))
    given = clinician_given(pairs)
    try:
        band: float | None = resolve_stable_band(pairs["change"].to_numpy(), delta)
    except DataError:
        if not given.all():
            raise
        band = None  # 'tertiles' of no scored pair: the clinicians label every pair
    counts = dict.fromkeys(LABELS, 0)
    if len(pairs):
        labels, n = np.unique(
            pair_labels(pairs, band or 0.0, higher_is_better=higher_is_better)[0],
            return_counts=True,
        )
        counts.update({str(label): int(c) for label, c in zip(labels, n, strict=True)})
    splits: dict[str, int] = {}
    if "split" in frame.columns:
        per_split = frame.drop_duplicates("patient_id")["split"].value_counts()
        named = ("train", "val", "test", "pretrain")
        splits = {s: int(per_split.get(s, 0)) for s in named if s != "pretrain" or s in per_split}
        drawn = int(per_split.get("", 0))
        if drawn:  # beside a pretraining pool, the others are split from the run's seed
            splits = {"pretrain": splits.get("pretrain", 0), "drawn from the seed": drawn}
    return ManifestSummary(
        source=manifest.source.name,
        patients=int(frame["patient_id"].nunique()),
        visits=int(visits_per_patient.sum()),
        scans=len(frame),
        labelled_scans=int(labelled.size),
        score_min=float(labelled.min()) if labelled.size else None,
        score_max=float(labelled.max()) if labelled.size else None,
        score_mean=float(labelled.mean()) if labelled.size else None,
        zones=tuple(sorted(frame["zone"].astype(str).unique())) if "zone" in frame else (),
        splits=splits,
        single_visit_patients=int((visits_per_patient == 1).sum()),
        features=len(manifest.feature_columns) if manifest.feature_columns else None,
        pairs=counts,
        band=band,
        delta=str(delta),
        higher_is_better=higher_is_better,
        pair_patients=int(pairs["patient_id"].nunique()) if len(pairs) else 0,
        clinician_pairs=int(given.sum()) if CHANGE_LABEL in frame.columns else None,
    )


def summary_warnings(summary: ManifestSummary) -> list[str]:
    """Cohort-level problems that do not stop ``validate`` but stop or weaken training.

    Returns:
        One line each: a single patient (pretraining splits by patient and needs several),
        or every labelled scan sharing one score (nothing for the objectives to learn).
    """
    lines: list[str] = []
    if summary.patients == 1:
        lines.append(
            f"{summary.source}: only one patient; pretraining splits by patient and needs "
            "several (at least one for training and one for validation): add patients"
        )
    if summary.labelled_scans and summary.score_min == summary.score_max:
        lines.append(
            f"{summary.source}: every labelled scan has score {_number(summary.score_min)}; "
            "pretraining needs different scores across patients: check the score column"
        )
    return lines


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4g}"


def render_summary(summary: ManifestSummary, console: Console) -> None:
    """Print the summary as a two-column rich table."""
    table = Table(title=f"manifest {summary.source}", show_header=True, header_style="bold")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("patients", str(summary.patients))
    table.add_row("visits", str(summary.visits))
    table.add_row("scans", str(summary.scans))
    table.add_row("labelled scans", f"{summary.labelled_scans} of {summary.scans}")
    table.add_row(
        "score min / mean / max",
        " / ".join(_number(v) for v in (summary.score_min, summary.score_mean, summary.score_max)),
    )
    if summary.features is not None:
        table.add_row("feature columns", str(summary.features))
    if summary.zones:
        table.add_row("zones", f"{len(summary.zones)}: {', '.join(summary.zones)}")
    if summary.splits:
        table.add_row(
            "patients per split", ", ".join(f"{k} {v}" for k, v in summary.splits.items())
        )
    table.add_row("single-visit patients", str(summary.single_visit_patients))
    direction = "higher is better" if summary.higher_is_better else "lower is better"
    band = (
        f"|change| <= {_number(summary.band)} ({summary.delta}, {direction})"
        if summary.band is not None
        else f"none: {summary.delta} of no pairs"
    )
    table.add_row("stable band", band)
    for label in LABELS:
        table.add_row(f"pairs {label}", str(summary.pairs[label]))
    total = sum(summary.pairs.values())
    table.add_row("pairs total", str(total))
    if summary.clinician_pairs is not None:
        table.add_row(
            "pairs with a clinician label",
            f"{summary.clinician_pairs} of {total} (change_label)",
        )
    console.print(table)


def render_scan_kinds(kinds: Counter[tuple[str, str]], console: Console, limit: int = 6) -> None:
    """Print decoded files per kind and shape (from :func:`~learner.data.manifest.check_scans`).

    Shapes are the decoded arrays' (e.g. ``image 256x207``: H x W of a still; ``video
    120x350x350``: T x H x W); the ``limit`` most common shapes of each kind are listed.
    """
    table = Table(title="scan files by kind and shape", show_header=True, header_style="bold")
    table.add_column("kind")
    table.add_column("files", justify="right")
    table.add_column("shapes (files)")
    for kind in sorted({k for k, _ in kinds}):
        shapes = Counter({shape: n for (k, shape), n in kinds.items() if k == kind})
        listed = [f"{shape} ({n})" for shape, n in shapes.most_common(limit)]
        if len(shapes) > limit:
            listed.append(f"and {len(shapes) - limit} more")
        table.add_row(kind, str(sum(shapes.values())), ", ".join(listed))
    console.print(table)
