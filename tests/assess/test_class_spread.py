"""Check 6: per-SKU top-1 spread, known answers."""

from __future__ import annotations

import numpy as np
import pytest

from skuscale.assess.class_spread import assess_spread, top_confusions


def test_equal_accuracy_has_zero_spread_and_passes():
    y_true = ["a", "a", "b", "b"]
    y_pred = ["a", "b", "b", "a"]
    result = assess_spread(y_true, y_pred)
    assert result.status == "pass"
    assert result.value == pytest.approx(0.0)


def test_uneven_accuracy_fails_and_names_the_worst_sku():
    # a: 4/4 correct, b: 0/4 (all taken for a) -> per-SKU 1.0 and 0.0 -> std 50 pp.
    y_true = ["a"] * 4 + ["b"] * 4
    y_pred = ["a"] * 4 + ["a"] * 4
    result = assess_spread(y_true, y_pred, max_std_pp=15, train_counts={"a": 40, "b": 3})
    assert result.status == "fail"
    assert result.value == pytest.approx(50.0)
    assert result.details["lowest"][0] == {"sku": "b", "top1": 0.0, "n_eval": 4, "n_train": 3,
                                           "confused_with": ["a"]}
    assert result.actions and result.actions[0].startswith("b: top-1 0%")


def test_threshold_passes_at_equality_and_confusions_are_ranked():
    # per-SKU 0.5 and 0.2 -> std 15 pp exactly.
    y_true = ["a"] * 10 + ["b"] * 10
    y_pred = ["a"] * 5 + ["b"] * 5 + ["b"] * 2 + ["a"] * 8
    assert assess_spread(y_true, y_pred, max_std_pp=15).value == pytest.approx(15.0)
    assert top_confusions(np.array(["x", "x", "x"]), np.array(["y", "z", "y"]), "x") == [("y", 2), ("z", 1)]


def test_spread_within_sampling_noise_says_so():
    # 32 SKUs with 2 images each at 75% overall: 18 SKUs 2/2, 12 SKUs 1/2, 2 SKUs 0/2 -> std 30.6 pp,
    # about what equal accuracy gives with 2 images per SKU (sqrt(0.75 * 0.25 / 2) = 30.6 pp).
    y_true, y_pred = [], []
    for k, right in enumerate([2] * 18 + [1] * 12 + [0] * 2):
        sku = f"s{k:02d}"
        y_true += [sku, sku]
        y_pred += [sku] * right + ["other"] * (2 - right)
    result = assess_spread(y_true, y_pred, max_std_pp=15)
    assert result.status == "fail"
    assert result.value == pytest.approx(100 * np.sqrt(3 / 32))
    assert result.details["std_floor_pp"] == pytest.approx(30.6, abs=2.5)
    assert result.value <= result.details["std_floor_p95_pp"]
    assert "cannot be told from sampling noise" in result.actions[0]
    assert "sampling alone would give" in result.summary
