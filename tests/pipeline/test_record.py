"""A change model's held-out record and the caveat it puts on every prediction
(learner.pipeline.record): the rules, on records built by hand."""

from __future__ import annotations

import math

import pytest

from learner.pipeline.record import (
    CHANCE,
    NO_RECORD,
    build_record,
    record_caveat,
    record_line,
    record_lines,
    trained_on,
)


def _evaluation(value: float, ci: tuple[float, float] | None, head: float = 0.4) -> dict:
    """An evaluation as ChangeResult.to_json writes it (NaN -> None)."""
    return {
        "metrics": {"balanced_accuracy": value, "accuracy": value},
        "ci95": {"balanced_accuracy": list(ci) if ci else [None, None]},
        "head_delta": {"balanced_accuracy": head},
        "head_delta_ci95": {"balanced_accuracy": [head - 0.1, head + 0.1]},
        "band": 12.5,
        "delta": "tertiles",
        "n_test_patients": 30,
        "n_test_pairs": 90,
        "class_counts_test": {"worsen": 30, "stable": 30, "improve": 30},
        "n_boot": 500,
    }


DATA = trained_on(
    {"P0": "train", "P1": "train", "P2": "val", "P3": "test"},
    manifest="cohort/manifest.csv",
    manifest_fingerprint="ab" * 32,
    split_hash="h1",
)


def test_a_record_above_chance_and_above_untrained_has_no_caveat() -> None:
    record = build_record(
        _evaluation(0.62, (0.51, 0.72)), untrained=_evaluation(0.41, (0.3, 0.5)), data=DATA
    )
    assert record["chance"] == pytest.approx(1 / 3) == CHANCE
    assert record["balanced_accuracy"] == 0.62 and record["ci95"] == [0.51, 0.72]
    assert record["untrained"] == {"balanced_accuracy": 0.41, "ci95": [0.3, 0.5]}
    assert record["head_delta"]["balanced_accuracy"] == 0.4
    assert record["trained_on"]["patients"] == {"train": 2, "val": 1, "test": 1}
    assert record_caveat(record) == ""
    line = record_line(record)
    assert "0.62 (95% CI 0.51-0.72)" in line and "untrained 0.41" in line
    assert "head_delta 0.40" in line and "90 test pairs of 30 patients" in line


def test_a_ci_that_includes_chance_is_a_caveat() -> None:
    record = build_record(_evaluation(0.38, (0.30, 0.47)), untrained=None, data=DATA)
    assert record["untrained"] is None
    assert record_caveat(record) == "held-out test CI 0.30-0.47 includes chance (0.33)"
    assert "untrained not measured" in record_line(record)
    # The lower bound exactly at chance still includes it.
    at_chance = {**record, "ci95": [CHANCE, 0.5]}
    assert "includes chance" in record_caveat(at_chance)


def test_not_beating_the_untrained_encoder_is_a_caveat() -> None:
    record = build_record(
        _evaluation(0.55, (0.45, 0.65)), untrained=_evaluation(0.58, (0.48, 0.68)), data=DATA
    )
    assert record_caveat(record) == "not above an untrained encoder (0.55 vs 0.58)"


def test_no_interval_and_no_record_are_caveats_not_guesses() -> None:
    no_ci = build_record(_evaluation(0.7, None), untrained=None, data=DATA)
    assert no_ci["ci95"] == [None, None]
    assert "has no CI" in record_caveat(no_ci)
    no_pairs = build_record(_evaluation(math.nan, None), untrained=None, data=DATA)
    assert no_pairs["balanced_accuracy"] is None
    assert record_caveat(no_pairs).startswith(NO_RECORD)
    assert record_caveat(None).startswith(NO_RECORD) and record_line(None) == NO_RECORD
    assert record_lines(None)[0].startswith(NO_RECORD)


def test_record_lines_name_the_band_the_data_and_a_better_head() -> None:
    record = build_record(
        _evaluation(0.45, (0.35, 0.55), head=0.52), untrained=None, data=DATA, target="observed"
    )
    text = "\n".join(record_lines(record))
    assert "stable band 12.5 score units" in text
    assert "cohort/manifest.csv" in text and "2 train, 1 val, 1 test" in text
    assert "regression head's predicted change classified better (0.52)" in text


def test_a_test_set_missing_a_class_is_a_caveat() -> None:
    """Stable-only test pairs: balanced accuracy is the stable recall, its interval can sit
    above chance without meaning anything."""
    evaluation = {
        **_evaluation(0.5, (0.5, 0.5)),
        "class_counts_test": {"worsen": 0, "stable": 10, "improve": 0},
    }
    record = build_record(evaluation, untrained=None, data=DATA)
    assert record_caveat(record) == "held-out test had no worsen/improve pair: not comparable"
