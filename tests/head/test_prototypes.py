"""PrototypeHead: cosine class prototypes, enrolment and state round trip."""

from __future__ import annotations

import numpy as np
import pytest

from skuscale.exceptions import NotFittedError
from skuscale.head.prototypes import PrototypeHead

S2 = np.sqrt(0.5)


@pytest.fixture
def toy():
    # class "a": [2, 0, 0] and [0, 3, 0] -> normalised [1,0,0], [0,1,0] -> mean [.5,.5,0]
    #            -> prototype [s, s, 0] with s = 1/sqrt(2). (The normalised mean of the *raw*
    #            rows would be [2, 3, 0] / sqrt(13), so the two readings differ.)
    # class "b": [0, 0, 5] and [0, 0, 0.1] -> prototype [0, 0, 1]
    X = np.array([[2.0, 0, 0], [0, 3.0, 0], [0, 0, 5.0], [0, 0, 0.1]], dtype=np.float32)
    y = np.array(["a", "a", "b", "b"])
    return X, y


def test_known_answer_prototypes(toy):
    X, y = toy
    head = PrototypeHead().fit(X, y)
    assert head.classes_.tolist() == ["a", "b"]
    np.testing.assert_allclose(head.prototypes_, [[S2, S2, 0.0], [0.0, 0.0, 1.0]], atol=1e-6)
    assert head.prototypes_.dtype == np.float32
    assert head.counts_.tolist() == [2, 2]
    assert head.counts_.dtype == np.int64
    assert head.n_features_in_ == 3


def test_prototypes_are_unit_norm_and_classes_sorted_str():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 5)) * 10
    y = np.repeat([10, 1, 2], 10)
    head = PrototypeHead().fit(X, y)
    assert head.classes_.tolist() == ["1", "10", "2"]
    np.testing.assert_allclose(np.linalg.norm(head.prototypes_, axis=1), 1.0, rtol=1e-6)


def test_similarities_known_answer_and_range(toy):
    X, y = toy
    head = PrototypeHead(scale=4.0).fit(X, y)
    Xq = np.array([[1.0, 0, 0], [0, 0, -7.0], [-1.0, -1.0, 0], [1.0, 1.0, 0]])
    sims = head.similarities(Xq)
    expected = np.array([[S2, 0.0], [0.0, -1.0], [-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(sims, expected, atol=1e-6)
    np.testing.assert_allclose(head.decision_function(Xq), 4.0 * expected, atol=1e-5)
    assert head.predict(Xq).tolist() == ["a", "a", "b", "a"]
    rng = np.random.default_rng(1)
    many = head.similarities(rng.standard_normal((200, 3)) * 50)
    assert many.shape == (200, 2)
    assert (many >= -1.0 - 1e-6).all()
    assert (many <= 1.0 + 1e-6).all()


def test_not_fitted_error():
    head = PrototypeHead()
    with pytest.raises(NotFittedError):
        head.similarities(np.ones((1, 3)))
    with pytest.raises(NotFittedError):
        head.decision_function(np.ones((1, 3)))
    with pytest.raises(NotFittedError):
        head.add_class("x", np.ones((1, 3)))


def test_predict_unfitted_raises_not_fitted_error():
    with pytest.raises(NotFittedError):
        PrototypeHead().predict(np.ones((1, 3)))


def test_feature_count_checked(toy):
    head = PrototypeHead().fit(*toy)
    with pytest.raises(ValueError, match="features"):
        head.similarities(np.ones((1, 4)))
    with pytest.raises(ValueError, match="features"):
        head.add_class("c", np.ones((1, 4)))


def test_add_new_class(toy):
    X, y = toy
    head = PrototypeHead().fit(X, y)
    before = head.prototypes_.copy()
    # normalised rows [1,0,0] and [0,0,-1] -> mean [.5,0,-.5] -> [s, 0, -s]
    out = head.add_class("c", np.array([[4.0, 0, 0], [0, 0, -0.5]]))
    assert out is head
    assert head.classes_.tolist() == ["a", "b", "c"]
    assert head.counts_.tolist() == [2, 2, 2]
    assert head.counts_.dtype == np.int64
    np.testing.assert_allclose(head.prototypes_[:2], before)
    np.testing.assert_allclose(head.prototypes_[2], [S2, 0.0, -S2], atol=1e-6)
    assert head.predict(np.array([[1.0, 0, -1.0]])).tolist() == ["c"]


def test_add_new_class_with_longer_name(toy):
    head = PrototypeHead().fit(*toy)
    head.add_class("a-much-longer-sku-name", np.array([[0, -1.0, 0]]))
    assert head.classes_[-1] == "a-much-longer-sku-name"
    assert head.predict(np.array([[0, -2.0, 0]])).tolist() == ["a-much-longer-sku-name"]


def test_add_existing_class_updates_prototype():
    # "a" from two rows along e0: the exact sum of its normalised rows is 2 * e0.
    X = np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]])
    y = np.array(["a", "a", "b"])
    head = PrototypeHead().fit(X, y)
    head.add_class("a", np.array([[0, 5.0, 0]]))
    assert head.classes_.tolist() == ["a", "b"]
    assert head.counts_.tolist() == [3, 1]
    # normalised mean of [1,0,0], [1,0,0], [0,1,0] -> [2, 1, 0] / sqrt(5)
    np.testing.assert_allclose(head.prototypes_[0], np.array([2.0, 1.0, 0]) / np.sqrt(5), atol=1e-6)
    np.testing.assert_allclose(head.prototypes_[1], [0, 0, 1.0])


def test_add_existing_class_equals_fitting_on_all_rows(toy):
    X, y = toy
    extra = np.array([[1.0, 0, 0]])
    head = PrototypeHead().fit(X, y).add_class("a", extra)
    ref = PrototypeHead().fit(np.vstack([X, extra]), np.append(y, "a"))
    # exact: normalised [2, 1, 0] -> [.894, .447, 0]; add_class gives [.863, .505, 0]
    np.testing.assert_allclose(head.prototypes_, ref.prototypes_, atol=1e-4)


def test_state_round_trip(toy):
    X, y = toy
    head = PrototypeHead(scale=7.0).fit(X, y).add_class("c", np.array([[0, -1.0, 0]]))
    again = PrototypeHead.from_state(head.get_params(), head.get_state())
    assert again.scale == 7.0
    assert again.classes_.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(again.counts_, head.counts_)
    np.testing.assert_array_equal(again.prototypes_, head.prototypes_)
    Xq = np.random.default_rng(2).standard_normal((6, 3))
    np.testing.assert_array_equal(again.decision_function(Xq), head.decision_function(Xq))
    assert set(head.get_state()) == {"classes_", "prototypes_", "counts_", "resultant_norms_", "n_features_in_"}
