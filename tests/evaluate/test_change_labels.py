"""evaluate_change with clinicians' change labels: the probe trains and is judged on them where
a pair has one, a labelled pair needs no scores, and an empty column changes no number."""

from __future__ import annotations

import math

import numpy as np

from learner.data.pairs import label_changes
from learner.evaluate.change import evaluate_change
from tests.evaluate.test_change import make_cohort

REVERSED = {"worsen": "improve", "stable": "stable", "improve": "worsen"}


def _reversed_labels(frame, band: float = 1.0):  # type: ignore[no-untyped-def]
    """The frame with every non-first visit labelled the reverse of its score's label."""
    visits = frame.groupby(["patient_id", "visit_order"])["score"].mean()
    change = visits.groupby(level="patient_id").diff().dropna()
    labels = dict(zip(change.index, label_changes(change.to_numpy(), band), strict=True))
    keys = zip(frame["patient_id"], frame["visit_order"], strict=True)
    given = [REVERSED[labels[k]] if k in labels else None for k in keys]
    return frame.assign(change_label=given)


def test_probe_learns_and_is_judged_on_the_clinician_labels() -> None:
    frame = _reversed_labels(make_cohort(60, seed=0, kind="exact"))
    # Last visits of a third of the patients lose their score: their pairs stay (labelled).
    last = frame.groupby("patient_id")["visit_order"].transform("max") == frame["visit_order"]
    unscored = last & frame["patient_id"].str[1:].astype(int).mod(3).eq(0)
    frame.loc[unscored, "score"] = math.nan
    result = evaluate_change(frame, delta=1.0, n_boot=0, seed=0)

    plain = evaluate_change(frame.drop(columns=["change_label"]), delta=1.0, n_boot=0, seed=0)
    assert result.n_train_pairs > plain.n_train_pairs  # the unscored labelled pairs count
    assert result.labels == {
        "train": {"clinician": result.n_train_pairs, "score": 0},
        "test": {"clinician": result.n_test_pairs, "score": 0},
    }
    # d encodes the score change; the clinicians say the reverse, and the probe follows them.
    assert result.metrics["accuracy"] == 1.0
    assert plain.metrics["accuracy"] == 1.0
    pairs = result.test_pairs
    assert (pairs["label_source"] == "clinician").all()
    moving = pairs["label"] != "stable"
    scored = pairs["change"].notna()
    assert (
        pairs.loc[moving & scored, "label"]
        != label_changes(pairs.loc[moving & scored, "change"], 1.0)
    ).all()
    # The change regression learns from and is judged on the pairs with scores.
    assert np.isfinite(result.metrics["change_mae"]) and result.metrics["change_mae"] < 0.1


def test_an_empty_change_label_column_changes_no_number() -> None:
    frame = make_cohort(60, seed=2, kind="exact")
    plain = evaluate_change(frame, delta=1.0, n_boot=50, seed=0)
    empty = evaluate_change(frame.assign(change_label=None), delta=1.0, n_boot=50, seed=0)
    assert plain.metrics == empty.metrics and plain.ci95 == empty.ci95
    assert empty.labels == {
        "train": {"clinician": 0, "score": plain.n_train_pairs},
        "test": {"clinician": 0, "score": plain.n_test_pairs},
    }
    assert plain.labels is None and "label_sources" not in plain.to_json()
    assert empty.to_json()["labels"] == ["worsen", "stable", "improve"]  # the class order
