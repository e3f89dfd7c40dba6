"""The OOD score's math (learner.evaluate.ood) on hand-made embeddings: in-distribution points
score about 1 and are rarely flagged, far points are flagged, the conformal p-value falls
as the distance grows, and the same inputs give the same reference and scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from learner.errors import DataError
from learner.evaluate.ood import K, OodCheck, OodReference


def _gaussian(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    # Dimensions of very different spread: standardisation must even them out.
    return rng.normal(size=(n, dim)) * np.geomspace(0.01, 100.0, dim)


def test_distance_is_mean_over_k_nearest_in_standardised_space() -> None:
    training = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 10.0], [1.0, 10.0]])
    reference = OodReference.fit(training, training[:1])
    assert reference.k == 4  # fewer reference rows than K: all of them
    np.testing.assert_allclose(reference.mean, [0.5, 5.0])
    np.testing.assert_allclose(reference.scale, [0.5, 5.0])
    # (0.5, 5.0) standardises to the origin; every reference point is at sqrt(2).
    np.testing.assert_allclose(reference.distances(np.array([[0.5, 5.0]])), [np.sqrt(2.0)])
    # A training point: distances 0, 2, 2, sqrt(8) -> their mean.
    expected = (0 + 2 + 2 + np.sqrt(8.0)) / 4
    np.testing.assert_allclose(reference.distances(training[:1]), [expected])


def test_in_distribution_scores_about_one_far_points_are_flagged() -> None:
    rng = np.random.default_rng(0)
    reference = OodReference.fit(_gaussian(rng, 600), _gaussian(rng, 300))
    assert reference.k == K and len(reference.validation) == 300
    new = reference.score(_gaussian(rng, 2000))
    assert 0.5 < float(np.median(new.score)) < 1.0
    assert 0.90 < float(np.mean(new.score <= 1.0)) < 0.99  # the 95th percentile is 1.0
    assert float(np.mean(new.flag)) < 0.03  # 99th percentile: ~1% flagged by design
    assert 0.4 < float(np.mean(new.p)) < 0.6  # conformal p of exchangeable points ~ uniform

    # Shifted by 6 sd in the narrowest dimension only: raw distance would not see it.
    shifted = _gaussian(rng, 50)
    shifted[:, 0] += 6 * 0.01
    far = reference.score(shifted)
    assert far.flag.all() and (far.score > 1.2).all()
    assert (far.p <= 0.01).all()  # beyond (almost) every validation distance


def test_p_falls_and_score_rises_with_distance() -> None:
    rng = np.random.default_rng(1)
    reference = OodReference.fit(rng.normal(size=(200, 3)), rng.normal(size=(40, 3)))
    points = np.outer(np.linspace(0.0, 8.0, 60), [1.0, 0.0, 0.0])
    found = reference.score(points)
    order = np.argsort(found.distance, kind="stable")
    assert (np.diff(found.p[order]) <= 0).all() and (np.diff(found.score[order]) >= 0).all()
    assert found.p.max() <= 1.0 and found.p.min() == 1 / 41
    # The flag is the distance beyond the largest validation distance (< 100 of them).
    assert reference.flag_distance == reference.validation.max()
    np.testing.assert_array_equal(found.flag, found.distance > reference.validation.max())
    assert not found.flag[0] and found.flag[-1]


def test_deterministic_subsampled_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    training, validation = rng.normal(size=(300, 4)), rng.normal(size=(30, 4))
    first = OodReference.fit(training, validation, max_reference=100)
    second = OodReference.fit(training, validation, max_reference=100)
    assert len(first.reference) == 100 and first.n_training_scans == 300
    np.testing.assert_array_equal(first.reference, second.reference)
    np.testing.assert_array_equal(first.validation, second.validation)

    first.save(tmp_path / "ood.npz")
    loaded = OodReference.load(tmp_path / "ood.npz")
    query = rng.normal(size=(5, 4))
    np.testing.assert_array_equal(loaded.score(query).distance, first.score(query).distance)
    assert loaded.describe() == first.describe()


def test_refusals(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with pytest.raises(DataError, match="no validation scans"):
        OodReference.fit(rng.normal(size=(10, 2)), np.zeros((0, 2)))
    with pytest.raises(DataError, match="no training scans"):
        OodReference.fit(np.zeros((0, 2)), rng.normal(size=(10, 2)))
    reference = OodReference.fit(rng.normal(size=(10, 2)), rng.normal(size=(5, 2)))
    with pytest.raises(DataError, match="do not match the OOD reference's 2 dimensions"):
        reference.distances(np.zeros((1, 3)))
    # A pickled object array is never loaded.
    bad = tmp_path / "ood.npz"
    np.savez(bad, reference=np.array([object()], dtype=object))
    with pytest.raises(DataError, match="refusing to load the OOD reference"):
        OodReference.load(bad)


def test_two_parts_combine_larger_score_smaller_p_either_flag(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    embeddings = (rng.normal(size=(200, 3)), rng.normal(size=(60, 3)))
    descriptors = (rng.normal(size=(200, 5)), rng.normal(size=(60, 5)))
    check = OodCheck.fit(embeddings, descriptors)
    # Scan 0 typical in both; 1 far at the input only; 2 far in the embedding only.
    emb = np.zeros((3, 3))
    emb[2] = 9.0
    desc = np.zeros((3, 5))
    desc[1] = 9.0
    found = check.score(emb, desc)
    parts = found.parts
    assert list(parts) == ["input", "embedding"]
    np.testing.assert_array_equal(
        found.score, np.maximum(parts["input"].score, parts["embedding"].score)
    )
    np.testing.assert_array_equal(found.p, np.minimum(parts["input"].p, parts["embedding"].p))
    assert found.flag.tolist() == [False, True, True]
    assert found.by == ["", "input", "embedding"]
    with pytest.raises(DataError, match="no input descriptors"):
        check.score(emb)
    with pytest.raises(DataError, match="input descriptors of shape"):
        check.score(emb, desc[:, :4])

    check.save(tmp_path / "ood.npz")
    loaded = OodCheck.load(tmp_path / "ood.npz")
    np.testing.assert_array_equal(loaded.score(emb, desc).score, found.score)
    assert loaded.describe() == check.describe() and loaded.describe()["input"]["available"]

    # Without descriptors: the embedding part alone, its note kept through save and load.
    alone = OodCheck.fit(embeddings, input_note="tabular input")
    assert alone.score(emb).by == ["", "", "embedding"]
    alone.save(tmp_path / "alone.npz")
    assert OodCheck.load(tmp_path / "alone.npz").describe()["input"] == {
        "available": False,
        "reason": "tabular input",
    }
