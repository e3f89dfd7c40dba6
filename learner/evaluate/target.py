"""Judging change against a finer reference than the observed score (``eval.target``).

Every change label of the observed-score task comes from the same coarse, noisy score the
models were trained on, so a one-dimensional estimate of that score (``head_delta``) is
expected to win it. The method's premise is different: the embedding change of two visits
carries change the coarse score misses. Where the true change is known (the latent
severity of a synthetic cohort's ``truth.csv``), each row's predicted change is judged
against it instead; the probes are still fitted on observed-score labels of training
patients, and only test patients' truth is read (:data:`learner.evaluate.change.TARGET_COLUMN`).

Rows, each a predicted change oriented so that higher = better, read from the test pairs:

- ``score_delta``: the observed score change itself (what a clinician has when both visits
  are scored): the baseline the premise must beat;
- ``<objective>``: the objective's embedding probe, its expected signed change
  (p_improve - p_worsen) and its labels;
- ``<objective>:head_delta``: the objective's own regression head, its predicted score change
  and the labels of the classifier on it (``mse:head_delta`` is the observed table's
  ``head_delta``);
- ``oracle_truth`` where present: the probe fitted on the true change itself.

Metrics: ``spearman_visit`` (the primary: rho between predicted and true change over test
visit pairs, zones averaged), ``spearman_pair`` (over zone pairs) and three-way
``accuracy`` / ``balanced_accuracy`` / ``macro_f1`` against the true change's classes (the band
set so that they are as frequent as the observed classes of training pairs).

Statistics treat seeds and patients as replicates: each seed's patient bootstrap (the same
resamples for every row, so differences are paired), then seeds resampled too
(:func:`hierarchical_resamples`). Where every seed tests the same patients (a manifest's
fixed test set) the two are crossed, not nested, and one patient resample serves every
drawn seed (``design: crossed`` in the block). A difference reports its two-sided
bootstrap p-value, its Holm-adjusted p-value within the declared primary family, and its
minimum detectable difference at 80% power (2.8 standard errors).

Example:
    >>> p = np.array([0.01, 0.04, 0.03])
    >>> holm_adjust(p).round(2).tolist()
    [0.03, 0.06, 0.06]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from learner.evaluate.aggregate import CellResult, pooled_pairs, summary_entry
from learner.evaluate.bootstrap import (
    bootstrap_distribution,
    hierarchical_resamples,
    minimum_detectable_difference,
)
from learner.evaluate.metrics import (
    CLASS_METRICS,
    class_metrics,
    confusion_counts,
    label_codes,
    spearman,
)

SCORE_DELTA = "score_delta"
HEAD_SUFFIX = ":head_delta"
TARGET_METRICS = ("spearman_visit", "spearman_pair", *CLASS_METRICS)
PRIMARY_METRIC = "spearman_visit"
_KEYS = ("patient_id", "zone", "visit_from", "visit_to")


@dataclass(frozen=True)
class Row:
    """Where a row's predicted change and labels live: ``unit``'s test pairs, columns
    ``change`` and ``label``."""

    unit: str
    change: str
    label: str


def target_rows(
    units: Mapping[str, object],
    *,
    reference: str,
    untrained: str,
    oracles: Mapping[str, object] | None = None,
) -> dict[str, Row]:
    """Every row judged against the target, in report order.

    ``score_delta`` comes from the ``reference`` unit (every unit holds the same observed
    change); an objective's head row is left out for the ``untrained`` encoder (a random
    head) and for a ``+feature`` variant (the same head as its objective).
    """
    rows: dict[str, Row] = {}
    if reference in units:
        rows[SCORE_DELTA] = Row(reference, "score_change", "label")
        rows[reference + HEAD_SUFFIX] = Row(reference, "head_change", "head_predicted")
    for name in units:
        rows[name] = Row(name, "probe_change", "predicted")
        base = name.split("+")[0]
        if name != reference and base == name and not base.startswith(untrained):
            rows[name + HEAD_SUFFIX] = Row(name, "head_change", "head_predicted")
    for name in oracles or {}:
        rows[name] = Row(name, "probe_change", "predicted")
    return rows


def primary_family(
    rows: Mapping[str, Row], *, reference: str, untrained: str
) -> list[tuple[str, str]]:
    """The declared primary comparisons (a, b): each pair objective's own head against
    ``score_delta`` and against the reference (``mse``) model's head, on
    :data:`PRIMARY_METRIC`. Everything else is exploratory."""
    ref_head = reference + HEAD_SUFFIX
    family = []
    for name in rows:
        if not name.endswith(HEAD_SUFFIX) or name == ref_head:
            continue
        if name.startswith(untrained):
            continue
        family += [(name, SCORE_DELTA), (name, ref_head)]
    return family


def exploratory_family(
    rows: Mapping[str, Row], primary: Sequence[tuple[str, str]], *, reference: str
) -> list[tuple[str, str]]:
    """Every other row against ``score_delta`` and against the reference model's head."""
    ref_head = reference + HEAD_SUFFIX
    taken = set(primary)
    out = []
    for name in rows:
        for other in (SCORE_DELTA, ref_head):
            if name not in (SCORE_DELTA, other) and other in rows and (name, other) not in taken:
                out.append((name, other))
    return out


def seed_table(
    seed_cells: Mapping[str, Sequence[CellResult]], rows: Mapping[str, Row]
) -> pd.DataFrame:
    """One seed's test pairs with every row's change and label side by side (columns
    ``<row>|change`` and ``<row>|label``) and the target's ``target_change`` /
    ``target_label``; only pairs that every unit evaluated."""
    merged: pd.DataFrame | None = None
    for unit in dict.fromkeys(row.unit for row in rows.values()):
        table = pooled_pairs(seed_cells[unit])
        keys = [k for k in _KEYS if k in table.columns]
        picked = table[keys].copy()
        if merged is None:
            picked[["target_change", "target_label"]] = table[["target_change", "target_label"]]
        for name, row in rows.items():
            if row.unit == unit:
                picked[f"{name}|change"] = table[row.change].to_numpy()
                picked[f"{name}|label"] = table[row.label].to_numpy()
        merged = picked if merged is None else merged.merge(picked, on=keys, how="inner")
    assert merged is not None, "no rows"
    # Pairs without a target value at both visits (a measurement not taken) are left out.
    measured = np.isfinite(merged["target_change"].to_numpy(dtype=np.float64))
    return merged[measured].reset_index(drop=True)


def visit_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """Zone pairs averaged into visit pairs: one row per (patient, visit_from, visit_to) with
    the mean of every change column."""
    changes = [c for c in table.columns if c.endswith("|change") or c == "target_change"]
    return (
        table.groupby(["patient_id", "visit_from", "visit_to"], sort=True)[changes]
        .mean()
        .reset_index()
    )


def _row_stats(
    pairs: pd.DataFrame, visits: pd.DataFrame, names: Sequence[str]
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """Two statistics on resampled item indices: the visit-level rho of each row, and the
    pair-level rho and class metrics of each row (one flat vector per call)."""
    v_true = visits["target_change"].to_numpy(dtype=np.float64)
    v_pred = [visits[f"{n}|change"].to_numpy(dtype=np.float64) for n in names]
    p_true = pairs["target_change"].to_numpy(dtype=np.float64)
    p_pred = [pairs[f"{n}|change"].to_numpy(dtype=np.float64) for n in names]
    true_codes = label_codes(pairs["target_label"])
    codes = [
        label_codes(pairs[f"{n}|label"]) if pairs[f"{n}|label"].notna().all() else None
        for n in names
    ]

    def visit_stat(idx: np.ndarray) -> np.ndarray:
        return np.array([spearman(pred[idx], v_true[idx]) for pred in v_pred])

    def pair_stat(idx: np.ndarray) -> np.ndarray:
        out: list[float] = []
        for pred, code in zip(p_pred, codes, strict=True):
            out.append(spearman(pred[idx], p_true[idx]))
            if code is None:
                out += [math.nan] * len(CLASS_METRICS)
            else:
                out += list(class_metrics(confusion_counts(true_codes[idx], code[idx])))
        return np.asarray(out)

    return visit_stat, pair_stat


def seed_statistics(
    table: pd.DataFrame, names: Sequence[str], *, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """One seed: the (R, M) point values of every row x :data:`TARGET_METRICS` and their
    (B, R, M) patient-bootstrap resamples (the same patients for every row; None without
    resamples)."""
    visits = visit_pairs(table)
    visit_stat, pair_stat = _row_stats(table, visits, names)
    r = len(names)

    def shaped(v: np.ndarray, p: np.ndarray) -> np.ndarray:
        pair = p.reshape(*p.shape[:-1], r, 1 + len(CLASS_METRICS))
        return np.concatenate([v[..., None], pair], axis=-1)

    point = shaped(visit_stat(np.arange(len(visits))), pair_stat(np.arange(len(table))))
    if n_boot < 1:
        return point, None
    # Equal seeds and equal patient sets: both tables draw the same patients per resample.
    boot_v = bootstrap_distribution(
        visits["patient_id"].astype(str).to_numpy(), visit_stat, n_boot, seed
    )
    boot_p = bootstrap_distribution(
        table["patient_id"].astype(str).to_numpy(), pair_stat, n_boot, seed
    )
    return point, shaped(boot_v, boot_p)


def holm_adjust(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (same order as given)."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def bootstrap_p_value(resamples: np.ndarray) -> float:
    """Two-sided p-value of "the difference is 0" from its bootstrap resamples."""
    d = np.asarray(resamples, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    below = (np.sum(d <= 0.0) + 1) / (d.size + 1)
    above = (np.sum(d >= 0.0) + 1) / (d.size + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def _difference(per_seed: np.ndarray, resamples: np.ndarray | None) -> dict[str, Any]:
    entry = summary_entry(list(per_seed), resamples)
    if resamples is None:
        entry.update(p=math.nan, mdd80=math.nan)
        return entry
    entry["p"] = bootstrap_p_value(resamples)
    entry["mdd80"] = minimum_detectable_difference(resamples)
    return entry


def target_block(
    units: Mapping[str, Sequence[Sequence[CellResult]]],
    *,
    reference: str,
    untrained: str,
    oracles: Mapping[str, Sequence[Sequence[CellResult]]] | None = None,
    n_boot: int,
    seed: int,
) -> dict[str, Any] | None:
    """The ``target`` block of results.json: every row x :data:`TARGET_METRICS` over seeds,
    the primary comparisons (Holm-adjusted) and the exploratory ones; None when the test
    pairs carry no ``target_change`` (``eval.target: observed``).

    ``units`` and ``oracles`` map a row's unit to its seeds, each a list of fold results.
    """
    everything = {**units, **(oracles or {})}
    first = next(iter(units.values()), [])
    if not first or "target_change" not in first[0][0].test_pairs.columns:
        return None
    rows = target_rows(units, reference=reference, untrained=untrained, oracles=oracles)
    names = list(rows)
    points, boots = [], []
    tested: set[tuple[str, ...]] = set()
    n_seeds = len(first)
    for s in range(n_seeds):
        seed_cells = {
            unit: everything[unit][s] for unit in dict.fromkeys(r.unit for r in rows.values())
        }
        table = seed_table(seed_cells, rows)
        tested.add(tuple(sorted(set(table["patient_id"].astype(str)))))
        # The same resampling seed for every seed: equal patients draw equal resamples.
        point, boot = seed_statistics(table, names, n_boot=n_boot, seed=seed)
        points.append(point)
        if boot is not None:
            boots.append(boot)
    per_seed = np.stack(points)  # (S, R, M)
    crossed = n_seeds > 1 and len(tested) == 1  # every seed tested the same patients
    pooled = (
        hierarchical_resamples(boots, n_boot, seed, shared_patients=crossed)
        if len(boots) == n_seeds
        else None
    )
    row_stats: dict[str, Any] = {}
    for i, name in enumerate(names):
        row_stats[name] = {
            metric: summary_entry(
                list(per_seed[:, i, j]), None if pooled is None else pooled[:, i, j]
            )
            for j, metric in enumerate(TARGET_METRICS)
        }
    m = TARGET_METRICS.index(PRIMARY_METRIC)

    def compare(pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        out = []
        for a, b in pairs:
            ia, ib = names.index(a), names.index(b)
            diff = _difference(
                per_seed[:, ia, m] - per_seed[:, ib, m],
                None if pooled is None else pooled[:, ia, m] - pooled[:, ib, m],
            )
            out.append({"a": a, "b": b, "metric": PRIMARY_METRIC, **diff})
        return out

    primary = compare(primary_family(rows, reference=reference, untrained=untrained))
    if primary:
        adjusted = holm_adjust([c["p"] for c in primary])
        for entry, p_holm in zip(primary, adjusted, strict=True):
            entry["p_holm"] = float(p_holm)
    exploratory = compare(
        exploratory_family(rows, [(c["a"], c["b"]) for c in primary], reference=reference)
    )
    return {
        "rows": row_stats,
        "primary": primary,
        "exploratory": exploratory,
        "answer": finer_than_the_score(primary),
        "seeds": n_seeds,
        "n_boot": n_boot,
        # nested: each seed tests its own patients; crossed: every seed the same ones.
        "design": "crossed" if crossed else "nested",
        "test_patients_per_seed": sorted({len(t) for t in tested}),
    }


def finer_than_the_score(
    primary: Sequence[Mapping[str, Any]], alpha: float = 0.05
) -> dict[str, Any]:
    """Is some model's own head finer than the score? Yes when one head beats both
    ``score_delta`` and the reference head on the primary metric with each Holm-adjusted
    p-value below ``alpha`` and each difference positive."""
    wins: dict[str, set[str]] = {}
    for c in primary:
        if c.get("p_holm", math.nan) < alpha and c["mean"] > 0:
            wins.setdefault(c["a"], set()).add(c["b"])
    needed = {c["b"] for c in primary}
    finer = sorted(a for a, beaten in wins.items() if beaten >= needed)
    return {"finer": bool(finer), "rows": finer, "alpha": alpha}


def column_target(
    frame: pd.DataFrame, measured: pd.DataFrame, column: str, *, higher_is_better: bool
) -> np.ndarray:
    """``eval.target: {column: NAME}``: per row of the embeddings ``frame``, the mean of
    ``measured[column]`` over the manifest rows of the same patient, visit (and zone),
    oriented so that higher = better; NaN where the visit was not measured.

    Args:
        frame: an embeddings frame (patient_id, visit, [zone]).
        measured: the manifest frame holding ``column`` (one row per scan).
        column: the measurement.
        higher_is_better: whether a rising value means better health.
    """
    keys = ["patient_id", "visit"] + (
        ["zone"] if "zone" in frame.columns and "zone" in measured.columns else []
    )
    values = pd.to_numeric(measured[column], errors="coerce")
    per_visit = values.groupby([measured[k].astype(str) for k in keys]).mean()
    at = pd.MultiIndex.from_frame(frame[keys].astype(str))
    sign = 1.0 if higher_is_better else -1.0
    return sign * per_visit.reindex(at).to_numpy(dtype=np.float64)
