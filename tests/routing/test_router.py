"""Router bands, candidates, category fields and persistence."""

import json
import math

import numpy as np
import pytest

from skuscale.routing import (
    ACCEPT,
    BANDS,
    NEVER_ACCEPT,
    UNKNOWN,
    VERIFY,
    Decision,
    Router,
    ThresholdTable,
    category_probabilities,
)

SKUS = ["a", "b", "c", "d", "e", "f"]
MAPPING = {"a": "drinks", "b": "drinks", "c": "snacks", "d": "snacks"}  # e, f: none


def table(per_sku, global_=0.95):
    return ThresholdTable(
        per_sku=dict(per_sku),
        source={k: "sku" for k in per_sku},
        per_category={},
        global_=global_,
        target_precision=0.99,
        min_support=20,
    )


@pytest.fixture()
def router():
    return Router(
        skus=SKUS,
        sku_to_category=MAPPING,
        sku_thresholds=table({"a": 0.9, "b": 0.5, "c": NEVER_ACCEPT, "d": 0.7, "e": 0.8}),
        category_thresholds=table({"drinks": 0.8, "snacks": 0.9}),
        ood_threshold=1.0,
    )


PROBS = np.array(
    [
        [0.95, 0.01, 0.01, 0.01, 0.01, 0.01],  # 0: a >= 0.9 -> accept
        [0.60, 0.30, 0.04, 0.03, 0.02, 0.01],  # 1: a < 0.9 -> verify; drinks 0.9 >= 0.8
        [0.00, 0.00, 0.99, 0.01, 0.00, 0.00],  # 2: c never accepts -> verify; snacks 1.0
        [0.00, 0.00, 0.00, 0.00, 0.50, 0.50],  # 3: tie e/f -> e; 0.5 < 0.8 -> verify
        [0.95, 0.01, 0.01, 0.01, 0.01, 0.01],  # 4: would accept, but OOD -> unknown
        [0.00, 0.00, 0.10, 0.70, 0.20, 0.00],  # 5: d exactly at 0.7 -> accept
        [0.10, 0.10, 0.30, 0.30, 0.10, 0.10],  # 6: c/d tie -> c -> verify; snacks 0.6 < 0.9
        [0.00, 0.00, 0.00, 0.00, 0.10, 0.90],  # 7: f not in the table -> global 0.95 -> verify
    ]
)
OOD = np.array([0.0, 0.5, 0.0, 0.0, 3.0, 1.0, -2.0, 0.2])


def test_bands(router):
    bands = [d.band for d in router.route(PROBS, OOD)]
    expected = ["accept", "verify", "verify", "verify", "unknown", "accept", "verify", "verify"]
    assert bands == expected
    arr = router.route_arrays(PROBS, OOD)
    assert arr["band"].tolist() == [BANDS.index(b) for b in expected]
    assert arr["band"].dtype == np.int8
    assert (ACCEPT, VERIFY, UNKNOWN) == (0, 1, 2)
    np.testing.assert_allclose(
        arr["threshold"], [0.9, 0.9, NEVER_ACCEPT, 0.8, 0.9, 0.7, NEVER_ACCEPT, 0.95]
    )


def test_top1_and_tie_breaks(router):
    ds = router.route(PROBS, OOD)
    assert [d.sku for d in ds] == ["a", "a", "c", "e", "a", "d", "c", "f"]
    assert ds[4].sku == "a" and ds[4].band == "unknown"  # top-1 is filled even when unknown
    assert ds[3].confidence == 0.5
    assert ds[4].ood_score == 3.0


def test_ood_override_is_strict(router):
    p = np.tile(PROBS[0], (3, 1))
    bands = [d.band for d in router.route(p, [1.0, 1.0 + 1e-9, np.inf])]
    assert bands == ["accept", "unknown", "unknown"]


def test_top5_order(router):
    d = router.route(PROBS[[6]], [0.0])[0]
    assert d.candidates == [("c", 0.3), ("d", 0.3), ("a", 0.1), ("b", 0.1), ("e", 0.1)]
    d = router.route(PROBS[[1]], [0.0])[0]
    assert [s for s, _ in d.candidates] == ["a", "b", "c", "d", "e"]
    scores = [p for _, p in d.candidates]
    assert scores == sorted(scores, reverse=True)


def test_category_fields_only_when_intended(router):
    ds = router.route(PROBS, OOD)
    got = [(d.category, d.category_confidence) for d in ds]
    assert got[0] == (None, None)  # accepted: no category
    assert got[1] == ("drinks", pytest.approx(0.9))
    assert got[2] == ("snacks", pytest.approx(1.0))
    assert got[3] == (None, None)  # uncategorised SKUs contribute to no category
    assert got[4] == ("drinks", pytest.approx(0.96))  # unknown band: category still reported
    assert got[5] == (None, None)  # accepted
    assert got[6] == (None, None)  # snacks 0.6 < 0.9
    assert got[7] == (None, None)
    arr = router.route_arrays(PROBS, OOD)
    assert arr["category_index"].tolist() == [-1, 0, 1, -1, 0, -1, -1, -1]
    assert np.isnan(arr["category_confidence"][[0, 3, 5, 6, 7]]).all()


def test_no_category_table_means_no_category(router):
    router.category_thresholds = None
    assert all(d.category is None for d in router.route(PROBS, OOD))
    np.testing.assert_array_equal(router.category_threshold_vector(), [NEVER_ACCEPT] * 2)
    bare = Router(skus=SKUS, sku_to_category={}, sku_thresholds=router.sku_thresholds)
    assert bare.categories() == [] and bare.category_matrix().shape == (6, 0)
    assert all(d.category is None for d in bare.route(PROBS, OOD))
    assert [d.band for d in bare.route(PROBS, OOD)][4] == "accept"  # default: no OOD cut


def test_route_and_route_arrays_agree(router):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(6, 0.3), size=200)
    probs[:20] = np.round(probs[:20], 1)  # ties
    ood = rng.normal(size=200)
    arr = router.route_arrays(probs, ood)
    ds = router.route(probs, ood)
    cats = router.categories()
    for i, d in enumerate(ds):
        assert d.band == BANDS[arr["band"][i]]
        assert d.sku == SKUS[arr["sku_index"][i]]
        assert d.confidence == arr["confidence"][i] == probs[i].max()
        assert [s for s, _ in d.candidates] == [SKUS[j] for j in arr["topk_index"][i]]
        assert [p for _, p in d.candidates] == arr["topk_score"][i].tolist()
        ci = arr["category_index"][i]
        assert d.category == (cats[ci] if ci >= 0 else None)
    # reference for the bands, computed independently
    thr = np.array([router.sku_thresholds.threshold_for(s) for s in SKUS])
    top = probs.argmax(1)
    ref = np.where(ood > 1.0, 2, np.where(probs.max(1) >= thr[top], 0, 1))
    np.testing.assert_array_equal(arr["band"], ref)
    np.testing.assert_array_equal(arr["topk_index"], np.argsort(-probs, 1, kind="stable")[:, :5])


def test_constants(router):
    np.testing.assert_array_equal(router.sku_threshold_vector(), [0.9, 0.5, 1.01, 0.7, 0.8, 0.95])
    assert router.categories() == ["drinks", "snacks"]
    np.testing.assert_array_equal(
        router.category_matrix(),
        [[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [0, 0]],
    )
    np.testing.assert_array_equal(router.category_threshold_vector(), [0.8, 0.9])
    cats, cp = category_probabilities(PROBS, SKUS, MAPPING)
    assert cats == ["drinks", "snacks"]
    np.testing.assert_allclose(cp[1], [0.9, 0.07])


def test_small_catalogue_fewer_than_five_candidates():
    r = Router(skus=["x", "y"], sku_to_category={}, sku_thresholds=table({"x": 0.5}))
    d = r.route([[0.3, 0.7]], [0.0])[0]
    assert d.candidates == [("y", 0.7), ("x", 0.3)]
    assert d.band == "verify"  # y -> global 0.95
    assert r.route(np.zeros((0, 2)), np.zeros(0)) == []


def test_json_round_trips(router):
    ds = router.route(PROBS, OOD)
    d = json.loads(json.dumps(ds[1].to_dict()))
    assert d["candidates"][0] == {"sku": "a", "score": 0.6}
    assert d["category"] == "drinks" and d["band"] == "verify"
    assert json.loads(json.dumps(ds[0].to_dict()))["category_confidence"] is None

    back = Router.from_dict(json.loads(json.dumps(router.to_dict())))
    assert back == router
    assert back.route(PROBS, OOD) == ds
    router.ood_threshold = math.inf
    router.category_thresholds = None
    blob = json.dumps(router.to_dict())
    back = Router.from_dict(json.loads(blob))
    assert back.ood_threshold == math.inf and back.category_thresholds is None
    with pytest.raises(ValueError, match="Router"):
        Router.from_dict({"skus": ["a"]})


@pytest.mark.parametrize(
    "probs, ood, match",
    [
        (np.full((1, 5), 0.2), [0.0], "in catalogue order"),
        (np.full((1, 6), np.nan), [0.0], "NaN"),
        (np.full((1, 6), 2.0), [0.0], r"\[0, 1\]"),
        (np.full((2, 6), 0.1), [0.0], "2 entries"),
        (np.full((1, 6), 0.1), [np.nan], "NaN"),
    ],
)
def test_route_validation(router, probs, ood, match):
    with pytest.raises(ValueError, match=match):
        router.route(probs, ood)


def test_constructor_validation(router):
    with pytest.raises(ValueError, match="duplicates"):
        Router(skus=["a", "a"], sku_to_category={}, sku_thresholds=router.sku_thresholds)
    with pytest.raises(ValueError, match="empty"):
        Router(skus=[], sku_to_category={}, sku_thresholds=router.sku_thresholds)
    with pytest.raises(ValueError, match="ThresholdTable"):
        Router(skus=["a"], sku_to_category={}, sku_thresholds={"a": 0.5})
    with pytest.raises(ValueError, match="NaN"):
        Router(skus=["a"], sku_to_category={}, sku_thresholds=router.sku_thresholds,
               ood_threshold=float("nan"))
    # -inf ("flag everything") would come back from to_dict/from_dict as +inf ("flag nothing").
    with pytest.raises(ValueError, match="inf"):
        Router(skus=["a"], sku_to_category={}, sku_thresholds=router.sku_thresholds,
               ood_threshold=-math.inf)


def test_decision_defaults():
    d = Decision(band="verify", sku="a", confidence=0.4, ood_score=0.0)
    assert d.to_dict()["candidates"] == [] and d.category is None


# -- fitting from held-out data -------------------------------------------------------


def synthetic(n, k, seed):
    """Calibrated by construction: labels are drawn from the probabilities."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, 0.05), size=n)
    y = (probs.cumsum(1) > rng.uniform(size=(n, 1))).argmax(1)
    return probs, y


def test_from_heldout_meets_target_on_fresh_data():
    k = 20
    skus = [f"s{i:02d}" for i in range(k)]
    mapping = {s: f"c{i % 4}" for i, s in enumerate(skus)}
    probs, y = synthetic(6000, k, seed=0)
    router = Router.from_heldout(
        probs, np.array(skus)[y], skus=skus, sku_to_category=mapping, target_precision=0.95
    )
    assert router.category_thresholds is not None
    assert set(router.sku_thresholds.per_sku) == set(skus)
    test_probs, test_y = synthetic(6000, k, seed=1)
    arr = router.route_arrays(test_probs, np.zeros(6000))
    acc = arr["band"] == ACCEPT
    assert acc.mean() > 0.05
    assert (arr["sku_index"][acc] == test_y[acc]).mean() >= 0.93
    filled = arr["category_index"] >= 0
    if filled.any():
        true_cat = np.array([int(mapping[skus[j]][1]) for j in test_y])
        assert (arr["category_index"][filled] == true_cat[filled]).mean() >= 0.9
    json.dumps(router.to_dict())


def test_from_heldout_leaves_out_ood_rows_and_unknown_labels():
    skus = ["a", "b"]
    n = 400
    probs = np.tile([0.999, 0.001], (n, 1))
    y = np.array(["a"] * n, dtype=object)
    y[:50] = "new-product"  # unknown products, all predicted as "a"
    ood = np.where(np.arange(n) < 50, 5.0, 0.0)
    with_ood = Router.from_heldout(probs, y, skus=skus, ood_scores=ood, ood_threshold=1.0)
    assert with_ood.sku_thresholds.per_sku["a"] == pytest.approx(0.999)
    assert with_ood.sku_thresholds.support["a"] == 350
    assert with_ood.ood_threshold == 1.0
    without = Router.from_heldout(probs, y, skus=skus)
    assert without.sku_thresholds.per_sku["a"] == NEVER_ACCEPT
    assert without.category_thresholds is None  # no categories
    with pytest.raises(ValueError, match="y_true"):
        Router.from_heldout(probs, y[:3], skus=skus)


def test_from_heldout_keeps_the_cutoff_without_scores():
    probs = np.tile([0.9, 0.1], (30, 1))
    router = Router.from_heldout(probs, ["a"] * 30, skus=["a", "b"], ood_threshold=0.5)
    assert router.ood_threshold == 0.5
    assert router.route(probs[:1], [10.0])[0].band == "unknown"


def test_from_heldout_refuses_no_rows():
    with pytest.raises(ValueError, match="no held-out rows"):
        Router.from_heldout(np.zeros((0, 2)), [], skus=["a", "b"])
