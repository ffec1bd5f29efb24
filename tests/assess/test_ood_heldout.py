"""Check 5: held-out-SKU detection on hand-made embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from skuscale.assess.ood_heldout import assess_ood, detector_name, heldout_sku_detection
from skuscale.ood import PrototypeCosineDetector


def _clusters(centers, n, noise, seed):
    rng = np.random.default_rng(seed)
    X = np.vstack([c + noise * rng.standard_normal((n, centers.shape[1])) for c in centers])
    y = np.repeat([f"s{i:02d}" for i in range(len(centers))], n)
    return X.astype(np.float32), y


def test_distinct_products_are_detected_and_pass():
    # 20 orthogonal SKUs: a held-out SKU is far from every known prototype.
    X, y = _clusters(np.eye(20) * 10, 12, 0.5, 0)
    result = heldout_sku_detection(X, y, detectors=("prototype",), folds=4, holdout_fraction=0.05)
    assert len(result["groups"]) == 4 and all(len(g) == 1 for g in result["groups"])
    verdict = assess_ood(result, bundle_detector="prototype")
    assert verdict.status == "pass"
    assert verdict.value >= 0.9


def test_look_alike_products_are_missed_and_fail():
    # Each SKU has a twin at almost the same place: holding one out, its twin absorbs it.
    base = np.eye(10) * 10
    centers = np.vstack([base, base + 0.05])
    X, y = _clusters(centers, 12, 1.0, 1)
    result = heldout_sku_detection(X, y, detectors=("prototype", "msp"), folds=4, holdout_fraction=0.05)
    verdict = assess_ood(result, bundle_detector="prototype")
    assert verdict.status == "fail"
    assert verdict.value < 0.7
    assert verdict.actions and "pass as known products" in verdict.actions[0]
    assert set(verdict.details["detectors"]) == {"prototype", "msp"}
    for det in verdict.details["detectors"].values():
        assert det["known_flag_rate"] <= 0.05 + 1e-9


def test_detector_name_and_too_few_skus():
    assert detector_name(PrototypeCosineDetector()) == "prototype"
    with pytest.raises(ValueError, match="too few SKUs"):
        heldout_sku_detection(np.ones((4, 2)), ["a", "a", "b", "b"])


def test_candidates_are_the_only_held_out_skus():
    X, y = _clusters(np.eye(20) * 10, 12, 0.5, 0)
    sentinels = ["s03", "s11", "s17"]
    result = heldout_sku_detection(X, y, detectors=("prototype",), folds=8, holdout_fraction=0.05,
                                   candidates=sentinels)
    held = [s for g in result["groups"] for s in g]
    assert sorted(held) == sentinels
    assert set(result["detectors"]["prototype"]["per_sku"]) == set(sentinels)
    with pytest.raises(ValueError, match="sentinel"):
        heldout_sku_detection(X, y, detectors=("prototype",), candidates=["not-a-sku"])
