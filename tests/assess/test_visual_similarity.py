"""Check 2: known answers on hand-made embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from skuscale.assess.visual_similarity import assess_similarity, centroids_and_spread, recommendation


def _cluster(center, n, noise, rng):
    return np.asarray(center, float) + noise * rng.standard_normal((n, len(center)))


def test_spread_and_centroid_known_answer():
    # Two unit vectors at 90 degrees around e0: centroid e0 direction, cos = 1/sqrt(2) to each,
    # times n / (n - 1) = 2 for the centroid fitted on the same two images. b's point the same way.
    X = np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    y = np.array(["a", "a", "b", "b", "c"])
    skus, centroids, spread = centroids_and_spread(X, y)
    assert skus.tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(centroids[0], [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(spread[:2], [2 * (1 - 1 / np.sqrt(2)), 0.0], atol=1e-12)
    assert np.isnan(spread[2])  # one image: no spread to measure


def test_spread_does_not_depend_on_how_many_images_a_sku_has():
    """With the image itself in its centroid, few images read as a tight SKU (0 for one image)."""
    rng = np.random.default_rng(3)
    centre = np.eye(16)[0] * 6
    typical = []
    for n in (2, 3, 20):
        X = np.vstack([_cluster(centre, n, 1.0, rng) for _ in range(300)])
        typical.append(float(np.mean(centroids_and_spread(X, np.repeat(np.arange(300), n))[2])))
    assert max(typical) / min(typical) < 1.15, typical


def test_single_image_skus_are_left_out_of_the_typical_spread():
    rng = np.random.default_rng(4)
    eye = np.eye(8) * 10
    X = np.vstack([_cluster(eye[i], 1, 1.0, rng) for i in range(6)] + [_cluster(eye[6], 10, 1.0, rng),
                                                                       _cluster(eye[7], 10, 1.0, rng)])
    y = np.array([f"one{i}" for i in range(6)] + ["g"] * 10 + ["h"] * 10)
    result = assess_similarity(X, y)
    assert result.threshold > 0.02  # the median of g's and h's spread, not 0
    with pytest.raises(ValueError, match="at least two images"):
        assess_similarity(X[:6], y[:6])


def test_well_separated_skus_pass():
    rng = np.random.default_rng(0)
    eye = np.eye(8) * 10
    X = np.vstack([_cluster(eye[i], 10, 1.0, rng) for i in range(4)])
    y = np.repeat(["a", "b", "c", "d"], 10)
    result = assess_similarity(X, y)
    assert result.status == "pass"
    assert result.value > result.threshold
    assert result.actions == []
    assert result.details["n_pairs"] == 6 and result.details["n_listed"] == 1  # ceil(5% of 6)


def test_near_duplicate_pair_fails_with_a_recommendation():
    rng = np.random.default_rng(1)
    eye = np.eye(8) * 10
    X = np.vstack([_cluster(eye[0], 10, 2.0, rng), _cluster(eye[0] + 0.3 * eye[1], 10, 2.0, rng),
                   _cluster(eye[2], 10, 2.0, rng), _cluster(eye[3], 10, 2.0, rng)])
    y = np.repeat(["milk-a", "milk-b", "c", "d"], 10)
    result = assess_similarity(X, y, sku_to_category={"milk-a": "milk", "milk-b": "milk"})
    assert result.status == "fail"
    closest = result.details["pairs"][0]
    assert {closest["sku_a"], closest["sku_b"]} == {"milk-a", "milk-b"}
    assert closest["distance"] < result.threshold
    assert closest["action"] in {"merge", "subclass routing"}
    assert "milk-a / milk-b" in " ".join(result.actions)
    # With the spread factor at zero nothing can be closer than the threshold.
    assert assess_similarity(X, y, spread_factor=0.0).status == "pass"


def test_recommendation_rules():
    cats = {"a": "milk", "b": "milk", "c": "juice"}
    assert recommendation("a", "b", 0.01, 0.2, 0.5, cats)[0] == "merge"
    expected = ("subclass routing", "subclass routing: accept at category milk, verify the SKU")
    assert recommendation("a", "b", 0.15, 0.2, 0.5, cats) == expected
    assert recommendation("a", "c", 0.01, 0.2, 0.5, cats)[0] == "subclass routing"  # never merge across categories
    assert recommendation("a", "c", 0.3, 0.2, 0.5, cats)[0] == "none"


def test_needs_two_skus():
    with pytest.raises(ValueError, match="two SKUs"):
        assess_similarity(np.ones((3, 2)), ["a", "a", "a"])
