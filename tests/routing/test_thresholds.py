"""Threshold fitting: certification, backoff and the own-evidence veto."""

import functools
import json

import numpy as np
import pytest
from scipy.stats import beta

from skuscale.routing import (
    NEVER_ACCEPT,
    ThresholdTable,
    precision_lower_bound,
    precision_upper_bound,
)
from skuscale.routing import fit_thresholds as _fit_thresholds

# These tests pin the Clopper-Pearson rule; tests/routing/test_shrinkage.py covers the default.
fit_thresholds = functools.partial(_fit_thresholds, method="clopper_pearson")


def rows(sku, confs, correct):
    confs = np.asarray(confs, dtype=float)
    correct = np.broadcast_to(np.asarray(correct, dtype=bool), confs.shape)
    return confs, np.full(confs.shape, sku, dtype=object), correct


def stack(*parts):
    return tuple(np.concatenate(x) for x in zip(*parts, strict=True))


def own_precision_ub(conf, pred, correct, sku, t, level=0.8):
    m = (pred == sku) & (conf >= t)
    if not m.any():
        return 1.0
    return float(precision_upper_bound(correct[m].sum(), m.sum(), level))


# -- bounds --------------------------------------------------------------------


def test_bounds_match_clopper_pearson():
    c, n = np.array([0, 3, 10, 10, 160, 161]), np.array([5, 10, 10, 12, 160, 161])
    lb = precision_lower_bound(c, n, 0.8)
    ub = precision_upper_bound(c, n, 0.8)
    safe_c = np.maximum(c, 1)
    np.testing.assert_allclose(lb, np.where(c > 0, beta.ppf(0.2, safe_c, n - c + 1), 0.0))
    safe_b = np.maximum(n - c, 1)
    np.testing.assert_allclose(ub, np.where(c < n, beta.ppf(0.8, c + 1, safe_b), 1.0))
    # all correct: LB = (1 - level) ** (1 / n); the default needs 161 rows for 0.99
    assert precision_lower_bound(160, 160) < 0.99 <= precision_lower_bound(161, 161)
    assert precision_lower_bound(7, 7) == pytest.approx(0.2 ** (1 / 7))
    # one error: UB = level ** (1 / n)
    assert precision_upper_bound(21, 22) == pytest.approx(0.8 ** (1 / 22))
    assert precision_upper_bound(21, 22) < 0.99 <= precision_upper_bound(22, 23)
    with pytest.raises(ValueError, match="confidence_level"):
        precision_lower_bound(1, 1, confidence_level=1.0)
    with pytest.raises(ValueError, match="n_correct"):
        precision_upper_bound(3, 2)


# -- certification ---------------------------------------------------------------


def test_global_threshold_obvious():
    # 200 correct rows at high confidence, 200 wrong rows at low confidence:
    # LB(200/200) = 0.2 ** (1/200) = 0.992 >= 0.99, and any wrong row breaks it.
    good = rows("a", np.linspace(0.99, 0.95, 200), True)
    bad = rows("a", np.linspace(0.6, 0.5, 200), False)
    conf, pred, correct = stack(good, bad)
    t = fit_thresholds(conf, pred, correct, skus=["a"])
    assert t.global_ == pytest.approx(0.95)
    assert t.per_sku == {"a": pytest.approx(0.95)}
    assert t.source == {"a": "sku"}
    assert t.support == {"a": 400}


def test_global_threshold_needs_161_clean_rows():
    # descending distinct confidences, all correct: threshold is the 161st highest
    conf = np.linspace(1.0, 0.0, 1000, endpoint=False)
    pred = np.full(1000, "a")
    correct = np.ones(1000, dtype=bool)
    correct[161:] = np.arange(839) % 2 == 0  # plenty of errors below
    correct[161] = False
    t = fit_thresholds(conf, pred, correct, skus=["a"])
    assert t.global_ == conf[160]


def test_smallest_certified_matches_brute_force():
    rng = np.random.default_rng(0)
    n = 3000
    conf = np.round(rng.uniform(0.5, 1.0, n), 3)  # with ties
    correct = rng.uniform(size=n) < 0.98 + 0.02 * (conf > 0.9)  # perfect above 0.9
    pred = np.full(n, "a")
    t = fit_thresholds(conf, pred, correct, skus=["a"], target_precision=0.99)
    ok = [
        u
        for u in np.unique(conf)
        if precision_lower_bound(correct[conf >= u].sum(), (conf >= u).sum()) >= 0.99
    ]
    assert t.global_ == min(ok)


def test_unreachable_global_is_never():
    conf = np.linspace(0.99, 0.5, 300)
    correct = np.arange(300) % 10 != 0  # 90 % precision everywhere, top row wrong
    t = fit_thresholds(conf, np.full(300, "a"), correct, skus=["a", "b"])
    assert t.global_ == NEVER_ACCEPT
    assert t.per_sku == {"a": NEVER_ACCEPT, "b": NEVER_ACCEPT}
    assert t.threshold_for("a") > 1.0


def test_no_rows_at_all():
    t = fit_thresholds([], [], [], skus=["a"], sku_to_category={"a": "x"})
    assert t.global_ == NEVER_ACCEPT
    assert t.per_sku == {"a": NEVER_ACCEPT}
    assert t.per_category == {"x": NEVER_ACCEPT}
    assert t.support == {"a": 0}


# -- backoff ---------------------------------------------------------------------


@pytest.fixture()
def catalogue():
    """SKU "cola" certifies 0.9 (200 clean rows); all other groups are small."""
    parts = [
        rows("cola", np.linspace(0.99, 0.9, 200), True),
        rows("cola", np.linspace(0.6, 0.3, 100), False),
        rows("water", np.linspace(0.98, 0.91, 10), True),  # 10 rows < min_support
        rows("chips", np.linspace(0.99, 0.95, 5), True),  # category "snacks": 5 rows
        rows("loose", np.linspace(0.99, 0.97, 3), True),  # no category
    ]
    conf, pred, correct = stack(*parts)
    skus = ["cola", "water", "juice", "chips", "loose", "nosale"]
    mapping = {"cola": "drinks", "water": "drinks", "juice": "drinks", "chips": "snacks"}
    return conf, pred, correct, skus, mapping


def test_backoff_levels(catalogue):
    conf, pred, correct, skus, mapping = catalogue
    t = fit_thresholds(conf, pred, correct, skus=skus, sku_to_category=mapping)
    # 218 clean rows down to 0.9 certify it; LB(218 / 219) < 0.99, so the errors stay out
    assert t.global_ == pytest.approx(0.9)
    assert t.per_category["drinks"] == pytest.approx(0.9)
    assert t.category_source == {"drinks": "category", "snacks": "global"}
    assert t.source["cola"] == "sku" and t.per_sku["cola"] == pytest.approx(0.9)
    # low support -> category
    assert t.source["water"] == "category" and t.per_sku["water"] == t.per_category["drinks"]
    # no predictions at all -> category
    assert t.source["juice"] == "category" and t.support["juice"] == 0
    # low support, category also low support -> global
    assert t.source["chips"] == "global" and t.per_sku["chips"] == t.global_
    # no category -> global
    assert t.source["loose"] == "global" and t.source["nosale"] == "global"
    assert t.threshold_for("not-in-catalogue") == t.global_


def test_empty_mapping_backs_off_straight_to_global(catalogue):
    conf, pred, correct, skus, _ = catalogue
    t = fit_thresholds(conf, pred, correct, skus=skus, sku_to_category={})
    assert t.per_category == {}
    assert set(t.source.values()) == {"sku", "global"}
    assert t.source["water"] == "global"


def test_certified_sku_can_be_looser_than_its_category():
    parts = [
        rows("big", np.linspace(0.99, 0.3, 400), True),  # clean down to 0.3
        rows("noisy", np.linspace(0.99, 0.5, 400), np.arange(400) % 4 != 1),
    ]
    conf, pred, correct = stack(*parts)
    m = {"big": "c", "noisy": "c"}
    t = fit_thresholds(conf, pred, correct, skus=["big", "noisy"], sku_to_category=m)
    assert t.per_sku["big"] == pytest.approx(0.3)
    assert t.source["big"] == "sku"
    assert t.per_category["c"] > 0.5


# -- own-evidence veto -----------------------------------------------------------


def test_well_supported_sku_with_errors_never_accepts():
    parts = [
        rows("cola", np.linspace(0.99, 0.9, 1000), True),
        # 50 rows of "bad", every 10th wrong, starting with the most confident one
        rows("bad", np.linspace(0.999, 0.95, 50), np.arange(50) % 10 != 0),
    ]
    conf, pred, correct = stack(*parts)
    mapping = {"cola": "drinks", "bad": "drinks"}
    t = fit_thresholds(conf, pred, correct, skus=["cola", "bad"], sku_to_category=mapping)
    assert t.per_category["drinks"] < 0.95  # the category alone would accept all of "bad"
    assert t.category_source["drinks"] == "category"
    assert t.support["bad"] >= t.min_support
    assert t.per_sku["bad"] == NEVER_ACCEPT
    assert t.source["bad"] == "sku"


def test_low_support_sku_threshold_raised_above_its_error():
    # 15 rows (< min_support): 4 correct at 0.91-0.94, one error at 0.95, 10 correct above
    c = np.concatenate([np.linspace(0.91, 0.94, 4), [0.95], np.linspace(0.96, 0.995, 10)])
    k = np.array([True] * 4 + [False] + [True] * 10)
    conf, pred, correct = stack(rows("cola", np.linspace(0.99, 0.9, 1000), True), rows("odd", c, k))
    mapping = {"cola": "drinks", "odd": "drinks"}
    t = fit_thresholds(conf, pred, correct, skus=["cola", "odd"], sku_to_category=mapping)
    assert t.per_category["drinks"] <= 0.91
    assert t.per_sku["odd"] == pytest.approx(0.96)
    assert t.source["odd"] == "sku"


def test_error_far_below_parent_threshold_does_not_veto(catalogue):
    conf, pred, correct, skus, mapping = catalogue
    # 100 correct rows above the category threshold, one error at 0.5
    c = np.concatenate([np.linspace(0.999, 0.95, 100), [0.5]])
    k = np.array([True] * 100 + [False])
    conf, pred, correct = stack((conf, pred, correct), rows("fine", c, k))
    mapping = {**mapping, "fine": "drinks"}
    t = fit_thresholds(conf, pred, correct, skus=[*skus, "fine"], sku_to_category=mapping)
    assert t.source["fine"] == "category"
    assert t.per_sku["fine"] == t.per_category["drinks"]


def test_one_error_among_many_correct_above_parent_is_tolerated(catalogue):
    conf, pred, correct, skus, mapping = catalogue
    # UB(100/101) = 0.8 ** (1/101) = 0.9978 >= 0.99: not refuted
    c = np.linspace(0.999, 0.95, 101)
    k = np.arange(101) != 50
    conf, pred, correct = stack((conf, pred, correct), rows("ok", c, k))
    mapping = {**mapping, "ok": "drinks"}
    t = fit_thresholds(conf, pred, correct, skus=[*skus, "ok"], sku_to_category=mapping)
    assert t.source["ok"] == "category"


def test_invariants_on_random_data():
    rng = np.random.default_rng(0)
    skus = [f"s{i}" for i in range(40)]
    mapping = {s: f"c{i % 4}" for i, s in enumerate(skus[:32])}
    n = 5000
    w = np.linspace(1, 0.02, 40) ** 2
    pred = rng.choice(skus, size=n, p=w / w.sum())
    conf = rng.beta(6, 1, size=n)
    skill = np.array([0.85 if i % 7 == 3 else 1.0 for i in range(40)])
    p_correct = skill[[skus.index(s) for s in pred]] * np.minimum(1.0, conf + 0.1)
    correct = rng.uniform(size=n) < p_correct
    target = 0.95
    t = fit_thresholds(
        conf, pred, correct, skus=skus, sku_to_category=mapping, target_precision=target
    )
    assert set(t.per_sku) == set(skus)
    seen = set()
    for s in skus:
        thr = t.per_sku[s]
        parent = t.per_category[mapping[s]] if s in mapping else t.global_
        # never at a threshold that the SKU's own rows refute
        assert thr == NEVER_ACCEPT or own_precision_ub(conf, pred, correct, s, thr) >= target
        if t.source[s] != "sku":
            seen.add("inherited")
            assert thr == parent
            assert t.source[s] == (t.category_source[mapping[s]] if s in mapping else "global")
        elif thr == NEVER_ACCEPT:
            seen.add("never")
        elif t.support[s] < t.min_support:
            seen.add("raised")
            assert thr > parent  # backed-off SKUs can only be made stricter by their own rows
        else:
            m = (pred == s) & (conf >= thr)
            if precision_lower_bound(correct[m].sum(), m.sum()) >= target:
                seen.add("certified")
            else:
                seen.add("raised")
                assert thr > parent
    assert seen == {"inherited", "never", "raised", "certified"}


# -- table ---------------------------------------------------------------------------


def test_json_round_trip(catalogue):
    conf, pred, correct, skus, mapping = catalogue
    t = fit_thresholds(conf, pred, correct, skus=skus, sku_to_category=mapping)
    back = ThresholdTable.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back == t
    assert back.threshold_for("cola") == t.threshold_for("cola")
    np.testing.assert_array_equal(back.thresholds_for(skus), t.thresholds_for(skus))
    with pytest.raises(ValueError, match="ThresholdTable"):
        ThresholdTable.from_dict({"per_sku": {}})


def test_category_level_usage():
    conf = np.concatenate([np.linspace(0.99, 0.9, 200), np.linspace(0.5, 0.4, 50)])
    pred = np.array(["drinks"] * 150 + ["snacks"] * 50 + ["drinks"] * 50, dtype=object)
    correct = np.array([True] * 200 + [False] * 50)
    t = fit_thresholds(conf, pred, correct, skus=["drinks", "snacks"], sku_to_category={})
    assert t.source == {"drinks": "global", "snacks": "global"}  # drinks: 150 rows < 161
    assert t.global_ == pytest.approx(0.9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"predicted": ["a", "zzz"]}, "not in skus"),
        ({"confidence": [0.5, 1.5]}, r"\[0, 1\]"),
        ({"confidence": [0.5, np.nan]}, r"\[0, 1\]"),
        ({"correct": [1, 2]}, "boolean"),
        ({"correct": [True]}, "2 entries"),
        ({"target_precision": 1.0}, "target_precision"),
        ({"min_support": 0}, "min_support"),
        ({"confidence_level": 0.3}, "confidence_level"),
        ({"skus": "a"}, "single string"),
        ({"skus": ["a", "a"]}, "duplicates"),
    ],
)
def test_validation(kwargs, match):
    args = {
        "confidence": [0.5, 0.6],
        "predicted": ["a", "a"],
        "correct": [True, False],
        "skus": ["a"],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fit_thresholds(
            args.pop("confidence"), args.pop("predicted"), args.pop("correct"), **args
        )


def test_float32_overshoot_is_clipped():
    one_plus = float(np.nextafter(np.float32(1), np.float32(2)))
    conf = np.array([one_plus] * 200 + [0.5], dtype=np.float32)
    correct = np.array([True] * 200 + [False])
    t = fit_thresholds(conf, np.full(201, "a"), correct, skus=["a"])
    assert t.global_ == 1.0
