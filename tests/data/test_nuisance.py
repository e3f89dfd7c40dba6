"""`learner synth --nuisance`: the between-patient nuisance shrinks, the severity does not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from learner.cli import app
from learner.data.synthetic import lus, mri, write_cohort
from learner.data.synthetic.common import (
    PRESETS,
    STREAM_NUISANCE,
    STREAM_ZONE,
    keyed_rng,
    nuisance_rng,
)

TINY = PRESETS["tiny"]


def patient(index: int, strength: float) -> lus.LusPatient:
    return lus.draw_patient(nuisance_rng(keyed_rng(0, "lus", index, STREAM_NUISANCE), strength))


def test_strength_one_is_the_plain_generator() -> None:
    rng = keyed_rng(0, "lus", 3, STREAM_NUISANCE)
    assert nuisance_rng(rng, 1.0) is rng
    a = lus.render_scan(seed=0, patient_index=3, visit=1, zone_index=0, severity=0.4, preset=TINY)
    b = lus.render_scan(
        seed=0, patient_index=3, visit=1, zone_index=0, severity=0.4, preset=TINY, nuisance=1.0
    )
    np.testing.assert_array_equal(a, b)


def test_every_patient_draw_moves_toward_its_centre_by_the_strength() -> None:
    """Same draws, in the same order: a field's spread between patients scales exactly by
    the strength, and at 0 every patient is the same patient."""
    full = [patient(i, 1.0) for i in range(30)]
    quarter = [patient(i, 0.25) for i in range(30)]
    none = [patient(i, 0.0) for i in range(30)]
    for field in ("depth_cm", "wall_cm", "attenuation", "speckle_sigma", "apex"):
        f = np.array([getattr(p, field) for p in full])
        q = np.array([getattr(p, field) for p in quarter])
        z = np.array([getattr(p, field) for p in none])
        assert np.ptp(z) == pytest.approx(0.0, abs=1e-12), field
        np.testing.assert_allclose(q - z, 0.25 * (f - z), atol=1e-12, err_msg=field)
    gains = np.log([p.gain for p in quarter]) / np.log([p.gain for p in full])
    np.testing.assert_allclose(gains, 0.25)


def test_severity_sites_and_thresholds_are_never_shrunk() -> None:
    for index in range(5):
        base = patient(index, 1.0)
        zones = [
            lus.draw_zone(nuisance_rng(keyed_rng(0, "lus", index, STREAM_ZONE, 0), s), base)
            for s in (1.0, 0.0)
        ]
        for field in ("bline_phi", "bline_threshold", "bronchograms"):
            np.testing.assert_array_equal(getattr(zones[0], field), getattr(zones[1], field))
        assert zones[1].tilt == 0.0 and zones[0].tilt != 0.0


def test_weaker_nuisance_shrinks_image_differences_between_patients() -> None:
    """At one severity, patients' clips differ less from each other under nuisance 0.25
    (LUS) and their volumes too (MRI)."""

    def spread(images: list[np.ndarray]) -> float:
        stack = np.stack([im.astype(np.float64) for im in images])
        return float(stack.std(axis=0).mean())

    for strength_low in (0.25,):
        lus_spread = {
            s: spread(
                [
                    lus.render_scan(
                        seed=0,
                        patient_index=p,
                        visit=0,
                        zone_index=0,
                        severity=0.5,
                        preset=TINY,
                        nuisance=s,
                    )
                    for p in range(6)
                ]
            )
            for s in (1.0, strength_low)
        }
        assert lus_spread[strength_low] < 0.8 * lus_spread[1.0]
        mri_spread = {
            s: spread(
                [
                    mri.render_scan(
                        seed=0, patient_index=p, visit=0, severity=0.5, preset=TINY, nuisance=s
                    )
                    for p in range(4)
                ]
            )
            for s in (1.0, strength_low)
        }
        assert mri_spread[strength_low] < 0.8 * mri_spread[1.0]


def test_cohort_records_the_strength_and_keeps_scores(tmp_path: Path) -> None:
    weak = write_cohort("lus", tmp_path / "weak", patients=3, preset="tiny", nuisance=0.5)
    full = write_cohort("lus", tmp_path / "full", patients=3, preset="tiny")
    a, b = pd.read_csv(weak.truth), pd.read_csv(full.truth)
    assert set(a["nuisance"]) == {0.5} and set(b["nuisance"]) == {1.0}
    pd.testing.assert_series_equal(a["score"], b["score"])
    assert dataclasses.is_dataclass(TINY)


def test_cli_refuses_a_strength_outside_0_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["synth", "lus", "--out", str(tmp_path / "c"), "--nuisance", "1.5"]
    )
    assert result.exit_code == 2
    assert "--nuisance 1.5" in result.output and "[0, 1]" in result.output
    assert not (tmp_path / "c" / "manifest.csv").exists()
