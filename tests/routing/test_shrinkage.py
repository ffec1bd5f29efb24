"""The ``method="shrinkage"`` rule of ``fit_thresholds`` (empirical-Bayes precision estimate).

Known answers below are worked out by hand from the module docstring::

    p_global(t) = (c_t + k * m_t) / (n_t + k)      m_t = mean confidence of all rows >= t
    p_cat(t)    = (c_t + k * p_global(t)) / (n_t + k)
    p_sku(t)    = (c_t + k * p_cat(t)) / (n_t + k)

With ``confidence_level=0.5`` a group's threshold is the smallest observed confidence
with p(t) >= target (the default level selects on a lower credible bound); a group
with fewer than ``min_support`` rows keeps its parent's threshold unless its own one is
stricter.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from skuscale.routing import NEVER_ACCEPT, ThresholdTable, fit_thresholds

# Global-only example (k = 2, five rows):
#   conf     0.95  0.90  0.85  0.80  0.70
#   pred     a     a     b     a     b
#   correct  1     1     0     1     1
GLOBAL_CONF = np.array([0.95, 0.9, 0.85, 0.8, 0.7])
GLOBAL_PRED = np.array(["a", "a", "b", "a", "b"])
GLOBAL_CORR = np.array([True, True, False, True, True])
# p_global:
#   t=0.95: n=1 c=1 m=0.95  -> (1 + 1.90) / 3 = 0.96667
#   t=0.90: n=2 c=2 m=0.925 -> (2 + 1.85) / 4 = 0.9625
#   t=0.85: n=3 c=2 m=0.90  -> (2 + 1.80) / 5 = 0.76
#   t=0.80: n=4 c=3 m=0.875 -> (3 + 1.75) / 6 = 0.79167
#   t=0.70: n=5 c=4 m=0.84  -> (4 + 1.68) / 7 = 0.81143
# SKU "a" (rows 0.95, 0.90, 0.80 all correct), prior p_global:
#   t=0.95: (1 + 2*0.96667)/3 = 0.97778   t=0.90: (2 + 2*0.9625)/4 = 0.98125
#   t=0.85: (2 + 2*0.76)/4   = 0.88       t=0.80: (3 + 2*0.79167)/5 = 0.91667
#   t=0.70: (3 + 2*0.81143)/5 = 0.92457   -> own threshold 0.70 at target 0.9
# SKU "b" (0.85 wrong, 0.70 right):
#   t=0.95: 0.96667 (no rows)   t=0.90: 0.9625 (no rows)
#   t=0.85: (0 + 2*0.76)/3 = 0.50667   t=0.80: (0 + 2*0.79167)/3 = 0.52778
#   t=0.70: (1 + 2*0.81143)/4 = 0.65571   -> own threshold 0.90 at target 0.9


def fit_global(**kwargs):
    kw = {"skus": ["a", "b", "c"], "sku_to_category": {}, "prior_strength": 2.0, "confidence_level": 0.5}
    kw.update(kwargs)
    return fit_thresholds(GLOBAL_CONF, GLOBAL_PRED, GLOBAL_CORR, **kw)


@pytest.mark.parametrize(
    ("target", "expected", "b_threshold", "b_source"),
    [
        # p_global(0.70) = 0.81143; "b" reaches 0.8 only at 0.90 (0.9625): stricter, own level
        (0.80, 0.70, 0.90, "sku"),
        # p_global(0.90) = 0.9625, p_global(0.85) = 0.76; "b"'s own 0.90 equals global
        (0.90, 0.90, 0.90, "global"),
        # only p_global(0.95) = 0.96667 reaches it
        (0.965, 0.95, 0.95, "global"),
        # nothing reaches it ("a" would reach it at 0.90 but has < min_support rows)
        (0.97, NEVER_ACCEPT, NEVER_ACCEPT, "global"),
    ],
)
def test_global_known_answers(target, expected, b_threshold, b_source):
    table = fit_global(target_precision=target)
    assert table.method == "shrinkage"
    assert table.global_ == pytest.approx(expected)
    # "a" (3 rows < min_support 20) is never looser than global here: it inherits it
    assert table.per_sku == pytest.approx({"a": expected, "b": b_threshold, "c": expected})
    assert table.source == {"a": "global", "b": b_source, "c": "global"}
    assert table.per_category == {}
    assert table.support == {"a": 3, "b": 2, "c": 0}


def test_global_level_sku_with_enough_support_uses_its_own_threshold():
    # min_support=3: "a" (3 rows) uses its own 0.70, looser than global 0.90;
    # "b" (2 rows) own 0.90 is not stricter than global -> inherits
    table = fit_global(target_precision=0.9, min_support=3)
    assert table.global_ == pytest.approx(0.9)
    assert table.per_sku == pytest.approx({"a": 0.7, "b": 0.9, "c": 0.9})
    assert table.source == {"a": "sku", "b": "global", "c": "global"}
    # min_support=2: "b" now uses its own (equal) threshold, reported as its own level
    table = fit_global(target_precision=0.9, min_support=2)
    assert table.per_sku == pytest.approx({"a": 0.7, "b": 0.9, "c": 0.9})
    assert table.source == {"a": "sku", "b": "sku", "c": "global"}


def test_prior_strength_changes_the_answer():
    # k = 20 instead of 2: p_global(0.70) = (4 + 20*0.84)/25 = 0.832 >= 0.83
    assert fit_global(target_precision=0.83, prior_strength=20.0).global_ == pytest.approx(0.7)
    # with k = 2, p(0.70) = 0.81143 and the other thresholds are below 0.83 except 0.90, 0.95
    assert fit_global(target_precision=0.83, prior_strength=2.0).global_ == pytest.approx(0.9)


def test_one_category_known_answer():
    # k = 1, target 0.9, min_support 3; "a" and "b" in category X, "c" uncategorised.
    #   conf     0.99  0.90  0.80  0.60
    #   pred     a     b     c     a
    #   correct  1     1     0     1
    # p_global: t=.99 (1+.99)/2=.995  t=.90 (2+.945)/3=.98167
    #           t=.80 (2+.89667)/4=.72417  t=.60 (3+.8225)/5=.7645  -> global 0.90
    # category X (rows .99, .90, .60; all correct), prior p_global:
    #   t=.99 (1+.995)/2=.9975  t=.90 (2+.98167)/3=.99389
    #   t=.80 (2+.72417)/3=.90806  t=.60 (3+.7645)/4=.94113  -> 0.60, 3 rows = min_support
    # SKU a (rows .99, .60), prior p_cat: t=.60 (2+.94113)/3=.98038 -> own 0.60, 2 rows,
    #   not stricter than X -> inherits 0.60 from "category"
    # SKU b (row .90): t=.60 (1+.94113)/2=.97057 -> own 0.60 -> inherits, "category"
    # SKU c (row .80 wrong), prior p_global: t=.80 .72417/2=.36208, t=.60 .7645/2=.38225,
    #   t=.90 .98167 -> own 0.90 = global -> inherits, "global"
    table = fit_thresholds(
        [0.99, 0.9, 0.8, 0.6],
        ["a", "b", "c", "a"],
        [True, True, False, True],
        skus=["a", "b", "c"],
        sku_to_category={"a": "X", "b": "X"},
        target_precision=0.9,
        min_support=3,
        prior_strength=1.0,
    )
    assert table.global_ == pytest.approx(0.9)
    assert table.per_category == pytest.approx({"X": 0.6})
    assert table.category_source == {"X": "category"}
    assert table.per_sku == pytest.approx({"a": 0.6, "b": 0.6, "c": 0.9})
    assert table.source == {"a": "category", "b": "category", "c": "global"}
    assert table.support == {"a": 2, "b": 1, "c": 1}


def test_small_category_inherits_global():
    # Same rows, min_support 4: category X (3 rows) keeps global's 0.90 (its own 0.60 is looser)
    table = fit_thresholds(
        [0.99, 0.9, 0.8, 0.6],
        ["a", "b", "c", "a"],
        [True, True, False, True],
        skus=["a", "b", "c"],
        sku_to_category={"a": "X", "b": "X"},
        target_precision=0.9,
        min_support=4,
        prior_strength=1.0,
    )
    assert table.per_category == pytest.approx({"X": 0.9})
    assert table.category_source == {"X": "global"}
    assert table.per_sku == pytest.approx({"a": 0.9, "b": 0.9, "c": 0.9})
    assert table.source == {"a": "global", "b": "global", "c": "global"}


@pytest.fixture
def category_rows():
    """Category X: 200 correct rows of "good", "bad" with 3 errors at 0.95-0.97, "few" (3 clean rows)."""
    good = np.linspace(0.85, 0.999, 200)
    bad = np.array([0.9, 0.95, 0.96, 0.97])
    few = np.array([0.93, 0.94, 0.95])
    conf = np.concatenate([good, bad, few])
    pred = np.array(["good"] * 200 + ["bad"] * 4 + ["few"] * 3)
    corr = np.concatenate([np.ones(200, bool), [True, False, False, False], np.ones(3, bool)])
    return conf, pred, corr


def _fit_category(conf, pred, corr, **kwargs):
    return fit_thresholds(
        conf, pred, corr,
        skus=["good", "bad", "few", "other"],
        sku_to_category={"good": "X", "bad": "X", "few": "X", "other": "Y"},
        target_precision=0.95,
        **kwargs,
    )


def test_sku_with_confident_errors_is_stricter_than_its_category(category_rows):
    conf, pred, corr = category_rows
    table = _fit_category(conf, pred, corr)
    assert table.category_source["X"] == "category"
    assert table.per_sku["bad"] > table.per_category["X"]
    assert table.source["bad"] == "sku"
    # none of its wrong predictions would be auto-accepted
    wrong = conf[(pred == "bad") & ~corr]
    assert table.per_sku["bad"] > wrong.max()
    assert table.support["bad"] == 4


def test_sku_errors_raise_threshold_compared_to_clean_rows(category_rows):
    conf, pred, corr = category_rows
    clean = _fit_category(conf, pred, np.ones_like(corr))
    dirty = _fit_category(conf, pred, corr)
    assert clean.per_sku["bad"] == clean.per_category["X"]
    assert dirty.per_sku["bad"] > clean.per_sku["bad"]


def test_few_clean_rows_inherit_category(category_rows):
    conf, pred, corr = category_rows
    table = _fit_category(conf, pred, corr)
    assert table.per_sku["few"] == table.per_category["X"]
    assert table.source["few"] == "category"
    assert table.support["few"] == 3
    # the well-supported SKU has its own level; the SKU of the empty category goes to global
    assert table.source["good"] == "sku"
    assert table.per_sku["other"] == table.global_
    assert table.category_source["Y"] == "global"


def test_never_accept_when_all_rows_wrong():
    # at the top row p = 20 * 0.99 / 21 = 0.943 < 0.99; lower rows only add errors
    table = fit_thresholds(
        [0.99, 0.98, 0.9], ["a", "a", "b"], [False, False, False],
        skus=["a", "b"], sku_to_category={"a": "X"},
    )
    assert table.global_ == NEVER_ACCEPT
    assert table.per_category == {"X": NEVER_ACCEPT}
    assert table.per_sku == {"a": NEVER_ACCEPT, "b": NEVER_ACCEPT}


def test_never_accept_when_confidences_are_too_low():
    # all correct, but the prior keeps p = (3 + 20 * 0.5) / 23 = 0.565 below 0.9
    table = fit_thresholds(
        [0.5, 0.5, 0.5], ["a", "a", "a"], [True, True, True],
        skus=["a"], sku_to_category={}, target_precision=0.9,
    )
    assert table.global_ == NEVER_ACCEPT
    assert table.per_sku == {"a": NEVER_ACCEPT}


def test_well_supported_sku_with_top_errors_never_accepts():
    rng = np.random.default_rng(0)
    good = rng.uniform(0.9, 0.99, 300)
    conf = np.concatenate([good, np.full(25, 0.999)])
    pred = np.array(["good"] * 300 + ["bad"] * 25)
    corr = np.concatenate([np.ones(300, bool), np.zeros(25, bool)])
    table = fit_thresholds(conf, pred, corr, skus=["good", "bad"], sku_to_category={},
                           target_precision=0.9)
    assert table.global_ < NEVER_ACCEPT
    assert table.per_sku["bad"] == NEVER_ACCEPT
    assert table.source["bad"] == "sku"


def test_no_rows_never_accepts():
    table = fit_thresholds([], [], [], skus=["a", "b"], sku_to_category={"a": "X"})
    assert table.global_ == NEVER_ACCEPT
    assert table.per_sku == {"a": NEVER_ACCEPT, "b": NEVER_ACCEPT}
    assert table.per_category == {"X": NEVER_ACCEPT}
    assert table.support == {"a": 0, "b": 0}


def test_threshold_is_an_observed_confidence_or_never(category_rows):
    conf, pred, corr = category_rows
    table = _fit_category(conf, pred, corr)
    observed = set(conf.tolist()) | {NEVER_ACCEPT}
    for value in [*table.per_sku.values(), *table.per_category.values(), table.global_]:
        assert value in observed


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prior_strength": 0.0}, "prior_strength"),
        ({"prior_strength": -1.0}, "prior_strength"),
        ({"method": "bayes"}, "method"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_thresholds([0.9], ["a"], [True], skus=["a"], **kwargs)


def test_dict_round_trip_keeps_method_and_prior_strength(category_rows):
    conf, pred, corr = category_rows
    table = _fit_category(conf, pred, corr, prior_strength=7.5)
    assert table.method == "shrinkage"
    assert table.prior_strength == 7.5
    d = json.loads(json.dumps(table.to_dict()))
    assert d["method"] == "shrinkage"
    assert d["prior_strength"] == 7.5
    again = ThresholdTable.from_dict(d)
    assert again == table
    assert again.method == "shrinkage"
    assert again.prior_strength == 7.5


def test_default_credible_bound_is_never_looser_than_the_posterior_mean():
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.5, 1.0, 400)
    correct = rng.uniform(size=400) < conf
    pred = rng.choice(["a", "b", "c", "d"], 400)
    kwargs = {"skus": ["a", "b", "c", "d"], "sku_to_category": {"a": "x", "b": "x", "c": "y", "d": "y"},
              "target_precision": 0.95, "min_support": 5}
    mean_rule = fit_thresholds(conf, pred, correct, confidence_level=0.5, **kwargs)
    bound_rule = fit_thresholds(conf, pred, correct, **kwargs)
    assert bound_rule.global_ > mean_rule.global_
    for sku in kwargs["skus"]:
        assert bound_rule.per_sku[sku] >= mean_rule.per_sku[sku]


def test_large_inputs_use_a_bounded_grid_of_observed_confidences(monkeypatch):
    import skuscale.routing.thresholds as th

    rng = np.random.default_rng(5)
    conf = rng.uniform(0.5, 1.0, 5000)
    correct = rng.uniform(size=5000) < conf
    pred = rng.choice(["a", "b"], 5000)
    full = fit_thresholds(conf, pred, correct, skus=["a", "b"], sku_to_category={}, target_precision=0.95)
    monkeypatch.setattr(th, "_MAX_GRID", 64)
    coarse = fit_thresholds(conf, pred, correct, skus=["a", "b"], sku_to_category={}, target_precision=0.95)
    assert coarse.global_ in set(conf.tolist())
    # A coarser grid can only move a threshold up to the next candidate, never below the fine answer.
    assert coarse.global_ >= full.global_
    assert coarse.global_ - full.global_ < 0.02


def test_integer_weights_equal_repeated_rows():
    weights = np.array([2, 1, 3, 1, 2])
    repeated = np.repeat(np.arange(5), weights)
    rng = np.random.default_rng(0)
    for target in (0.8, 0.9, 0.95):
        kw = {"skus": ["a", "b", "c"], "sku_to_category": {"a": "x", "b": "x"}, "prior_strength": 2.0,
              "target_precision": target, "min_support": 3}
        weighted = fit_thresholds(GLOBAL_CONF, GLOBAL_PRED, GLOBAL_CORR, sample_weight=weights, **kw)
        copies = fit_thresholds(GLOBAL_CONF[repeated], GLOBAL_PRED[repeated], GLOBAL_CORR[repeated], **kw)
        assert weighted.per_sku == pytest.approx(copies.per_sku)
        assert weighted.per_category == pytest.approx(copies.per_category)
        assert weighted.global_ == pytest.approx(copies.global_)
        assert weighted.source == copies.source
    # unit weights change nothing
    ones = fit_thresholds(GLOBAL_CONF, GLOBAL_PRED, GLOBAL_CORR, sample_weight=np.ones(5), skus=["a", "b"],
                          target_precision=0.9, confidence_level=float(rng.uniform(0.5, 0.9)))
    plain = fit_thresholds(GLOBAL_CONF, GLOBAL_PRED, GLOBAL_CORR, skus=["a", "b"], target_precision=0.9,
                           confidence_level=ones.confidence_level)
    assert ones.to_dict() == plain.to_dict()


def test_down_weighted_error_matters_less():
    # The wrong 0.85 row blocks the global threshold at 0.90 (target 0.9, k = 2); at a
    # tenth of a row it no longer does: p_global(0.70) = (4 + 2 m) / (4.1 + 2) >= 0.9.
    kw = {"skus": ["a", "b"], "sku_to_category": {}, "prior_strength": 2.0, "confidence_level": 0.5,
          "target_precision": 0.9}
    assert fit_thresholds(GLOBAL_CONF, GLOBAL_PRED, GLOBAL_CORR, **kw).global_ == pytest.approx(0.90)
    light = fit_thresholds(GLOBAL_CONF, GLOBAL_PRED, GLOBAL_CORR, sample_weight=[1, 1, 0.1, 1, 1], **kw)
    assert light.global_ == pytest.approx(0.70)


@pytest.mark.parametrize(("weights", "kwargs", "match"), [
    ([1, 1, 1, 1], {}, "sample_weight"),
    ([1, 1, -1, 1, 1], {}, "sample_weight"),
    ([1, 1, np.nan, 1, 1], {}, "sample_weight"),
    ([1, 1, 2, 1, 1], {"method": "clopper_pearson"}, "shrinkage"),
])
def test_bad_sample_weight(weights, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_thresholds(GLOBAL_CONF, GLOBAL_PRED, GLOBAL_CORR, skus=["a", "b"], sample_weight=weights, **kwargs)
