"""LinearHead: fitting, long-tail handling and weight imprinting."""

from __future__ import annotations

import numpy as np
import pytest

from skuscale._base import l2_normalize, softmax
from skuscale.exceptions import NotFittedError
from skuscale.head.linear import LinearHead
from skuscale.head.prototypes import PrototypeHead

D = 8


def clusters(seed: int = 0, n: int = 15, labels=("sku_c", "sku_a", "sku_b"), noise: float = 0.2):
    """Well separated Gaussian clusters centred on 3 * e_i, one per label (in the given order)."""
    rng = np.random.default_rng(seed)
    X = np.vstack(
        [3.0 * np.eye(D)[i] + noise * rng.standard_normal((n, D)) for i in range(len(labels))]
    ).astype(np.float32)
    y = np.repeat(np.asarray(labels), n)
    return X, y


def draw(centre, n: int, seed: int, noise: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.asarray(centre) + noise * rng.standard_normal((n, D))).astype(np.float32)


def raw_logits(head: LinearHead, X) -> np.ndarray:
    return l2_normalize(X) @ head.coef_.T + head.intercept_


@pytest.fixture(scope="module")
def data():
    return clusters()


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return LinearHead().fit(X, y)


def test_fit_returns_self(data):
    X, y = data
    head = LinearHead()
    assert head.fit(X, y) is head


def test_classes_sorted_str(fitted):
    assert fitted.classes_.tolist() == ["sku_a", "sku_b", "sku_c"]
    assert fitted.classes_.dtype.kind == "U"


def test_int_labels_sorted_as_str_like_prototype_head(data):
    # classes_ are the labels cast to str *then* sorted, as in PrototypeHead
    X, _ = data
    y = np.repeat([10, 1, 2], 15)
    head = LinearHead().fit(X, y)
    assert head.classes_.tolist() == ["1", "10", "2"]
    assert head.classes_.tolist() == PrototypeHead().fit(X, y).classes_.tolist()
    assert head.predict(X[:1]).tolist() == ["10"]


def test_fitted_attribute_shapes(fitted):
    k = 3
    assert fitted.coef_.shape == (k, D)
    assert fitted.intercept_.shape == (k,)
    assert fitted.log_prior_.shape == (k,)
    assert fitted.n_features_in_ == D
    assert fitted.coef_.dtype == np.float32
    np.testing.assert_allclose(np.exp(fitted.log_prior_), np.full(k, 1 / 3), rtol=1e-6)


def test_logits_and_proba_shape(fitted):
    Xq = np.random.default_rng(3).standard_normal((5, D))
    logits = fitted.decision_function(Xq)
    assert logits.shape == (5, 3)
    assert logits.dtype == np.float32
    proba = fitted.predict_proba(Xq)
    assert proba.shape == (5, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(proba, softmax(logits), rtol=1e-6)


def test_predicts_separated_clusters_perfectly(fitted, data):
    X, y = data
    assert (fitted.predict(X) == y).all()
    X_new, y_new = clusters(seed=11, n=10)
    assert (fitted.predict(X_new) == y_new).all()


def test_not_fitted_error():
    head = LinearHead()
    for call in (head.decision_function, head.predict_proba):
        with pytest.raises(NotFittedError, match="not fitted"):
            call(np.ones((1, D)))
    with pytest.raises(NotFittedError):
        head.imprint("new", np.ones((1, D)))


def test_predict_unfitted_raises_not_fitted_error():
    with pytest.raises(NotFittedError):
        LinearHead().predict(np.ones((1, D)))


def test_invalid_long_tail_raises(data):
    X, y = data
    with pytest.raises(ValueError, match="long_tail must be one of"):
        LinearHead(long_tail="focal").fit(X, y)


def test_single_class_raises(data):
    X, _ = data
    with pytest.raises(ValueError, match="at least two classes"):
        LinearHead().fit(X, np.full(X.shape[0], "only"))


def test_wrong_feature_count_raises(fitted):
    with pytest.raises(ValueError, match="features"):
        fitted.decision_function(np.ones((2, D + 1)))


# -- long-tail handling -------------------------------------------------------------


def test_logit_adjust_known_answer():
    X, y = clusters(n=20)
    # imbalanced: keep 20 / 10 / 4 rows
    keep = np.concatenate([np.arange(0, 20), np.arange(20, 30), np.arange(40, 44)])
    X, y = X[keep], y[keep]
    tau = 0.7
    head = LinearHead(long_tail="logit_adjust", tau=tau).fit(X, y)
    counts = np.array([(y == c).sum() for c in head.classes_], dtype=float)
    np.testing.assert_allclose(head.log_prior_, np.log(counts / counts.sum()), rtol=1e-6)
    Xq = np.random.default_rng(5).standard_normal((6, D))
    expected = raw_logits(head, Xq) - tau * np.log(counts / counts.sum())
    np.testing.assert_allclose(head.decision_function(Xq), expected, rtol=1e-5, atol=1e-5)


def test_none_and_balanced_return_raw_logits(data):
    X, y = data
    Xq = np.random.default_rng(6).standard_normal((4, D))
    for lt in ("none", "balanced"):
        head = LinearHead(long_tail=lt).fit(X, y)
        np.testing.assert_allclose(
            head.decision_function(Xq), raw_logits(head, Xq), rtol=1e-5, atol=1e-5
        )


def test_tau_zero_equals_no_adjustment(data):
    X, y = data
    Xq = np.random.default_rng(7).standard_normal((4, D))
    a = LinearHead(long_tail="logit_adjust", tau=0.0).fit(X, y)
    b = LinearHead(long_tail="none").fit(X, y)
    np.testing.assert_allclose(a.decision_function(Xq), b.decision_function(Xq), atol=1e-5)


def _imbalanced(seed: int):
    """Two big classes and a minority class of 8 rows that sits close to one of them."""
    rng = np.random.default_rng(seed)
    e = np.eye(D)
    c_a, c_b = e[0], e[1]
    c_m = 0.8 * e[0] + 0.2 * e[1] + 0.3 * e[2]
    s = 0.25
    X = np.vstack(
        [c_a + s * rng.standard_normal((200, D)), c_b + s * rng.standard_normal((200, D)),
         c_m + s * rng.standard_normal((8, D))]
    )
    y = np.array(["a"] * 200 + ["b"] * 200 + ["m"] * 8)
    X_minority_test = c_m + s * rng.standard_normal((300, D))
    return X, y, X_minority_test


@pytest.mark.parametrize("seed", [0, 1])
def test_balanced_improves_minority_recall(seed):
    X, y, Xt = _imbalanced(seed)
    recall = {
        lt: float((LinearHead(long_tail=lt, C=1.0).fit(X, y).predict(Xt) == "m").mean())
        for lt in ("none", "balanced")
    }
    # measured: none 0.0, balanced 0.49-0.72 over seeds 0-5
    assert recall["none"] < 0.1
    assert recall["balanced"] >= recall["none"] + 0.3


# -- imprinting --------------------------------------------------------------------------


def test_imprint_adds_a_class_that_wins_on_its_cluster(data):
    X, y = data
    head = LinearHead().fit(X, y)
    before = head.coef_.copy()
    new_centre = 3.0 * np.eye(D)[5]
    out = head.imprint("sku_new", draw(new_centre, 5, seed=1))
    assert out is head
    assert head.classes_.tolist() == ["sku_a", "sku_b", "sku_c", "sku_new"]
    assert head.coef_.shape == (4, D)
    assert head.intercept_.shape == (4,)
    assert head.log_prior_.shape == (4,)
    np.testing.assert_array_equal(head.coef_[:3], before)
    # imprinted weight: normalised mean direction scaled to the mean trained norm
    assert np.linalg.norm(head.coef_[3]) == pytest.approx(
        float(np.linalg.norm(before, axis=1).mean()), rel=1e-5
    )
    assert head.intercept_[3] == pytest.approx(float(np.median(head.intercept_[:3])))
    assert head.log_prior_[3] == pytest.approx(float(np.median(head.log_prior_[:3])))
    assert (head.predict(draw(new_centre, 20, seed=2)) == "sku_new").all()
    # the old classes still win on their own clusters
    assert (head.predict(X) == y).all()


def test_imprint_existing_class_replaces_it(data):
    X, y = data
    head = LinearHead().fit(X, y)
    old_row = head.coef_[0].copy()
    new_centre = 3.0 * np.eye(D)[6]
    head.imprint("sku_a", draw(new_centre, 5, seed=3))
    assert head.classes_.tolist() == ["sku_a", "sku_b", "sku_c"]
    assert head.coef_.shape == (3, D)
    assert not np.allclose(head.coef_[0], old_row)
    # the new weight points at the new cluster
    cos = head.coef_[0] @ new_centre / (np.linalg.norm(head.coef_[0]) * 3.0)
    assert cos > 0.95
    assert (head.predict(draw(new_centre, 20, seed=4)) == "sku_a").all()


def test_centred_imprint_removes_the_common_component(data):
    X, y = data
    head = LinearHead().fit(X, y)
    before = head.coef_.copy()
    common = np.full(D, 1.0 / np.sqrt(D))
    new = draw(3.0 * np.eye(D)[5], 5, seed=1) + 4.0 * common  # a class sharing a big common direction
    head.imprint("sku_new", new, centre=0.8 * common)
    mean_dir = (new / np.linalg.norm(new, axis=1, keepdims=True)).mean(axis=0)
    mean_dir /= np.linalg.norm(mean_dir)
    expected = mean_dir - 0.8 * common
    expected /= np.linalg.norm(expected)
    w = head.coef_[3]
    np.testing.assert_allclose(w / np.linalg.norm(w), expected, atol=1e-5)
    assert np.linalg.norm(w) == pytest.approx(float(np.linalg.norm(before, axis=1).mean()), rel=1e-5)
    # a plain imprint keeps more of the common direction than the centred one
    plain = LinearHead().fit(X, y).imprint("sku_new", new).coef_[3]
    assert plain @ common / np.linalg.norm(plain) > w @ common / np.linalg.norm(w) + 0.1
    with pytest.raises(ValueError, match="centre"):
        head.imprint("sku_x", new, centre=np.ones(D + 1))


def test_imprint_checks_feature_count(data):
    head = LinearHead().fit(*data)
    with pytest.raises(ValueError, match="features"):
        head.imprint("x", np.ones((2, D + 2)))
    assert head.classes_.size == 3


@pytest.mark.parametrize("long_tail", ["none", "logit_adjust"])
def test_two_classes(long_tail):
    # regression: a binary problem must still give one logit column per class
    X, y = clusters(labels=("a", "b"))
    head = LinearHead(long_tail=long_tail).fit(X, y)
    assert head.coef_.shape == (2, D)
    assert head.decision_function(X).shape == (X.shape[0], 2)
    assert (head.predict(X) == y).all()


@pytest.mark.parametrize("C", [0.0, -1.0])
def test_non_positive_C_raises(data, C):
    with pytest.raises(ValueError, match="C must be positive"):
        LinearHead(C=C).fit(*data)


def test_warm_start_from_a_fitted_head(data):
    X, y = data
    full = LinearHead().fit(X, y)
    keep = y != "sku_b"
    warm = LinearHead().fit(X[keep], y[keep], init=full)
    cold = LinearHead().fit(X[keep], y[keep])
    assert warm.classes_.tolist() == ["sku_a", "sku_c"]
    assert warm.coef_.shape == (2, D)
    np.testing.assert_array_equal(warm.predict(X[keep]), y[keep])
    np.testing.assert_array_equal(warm.predict(X), cold.predict(X))
