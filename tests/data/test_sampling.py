"""Class-balanced sampling draws every class equally often, whatever its size."""

from __future__ import annotations

import numpy as np
import pytest

from skuscale.data.sampling import balanced_indices, grouped_balanced_indices, uniform_indices


def test_imbalanced_classes_are_drawn_equally_often():
    labels = np.array(["head"] * 900 + ["mid"] * 90 + ["tail"] * 10)
    idx = balanced_indices(labels, 30000, np.random.default_rng(0))
    shares = {c: float((labels[idx] == c).mean()) for c in ("head", "mid", "tail")}
    for share in shares.values():
        assert abs(share - 1 / 3) < 0.015
    # Uniform draws keep the imbalance.
    plain = uniform_indices(labels.size, 30000, np.random.default_rng(0))
    assert (labels[plain] == "tail").mean() < 0.02


def test_rows_within_a_class_follow_their_weights():
    labels = np.array(["a", "a", "a", "b"])
    weights = np.array([0.0, 1.0, 3.0, 1.0])
    idx = balanced_indices(labels, 20000, np.random.default_rng(1), weights=weights)
    counts = np.bincount(idx, minlength=4) / idx.size
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:], [0.125, 0.375, 0.5], atol=0.015)


def test_same_seed_same_draws():
    labels = np.array([0, 0, 1, 2, 2, 2])
    a = balanced_indices(labels, 50, np.random.default_rng(5))
    b = balanced_indices(labels, 50, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64 and a.min() >= 0 and a.max() < labels.size


@pytest.mark.parametrize("kwargs", [
    {"labels": [], "n": 3},
    {"labels": ["a", "b"], "n": -1},
    {"labels": ["a", "b"], "n": 3, "weights": [1.0]},
    {"labels": ["a", "b"], "n": 3, "weights": [1.0, 0.0]},
    {"labels": ["a", "b"], "n": 3, "weights": [1.0, -1.0]},
])
def test_bad_input_is_refused(kwargs):
    with pytest.raises(ValueError):
        balanced_indices(kwargs.pop("labels"), kwargs.pop("n"), np.random.default_rng(0), **kwargs)


def test_groups_hold_one_class_and_classes_stay_balanced():
    labels = np.array(["head"] * 900 + ["mid"] * 90 + ["tail"] * 10)
    idx = grouped_balanced_indices(labels, 6000, 4, np.random.default_rng(2))
    assert idx.shape == (24000,) and idx.dtype == np.int64
    groups = labels[idx].reshape(-1, 4)
    assert (groups == groups[:, :1]).all()
    for c in ("head", "mid", "tail"):
        assert abs((groups[:, 0] == c).mean() - 1 / 3) < 0.02
    same = grouped_balanced_indices(labels, 50, 4, np.random.default_rng(9))
    np.testing.assert_array_equal(same, grouped_balanced_indices(labels, 50, 4, np.random.default_rng(9)))


def test_grouped_rows_follow_their_weights():
    labels = np.array(["a", "a", "a", "b"])
    idx = grouped_balanced_indices(labels, 5000, 4, np.random.default_rng(3), weights=[0.0, 1.0, 3.0, 1.0])
    counts = np.bincount(idx, minlength=4) / idx.size
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:], [0.125, 0.375, 0.5], atol=0.015)


@pytest.mark.parametrize("n_groups,group_size", [(-1, 4), (3, 0), (3, 2.5), (True, 2)])
def test_grouped_bad_sizes_are_refused(n_groups, group_size):
    with pytest.raises(ValueError):
        grouped_balanced_indices(["a", "b"], n_groups, group_size, np.random.default_rng(0))
