"""Judging change against the truth (eval.target): only test patients' truth is read, never
by a model; the rows, the two-stage bootstrap, Holm and the minimum detectable difference;
and a positive control: a coarser score falls on the truth target while the truth does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from learner.data.manifest import load_manifest
from learner.data.synthetic import cohort_table
from learner.errors import DataError
from learner.evaluate.aggregate import CellResult, paired_difference, ratio_of_means
from learner.evaluate.bootstrap import MDD_80_SE, bootstrap_distribution, hierarchical_resamples
from learner.evaluate.ceilings import fraction_of_achievable
from learner.evaluate.change import TARGET_COLUMN, evaluate_change
from learner.evaluate.metrics import spearman
from learner.evaluate.target import (
    SCORE_DELTA,
    bootstrap_p_value,
    column_target,
    holm_adjust,
    primary_family,
    target_block,
    target_rows,
)
from tests.evaluate.test_change import make_cohort

PREDICTIONS = ["predicted", "head_predicted", "probe_change", "head_change", "score_change"]


def with_target(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The frame plus a target: the score plus noise, constant within a visit."""
    rng = np.random.default_rng(seed)
    visit_noise = {
        key: rng.normal(0.0, 1.0)
        for key in frame[["patient_id", "visit_order"]].itertuples(index=False)
    }
    noise = [visit_noise[k] for k in frame[["patient_id", "visit_order"]].itertuples(index=False)]
    return frame.assign(**{TARGET_COLUMN: frame["score"].to_numpy() + np.asarray(noise)})


def test_the_target_is_read_for_test_pairs_only_and_never_reaches_a_model() -> None:
    frame = make_cohort(40, seed=2, kind="exact")
    plain = evaluate_change(frame, delta="tertiles", n_boot=0)
    target = with_target(frame)
    # Training patients' target unreadable: were it read anywhere, the result would change
    # (or fail, as a test visit without a target does below).
    target.loc[target["split"] != "test", TARGET_COLUMN] = np.nan
    judged = evaluate_change(target, delta="tertiles", n_boot=0)

    for column in PREDICTIONS:
        pd.testing.assert_series_equal(plain.test_pairs[column], judged.test_pairs[column])
    assert "target_change" not in plain.test_pairs and plain.target_band is None
    np.testing.assert_array_equal(
        plain.model.named_steps["clf"].coef_, judged.model.named_steps["clf"].coef_
    )

    # target_change is the test visits' target change, by hand.
    test_visits = (
        target[target["split"] == "test"]
        .groupby(["patient_id", "visit_order"])[TARGET_COLUMN]
        .mean()
    )
    pairs = judged.test_pairs
    expected = [
        test_visits[(p, b)] - test_visits[(p, a)]
        for p, a, b in pairs[["patient_id", "visit_from", "visit_to"]].itertuples(index=False)
    ]
    np.testing.assert_allclose(pairs["target_change"], expected)

    # The band makes the target's classes as frequent as the observed training classes.
    train_share = judged.class_counts_train["stable"] / judged.n_train_pairs
    target_share = float(np.mean(pairs["target_label"] == "stable"))
    assert target_share == pytest.approx(train_share, abs=1.5 / len(pairs))

    # A test visit without a value (a measurement not taken): its pairs leave the target
    # table, with a note; the observed rows keep them.
    missing = with_target(frame)
    first = missing[missing["split"] == "test"].iloc[0]
    visit = (missing["patient_id"] == first["patient_id"]) & (
        missing["visit_order"] == first["visit_order"]
    )
    missing.loc[visit, TARGET_COLUMN] = np.nan  # every scan of one test visit
    partial = evaluate_change(missing, delta="tertiles", n_boot=0)
    unmeasured = partial.test_pairs["target_change"].isna()
    assert (
        1 <= unmeasured.sum() <= 2
        and partial.test_pairs.loc[unmeasured, "target_label"].isna().all()
    )
    assert any("no target value" in note for note in partial.warnings)
    assert len(partial.test_pairs) == len(judged.test_pairs)
    nothing = with_target(frame).assign(**{TARGET_COLUMN: np.nan})
    with pytest.raises(DataError, match="no test pair has a target value"):
        evaluate_change(nothing, delta="tertiles", n_boot=0)


def test_a_manifest_column_target_is_the_visit_mean_oriented_higher_is_better(
    tmp_path: Path,
) -> None:
    """``eval.target: {column: nWBV}``: the loader keeps the column (empty = NaN) and each
    embeddings row gets its visit's mean, negated where lower is better."""
    (tmp_path / "a.npy").write_bytes(b"")
    rows = [
        "patient_id,visit,path,score,nWBV",
        "p1,1,a.npy,28,0.80",
        "p1,2,a.npy,27,",
        "p2,1,a.npy,25,0.70",
    ]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    manifest = load_manifest(tmp_path / "m.csv", measurement_columns=["nWBV"], check_files=False)
    assert manifest.frame["nWBV"].tolist()[0] == 0.80 and np.isnan(manifest.frame["nWBV"][1])
    assert not any("nWBV" in w for w in manifest.warnings)
    with pytest.raises(DataError, match="'CDR'"):
        load_manifest(tmp_path / "m.csv", measurement_columns=["CDR"], check_files=False)

    embeddings = pd.DataFrame(
        {"patient_id": ["p2", "p1", "p1", "p1"], "visit": ["1", "2", "1", "1"]}
    )
    up = column_target(embeddings, manifest.frame, "nWBV", higher_is_better=True)
    np.testing.assert_allclose(up, [0.70, np.nan, 0.80, 0.80])
    down = column_target(embeddings, manifest.frame, "nWBV", higher_is_better=False)
    np.testing.assert_allclose(down, -up)


def test_predicted_changes_are_oriented_so_that_higher_is_better() -> None:
    frame = make_cohort(40, seed=4, kind="exact", pred="exact")
    up = evaluate_change(frame, delta=1.0, n_boot=0).test_pairs
    down = evaluate_change(frame, delta=1.0, n_boot=0, higher_is_better=False).test_pairs
    np.testing.assert_allclose(up["score_change"], up["change"])
    np.testing.assert_allclose(down["score_change"], -down["change"])
    np.testing.assert_allclose(down["head_change"], -up["head_change"])
    # The probe's expected change follows the labels: improve > stable > worsen.
    means = up.groupby("label")["probe_change"].mean()
    assert means["improve"] > 0.5 > -0.5 > means["worsen"]


def test_hierarchical_resamples_carry_seed_variance() -> None:
    rng = np.random.default_rng(0)
    # Two seeds whose patient bootstraps are narrow but far apart: the seed-level spread must
    # widen the interval of their mean beyond the averaged patient resamples.
    boots = [rng.normal(0.2, 0.01, 1000), rng.normal(0.6, 0.01, 1000)]
    two_stage = hierarchical_resamples(boots, 2000, seed=1)
    averaged = (boots[0] + boots[1]) / 2
    assert np.std(two_stage) > 5 * np.std(averaged)
    assert np.mean(two_stage) == pytest.approx(0.4, abs=0.02)
    # One seed: it draws from that seed's own patient resamples.
    single = hierarchical_resamples([boots[0]], 500, seed=2)
    assert set(single.tolist()) <= set(boots[0].tolist())


def test_crossed_resamples_keep_a_shared_patients_variance() -> None:
    # Four seeds that tested the same patients: resample b is the same patient draw in each,
    # so the patient noise is common to the seeds and must not average out over them.
    common = np.random.default_rng(0).normal(0.5, 0.1, 2000)
    boots = [common] * 4
    crossed = hierarchical_resamples(boots, 4000, seed=1, shared_patients=True)
    nested = hierarchical_resamples(boots, 4000, seed=1)
    assert np.std(crossed) == pytest.approx(np.std(common), rel=0.1)
    assert np.std(nested) == pytest.approx(np.std(common) / 2, rel=0.1)


def test_holm_and_the_bootstrap_p_value() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.5])
    # Sorted 0.01, 0.03, 0.04, 0.5 -> x4, x3, x2, x1, then monotone.
    np.testing.assert_allclose(holm_adjust(p), [0.04, 0.09, 0.09, 0.5])
    rng = np.random.default_rng(0)
    assert bootstrap_p_value(rng.normal(1.0, 0.2, 2000)) < 0.01
    assert bootstrap_p_value(rng.normal(0.0, 1.0, 2000)) > 0.5


def _units(
    seeds: int, *, informative: bool, same_patients: bool = False
) -> dict[str, list[list[CellResult]]]:
    """mse and weighted results on the same cohorts, with a target per seed: weighted's head
    reads the target itself (``informative``) or noise; mse's head reads the score. With
    ``same_patients`` every seed tests one cohort (a fixed test set)."""
    units: dict[str, list[list[CellResult]]] = {"mse": [], "weighted": []}
    for seed in range(seeds):
        cohort = 0 if same_patients else seed
        frame = with_target(make_cohort(60, seed=10 + cohort, kind="exact"), cohort)
        mse = evaluate_change(frame, delta=1.0, n_boot=0, seed=seed)
        rng = np.random.default_rng(seed)
        head = frame[TARGET_COLUMN] if informative else rng.normal(0, 5, len(frame))
        weighted = evaluate_change(frame.assign(pred_score=head), delta=1.0, n_boot=0, seed=seed)
        units["mse"].append([CellResult.from_change(mse)])
        units["weighted"].append([CellResult.from_change(weighted)])
    return units


def test_the_target_block_answers_finer_than_the_score_only_where_it_is() -> None:
    units = _units(3, informative=True)
    rows = target_rows(units, reference="mse", untrained="untrained")
    assert list(rows) == [SCORE_DELTA, "mse:head_delta", "mse", "weighted", "weighted:head_delta"]
    assert primary_family(rows, reference="mse", untrained="untrained") == [
        ("weighted:head_delta", SCORE_DELTA),
        ("weighted:head_delta", "mse:head_delta"),
    ]
    block = target_block(units, reference="mse", untrained="untrained", n_boot=300, seed=0)
    assert block is not None
    head = block["rows"]["weighted:head_delta"]["spearman_visit"]
    assert head["mean"] == pytest.approx(1.0)
    score = block["rows"][SCORE_DELTA]["spearman_visit"]
    # Per seed, score_delta's rho is the rank correlation of the score change with the truth.
    pairs = units["mse"][0][0].test_pairs
    visit = pairs.groupby(["patient_id", "visit_from", "visit_to"])[
        ["score_change", "target_change"]
    ].mean()
    assert score["per_seed"][0] == pytest.approx(
        spearman(visit["score_change"].to_numpy(), visit["target_change"].to_numpy())
    )
    for comparison in block["primary"]:
        assert comparison["mean"] > 0 and comparison["ci95"][0] > 0
        assert comparison["p_holm"] >= comparison["p"]
        assert comparison["mdd80"] == pytest.approx(
            MDD_80_SE * (comparison["ci95"][1] - comparison["ci95"][0]) / (2 * 1.96), rel=0.35
        )
    assert block["answer"]["finer"] and block["answer"]["rows"] == ["weighted:head_delta"]

    noise = target_block(
        _units(3, informative=False), reference="mse", untrained="untrained", n_boot=300, seed=0
    )
    assert noise is not None and not noise["answer"]["finer"]


def test_seeds_that_test_the_same_patients_are_resampled_crossed() -> None:
    nested = target_block(
        _units(3, informative=True), reference="mse", untrained="untrained", n_boot=400, seed=0
    )
    crossed = target_block(
        _units(3, informative=True, same_patients=True),
        reference="mse",
        untrained="untrained",
        n_boot=400,
        seed=0,
    )
    assert nested is not None and crossed is not None
    assert (nested["design"], crossed["design"]) == ("nested", "crossed")
    # score_delta does not depend on the seed: on shared patients its interval is that of
    # one seed's patient bootstrap, not narrowed by averaging three copies of it.
    score = crossed["rows"][SCORE_DELTA]["spearman_visit"]
    assert len(set(score["per_seed"])) == 1
    units = _units(1, informative=True)
    one = target_block(units, reference="mse", untrained="untrained", n_boot=400, seed=0)
    assert one is not None
    width = np.diff(one["rows"][SCORE_DELTA]["spearman_visit"]["ci95"])[0]
    assert np.diff(score["ci95"])[0] == pytest.approx(width, rel=0.25)


def test_a_coarser_score_falls_on_the_truth_target_while_the_truth_does_not() -> None:
    """Positive control: the same patients and latent trajectories with the score rounded to
    5 or to 100 S/F points. score_delta tracks the true change less with the coarse score;
    a probe that reads the true change (fitted on the coarse observed labels) does not."""
    rho = {}
    for quantum in (5.0, 100.0):
        table = cohort_table("lus", patients=160, seed=3, preset="tiny", score_quantum=quantum)
        rng = np.random.default_rng(0)
        patients = table["patient_id"].unique()
        split = dict(
            zip(patients, rng.choice(["train", "test"], len(patients), p=[0.6, 0.4]), strict=True)
        )
        severity = table["severity"].to_numpy()
        frame = pd.DataFrame(
            {
                "patient_id": table["patient_id"],
                "visit": table["visit"].astype(str),
                "visit_order": table["visit"],
                "zone": table["zone"],
                "score": table["score"],
                "split": table["patient_id"].map(split),
                "pred_score": table["score"],
                # An oracle embedding: the true severity (and a constant).
                "embedding": list(np.stack([-severity, np.ones_like(severity)], axis=1)),
                TARGET_COLUMN: -severity,
            }
        )
        pairs = evaluate_change(frame, delta="tertiles", n_boot=0).test_pairs
        visit = pairs.groupby(["patient_id", "visit_from", "visit_to"]).mean(numeric_only=True)
        rho[quantum] = {
            row: spearman(visit[column].to_numpy(), visit["target_change"].to_numpy())
            for row, column in (("score", "score_change"), ("oracle", "probe_change"))
        }
    assert rho[100.0]["score"] < rho[5.0]["score"] - 0.2
    assert min(rho[5.0]["oracle"], rho[100.0]["oracle"]) > 0.9


def test_rows_of_one_seed_are_resampled_on_the_same_patients() -> None:
    """The pair table and the visit table of one seed draw the same patients in every
    resample (what makes differences between rows, and between the two tables, paired)."""
    pairs = np.array(["a", "a", "b", "c", "c", "c"])  # zone pairs: several per patient
    visits = np.array(["a", "b", "c"])

    def draws(ids: np.ndarray):
        codes = pd.factorize(ids, sort=True)[0]
        per_patient = np.bincount(codes)
        return lambda idx: np.bincount(codes[idx], minlength=3) / per_patient

    np.testing.assert_array_equal(
        bootstrap_distribution(pairs, draws(pairs), 50, 7),
        bootstrap_distribution(visits, draws(visits), 50, 7),
    )


def test_the_minimum_detectable_difference_is_at_80_percent_power() -> None:
    """2.8 standard errors: about 1.43 times the half-width of a 95% interval (1.96 standard
    errors) when the resamples are near normal (150 patients, three seeds)."""
    units = _units(3, informative=True)
    diff = paired_difference(
        units["weighted"], units["mse"], "balanced_accuracy", n_boot=2000, seed=0
    )
    lo, hi = diff["ci95"]
    assert diff["min_detectable_difference"] == pytest.approx(
        MDD_80_SE / 1.96 * (hi - lo) / 2, rel=0.15
    )


def test_fraction_of_achievable_is_a_ratio_of_means() -> None:
    units = _units(3, informative=True)
    entry = ratio_of_means(
        units["mse"],
        units["weighted"],
        "balanced_accuracy",
        fraction_of_achievable,
        n_boot=200,
        seed=0,
    )
    a = paired_difference(units["mse"], units["weighted"], "balanced_accuracy", n_boot=0, seed=0)
    per_a = [c[0].metrics["balanced_accuracy"] for c in units["mse"]]
    per_b = [c[0].metrics["balanced_accuracy"] for c in units["weighted"]]
    assert a["mean"] == pytest.approx(np.mean(per_a) - np.mean(per_b))
    assert entry["mean"] == pytest.approx(fraction_of_achievable(np.mean(per_a), np.mean(per_b)))
    assert entry["per_seed"] == pytest.approx(
        [fraction_of_achievable(x, y) for x, y in zip(per_a, per_b, strict=True)]
    )
    assert entry["ci95"][0] <= entry["mean"] <= entry["ci95"][1]
