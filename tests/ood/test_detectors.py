"""Known-answer and parameter tests of the individual detectors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import skuscale.ood.detectors as detectors_module
from skuscale.exceptions import NotFittedError
from skuscale.head.linear import LinearHead
from skuscale.ood import (
    EnergyDetector,
    KNNCosineDetector,
    MahalanobisDetector,
    MaxSoftmaxDetector,
    PrototypeCosineDetector,
)

from ._data import clusters

# ----------------------------------------------------------------------------------
# Logit detectors on a hand-made head
# ----------------------------------------------------------------------------------


def _hand_head() -> LinearHead:
    """A 3-class head on 3-d inputs whose logits for ``e_0`` are ``[2, 1, 0]``."""
    return LinearHead.from_state(
        {"C": 1.0, "long_tail": "none", "tau": 1.0, "max_iter": 10},
        {
            "classes_": np.array(["a", "b", "c"]),
            "coef_": np.array([[2, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=np.float32),
            "intercept_": np.zeros(3, dtype=np.float32),
            "log_prior_": np.log(np.full(3, 1 / 3)).astype(np.float32),
            "n_features_in_": 3,
        },
    )


# Rows are L2-normalised by the head: e_0 -> logits [2, 1, 0]; e_1 -> logits [0, 0, 0].
X_HAND = np.array([[5.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)


def test_energy_known_answer():
    det = EnergyDetector.from_head(_hand_head())
    expected = [-math.log(math.e**2 + math.e + 1), -math.log(3.0)]
    np.testing.assert_allclose(det.score_samples(X_HAND), expected, rtol=1e-6)


def test_energy_known_answer_with_temperature():
    det = EnergyDetector.from_head(_hand_head(), temperature=2.0)
    expected = [-2.0 * math.log(math.e + math.e**0.5 + 1), -2.0 * math.log(3.0)]
    np.testing.assert_allclose(det.score_samples(X_HAND), expected, rtol=1e-6)


def test_msp_known_answer():
    det = MaxSoftmaxDetector.from_head(_hand_head())
    z = math.e**2 + math.e + 1
    np.testing.assert_allclose(det.score_samples(X_HAND), [-(math.e**2) / z, -1 / 3], rtol=1e-6)


def test_msp_known_answer_with_temperature():
    det = MaxSoftmaxDetector.from_head(_hand_head(), temperature=2.0)
    z = math.e + math.e**0.5 + 1
    np.testing.assert_allclose(det.score_samples(X_HAND), [-math.e / z, -1 / 3], rtol=1e-6)


def test_msp_score_range_and_head_logits():
    X_train, y_train, X_test, *_ = clusters()
    det = MaxSoftmaxDetector(head_C=3.0).fit(X_train, y_train)
    assert isinstance(det.head_, LinearHead)
    assert det.head_.C == 3.0
    scores = det.score_samples(X_test)
    assert np.all(scores <= -1 / 3 + 1e-9)
    assert np.all(scores >= -1.0)
    np.testing.assert_allclose(scores, -det.head_.predict_proba(X_test).max(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(det.classes_, det.head_.classes_)
    assert det.n_features_in_ == X_train.shape[1]


def test_from_head_shares_fitted_head():
    X_train, y_train, X_test, *_ = clusters()
    head = LinearHead(C=5.0).fit(X_train, y_train)
    det = EnergyDetector.from_head(head, temperature=1.5)
    assert det.head_ is head
    assert det.get_params() == {"temperature": 1.5, "head_C": 5.0}
    expected = -1.5 * np.log(np.exp(head.decision_function(X_test) / 1.5).sum(axis=1))
    np.testing.assert_allclose(det.score_samples(X_test), expected, rtol=1e-5)


def test_from_head_rejects_unfitted_or_wrong_type():
    with pytest.raises(NotFittedError):
        MaxSoftmaxDetector.from_head(LinearHead())
    with pytest.raises(TypeError):
        MaxSoftmaxDetector.from_head(object())
    with pytest.raises(ValueError, match="temperature"):
        MaxSoftmaxDetector.from_head(_hand_head(), temperature=0.0)


@pytest.mark.parametrize("cls", [MaxSoftmaxDetector, EnergyDetector])
@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"head_C": 0.0}, "head_C"),
    ],
)
def test_logit_detector_bad_params(cls, params, match):
    X_train, y_train, *_ = clusters()
    with pytest.raises(ValueError, match=match):
        cls(**params).fit(X_train, y_train)


@pytest.mark.parametrize("cls", [MaxSoftmaxDetector, EnergyDetector])
def test_logit_detector_needs_labels(cls):
    X_train, *_ = clusters()
    with pytest.raises(ValueError, match="labels"):
        cls().fit(X_train)


# ----------------------------------------------------------------------------------
# Mahalanobis
# ----------------------------------------------------------------------------------


def _plus_pattern(centre: np.ndarray) -> np.ndarray:
    """Four points ``centre +- e_0``, ``centre +- e_1`` in 2-d: covariance 0.5 * I."""
    offsets = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.float64)
    return (centre + offsets).astype(np.float32)


def test_mahalanobis_known_covariance():
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    X = np.vstack([_plus_pattern(means[0]), _plus_pattern(means[1])])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    det = MahalanobisDetector(shrinkage=0.0, normalize=False).fit(X, y)
    np.testing.assert_allclose(det.means_, means, atol=1e-6)
    # Pooled covariance is 0.5 * I, so the precision is 2 * I.
    np.testing.assert_allclose(det.precision_, 2.0 * np.eye(2), atol=1e-5)
    assert det.shrinkage_ == 0.0
    Q = np.array([[1.0, 2.0], [9.0, -1.0], [5.0, 0.0]], dtype=np.float32)
    sq_euclid = ((Q[:, None, :] - means[None]) ** 2).sum(axis=2)
    np.testing.assert_allclose(det.mahalanobis_distances(Q), 2.0 * sq_euclid, rtol=1e-5)
    np.testing.assert_allclose(det.score_samples(Q), [10.0, 4.0, 50.0], rtol=1e-5)
    np.testing.assert_array_equal(det.classes_, ["0", "1"])


def test_mahalanobis_full_shrinkage_is_scaled_identity():
    rng = np.random.default_rng(1)
    X = (rng.standard_normal((40, 4)) * [1.0, 2.0, 3.0, 4.0]).astype(np.float32)
    y = np.zeros(40, dtype=int)
    det = MahalanobisDetector(shrinkage=1.0, normalize=False).fit(X, y)
    centred = X.astype(np.float64) - X.mean(axis=0)
    mu = np.trace(centred.T @ centred / 40) / 4
    np.testing.assert_allclose(det.precision_, np.eye(4) / mu, rtol=1e-5, atol=1e-7)


def test_mahalanobis_fixed_shrinkage_matches_formula():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 5)).astype(np.float32)
    y = np.repeat([0, 1, 2], 10)
    det = MahalanobisDetector(shrinkage=0.3, normalize=False).fit(X, y)
    Xd = X.astype(np.float64)
    centred = np.vstack([Xd[y == c] - Xd[y == c].mean(axis=0) for c in range(3)])
    emp = centred.T @ centred / 30
    cov = 0.7 * emp + 0.3 * np.trace(emp) / 5 * np.eye(5)
    np.testing.assert_allclose(det.precision_, np.linalg.inv(cov), rtol=1e-4, atol=1e-5)


def test_mahalanobis_vectorised_matches_loop():
    X_train, y_train, X_test, _, X_far = clusters(seed=3)
    det = MahalanobisDetector(shrinkage=0.2).fit(X_train, y_train)
    Q = np.vstack([X_test, X_far])
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    P = det.precision_.astype(np.float64)
    loop = np.array([[(q - m) @ P @ (q - m) for m in det.means_.astype(np.float64)] for q in Qn])
    np.testing.assert_allclose(det.mahalanobis_distances(Q), loop, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(det.score_samples(Q), loop.min(axis=1), rtol=1e-5, atol=1e-6)


def test_mahalanobis_ledoit_wolf_handles_fewer_samples_than_dims():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((12, 40)).astype(np.float32)
    y = np.repeat(["a", "b", "c"], 4)
    det = MahalanobisDetector().fit(X, y)
    assert 0.0 < det.shrinkage_ <= 1.0
    assert det.precision_.shape == (40, 40)
    assert det.precision_.dtype == np.float32
    assert det.means_.dtype == np.float32
    np.testing.assert_allclose(det.precision_, det.precision_.T)
    assert np.linalg.eigvalsh(det.precision_.astype(np.float64)).min() > 0
    scores = det.score_samples(rng.standard_normal((5, 40)))
    assert np.isfinite(scores).all() and (scores >= 0).all()


def test_mahalanobis_normalize_is_scale_invariant():
    X_train, y_train, X_test, *_ = clusters(seed=5)
    det = MahalanobisDetector().fit(X_train, y_train)
    np.testing.assert_allclose(
        det.score_samples(3.0 * X_test), det.score_samples(X_test), rtol=1e-4
    )


@pytest.mark.parametrize("shrinkage", ["ledoit_wolf", 0.0, 0.5])
def test_mahalanobis_refuses_classes_without_scatter(shrinkage):
    # One photo per SKU: no within-class scatter, so every distance would be 0.
    X = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="scatter"):
        MahalanobisDetector(shrinkage=shrinkage).fit(X, ["a", "b", "c"])


def test_class_order_matches_the_heads_for_numeric_labels():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((20, 3)).astype(np.float32)
    y = np.repeat([2, 10], 10)
    head = LinearHead().fit(X, y)
    for det in (MahalanobisDetector().fit(X, y), PrototypeCosineDetector().fit(X, y)):
        np.testing.assert_array_equal(det.classes_, head.classes_)


@pytest.mark.parametrize("shrinkage", ["oas", -0.1, 1.5, None, True])
def test_mahalanobis_bad_shrinkage(shrinkage):
    X_train, y_train, *_ = clusters()
    with pytest.raises(ValueError, match="shrinkage"):
        MahalanobisDetector(shrinkage=shrinkage).fit(X_train, y_train)


# ----------------------------------------------------------------------------------
# kNN
# ----------------------------------------------------------------------------------

BANK = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)


def _unit(theta: float) -> list[float]:
    return [math.cos(theta), math.sin(theta)]


def test_knn_k1_is_one_minus_nearest_cosine():
    det = KNNCosineDetector(k=1).fit(BANK)
    thetas = [0.0, 0.3, math.pi / 4, 2.0, -math.pi / 2]
    Q = np.array([_unit(t) for t in thetas], dtype=np.float32)
    expected = 1.0 - (Q @ BANK.T).max(axis=1)
    np.testing.assert_allclose(det.score_samples(Q), expected, atol=1e-6)
    np.testing.assert_allclose(det.score_samples(Q[:1]), [0.0], atol=1e-6)


def test_knn_kth_neighbour():
    det = KNNCosineDetector(k=2).fit(BANK, ["x", "y", "z"])
    Q = np.array([_unit(0.3)], dtype=np.float32)
    # Cosines to the bank: cos 0.3 > sin 0.3 > -cos 0.3; the 2nd largest is sin 0.3.
    np.testing.assert_allclose(det.score_samples(Q), [1.0 - math.sin(0.3)], atol=1e-6)
    det3 = KNNCosineDetector(k=3).fit(BANK)
    np.testing.assert_allclose(det3.score_samples(Q), [1.0 + math.cos(0.3)], atol=1e-6)


def test_knn_normalizes_bank_and_queries():
    det = KNNCosineDetector(k=1).fit(5.0 * BANK)
    np.testing.assert_allclose(np.linalg.norm(det.bank_, axis=1), 1.0, rtol=1e-6)
    assert det.bank_.dtype == np.float32
    Q = np.array([[3.0, 3.0]], dtype=np.float32)
    np.testing.assert_allclose(det.score_samples(Q), [1.0 - math.sqrt(0.5)], atol=1e-6)


def test_knn_unnormalized_is_half_squared_euclidean():
    bank = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]], dtype=np.float32)
    det = KNNCosineDetector(k=2, normalize=False).fit(bank)
    np.testing.assert_array_equal(det.bank_, bank)
    Q = np.array([[0.0, 0.0], [9.0, 0.0]], dtype=np.float32)
    # Distances^2 from (0,0): 0, 25, 100 -> 2nd = 25; from (9,0): 81, 52, 1 -> 2nd = 52.
    np.testing.assert_allclose(det.score_samples(Q), [12.5, 26.0], rtol=1e-6)


def test_knn_unnormalized_matches_cosine_on_unit_vectors():
    X_train, _, X_test, *_ = clusters(seed=6)
    unit_train = X_train / np.linalg.norm(X_train, axis=1, keepdims=True)
    unit_test = X_test / np.linalg.norm(X_test, axis=1, keepdims=True)
    a = KNNCosineDetector(k=4).fit(unit_train).score_samples(unit_test)
    b = KNNCosineDetector(k=4, normalize=False).fit(unit_train).score_samples(unit_test)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_knn_chunking_does_not_change_scores(monkeypatch, normalize):
    X_train, _, X_test, _, X_far = clusters(seed=7)
    Q = np.vstack([X_test, X_far])
    det = KNNCosineDetector(k=3, normalize=normalize).fit(X_train)
    full = det.score_samples(Q)
    # Bank has 60 rows: 100 elements per chunk -> one query row at a time.
    monkeypatch.setattr(detectors_module, "_KNN_CHUNK_ELEMENTS", 100)
    np.testing.assert_allclose(det.score_samples(Q), full, rtol=1e-6, atol=1e-7)
    monkeypatch.setattr(detectors_module, "_KNN_CHUNK_ELEMENTS", 60 * 7)
    np.testing.assert_allclose(det.score_samples(Q), full, rtol=1e-6, atol=1e-7)


def test_knn_brute_force_reference():
    X_train, _, X_test, _, X_far = clusters(seed=8)
    Q = np.vstack([X_test, X_far])
    det = KNNCosineDetector(k=5).fit(X_train)
    bn = X_train / np.linalg.norm(X_train, axis=1, keepdims=True)
    qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    expected = 1.0 - np.sort(qn @ bn.T, axis=1)[:, -5]
    np.testing.assert_allclose(det.score_samples(Q), expected, atol=1e-5)


@pytest.mark.parametrize("k", [0, -1, 2.5, "3", True])
def test_knn_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        KNNCosineDetector(k=k).fit(BANK)


def test_knn_k_larger_than_bank():
    with pytest.raises(ValueError, match="larger than"):
        KNNCosineDetector(k=4).fit(BANK)


# ----------------------------------------------------------------------------------
# Prototype
# ----------------------------------------------------------------------------------


def test_prototype_known_answer():
    X = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [-1.0, 1.0]], dtype=np.float32)
    y = np.array(["a", "a", "b", "b"])
    det = PrototypeCosineDetector().fit(X, y)
    # Class a: mean of e_0 and e_1 -> (1, 1)/sqrt2; class b: mean of (1,1)/sqrt2 and
    # (-1,1)/sqrt2 -> e_1.
    s = math.sqrt(0.5)
    np.testing.assert_allclose(det.prototypes_, [[s, s], [0.0, 1.0]], atol=1e-6)
    np.testing.assert_array_equal(det.classes_, ["a", "b"])
    Q = np.array([[1.0, 0.0], [0.0, -4.0], [0.0, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(det.score_samples(Q), [1.0 - s, 1.0 + s, 0.0], atol=1e-6)


def test_prototype_needs_labels():
    with pytest.raises(ValueError, match="labels"):
        PrototypeCosineDetector().fit(BANK)
