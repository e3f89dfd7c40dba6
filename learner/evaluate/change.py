"""Downstream task: classify worsen / stable / improve between consecutive visits of a patient.

A visit's embedding is the mean of its scans' embeddings (per zone when the frame has one),
consecutive visits give ``d = u_to - u_from`` (or ``[u_from, u_to]``), and a classifier on
these frozen features, trained on the pairs of training patients, is tested on the pairs of
held-out patients (the paper's downstream task). Every metric comes with a 95% interval
from a bootstrap over *test patients*. Reported beside the probe:

- ``head_delta``: the same classifier on one feature, the regression head's predicted change
  ``pred_to - pred_from`` (a strong baseline: the score model's own reading of change);
- Figure 1: cosine distance of each test pair against |score change|, Spearman rho
  (``spearman_distance``);
- ``score_mae``: the head's error on labelled test scans;
- beyond the paper: a ridge regression of the score change from ``d`` (``change_mae``,
  ``change_spearman``) and a temporal consistency rho over all visit pairs of test patients
  with 3+ visits (``temporal_spearman``).

Example, on ``embeddings``, a frame as ``read_embeddings("run/embeddings.parquet")[0]`` gives
it (here 200 synthetic patients whose embeddings hold their latent severity plus noise; the
doctests' ``conftest.py`` builds it):

    >>> result = evaluate_change(embeddings, delta="tertiles", higher_is_better=True, n_boot=200)
    >>> result.n_train_pairs, result.n_test_pairs, result.band  # band: tertiles of |change|
    (250, 42, 1.0)
    >>> round(result.metrics["balanced_accuracy"], 2)  # chance: 1/3
    0.47
    >>> [round(bound, 2) for bound in result.ci95["balanced_accuracy"]]
    [0.32, 0.63]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from learner.data.pairs import (
    CHANGE_LABEL,
    LABELS,
    consecutive_pairs,
    label_changes,
    pair_labels,
    resolve_stable_band,
    source_counts,
    visit_table,
)
from learner.data.splits import check_no_leakage
from learner.errors import ConfigError, DataError
from learner.evaluate.classifier import (
    AUTO_PCA,
    AUTO_PCA_KS,
    CLASSIFIERS,
    build_classifier,
    chosen_c,
    expected_change,
    fit_classifier,
    select_low_capacity,
)
from learner.evaluate.embeddings_io import REQUIRED_COLUMNS, embedding_matrix
from learner.evaluate.features import (
    FEATURES,
    TARGET_COLUMN,
    change_features,
    cosine_distance,
    temporal_pairs,
    test_target_change,
    visit_embeddings,
    visit_times,
)
from learner.evaluate.metrics import (
    CLASS_METRICS,
    class_metrics,
    confusion_counts,
    interval95,
    label_codes,
    mae,
    resamples_or_none,
    spearman,
)
from learner.evaluate.probe import Probe
from learner.evaluate.reduce import ScanProjection

# Metrics of the embedding probe and its companions, in the order results report them.
METRICS = (
    *CLASS_METRICS,
    "spearman_distance",
    "score_mae",
    "change_mae",
    "change_spearman",
    "temporal_spearman",
)
HEAD_DELTA_PREFIX = "head_delta_"


# How a cell's note on the auto probe's choice begins: a record (each cell's metrics.json keeps
# it beside pca and chosen_c), not a warning about the numbers.
AUTO_PCA_NOTE = "eval.pca auto:"


@dataclass
class ChangeResult:
    """Everything one downstream evaluation measured (one objective, one seed).

    Attributes:
        metrics: :data:`METRICS` -> value (NaN where undefined).
        ci95: metric -> (lo, hi) 95% patient-bootstrap interval (NaN when ``n_boot`` is 0).
        confusion: (3, 3) int counts on test pairs, rows true, columns predicted, order
            :data:`LABELS` (worsen, stable, improve).
        head_delta: accuracy / balanced_accuracy / macro_f1 of the classifier on the predicted
            score change alone (NaN when ``pred_score`` is missing).
        head_delta_ci95: their intervals.
        head_delta_confusion: (3, 3) like ``confusion``.
        figure1: one row per test pair: ``distance`` (cosine distance of the two visit
            embeddings), ``abs_change`` (|score change|), ``patient_id``.
        band: the stable band in score units, resolved on training pairs.
        delta: the band as requested (a number or ``"tertiles"``).
        n_train_pairs, n_test_pairs, n_train_patients, n_test_patients: sizes.
        class_counts_train, class_counts_test: label -> number of pairs.
        feature, classifier: the feature ("diff" / "concat") and classifier used.
        n_boot, seed: bootstrap resamples and seed.
        warnings: one line each (a class absent from training, no convergence, ...).
        test_pairs: per test pair: patient_id, [zone,] visit_from, visit_to, change, label,
            predicted, head_predicted, distance, predicted_change, [label_source:
            ``clinician`` or ``score``, with a ``change_label`` column]; and each predicted change
            oriented so that higher = better: ``score_change`` (the observed score's),
            ``head_change`` (the regression head's), ``probe_change`` (the probe's expected
            signed change, p_improve - p_worsen); with a :data:`TARGET_COLUMN` in the frame
            also ``target_change`` and ``target_label`` (see ``target_band``).
        train_patients, test_patients: sorted patient ids whose pairs trained / tested.
        model: the fitted classifier pipeline (scaler + classifier) on the embedding feature;
            scikit-learn orders its ``classes_`` alphabetically: use ``probe``.
        probe: the same classifier as arrays, probabilities in :data:`LABELS` order, on raw
            pair features (a ``pca`` projection folded in).
        pca: the number of principal axes the probe read (0: the full embedding).
        chosen_c: ``logreg-cv``'s inverse regularisation strength (None for the others).
        labels: with a ``change_label`` column in the frame, where the pairs' labels came
            from: ``{"train": {"clinician": n, "score": m}, "test": {...}}`` (the clinician's
            label where a pair has one, else the score's); None without the column.
        target_band: with a :data:`TARGET_COLUMN`: the band on |target change| that makes
            the test pairs' target classes as frequent as the observed classes among
            training pairs (so the two targets' accuracies compare like with like).
        bootstrap: metric (and ``head_delta_*``) -> (n_boot,) resampled values, for pooling
            seeds (see :func:`learner.evaluate.aggregate.metric_block`).
    """

    metrics: dict[str, float]
    ci95: dict[str, tuple[float, float]]
    confusion: np.ndarray
    head_delta: dict[str, float]
    head_delta_ci95: dict[str, tuple[float, float]]
    head_delta_confusion: np.ndarray
    figure1: pd.DataFrame
    band: float
    delta: float | str
    n_train_pairs: int
    n_test_pairs: int
    n_train_patients: int
    n_test_patients: int
    class_counts_train: dict[str, int]
    class_counts_test: dict[str, int]
    feature: str
    classifier: str
    n_boot: int
    seed: int
    warnings: list[str] = field(default_factory=list)
    test_pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    train_patients: list[str] = field(default_factory=list)
    test_patients: list[str] = field(default_factory=list)
    model: Pipeline | None = None
    bootstrap: dict[str, np.ndarray] = field(default_factory=dict)
    probe: Probe | None = None
    pca: int = 0
    chosen_c: float | None = None
    target_band: float | None = None
    labels: dict[str, dict[str, int]] | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready dict (floats, ints, strings, lists; NaN -> None)."""
        out = {
            "metrics": self.metrics,
            "ci95": self.ci95,
            "labels": list(LABELS),
            "confusion": self.confusion,
            "head_delta": self.head_delta,
            "head_delta_ci95": self.head_delta_ci95,
            "head_delta_confusion": self.head_delta_confusion,
            "band": self.band,
            "delta": self.delta,
            "n_train_pairs": self.n_train_pairs,
            "n_test_pairs": self.n_test_pairs,
            "n_train_patients": self.n_train_patients,
            "n_test_patients": self.n_test_patients,
            "class_counts_train": self.class_counts_train,
            "class_counts_test": self.class_counts_test,
            "feature": self.feature,
            "classifier": self.classifier,
            "pca": self.pca,
            "chosen_c": self.chosen_c,
            "target_band": self.target_band,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "warnings": self.warnings,
            "figure1": {column: self.figure1[column].tolist() for column in self.figure1.columns},
        }
        if self.labels is not None:
            # Only with clinician labels, so that other files stay as they were ("labels" is
            # the class order).
            out["label_sources"] = self.labels
        return _plain(out)


def _plain(obj: Any) -> Any:
    """Numpy / tuples / NaN -> JSON types (NaN and inf -> None: JSON has neither)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return _plain(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# --------------------------------------------------------------------------- features


# --------------------------------------------------------------------------- models


# --------------------------------------------------------------------------- metrics


# --------------------------------------------------------------------------- evaluation


def _check_frame(frame: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"embeddings lack column '{missing[0]}' (need {list(REQUIRED_COLUMNS)}); "
            "use the file written by `learner embed`"
        )
    check_no_leakage(frame)
    matrix = embedding_matrix(frame)
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        row = frame.iloc[int(np.argmax(bad))]
        raise DataError(
            f"embedding of patient {row['patient_id']!r} visit_order {row['visit_order']} "
            f"is not finite ({int(bad.sum())} scans affected); the encoder diverged: "
            "re-train or embed with an earlier checkpoint"
        )


def _training_classes_check(labels: np.ndarray, band: float, notes: list[str]) -> None:
    present = [label for label in LABELS if np.any(labels == label)]
    if len(present) < 2:
        only = present[0] if present else "no"
        fix = "narrow --delta" if only == "stable" else "widen --delta"
        raise DataError(
            f"only {only} pairs among the {labels.size} training pairs (stable band "
            f"{band:.4g}); {fix} or add training patients with more visits"
        )
    for label in LABELS:
        if label not in present:
            notes.append(
                f"no '{label}' pairs among training patients (band {band:.4g}): "
                "the classifier never predicts it"
            )


def _check_options(
    feature: str, classifier: str, train_splits: Sequence[str], test_split: str
) -> None:
    if feature not in FEATURES:
        raise ConfigError(f"feature={feature!r} is not known; use one of {list(FEATURES)}")
    if classifier not in CLASSIFIERS:
        raise ConfigError(f"classifier={classifier!r} is not known; use one of {list(CLASSIFIERS)}")
    if test_split in train_splits:
        raise ConfigError(
            f"test split {test_split!r} is also a training split {list(train_splits)}; "
            "test on patients the classifier never saw"
        )


def _train_test_pairs(
    visits: pd.DataFrame, train_splits: Sequence[str], test_split: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The consecutive visit pairs of training and of test patients, each non-empty, no
    patient in both."""
    pairs = consecutive_pairs(visits)
    train = pairs[pairs["split"].isin(list(train_splits))].reset_index(drop=True)
    test = pairs[pairs["split"] == test_split].reset_index(drop=True)
    if len(train) == 0:
        raise DataError(
            f"no training pairs: no patient in splits {list(train_splits)} has two consecutive "
            "labelled visits (scores at both, or a change_label); add such patients or change "
            "the split"
        )
    if len(test) == 0:
        raise DataError(
            f"no test pairs: no patient in split {test_split!r} has two consecutive labelled "
            "visits (scores at both, or a change_label); add such patients or change the split"
        )
    shared = sorted(set(train["patient_id"].astype(str)) & set(test["patient_id"].astype(str)))
    if shared:
        # Guarded again here, on the pairs actually used, so no refactor can leak silently.
        raise DataError(
            f"patient {shared[0]!r} has pairs in both training and test ({len(shared)} such "
            "patients); keep each patient in one split"
        )
    return train, test


def _head_delta_codes(
    visits: pd.DataFrame,
    train: pd.DataFrame,
    test: pd.DataFrame,
    y_train: np.ndarray,
    classifier: str,
    seed: int,
    notes: list[str],
) -> np.ndarray | None:
    """``head_delta``'s predicted codes on the test pairs: the same classifier on one
    feature, the regression head's predicted change; None (with a note) where the head
    predicted no score for some visit."""
    pred_visit = visits["pred_score"].to_numpy(dtype=np.float64)
    head_train = (pred_visit[train["index_to"]] - pred_visit[train["index_from"]])[:, None]
    head_test = (pred_visit[test["index_to"]] - pred_visit[test["index_from"]])[:, None]
    if not (np.isfinite(head_train).all() and np.isfinite(head_test).all()):
        notes.append("pred_score is missing for some visits: head_delta not computed")
        return None
    groups = train["patient_id"].astype(str).to_numpy()
    head_model = fit_classifier(build_classifier(classifier, seed, groups), head_train, y_train, [])
    return label_codes(np.asarray(head_model.predict(head_test)).astype(str))


def _test_score_mae(
    frame: pd.DataFrame, test_split: str, n_boot: int, seed: int
) -> tuple[float, np.ndarray | None]:
    """``score_mae``: the regression head's error on labelled test scans, and its patient
    bootstrap."""
    scan_score = frame["score"].to_numpy(dtype=np.float64)
    scan_pred = frame["pred_score"].to_numpy(dtype=np.float64)
    scans = (
        (frame["split"].astype(str).to_numpy() == test_split)
        & np.isfinite(scan_score)
        & np.isfinite(scan_pred)
    )
    scan_error = np.abs(scan_pred[scans] - scan_score[scans])
    score_mae = float(scan_error.mean()) if scan_error.size else math.nan
    samples = resamples_or_none(
        frame.loc[scans, "patient_id"].astype(str).to_numpy(),
        lambda idx: float(scan_error[idx].mean()),
        n_boot,
        seed,
    )
    return score_mae, samples


def _temporal_rho(
    visits: pd.DataFrame, matrix: np.ndarray, test_patients: set[str], n_boot: int, seed: int
) -> tuple[float, np.ndarray | None]:
    """``temporal_spearman``: rho(cosine distance, |score change|) over all visit pairs of
    test patients with 3+ visits, and its patient bootstrap."""
    test_visits = visits["patient_id"].astype(str).isin(test_patients).to_numpy()
    temporal = temporal_pairs(visits[test_visits], matrix)
    t_distance = temporal["distance"].to_numpy(dtype=np.float64)
    t_change = temporal["abs_change"].to_numpy(dtype=np.float64)
    samples = resamples_or_none(
        temporal["patient_id"].astype(str).to_numpy(),
        lambda idx: spearman(t_distance[idx], t_change[idx]),
        n_boot,
        seed,
    )
    return spearman(t_distance, t_change), samples


def evaluate_change(
    frame: pd.DataFrame,
    *,
    delta: float | str = "tertiles",
    higher_is_better: bool = True,
    feature: str = "diff",
    classifier: str = "logreg",
    train_splits: Sequence[str] = ("train", "val"),
    test_split: str = "test",
    n_boot: int = 1000,
    seed: int = 0,
    pca: int | str = 0,
) -> ChangeResult:
    """Classify worsen / stable / improve between consecutive visits from frozen embeddings.

    Args:
        frame: embeddings frame, one row per scan (docs/architecture.md 'Embeddings file').
        delta: stable band in raw score units, or ``"tertiles"`` (1/3 quantile of |change|
            over *training* pairs; the resolved band is applied unchanged to test pairs).
        higher_is_better: whether a rising score means better health.
        feature: ``"diff"`` (``u_to - u_from``) or ``"concat"`` (``[u_from, u_to]``).
        classifier: ``"logreg"``, ``"logreg-cv"`` or ``"mlp"`` (see :func:`build_classifier`).
        train_splits: splits whose patients' pairs train the classifier (and the ridge).
        test_split: the split whose patients' pairs are tested.
        n_boot: patient-bootstrap resamples for the intervals; 0 skips them (NaN).
        seed: seeds the bootstrap and the MLP.
        pca: 0, or k >= 1: the embedding probe reads visit embeddings projected onto their
            first k principal axes, fitted on the training splits' visit embeddings
            (:class:`~learner.evaluate.reduce.ScanProjection`); ``probe`` still takes raw
            pair features, ``model`` the projected ones. ``"auto"``: the low-capacity probe,
            k among :data:`~learner.evaluate.classifier.AUTO_PCA_KS` and the logistic C
            chosen by balanced accuracy in folds of training patients (``classifier`` is
            then not used). ``head_delta``, Figure 1, the
            change regression and the temporal rho are unchanged by it.

    Returns:
        A :class:`ChangeResult`.

    Raises:
        DataError: missing columns, non-finite embeddings, a patient in two splits, no
            training or test pairs, or fewer than 2 classes among training pairs.
        ConfigError: an unknown feature or classifier, a bad delta, or ``test_split`` among
            ``train_splits``.
    """
    _check_options(feature, classifier, train_splits, test_split)
    _check_frame(frame)
    notes: list[str] = []

    visits, matrix = visit_embeddings(frame)
    train, test = _train_test_pairs(visits, train_splits, test_split)
    train_patients = set(train["patient_id"].astype(str))
    test_patients = set(test["patient_id"].astype(str))

    # The band is the score's: resolved on the training pairs that have scores at both visits.
    band = resolve_stable_band(train["change"].to_numpy(), delta)
    # A clinician's change_label, where a pair has one, is the pair's label for the probe's
    # training and for judging it; the score's label elsewhere.
    y_train, source_train = pair_labels(train, band, higher_is_better=higher_is_better)
    y_test, source_test = pair_labels(test, band, higher_is_better=higher_is_better)
    _training_classes_check(y_train, band, notes)
    true_codes = label_codes(y_test)

    # Embedding probe: trained on training-patient pairs only, predicted on test pairs.
    head = visits["pred_score"].to_numpy(dtype=np.float64)
    times = visit_times(visits)
    x_train = change_features(matrix, train, feature, head, times)
    x_test = change_features(matrix, test, feature, head, times)
    groups = train["patient_id"].astype(str).to_numpy()
    projection: ScanProjection | None = None
    probe_train, probe_test = x_train, x_test
    model: Pipeline | None = None
    if pca == AUTO_PCA:
        projection, model = _low_capacity_probe(
            matrix, visits, train, y_train, feature, head, times, train_splits, notes
        )
    elif pca:
        training_visits = visits["split"].astype(str).isin(list(train_splits)).to_numpy()
        projection = ScanProjection.fit(matrix[training_visits], int(pca))
        if projection.k < int(pca):
            notes.append(f"eval.pca={pca} but the training visits allow {projection.k} components")
    if projection is not None:
        reduced = projection.transform(matrix)
        probe_train = change_features(reduced, train, feature, head, times)
        probe_test = change_features(reduced, test, feature, head, times)
    if model is None:
        model = build_classifier(classifier, seed, groups)
    model = fit_classifier(model, probe_train, y_train, notes)
    predicted = np.asarray(model.predict(probe_test)).astype(str)
    pred_codes = label_codes(predicted)

    head_codes = _head_delta_codes(visits, train, test, y_train, classifier, seed, notes)

    # Figure 1 and the change regression (both on test pairs).
    start = matrix[test["index_from"].to_numpy()]
    end = matrix[test["index_to"].to_numpy()]
    distance = cosine_distance(start, end)
    abs_change = np.abs(test["change"].to_numpy(dtype=np.float64))
    ridge = Pipeline(
        [("scale", StandardScaler()), ("ridge", RidgeCV(alphas=np.logspace(-3, 3, 13)))]
    )
    # The change regression needs scores: it learns from the training pairs that have them.
    change_train = train["change"].to_numpy(dtype=np.float64)
    scored_train = np.isfinite(change_train)
    change_true = test["change"].to_numpy(dtype=np.float64)
    if scored_train.all():
        ridge.fit(x_train, change_train)
        change_pred = np.asarray(ridge.predict(x_test), dtype=np.float64)
    elif scored_train.sum() >= 2:
        ridge.fit(x_train[scored_train], change_train[scored_train])
        change_pred = np.asarray(ridge.predict(x_test), dtype=np.float64)
    else:
        change_pred = np.full(len(test), math.nan)
    scored_test = np.isfinite(change_true)

    pair_patients = test["patient_id"].astype(str).to_numpy()

    def pair_stats(idx: np.ndarray) -> np.ndarray:
        """(9,): probe metrics, head_delta metrics, Figure-1 rho, change MAE and rho."""
        probe = class_metrics(confusion_counts(true_codes[idx], pred_codes[idx]))
        head = (
            class_metrics(confusion_counts(true_codes[idx], head_codes[idx]))
            if head_codes is not None
            else (math.nan,) * 3
        )
        return np.array(
            [
                *probe,
                *head,
                spearman(distance[idx], abs_change[idx]),
                mae(change_pred[idx][scored_test[idx]], change_true[idx][scored_test[idx]]),
                spearman(change_pred[idx], change_true[idx]),
            ]
        )

    everything = np.arange(len(test))
    point = pair_stats(everything)
    pair_samples = resamples_or_none(pair_patients, pair_stats, n_boot, seed)

    score_mae, scan_samples = _test_score_mae(frame, test_split, n_boot, seed)
    temporal_rho, temporal_samples = _temporal_rho(visits, matrix, test_patients, n_boot, seed)

    pair_keys = [
        *CLASS_METRICS,
        *(HEAD_DELTA_PREFIX + m for m in CLASS_METRICS),
        "spearman_distance",
        "change_mae",
        "change_spearman",
    ]
    values = dict(zip(pair_keys, point.tolist(), strict=True))
    samples: dict[str, np.ndarray] = {}
    if pair_samples is not None:
        samples.update({key: pair_samples[:, i] for i, key in enumerate(pair_keys)})
    if scan_samples is not None:
        samples["score_mae"] = scan_samples
    if temporal_samples is not None:
        samples["temporal_spearman"] = temporal_samples
    values["score_mae"] = score_mae
    values["temporal_spearman"] = temporal_rho

    metrics = {key: float(values[key]) for key in METRICS}
    ci95 = {key: interval95(samples.get(key)) for key in METRICS}
    head_delta = {m: float(values[HEAD_DELTA_PREFIX + m]) for m in CLASS_METRICS}
    head_delta_ci95 = {m: interval95(samples.get(HEAD_DELTA_PREFIX + m)) for m in CLASS_METRICS}

    zone = ["zone"] if "zone" in test.columns else []
    sign = 1.0 if higher_is_better else -1.0
    pred_visit = visits["pred_score"].to_numpy(dtype=np.float64)
    test_table = test[["patient_id", *zone, "visit_from", "visit_to", "change"]].assign(
        label=y_test,
        predicted=predicted,
        head_predicted=(np.asarray(LABELS)[head_codes] if head_codes is not None else None),
        distance=distance,
        predicted_change=change_pred,
        score_change=sign * change_true,
        head_change=sign * (pred_visit[test["index_to"]] - pred_visit[test["index_from"]]),
        probe_change=expected_change(model, probe_test),
    )
    labels: dict[str, dict[str, int]] | None = None
    if CHANGE_LABEL in test.columns:
        test_table["label_source"] = source_test
        labels = {"train": source_counts(source_train), "test": source_counts(source_test)}
    # Judged only now, every prediction made: the target never reaches a model.
    target_change = test_target_change(frame, test, test_split)
    target_band: float | None = None
    if target_change is not None:
        measured = np.isfinite(target_change)
        if not measured.any():
            raise DataError(
                f"no test pair has a {TARGET_COLUMN} value at both visits; measure the "
                "target at the test patients' visits or set eval.target: observed"
            )
        if not measured.all():
            notes.append(
                f"{int((~measured).sum())} of {len(test)} test pairs have no target value at "
                "one of their visits: the target table leaves them out"
            )
        stable_share = float(np.mean(y_train == "stable"))
        target_band = float(np.quantile(np.abs(target_change[measured]), stable_share))
        target_label = np.full(len(test), None, dtype=object)
        target_label[measured] = label_changes(target_change[measured], target_band)
        test_table["target_change"] = target_change
        test_table["target_label"] = target_label
    return ChangeResult(
        metrics=metrics,
        ci95=ci95,
        confusion=confusion_counts(true_codes, pred_codes),
        head_delta=head_delta,
        head_delta_ci95=head_delta_ci95,
        head_delta_confusion=(
            confusion_counts(true_codes, head_codes)
            if head_codes is not None
            else np.zeros((3, 3), dtype=np.int64)
        ),
        figure1=pd.DataFrame(
            {"distance": distance, "abs_change": abs_change, "patient_id": pair_patients}
        ),
        band=float(band),
        delta=delta,
        n_train_pairs=len(train),
        n_test_pairs=len(test),
        n_train_patients=len(train_patients),
        n_test_patients=len(test_patients),
        class_counts_train=_class_counts(y_train),
        class_counts_test=_class_counts(y_test),
        feature=feature,
        classifier=classifier,
        n_boot=n_boot,
        seed=seed,
        warnings=notes,
        test_pairs=test_table,
        train_patients=sorted(train_patients),
        test_patients=sorted(test_patients),
        model=model,
        bootstrap=samples,
        probe=(
            Probe.from_pipeline(model).composed(*projection.feature_map(feature))
            if projection is not None
            else Probe.from_pipeline(model)
        ),
        pca=projection.k if projection is not None else 0,
        chosen_c=chosen_c(model),
        target_band=target_band,
        labels=labels,
    )


def _low_capacity_probe(
    matrix: np.ndarray,
    visits: pd.DataFrame,
    train: pd.DataFrame,
    y_train: np.ndarray,
    feature: str,
    head: np.ndarray,
    times: np.ndarray | None,
    train_splits: Sequence[str],
    notes: list[str],
) -> tuple[ScanProjection, Pipeline]:
    """``eval.pca: auto``: the principal axes of the training visits, k of them and the
    logistic C chosen in folds of training patients (:func:`select_low_capacity`); returns
    the k-axis projection and the unfitted probe with the chosen C."""
    training_visits = visits["split"].astype(str).isin(list(train_splits)).to_numpy()
    widest = ScanProjection.fit(matrix[training_visits], max(AUTO_PCA_KS))
    reduced = widest.transform(matrix)
    ks = [k for k in AUTO_PCA_KS if k <= widest.k] or [widest.k]
    candidates = {k: change_features(reduced[:, :k], train, feature, head, times) for k in ks}
    groups = train["patient_id"].astype(str).to_numpy()
    k, c, score = select_low_capacity(candidates, y_train, groups)
    notes.append(
        f"{AUTO_PCA_NOTE} k={k} principal axes, C={c:g} (inner-fold balanced accuracy "
        f"{score:.3f} over k in {ks})"
    )
    projection = widest.truncated(k)
    model = build_classifier("logreg").set_params(clf__C=c)
    model.chosen_c_ = c  # read by chosen_c
    return projection, model


def has_change_pairs(frame: pd.DataFrame) -> bool:
    """Whether any patient has two consecutive labelled visits (a change pair)."""
    values = [c for c in ("score",) if c in frame.columns]
    if not values or "visit_order" not in frame.columns:
        return False
    return len(consecutive_pairs(visit_table(frame, value_cols=values))) > 0


def _class_counts(labels: np.ndarray) -> dict[str, int]:
    return {label: int(np.sum(labels == label)) for label in LABELS}
