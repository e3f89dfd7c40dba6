"""Downstream change evaluation (learner.evaluate.change) and the embeddings file
(learner.evaluate.embeddings_io), on small synthetic cohorts where the truth is known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
)

from learner.data.pairs import LABELS
from learner.errors import ConfigError, DataError
from learner.evaluate.change import evaluate_change
from learner.evaluate.embeddings_io import (
    EmbeddingsWriter,
    embedding_matrix,
    read_embeddings,
    write_embeddings,
)
from learner.evaluate.features import change_features, visit_embeddings, visit_times
from learner.evaluate.metrics import class_metrics, confusion_counts


def make_cohort(
    n_patients: int,
    seed: int,
    *,
    kind: str = "exact",
    steps: tuple[float, ...] = (-3.0, 0.0, 3.0),
    max_visits: int = 4,
    test_share: float = 0.3,
    pred: str = "noisy",
) -> pd.DataFrame:
    """An embeddings frame: 2-``max_visits`` visits per patient, 2 scans per visit.

    Score steps between visits are drawn from ``steps`` (+-0.3 jitter), so with a band of 1
    the labels are unambiguous. ``kind``: ``exact`` embeds [score, tiny noise x7] (the
    difference encodes the change), ``random`` is pure noise, ``angle`` puts the score on a
    circle so cosine distance grows monotonically with |score change|.
    """
    rng = np.random.default_rng(seed)
    ids = [f"p{i:03d}" for i in range(n_patients)]
    order = rng.permutation(n_patients)
    n_test = round(test_share * n_patients)
    n_val = max(1, round(0.1 * n_patients))
    split = {}
    for rank, j in enumerate(order):
        split[ids[j]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    rows = []
    for pid in ids:
        score = float(rng.uniform(10.0, 20.0))
        for visit in range(int(rng.integers(2, max_visits + 1))):
            if visit:
                score += float(rng.choice(steps) + rng.uniform(-0.3, 0.3))
            for _ in range(2):
                if kind == "exact":
                    emb = np.r_[score, rng.normal(0.0, 0.01, 7)]
                elif kind == "angle":
                    emb = np.array([math.cos(0.1 * score), math.sin(0.1 * score)])
                else:
                    emb = rng.normal(0.0, 1.0, 8)
                rows.append(
                    {
                        "patient_id": pid,
                        "visit": f"2024-01-{visit + 1:02d}",
                        "visit_order": visit,
                        "path": f"/scans/{pid}_{visit}.mp4",
                        "score": score,
                        "split": split[pid],
                        "pred_score": score if pred == "exact" else score + rng.normal(0, 2.0),
                        "embedding": emb.astype(np.float32),
                    }
                )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------- acceptance: the probe


def test_embeddings_encoding_the_change_give_accuracy_one() -> None:
    frame = make_cohort(60, seed=0, kind="exact")
    result = evaluate_change(frame, delta=1.0, n_boot=200, seed=0)
    assert result.metrics["accuracy"] == 1.0
    assert result.metrics["balanced_accuracy"] == 1.0
    assert result.metrics["macro_f1"] == 1.0
    assert result.ci95["accuracy"] == (1.0, 1.0)
    assert np.trace(result.confusion) == result.n_test_pairs > 20
    assert all(count > 0 for count in result.class_counts_test.values())
    # The ridge regression recovers the change itself from d.
    assert result.metrics["change_spearman"] > 0.99
    assert result.metrics["change_mae"] < 0.05
    assert result.warnings == []


def test_random_embeddings_interval_contains_chance() -> None:
    frame = make_cohort(150, seed=1, kind="random", test_share=0.4)
    result = evaluate_change(frame, delta=1.0, n_boot=500, seed=0)
    assert result.n_test_patients == 60
    for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
        lo, hi = result.ci95[metric]
        assert lo < 1.0 / 3.0 < hi, (metric, lo, hi)
        assert lo <= result.metrics[metric] <= hi


def test_held_out_patients_never_reach_the_classifier() -> None:
    """Corrupting every test patient's data must leave the fitted model bit-identical.

    Had a single test pair reached training (or the tertile band), the coefficients, the
    band or the training class counts would change.
    """
    frame = make_cohort(40, seed=2, kind="exact")
    clean = evaluate_change(frame, delta="tertiles", n_boot=0)

    corrupted = frame.copy()
    is_test = (corrupted["split"] == "test").to_numpy()
    rng = np.random.default_rng(99)
    corrupted.loc[is_test, "embedding"] = pd.Series(
        list(rng.normal(0.0, 1e6, (int(is_test.sum()), 8)).astype(np.float32)),
        index=corrupted.index[is_test],
    )
    corrupted.loc[is_test, "score"] = rng.permutation(corrupted.loc[is_test, "score"]) * 10.0
    corrupted.loc[is_test, "pred_score"] = rng.normal(0.0, 1e3, int(is_test.sum()))
    dirty = evaluate_change(corrupted, delta="tertiles", n_boot=0)

    for step in ("scale", "clf"):
        for attr in ("mean_", "scale_", "coef_", "intercept_"):
            if hasattr(clean.model.named_steps[step], attr):
                np.testing.assert_array_equal(
                    getattr(clean.model.named_steps[step], attr),
                    getattr(dirty.model.named_steps[step], attr),
                )
    assert dirty.band == clean.band
    assert dirty.class_counts_train == clean.class_counts_train
    assert dirty.n_train_pairs == clean.n_train_pairs
    assert not set(clean.train_patients) & set(clean.test_patients)
    test_ids = set(frame.loc[frame["split"] == "test", "patient_id"])
    assert set(clean.test_patients) == test_ids
    # The corruption did reach the test predictions (the check is not vacuous).
    assert dirty.metrics["accuracy"] < clean.metrics["accuracy"]
    # The tertile band is the 1/3 quantile of |change| over training pairs only.
    train_frame = frame[frame["split"] != "test"]
    visits, _ = visit_embeddings(train_frame)
    changes = visits.groupby("patient_id")["score"].diff().dropna().abs()
    assert clean.band == pytest.approx(float(np.quantile(changes, 1.0 / 3.0)))


def test_patient_in_two_splits_is_a_data_error() -> None:
    frame = make_cohort(20, seed=3)
    test_patient = frame.loc[frame["split"] == "test", "patient_id"].iloc[0]
    rows = frame.index[frame["patient_id"] == test_patient]
    frame.loc[rows[0], "split"] = "train"
    with pytest.raises(DataError, match=test_patient):
        evaluate_change(frame, delta=1.0, n_boot=0)


# ----------------------------------------------------------------- metrics and baselines


def test_metrics_match_scikit_learn() -> None:
    result = evaluate_change(make_cohort(60, seed=4, kind="random"), delta=1.0, n_boot=0)
    pairs = result.test_pairs
    true, pred = pairs["label"], pairs["predicted"]
    assert result.metrics["accuracy"] == pytest.approx(accuracy_score(true, pred))
    assert result.metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(true, pred))
    assert result.metrics["macro_f1"] == pytest.approx(
        f1_score(true, pred, labels=list(LABELS), average="macro", zero_division=0)
    )
    np.testing.assert_array_equal(result.confusion, confusion_matrix(true, pred, labels=LABELS))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_class_metrics_with_absent_classes_match_scikit_learn() -> None:
    rng = np.random.default_rng(5)
    for _ in range(30):
        n = int(rng.integers(1, 12))
        true = rng.choice(rng.permutation(3)[: int(rng.integers(1, 4))], size=n)
        pred = rng.integers(0, 3, size=n)
        accuracy, balanced, f1 = class_metrics(confusion_counts(true, pred))
        assert accuracy == pytest.approx(accuracy_score(true, pred))
        assert balanced == pytest.approx(balanced_accuracy_score(true, pred))
        assert f1 == pytest.approx(
            f1_score(true, pred, labels=[0, 1, 2], average="macro", zero_division=0)
        )


def test_head_delta_uses_the_predicted_change() -> None:
    frame = make_cohort(60, seed=6, kind="random", pred="exact")
    result = evaluate_change(frame, delta=1.0, n_boot=100)
    assert result.head_delta["accuracy"] == 1.0
    assert result.metrics["accuracy"] < 0.6
    np.testing.assert_array_equal(np.diag(result.head_delta_confusion).sum(), result.n_test_pairs)
    assert result.head_delta_ci95["accuracy"] == (1.0, 1.0)
    assert result.metrics["score_mae"] == 0.0

    frame["pred_score"] = np.nan
    missing = evaluate_change(frame, delta=1.0, n_boot=0)
    assert math.isnan(missing.head_delta["accuracy"])
    assert math.isnan(missing.metrics["score_mae"])
    assert any("head_delta" in line for line in missing.warnings)


def test_figure1_and_temporal_consistency() -> None:
    frame = make_cohort(40, seed=7, kind="angle", max_visits=5)
    result = evaluate_change(frame, delta=1.0, n_boot=100)
    fig1 = result.figure1
    assert list(fig1.columns) == ["distance", "abs_change", "patient_id"]
    assert len(fig1) == result.n_test_pairs
    np.testing.assert_allclose(fig1["abs_change"], result.test_pairs["change"].abs())
    assert result.metrics["spearman_distance"] > 0.99
    assert result.metrics["temporal_spearman"] > 0.99
    lo, hi = result.ci95["spearman_distance"]
    assert lo <= result.metrics["spearman_distance"] <= hi


def test_temporal_is_nan_without_three_visits_and_json_is_clean() -> None:
    result = evaluate_change(make_cohort(30, seed=8, max_visits=2), delta=1.0, n_boot=50)
    assert math.isnan(result.metrics["temporal_spearman"])
    plain = result.to_json()
    text = json.dumps(plain, allow_nan=False)
    assert plain["metrics"]["temporal_spearman"] is None
    assert plain["ci95"]["temporal_spearman"] == [None, None]
    assert plain["confusion"] == result.confusion.tolist()
    assert plain["labels"] == list(LABELS)
    assert len(json.loads(text)["figure1"]["distance"]) == result.n_test_pairs


def test_higher_is_better_flips_worsen_and_improve() -> None:
    frame = make_cohort(30, seed=9, steps=(-3.0, -3.0, 0.0, 3.0))
    up = evaluate_change(frame, delta=1.0, n_boot=0)
    down = evaluate_change(frame, delta=1.0, higher_is_better=False, n_boot=0)
    assert up.class_counts_test["worsen"] == down.class_counts_test["improve"]
    assert up.class_counts_test["improve"] == down.class_counts_test["worsen"]
    assert up.class_counts_test["worsen"] != up.class_counts_test["improve"]


def test_missing_training_class_warns_and_single_class_fails() -> None:
    no_worsen = evaluate_change(make_cohort(30, seed=10, steps=(0.0, 3.0)), delta=1.0, n_boot=0)
    assert no_worsen.class_counts_train["worsen"] == 0
    assert any("'worsen'" in line for line in no_worsen.warnings)
    assert "worsen" not in set(no_worsen.test_pairs["predicted"])

    with pytest.raises(DataError, match=r"only stable pairs.*narrow --delta"):
        evaluate_change(make_cohort(30, seed=10, steps=(0.0,)), delta=1.0, n_boot=0)


def test_concat_feature_and_mlp_classifier() -> None:
    frame = make_cohort(60, seed=11, kind="exact")
    concat = evaluate_change(frame, delta=1.0, feature="concat", n_boot=0)
    assert concat.model is not None
    assert concat.model.named_steps["scale"].n_features_in_ == 16
    # [u_from, u_to] hides the change in a low-variance direction: weaker than diff, not chance.
    assert concat.metrics["accuracy"] > 0.5
    mlp = evaluate_change(frame, delta=1.0, classifier="mlp", n_boot=0)
    # No class_weight in MLPClassifier; 7 noise dimensions to overfit on ~100 pairs.
    assert mlp.metrics["accuracy"] >= 0.75
    assert mlp.classifier == "mlp" and concat.feature == "concat"


def test_no_bootstrap_gives_nan_intervals() -> None:
    result = evaluate_change(make_cohort(20, seed=12), delta=1.0, n_boot=0)
    assert all(math.isnan(lo) and math.isnan(hi) for lo, hi in result.ci95.values())


def test_user_mistakes_raise_clear_errors() -> None:
    frame = make_cohort(20, seed=13)
    with pytest.raises(ConfigError, match="classifier"):
        evaluate_change(frame, classifier="svm")
    with pytest.raises(ConfigError, match="feature"):
        evaluate_change(frame, feature="sum")
    with pytest.raises(ConfigError, match="test split"):
        evaluate_change(frame, train_splits=("train", "test"))
    with pytest.raises(ConfigError, match="delta"):
        evaluate_change(frame, delta="quartiles")
    with pytest.raises(DataError, match="pred_score"):
        evaluate_change(frame.drop(columns=["pred_score"]))
    with pytest.raises(DataError, match="no test pairs"):
        evaluate_change(frame, test_split="holdout")
    broken = frame.copy()
    broken.at[3, "embedding"] = np.full(8, np.nan, dtype=np.float32)
    with pytest.raises(DataError, match="not finite"):
        evaluate_change(broken)


# ----------------------------------------------------------------- visits and features


def _scan(pid: str, order: int, emb: list[float], score: float, zone: str | None) -> dict:
    return {
        "patient_id": pid,
        "visit_order": order,
        "zone": zone,
        "score": score,
        "split": "train",
        "pred_score": score + 1.0,
        "embedding": np.asarray(emb, dtype=np.float32),
    }


def test_visit_embedding_is_the_mean_of_its_scans_per_zone() -> None:
    frame = pd.DataFrame(
        [
            _scan("a", 0, [1.0, 0.0], 10.0, "L1"),
            _scan("a", 0, [3.0, 2.0], 12.0, "L1"),
            _scan("a", 0, [5.0, 5.0], np.nan, "R1"),
            _scan("a", 1, [0.0, 4.0], 14.0, "L1"),
        ]
    )
    visits, matrix = visit_embeddings(frame)
    assert list(zip(visits["zone"], visits["visit_order"], strict=True)) == [
        ("L1", 0),
        ("L1", 1),
        ("R1", 0),
    ]
    np.testing.assert_allclose(matrix, [[2.0, 1.0], [0.0, 4.0], [5.0, 5.0]])
    np.testing.assert_allclose(visits["score"], [11.0, 14.0, np.nan])
    np.testing.assert_allclose(visits["pred_score"], [12.0, 15.0, np.nan])

    no_zone = frame.assign(zone=None)
    visits, matrix = visit_embeddings(no_zone)
    assert "zone" not in visits.columns
    np.testing.assert_allclose(matrix, [[3.0, 7.0 / 3.0], [0.0, 4.0]])


def test_change_features_diff_and_concat() -> None:
    matrix = np.array([[1.0, 2.0], [4.0, 6.0], [0.0, 1.0]])
    pairs = pd.DataFrame({"index_from": [0, 1], "index_to": [1, 2]})
    np.testing.assert_array_equal(
        change_features(matrix, pairs, "diff"), [[3.0, 4.0], [-4.0, -5.0]]
    )
    np.testing.assert_array_equal(
        change_features(matrix, pairs, "concat"), [[1.0, 2.0, 4.0, 6.0], [4.0, 6.0, 0.0, 1.0]]
    )
    with pytest.raises(ConfigError):
        change_features(matrix, pairs, "ratio")


def test_hybrid_feature_is_the_head_change_beside_d() -> None:
    matrix = np.array([[1.0, 2.0], [4.0, 6.0], [0.0, 1.0]])
    pairs = pd.DataFrame({"index_from": [0, 1], "index_to": [1, 2]})
    head = np.array([10.0, 12.5, 11.0])
    np.testing.assert_array_equal(
        change_features(matrix, pairs, "hybrid", head), [[2.5, 3.0, 4.0], [-1.5, -4.0, -5.0]]
    )
    with pytest.raises(DataError, match="pred_score"):
        change_features(matrix, pairs, "hybrid")
    with pytest.raises(DataError, match="use feature diff"):
        change_features(matrix, pairs, "hybrid", np.array([10.0, np.nan, 11.0]))


def test_rate_feature_is_d_per_unit_of_time_between_visits() -> None:
    matrix = np.array([[1.0, 2.0], [4.0, 6.0], [0.0, 1.0]])
    pairs = pd.DataFrame({"patient_id": ["a", "a"], "index_from": [0, 1], "index_to": [1, 2]})
    times = np.array([0.0, 2.0, 7.0])
    np.testing.assert_allclose(
        change_features(matrix, pairs, "rate", times=times), [[1.5, 2.0], [-0.8, -1.0]]
    )
    with pytest.raises(DataError, match="no visit values"):
        change_features(matrix, pairs, "rate")
    with pytest.raises(DataError, match="patient 'a': no positive time between visits 2 and 2"):
        change_features(matrix, pairs, "rate", times=np.array([0.0, 2.0, 2.0]))


def test_visit_times_read_numbers_as_written_and_dates_in_days() -> None:
    visits = pd.DataFrame({"visit": ["2024-01-01", "2024-03-01", "12.5", "3", "baseline"]})
    times = visit_times(visits)
    assert times is not None
    assert times[1] - times[0] == 60.0  # 31 days of January + 29 of February 2024
    assert times[2] == 12.5 and times[3] == 3.0 and np.isnan(times[4])
    assert visit_times(visits.rename(columns={"visit": "when"})) is None


def test_rate_equals_diff_where_visits_are_evenly_spaced() -> None:
    """make_cohort's visits are one day apart: the rate is d itself, so are the predictions."""
    frame = make_cohort(40, seed=4)
    diff = evaluate_change(frame, delta=1.0, n_boot=0)
    rate = evaluate_change(frame, delta=1.0, n_boot=0, feature="rate")
    assert rate.metrics == diff.metrics
    pd.testing.assert_series_equal(rate.test_pairs["predicted"], diff.test_pairs["predicted"])


def test_hybrid_probe_reads_the_head_where_the_embedding_is_noise() -> None:
    """Random embeddings, an exact head: diff is near chance, hybrid near head_delta."""
    frame = make_cohort(60, seed=6, kind="random", pred="exact")
    diff = evaluate_change(frame, delta=1.0, n_boot=0)
    hybrid = evaluate_change(frame, delta=1.0, n_boot=0, feature="hybrid")
    assert diff.metrics["balanced_accuracy"] < 0.6
    assert hybrid.metrics["balanced_accuracy"] > 0.9
    assert hybrid.head_delta == diff.head_delta


# ----------------------------------------------------------------- embeddings file


def _assert_same_frame(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(actual.columns) == list(expected.columns)
    np.testing.assert_array_equal(embedding_matrix(actual), embedding_matrix(expected))
    for column in expected.columns.drop("embedding"):
        left = actual[column].tolist()
        right = [None if isinstance(v, float) and math.isnan(v) else v for v in expected[column]]
        left = [None if isinstance(v, float) and math.isnan(v) else v for v in left]
        assert left == right, column


def test_parquet_round_trip(tmp_path: Path) -> None:
    frame = make_cohort(5, seed=14).assign(zone=lambda f: np.where(f.index % 2, "L1", None))
    frame.loc[0, "score"] = np.nan
    frame.loc[1, "path"] = None
    meta = {"objective": "weighted", "seed": 3, "score_range": [0, 500], "higher_is_better": True}
    target = tmp_path / "out" / "embeddings.parquet"
    write_embeddings(frame, target, meta)

    assert sorted(p.name for p in target.parent.iterdir()) == ["embeddings.parquet"]
    schema = pq.read_schema(target)
    assert schema.field("embedding").type == pa.list_(pa.float32())
    assert schema.field("visit_order").type == pa.int64()
    back, back_meta = read_embeddings(target)
    assert back_meta == meta
    assert back["embedding"].iloc[0].dtype == np.float32
    _assert_same_frame(back, frame)


def test_streaming_writer_three_batches(tmp_path: Path) -> None:
    frame = make_cohort(9, seed=15)
    batches = np.array_split(np.arange(len(frame)), 3)
    target = tmp_path / "embeddings.parquet"
    with EmbeddingsWriter(target, {"objective": "mse"}) as writer:
        for rows in batches:
            writer.write_batch(frame.iloc[rows])
        # Nothing under the final name until the writer closes.
        assert not target.exists()
    assert writer.n_rows == len(frame)
    assert pq.ParquetFile(target).metadata.num_row_groups == 3
    back, meta = read_embeddings(target)
    assert meta == {"objective": "mse"}
    _assert_same_frame(back, frame.reset_index(drop=True))
    assert [p.name for p in tmp_path.iterdir()] == ["embeddings.parquet"]


def test_streaming_writer_aborts_cleanly(tmp_path: Path) -> None:
    frame = make_cohort(4, seed=16)
    target = tmp_path / "embeddings.parquet"
    with pytest.raises(RuntimeError, match="boom"), EmbeddingsWriter(target, {}) as writer:
        writer.write_batch(frame)
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with EmbeddingsWriter(target, {}) as writer:
        writer.write_batch(frame)
        with pytest.raises(ValueError, match="embedding length"):
            writer.write_batch(frame.assign(embedding=[np.zeros(3)] * len(frame)))


def test_reading_a_file_that_is_not_an_embeddings_file(tmp_path: Path) -> None:
    frame = make_cohort(3, seed=17)
    lacking = tmp_path / "lacking.parquet"
    pq.write_table(pa.Table.from_pandas(frame.drop(columns=["embedding"])), lacking)
    with pytest.raises(DataError, match=r"lacking\.parquet.*'embedding' is missing"):
        read_embeddings(lacking)
    text = tmp_path / "manifest.csv"
    text.write_text("patient_id,visit\na,1\n")
    with pytest.raises(DataError, match=r"manifest\.csv: not a Parquet file"):
        read_embeddings(text)
    with pytest.raises(DataError, match="not found"):
        read_embeddings(tmp_path / "absent.parquet")
    ragged = frame.copy()
    ragged.at[0, "embedding"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(DataError, match="lengths differ"):
        write_embeddings(ragged, tmp_path / "ragged.parquet", {})


# ----------------------------------------------------------------- real longitudinal data

TELEMONITORING = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "parkinsons-telemonitoring"
    / "parkinsons_updrs.data"
)


def test_real_telemonitoring_round_trip_and_evaluation(tmp_path: Path) -> None:
    """UCI Parkinson's Telemonitoring (42 subjects, ~6 months): voice features as embeddings,
    monthly visits, total UPDRS (higher is worse) as the score, a ridge 'head' for pred_score."""
    if not TELEMONITORING.is_file():
        pytest.skip(f"real data not found at {TELEMONITORING} (needs ../shared/data)")
    from sklearn.linear_model import Ridge

    raw = pd.read_csv(TELEMONITORING)
    features = np.log(raw.iloc[:, 6:].to_numpy(dtype=np.float64) + 1e-3)
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    month = (raw["test_time"].clip(lower=0) // 30).astype(int)
    patient = raw["subject#"].astype(str)
    split = np.where(raw["subject#"] % 3 == 0, "test", "train")
    head = Ridge(alpha=1.0).fit(features[split == "train"], raw["total_UPDRS"][split == "train"])
    frame = pd.DataFrame(
        {
            "patient_id": patient,
            "visit": month.astype(str),
            "visit_order": month.groupby(patient).rank(method="dense").astype(int) - 1,
            "path": None,
            "score": raw["total_UPDRS"],
            "split": split,
            "pred_score": head.predict(features),
            "embedding": list(features.astype(np.float32)),
        }
    )
    target = tmp_path / "embeddings.parquet"
    write_embeddings(frame, target, {"objective": "features", "higher_is_better": False})
    back, meta = read_embeddings(target)
    assert len(back) == len(raw) == 5875 and meta["higher_is_better"] is False

    result = evaluate_change(back, delta="tertiles", higher_is_better=False, n_boot=200)
    assert result.n_test_patients == 14 and result.n_train_patients == 28
    assert not set(result.train_patients) & set(result.test_patients)
    assert result.n_test_pairs > 50
    for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
        lo, hi = result.ci95[metric]
        assert 0.0 <= lo <= result.metrics[metric] <= hi <= 1.0
    assert np.isfinite(result.metrics["temporal_spearman"])
    assert result.metrics["score_mae"] > 0.0
