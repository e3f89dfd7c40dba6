"""Low-capacity change probes: the embedding projected onto training principal axes
(``eval.pca``) and a logistic regression whose C is chosen in patient folds (``logreg-cv``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from learner.config import Config
from learner.data.pairs import consecutive_pairs
from learner.errors import ConfigError, DataError
from learner.evaluate.change import evaluate_change
from learner.evaluate.classifier import CV_CS, build_classifier
from learner.evaluate.features import change_features, visit_embeddings, visit_times
from learner.evaluate.reduce import ScanProjection
from tests.evaluate.test_change import make_cohort


def spread_signal(frame: pd.DataFrame, dims: int, noise: float, seed: int) -> pd.DataFrame:
    """The cohort's score along one random direction of ``dims`` dimensions, plus isotropic
    scan noise: the change lives on one axis that standardised PCA finds, and a full-rank
    probe has ``dims`` noisy inputs to overfit."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(0.0, 1.0, dims)
    out = frame.copy()
    out["embedding"] = [
        (float(e[0]) * direction + rng.normal(0.0, noise, dims)).astype(np.float32)
        for e in frame["embedding"]
    ]
    return out


def respace_visits(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same visits on ISO dates 7-90 days apart (make_cohort's are one day apart)."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    for _, rows in out.groupby("patient_id"):
        orders = sorted(rows["visit_order"].unique())
        days = np.cumsum([0, *rng.integers(7, 91, size=len(orders) - 1)])
        dates = {
            o: str(np.datetime64("2024-01-01") + int(d)) for o, d in zip(orders, days, strict=True)
        }
        out.loc[rows.index, "visit"] = rows["visit_order"].map(dates)
    return out


def test_projection_commutes_with_every_pair_feature() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(12, 6)) * rng.uniform(0.5, 3.0, 6) + rng.normal(size=6)
    projection = ScanProjection.fit(matrix[:8], k=3)
    assert projection.k == 3
    gram = projection.components.T @ projection.components
    np.testing.assert_allclose(gram, np.eye(3), atol=1e-12)
    assert np.all(np.diff(projection.explained) <= 0) and projection.explained.sum() <= 1.0
    pairs = pd.DataFrame({"index_from": [0, 3, 9], "index_to": [1, 4, 11]})
    head = rng.normal(size=12)
    times = np.cumsum(rng.uniform(1.0, 30.0, 12))
    for feature in ("diff", "concat", "hybrid", "rate"):
        a, c = projection.feature_map(feature)
        raw = change_features(matrix, pairs, feature, head, times)
        reduced = change_features(projection.transform(matrix), pairs, feature, head, times)
        np.testing.assert_allclose(raw @ a + c, reduced, atol=1e-10)


def test_projection_is_fitted_on_training_visits_only() -> None:
    """Moving a test patient's embeddings far away leaves the axes, and so every training
    decision, unchanged."""
    frame = spread_signal(make_cohort(30, seed=3), dims=16, noise=2.0, seed=3)
    moved = frame.copy()
    moved["embedding"] = [
        e * 50.0 + 7.0 if split == "test" else e
        for e, split in zip(frame["embedding"], frame["split"], strict=True)
    ]
    a = evaluate_change(frame, delta=1.0, n_boot=0, pca=2)
    b = evaluate_change(moved, delta=1.0, n_boot=0, pca=2)
    assert a.model is not None and b.model is not None
    np.testing.assert_allclose(
        a.model.named_steps["clf"].coef_, b.model.named_steps["clf"].coef_, rtol=1e-6
    )


def test_pca_probe_beats_the_full_rank_probe_where_the_signal_has_one_axis() -> None:
    frame = spread_signal(make_cohort(40, seed=1), dims=64, noise=4.0, seed=1)
    full = evaluate_change(frame, delta=1.0, n_boot=0)
    reduced = evaluate_change(frame, delta=1.0, n_boot=0, pca=2)
    assert reduced.pca == 2
    assert full.metrics["balanced_accuracy"] < 0.9
    assert reduced.metrics["balanced_accuracy"] > 0.95
    # head_delta, the distances and the change regression do not depend on the probe.
    assert reduced.head_delta == full.head_delta
    np.testing.assert_array_equal(reduced.figure1["distance"], full.figure1["distance"])
    assert reduced.metrics["change_mae"] == full.metrics["change_mae"]


@pytest.mark.parametrize("feature", ["diff", "concat", "hybrid", "rate"])
def test_saved_probe_reads_raw_features_and_predicts_as_the_evaluation(feature: str) -> None:
    """The projection folds into the probe: on raw pair features it gives the evaluation's
    own test predictions, so a saved change model needs nothing else."""
    frame = spread_signal(make_cohort(40, seed=2), dims=24, noise=3.0, seed=2)
    frame = respace_visits(frame, seed=2)
    result = evaluate_change(frame, delta=1.0, n_boot=0, pca=3, feature=feature)
    visits, matrix = visit_embeddings(frame)
    pairs = consecutive_pairs(visits)
    test = pairs[pairs["split"] == "test"].reset_index(drop=True)
    head = visits["pred_score"].to_numpy(np.float64)
    raw = change_features(matrix, test, feature, head, visit_times(visits))
    assert result.probe is not None
    assert result.probe.mean.shape == (raw.shape[1],)
    np.testing.assert_array_equal(result.probe.predict(raw), result.test_pairs["predicted"])


def test_too_many_components_are_capped_with_a_note() -> None:
    frame = make_cohort(12, seed=0)  # 8-dimensional embeddings
    result = evaluate_change(frame, delta=1.0, n_boot=0, pca=50)
    assert result.pca == 8
    assert any("allow 8 components" in w for w in result.warnings)
    with pytest.raises(ConfigError, match=r"eval\.pca"):
        ScanProjection.fit(np.ones((4, 3)), k=0)
    with pytest.raises(DataError, match="at least 2"):
        ScanProjection.fit(np.ones((1, 3)), k=1)


def test_logreg_cv_folds_keep_each_patient_in_one_fold() -> None:
    groups = np.repeat([f"p{i}" for i in range(7)], 3)
    clf = build_classifier("logreg-cv", groups=groups).named_steps["clf"]
    assert len(clf.cv) == 5
    for train, held in clf.cv:
        assert not set(groups[train]) & set(groups[held])
    with pytest.raises(ConfigError, match="patient"):
        build_classifier("logreg-cv")
    with pytest.raises(DataError, match="at least 2 patients"):
        build_classifier("logreg-cv", groups=np.array(["p0", "p0"]))


def test_logreg_cv_chooses_c_and_reports_it() -> None:
    frame = spread_signal(make_cohort(40, seed=1), dims=64, noise=4.0, seed=1)
    result = evaluate_change(frame, delta=1.0, n_boot=0, classifier="logreg-cv")
    assert result.chosen_c in CV_CS
    assert result.to_json()["chosen_c"] == result.chosen_c
    assert evaluate_change(frame, delta=1.0, n_boot=0).chosen_c is None
    assert result.probe is not None and result.test_pairs["predicted"].notna().all()


def test_config_accepts_the_probes_and_rejects_a_negative_pca() -> None:
    cfg = Config.model_validate({"eval": {"classifier": "logreg-cv", "pca": 8}})
    assert (cfg.eval.classifier, cfg.eval.pca) == ("logreg-cv", 8)
    with pytest.raises(ValueError, match="pca"):
        Config.model_validate({"eval": {"pca": -1}})


def test_the_auto_probe_chooses_k_and_c_in_patient_folds_and_saves_as_any_probe() -> None:
    """eval.pca: auto on a one-axis signal in 64 noisy dimensions: a small k wins in the
    training patients' folds, the probe beats the full-rank one on test patients, and its
    saved form reads raw features."""
    from learner.evaluate.classifier import AUTO_PCA_KS

    frame = spread_signal(make_cohort(40, seed=1), dims=64, noise=4.0, seed=1)
    full = evaluate_change(frame, delta=1.0, n_boot=0)
    auto = evaluate_change(frame, delta=1.0, n_boot=0, pca="auto")
    assert auto.pca in AUTO_PCA_KS and auto.pca <= 8
    assert auto.chosen_c is not None and auto.chosen_c in [pytest.approx(c) for c in CV_CS]
    assert any(note.startswith("eval.pca auto: k=") for note in auto.warnings)
    assert auto.metrics["balanced_accuracy"] > full.metrics["balanced_accuracy"] + 0.05
    visits, matrix = visit_embeddings(frame)
    pairs = consecutive_pairs(visits)
    test = pairs[pairs["split"] == "test"].reset_index(drop=True)
    head = visits["pred_score"].to_numpy(np.float64)
    raw = change_features(matrix, test, "diff", head, visit_times(visits))
    assert auto.probe is not None and auto.probe.mean.shape == (raw.shape[1],)
    np.testing.assert_array_equal(auto.probe.predict(raw), auto.test_pairs["predicted"])


def test_eval_pca_accepts_auto_and_refuses_other_words() -> None:
    assert Config.model_validate({"eval": {"pca": "auto"}}).eval.pca == "auto"
    assert Config.model_validate({"eval": {"pca": 8}}).eval.pca == 8
    with pytest.raises(Exception, match="pca"):
        Config.model_validate({"eval": {"pca": "all"}})
