"""Check 7: ECE known answers."""

from __future__ import annotations

import numpy as np
import pytest

from skuscale.assess.calibration import assess_calibration


def test_perfectly_calibrated_passes():
    # Bin [0.8, 0.867): confidence 0.8, 4 of 5 right -> gap 0.
    result = assess_calibration([0.8] * 5, [True, True, True, True, False])
    assert result.status == "pass"
    assert result.value == pytest.approx(0.0, abs=1e-12)
    counts = result.details["reliability"]["count"]
    assert sum(counts) == 5 and len(counts) == 15


def test_overconfident_fails_with_known_ece():
    # confidence 0.9 everywhere, half right -> ECE 0.4.
    result = assess_calibration(np.full(10, 0.9), [True, False] * 5)
    assert result.status == "fail"
    assert result.value == pytest.approx(0.4)
    assert "overconfident by 40.0%" in result.actions[0]


def test_threshold_is_configurable():
    result = assess_calibration(np.full(10, 0.9), [True, False] * 5, max_ece=0.5)
    assert result.status == "pass"
    assert result.threshold == 0.5


def test_failure_within_sampling_noise_says_so():
    # Ten images at confidence 0.7, 5 right: ECE 0.2, but a perfectly calibrated model
    # misses by 0.2 or more on ten images about 30% of the time.
    result = assess_calibration(np.full(10, 0.7), [True] * 5 + [False] * 5)
    assert result.status == "fail"
    assert result.value == pytest.approx(0.2)
    assert result.details["ece_floor"] < result.value <= result.details["ece_floor_p95"]
    assert "cannot be told from sampling noise" in result.actions[0]
    assert "perfect calibration would show" in result.summary


def test_failure_beyond_sampling_noise_gets_the_usual_advice():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.85, 0.95, 2000)
    result = assess_calibration(conf, rng.random(2000) < 0.6)  # 30 points overconfident
    assert result.details["ece_floor_p95"] < 0.05 < result.value
    assert "overconfident" in result.actions[0]
    assert not any("sampling noise" in a for a in result.actions)
