"""Tests of the OOD metrics and thresholding helpers."""

from __future__ import annotations

import numpy as np
import pytest

from skuscale.ood import auroc, detection_rate, threshold_at_flag_rate


def _pairwise_auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    diff = unknown[:, None] - known[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_auroc_perfect_reversed_identical():
    known = np.array([0.1, 0.2, 0.3])
    unknown = np.array([0.5, 0.9])
    assert auroc(known, unknown) == 1.0
    assert auroc(unknown, known) == 0.0
    assert auroc(known, known) == 0.5
    assert auroc(np.zeros(4), np.zeros(7)) == 0.5


def test_auroc_ties_count_half():
    # Pairs: (1 vs 0) win, (1 vs 1) tie, (1 vs 2) loss -> (1 + 0.5 + 0) / 3.
    assert auroc([0.0, 1.0, 2.0], [1.0]) == pytest.approx(0.5)
    # Unknown 1 vs known {0, 1}: win + tie = 1.5 / 2.
    assert auroc([0.0, 1.0], [1.0]) == pytest.approx(0.75)


def test_auroc_matches_pairwise_with_ties():
    rng = np.random.default_rng(0)
    known = rng.integers(0, 10, size=57).astype(float)
    unknown = rng.integers(3, 13, size=41).astype(float)
    assert auroc(known, unknown) == pytest.approx(_pairwise_auroc(known, unknown), abs=1e-12)


def test_auroc_matches_pairwise_continuous():
    rng = np.random.default_rng(1)
    known = rng.standard_normal(80)
    unknown = rng.standard_normal(33) + 0.7
    assert auroc(known, unknown) == pytest.approx(_pairwise_auroc(known, unknown), abs=1e-12)


@pytest.mark.parametrize(
    ("known", "unknown"),
    [([], [1.0]), ([1.0], []), ([[1.0]], [1.0]), ([np.nan], [1.0]), ([1.0], [np.inf])],
)
def test_auroc_rejects_bad_input(known, unknown):
    with pytest.raises(ValueError):
        auroc(known, unknown)


def test_threshold_exact_share():
    scores = np.arange(100, dtype=float)
    t = threshold_at_flag_rate(scores, 0.05)
    assert t == 94.0
    assert detection_rate(scores, t) == 0.05
    rng = np.random.default_rng(2)
    shuffled = rng.permutation(scores)
    assert threshold_at_flag_rate(shuffled, 0.05) == 94.0


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.1, 0.29, 0.5, 0.9])
def test_threshold_share_on_random_scores(rate):
    rng = np.random.default_rng(3)
    scores = rng.standard_normal(1000)
    t = threshold_at_flag_rate(scores, rate)
    assert detection_rate(scores, t) == pytest.approx(rate, abs=1e-12)
    assert t in scores


def test_threshold_never_exceeds_rate_with_ties():
    scores = np.array([0.0] * 90 + [1.0] * 10)
    t = threshold_at_flag_rate(scores, 0.05)
    assert detection_rate(scores, t) <= 0.05
    assert t == 1.0
    t = threshold_at_flag_rate(scores, 0.10)
    assert detection_rate(scores, t) == 0.10


def test_threshold_matches_inverted_cdf_quantile():
    rng = np.random.default_rng(4)
    scores = rng.standard_normal(37)
    for rate in (0.05, 0.2, 0.5):
        m = int(np.floor(rate * scores.size))
        q = np.quantile(scores, 1 - m / scores.size, method="inverted_cdf")
        assert threshold_at_flag_rate(scores, rate) == q


def test_threshold_extreme_rates():
    scores = np.array([3.0, 1.0, 2.0])
    t0 = threshold_at_flag_rate(scores, 0.0)
    assert t0 == 3.0
    assert detection_rate(scores, t0) == 0.0
    t1 = threshold_at_flag_rate(scores, 1.0)
    assert np.isfinite(t1) and t1 < 1.0
    assert detection_rate(scores, t1) == 1.0


@pytest.mark.parametrize("rate", [-0.01, 1.01, np.nan])
def test_threshold_bad_rate(rate):
    with pytest.raises(ValueError, match="flag_rate"):
        threshold_at_flag_rate([1.0, 2.0], rate)


def test_threshold_bad_scores():
    with pytest.raises(ValueError):
        threshold_at_flag_rate([], 0.05)


def test_detection_rate():
    assert detection_rate([0.0, 1.0, 2.0, 3.0], 1.0) == 0.5
    assert detection_rate([0.0, 1.0], 5.0) == 0.0
    assert detection_rate([0.0, 1.0], -5.0) == 1.0
    with pytest.raises(ValueError):
        detection_rate([], 0.0)
