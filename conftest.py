"""Doctests of the package (``--doctest-modules``; ``learner`` is in ``testpaths``).

Each docstring example runs in a fresh temporary folder, so an example that writes files (a
synthetic cohort, a cache, a figure, an embeddings file) leaves nothing in the checkout.

Examples that need a realistic table find two in their namespace, rebuilt for each example
(a few milliseconds; no images are rendered):

- ``truth``: the ground truth of a small synthetic MRI cohort, one row per scan, as its
  ``truth.csv`` holds it (:func:`learner.data.synthetic.cohort_table`: ``patient_id``,
  ``visit``, ``score``, the latent ``severity``, ...);
- ``embeddings``: an embeddings frame of those scans (docs/architecture.md, 'Embeddings file')
  as :func:`learner.evaluate.embeddings_io.read_embeddings` returns it: patients split by
  :func:`learner.data.splits.split_patients`, each embedding four dimensions of noise with the
  latent severity added to the first, ``pred_score`` the score plus noise.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
from _pytest.doctest import DoctestItem

_PATIENTS = 200


@functools.cache
def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    from learner.data.splits import split_patients
    from learner.data.synthetic import cohort_table

    truth = cohort_table("mri", patients=_PATIENTS, seed=0, preset="tiny")
    rng = np.random.default_rng(0)
    n = len(truth)
    signal = np.c_[truth["severity"], np.zeros((n, 3))]
    noise = rng.normal(0.0, 0.05, size=(n, 4))
    embeddings = pd.DataFrame(
        {
            "patient_id": truth["patient_id"],
            "visit": truth["visit"].astype(str),
            "visit_order": truth["visit"],
            "score": truth["score"].astype(float),
            "split": truth["patient_id"].map(split_patients(truth["patient_id"], seed=0)),
            "pred_score": truth["score"] + rng.normal(0.0, 2.0, size=n),
            "embedding": list((signal + noise).astype(np.float32)),
        }
    )
    return truth, embeddings


@pytest.fixture(autouse=True)
def _doctest_setup(request: pytest.FixtureRequest) -> None:
    """For doctests only: a temporary working folder and the tables named above."""
    if not isinstance(request.node, DoctestItem):
        return
    request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))
    truth, embeddings = _tables()
    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(truth=truth.copy(), embeddings=embeddings.copy())
