"""The saved change model says whether its probabilities are calibrated (issue 28, item 3):
temperature scaling is applied only where it lowers the validation ECE."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from learner.data.splits import split_patients
from learner.data.synthetic import cohort_table
from learner.evaluate import calibration as calibration_module
from learner.pipeline.fit_change import fit_change_model

PROBE = {"delta": 2.0, "higher_is_better": True, "feature": "diff", "classifier": "logreg"}


def embeddings_frame(seed: int = 0) -> pd.DataFrame:
    """An embeddings frame of a small synthetic MRI cohort: the latent severity plus noise."""
    truth = cohort_table("mri", patients=120, seed=seed, preset="tiny")
    rng = np.random.default_rng(seed)
    n = len(truth)
    signal = np.c_[truth["severity"], np.zeros((n, 3))]
    return pd.DataFrame(
        {
            "patient_id": truth["patient_id"],
            "visit": truth["visit"].astype(str),
            "visit_order": truth["visit"],
            "score": truth["score"].astype(float),
            "split": truth["patient_id"].map(split_patients(truth["patient_id"], seed=seed)),
            "pred_score": truth["score"] + rng.normal(0.0, 2.0, size=n),
            "embedding": list((signal + rng.normal(0.0, 0.05, (n, 4))).astype(np.float32)),
        }
    )


def check_record(fitted_calibration: dict[str, object], temperature: float) -> None:
    record = fitted_calibration
    assert record["kept"] in ("raw", "calibrated")
    assert record["temperature"] == temperature  # the one the saved probe applies
    if record["kept"] == "calibrated":
        assert record["method"] == "temperature"
        assert record["temperature"] == record["fitted_temperature"]
        assert record["ece_validation_calibrated"] < record["ece_validation_raw"]  # type: ignore[operator]
    else:
        assert record["method"] == "none" and record["temperature"] == 1.0
    for key in ("ece_test_raw", "ece_test_calibrated"):
        assert math.isfinite(float(record[key]))  # type: ignore[arg-type]


def test_the_saved_record_matches_the_probe() -> None:
    fitted = fit_change_model(embeddings_frame(), seed=0, **PROBE)
    check_record(fitted.calibration, fitted.probe.temperature)
    assert fitted.calibration["n_validation_pairs"] > 0


def test_scaling_that_does_not_lower_validation_ece_is_not_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fitted temperature that leaves the validation ECE where it was (here T = 1: a tie)
    is not applied: the saved probe keeps its raw probabilities and says so."""
    frame = embeddings_frame()
    unpatched = fit_change_model(frame, seed=0, **PROBE)
    # On these data NLL asks for flattening and the validation ECE agrees: calibrated.
    assert unpatched.calibration["kept"] == "calibrated"
    assert unpatched.probe.temperature > 1.0
    monkeypatch.setattr(calibration_module, "fit_temperature", lambda logits, codes: 1.0)
    fitted = fit_change_model(frame, seed=0, **PROBE)
    record = fitted.calibration
    assert record["ece_validation_calibrated"] == record["ece_validation_raw"]
    assert record["kept"] == "raw" and record["method"] == "none"
    assert fitted.probe.temperature == 1.0
    assert any("did not lower the validation ECE" in note for note in fitted.notes)
    check_record(record, fitted.probe.temperature)
    # Labels never depend on the temperature; the test ECE of the raw probe is the same.
    assert record["ece_test_raw"] == unpatched.calibration["ece_test_raw"]
