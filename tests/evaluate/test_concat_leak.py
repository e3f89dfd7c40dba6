"""Why the ``concat`` feature is above chance on the null control (issue 15, item 4).

The null cohort renders every scan from its zone's mean severity over all visits, so the
images carry no change, yet a patient's mean severity predicts the direction of its change
(patients whose mean is high are more often worsening: the mean includes their later,
worse visits; clipping at 0 and 1 adds to it). A probe on ``[u_t, u_t+1]`` reads that
level; ``d = u_t+1 - u_t`` cancels it. The test gives the probe exactly what the null images
show, the zone's mean severity, and nothing else.
"""

from __future__ import annotations

import numpy as np

from learner.data.splits import assign_splits
from learner.data.synthetic.common import cohort_table
from learner.evaluate.change import evaluate_change
from learner.evaluate.verdict import concat_warning


def _level_only(seed: int) -> dict[str, float]:
    truth = cohort_table("lus", patients=60, seed=0, preset="demo", null=True)
    frame = truth[["patient_id", "visit", "zone", "score"]].astype({"patient_id": str})
    frame = frame.assign(visit_order=truth["visit"].astype(int), visit=truth["visit"].astype(str))
    frame = assign_splits(frame, seed=seed, ratios=(0.6, 0.2, 0.2))
    # What a null scan's image is rendered from: constant over the zone's visits.
    level = truth["render_severity"].to_numpy(np.float32)[:, None]
    frame = frame.assign(embedding=list(level), pred_score=np.nan)
    return {
        feature: evaluate_change(frame, feature=feature, n_boot=0, seed=seed).metrics[
            "balanced_accuracy"
        ]
        for feature in ("diff", "concat")
    }


def test_concat_reads_the_patient_level_where_no_change_is_shown() -> None:
    scores = [_level_only(seed) for seed in range(3)]
    # diff of a constant is zero: one class predicted, exactly chance.
    assert all(abs(s["diff"] - 1 / 3) < 1e-9 for s in scores)
    # concat of the same constant classifies change well above chance.
    concat = float(np.mean([s["concat"] for s in scores]))
    assert concat > 0.40


def test_runs_with_concat_carry_the_warning() -> None:
    assert concat_warning(["diff"]) is None
    line = concat_warning(["diff", "concat"])
    assert line is not None and "not a change measurement" in line and "diff" in line
