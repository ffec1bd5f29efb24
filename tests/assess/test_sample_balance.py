"""Check 1: known answers on hand-made counts."""

from __future__ import annotations

import math

import pytest

from skuscale.assess.sample_balance import assess_balance, balance_ratio, decile_size, decile_skus, images_needed


def test_decile_size_rounds_up():
    assert [decile_size(n) for n in (1, 9, 10, 11, 20, 81)] == [1, 1, 1, 2, 2, 9]


def test_ratio_of_decile_means_known_answer():
    # 20 SKUs -> deciles of 2: top {a: 100, b: 80} mean 90, bottom {s: 5, t: 4} mean 4.5 -> ratio 20.
    counts = {f"m{i:02d}": 30 for i in range(16)} | {"a": 100, "b": 80, "s": 5, "t": 4}
    b = balance_ratio(counts)
    assert b["top_skus"] == ["a", "b"]
    assert b["bottom_skus"] == ["t", "s"]
    assert b["ratio"] == pytest.approx(20.0)


def test_balanced_counts_pass():
    counts = {f"sku{i}": 20 + i for i in range(10)}  # top 29, bottom 20
    result = assess_balance(counts, max_ratio=10)
    assert result.status == "pass"
    assert result.value == pytest.approx(29 / 20)
    assert result.actions == []


def test_imbalanced_counts_fail_and_name_the_skus_that_need_images():
    counts = {f"m{i:02d}": 30 for i in range(16)} | {"a": 100, "b": 80, "s": 5, "t": 4}
    result = assess_balance(counts, max_ratio=10)
    assert result.status == "fail"
    assert result.value == pytest.approx(20.0)
    # target ceil(90 / 10) = 9 images: s needs 4 more, t needs 5 more.
    assert result.details["images_needed"] == {"s": 4, "t": 5}
    assert "t +5" in result.actions[0] and "s +4" in result.actions[0]


def test_threshold_itself_passes_and_empty_sku_is_infinite():
    assert assess_balance({"a": 10, "b": 1}, max_ratio=10).status == "pass"
    assert assess_balance({"a": 11, "b": 1}, max_ratio=10).status == "fail"
    assert math.isinf(balance_ratio({"a": 3, "b": 0})["ratio"])


def test_ties_are_broken_by_name_and_helpers_are_consistent():
    top, bottom = decile_skus({"b": 5, "a": 5})
    assert top == ["b"] and bottom == ["a"]
    assert images_needed({"x": 2, "y": 10}, ["x", "y"], top_mean=50, max_ratio=10) == {"x": 3}
    with pytest.raises(ValueError, match="no SKUs"):
        balance_ratio({})
